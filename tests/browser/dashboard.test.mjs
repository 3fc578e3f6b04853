// The dashboard in a real browser: Debian's Chromium driven by Playwright (playwright-core,
// which downloads no browser). Starts `oxflow server` on a free loopback port with a data
// directory of its own, signs in with the server's token, submits a bad spec and a good one
// from the page, watches the running job's graph and counters move, takes a savepoint, stops
// and resumes from the page, and cancels. Run by scripts/test-browser.sh, which builds the
// binary and says where it is (OXFLOW_BIN); SCREENSHOTS=DIR writes a picture of each page.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import http from "node:http";
import { mkdtempSync, readFileSync, rmSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BIN = process.env.OXFLOW_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOTS;
assert.ok(BIN, "set OXFLOW_BIN to the oxflow binary (scripts/test-browser.sh does)");

let server, base, token, dataDir, browser;

function startServer() {
  dataDir = mkdtempSync(join(tmpdir(), "oxflow-ui-"));
  const child = spawn(BIN, ["server", "--data-dir", dataDir, "--listen", "127.0.0.1:0"], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  return new Promise((resolve, reject) => {
    let seen = "";
    const timer = setTimeout(() => reject(new Error("the server did not start: " + seen)), 30000);
    child.stderr.on("data", (chunk) => {
      seen += chunk;
      const m = seen.match(/listening on (http:\/\/[0-9.:]+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1] });
      }
    });
    child.on("exit", (code) => reject(new Error(`the server exited (${code}): ${seen}`)));
  });
}

// A Nexmark job slow enough to watch: 4000 bids/s, windows of 2 s, checkpoints every 300 ms,
// output in files under the data directory (where the server lets jobs write).
function spec(out) {
  return {
    parallelism: 2,
    stream: {
      source: { nexmark: { table: "bid", events: 2000000, event_rate: 10000, seed: 1, rate: 4000 } },
      watermarks: { column: "date_time", delay_ms: 1000 },
      steps: [
        {
          window: {
            keys: ["auction"],
            window: { tumbling: { size_ms: 2000 } },
            compute: { aggregate: ["count(price) AS bids"] },
          },
        },
      ],
    },
    sink: { file: { path: out } },
    checkpoints: { interval_ms: 300 },
  };
}

async function shot(page, name) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: join(SHOTS, name + ".png"), fullPage: true });
}

before(async () => {
  const started = await startServer();
  server = started.child;
  base = started.url;
  token = readFileSync(join(dataDir, "token"), "utf8").trim();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.kill("SIGKILL");
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

test("the page asks for the token, refuses a wrong one, and keeps a right one in an HttpOnly cookie", async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(base + "/");
  await page.locator("#login-token").waitFor();
  await shot(page, "dashboard-sign-in");
  await page.fill("#login-token", "not-the-token");
  await page.click("#login-form button");
  await page.locator("#login-error").filter({ hasText: "not this server's token" }).waitFor();
  await page.fill("#login-token", token);
  await page.click("#login-form button");
  await page.locator("#jobs-table").waitFor();
  const cookies = await context.cookies();
  const cookie = cookies.find((c) => c.name === "oxflow_token");
  assert.ok(cookie, "a session cookie is set");
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, "Strict");
  assert.equal(await page.evaluate(() => document.cookie), "", "scripts cannot read the token");
  await context.close();
});

test("?token= signs in once and is dropped from the address", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${base}/?token=${token}`);
  await page.locator("#jobs-table").waitFor();
  assert.equal(new URL(page.url()).search, "", "the token is not left in the address bar");
  await context.close();
});

test("submit from the page: a bad spec's error in place, then a job whose graph and counters go live; savepoint, stop, resume, cancel", async () => {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  await page.goto(`${base}/?token=${token}`);
  await page.locator("#submit-spec").waitFor();

  // Not JSON at all: said before anything is sent.
  await page.fill("#submit-spec", "{ not json");
  await page.click("#submit-form button");
  await page.locator("#submit-error").filter({ hasText: "not JSON" }).waitFor();
  // JSON, but not a spec: the server's own message, in place.
  const bad = spec(join(dataDir, "out-bad"));
  bad.stream.steps[0].window.window = { tumbling: { size_ms: 0 } };
  await page.fill("#submit-spec", JSON.stringify(bad, null, 2));
  await page.click("#submit-form button");
  const error = page.locator("#submit-error");
  await error.filter({ hasText: "refused the job (400)" }).waitFor();
  assert.match(await error.textContent(), /size/i, "the error names what is wrong");
  await shot(page, "dashboard-bad-spec");

  // A good one: the page moves to the job.
  await page.fill("#submit-spec", JSON.stringify(spec(join(dataDir, "out")), null, 2));
  await page.click("#submit-form button");
  await page.waitForURL(/#\/jobs\//);
  const id = decodeURIComponent(new URL(page.url()).hash.replace("#/jobs/", ""));
  await page.locator("#job-state", { hasText: "RUNNING" }).waitFor();

  // The dataflow: a source stage and a window stage, joined by a hash exchange.
  await page.locator("#graph-svg .node").nth(1).waitFor();
  assert.equal(await page.locator("#graph-svg .node").count(), 2);
  assert.match(await page.locator("#graph-svg .edge text").first().textContent(), /hash\(auction\)/);
  // Live counters: the source's rate appears and the totals keep moving without a reload.
  const rates = page.locator('#graph-svg .node[data-stage="0"] .rates');
  await page.waitForFunction(
    () => /out [0-9.]+ ?k? \/s/.test(document.querySelector('#graph-svg .node[data-stage="0"] .rates').textContent),
  );
  await page.click("#per-subtask");
  const firstCount = await page.locator('#subtasks tr[data-subtask="0-0"] td').nth(3).textContent();
  await page.waitForFunction(
    (before) => document.querySelectorAll('#subtasks tr[data-subtask="0-0"] td')[3].textContent !== before,
    firstCount,
  );
  assert.match(await rates.textContent(), /in .* \/s · out .* \/s/);
  assert.match(await page.locator('#graph-svg .node[data-stage="1"] .bp').textContent(), /backpressure (OK|LOW|HIGH)/);
  await page.locator('#graph-svg .node[data-stage="1"] .wm', { hasText: "lag" }).waitFor();
  // Checkpoints: rows in the table, and the chart drawn.
  await page.locator("#checkpoint-table tbody tr.COMPLETED").nth(1).waitFor();
  await page.locator("#checkpoint-chart .uplot").waitFor();
  await shot(page, "dashboard-job");

  // A savepoint from the page.
  await page.click("#action-savepoint");
  await page.locator("#action-result", { hasText: "Savepoint written to" }).waitFor({ timeout: 60000 });
  await page.locator("#checkpoint-table tbody tr", { hasText: "(savepoint)" }).waitFor();

  // Stop with a savepoint, then resume from it as a new job.
  await page.click("#action-stop");
  await page.locator("#job-state", { hasText: "STOPPED" }).waitFor({ timeout: 60000 });
  await page.locator("#action-restore").waitFor();
  await page.click("#action-restore");
  await page.waitForURL((url) => !url.hash.endsWith(id) && url.hash.startsWith("#/jobs/"));
  await page.locator("#job-state", { hasText: "RUNNING" }).waitFor();
  await page.locator("#graph-svg .node").nth(1).waitFor();

  // Cancel takes two clicks.
  await page.click("#action-cancel");
  await page.locator("#action-cancel", { hasText: "Click again" }).waitFor();
  await page.click("#action-cancel");
  await page.locator("#job-state", { hasText: "CANCELLED" }).waitFor({ timeout: 30000 });

  // The list shows both jobs.
  await page.goto(base + "/#/");
  await page.locator("#jobs-table tbody tr").nth(1).waitFor();
  await page.locator("#jobs-table tbody tr", { hasText: "STOPPED" }).waitFor();
  await page.locator("#jobs-table tbody tr", { hasText: "CANCELLED" }).waitFor();
  await shot(page, "dashboard-jobs");
  await context.close();
});

test("a page on another Host name gets nothing (DNS rebinding), and the page runs under a strict CSP", async () => {
  // fetch() may not set Host; a plain request may.
  const status = await new Promise((resolve, reject) => {
    const request = http.get(base + "/", { headers: { Host: "evil.example" } }, (r) => {
      r.resume();
      resolve(r.statusCode);
    });
    request.on("error", reject);
  });
  assert.equal(status, 403);
  const page = await fetch(base + "/");
  assert.match(page.headers.get("content-security-policy"), /script-src 'self'/);
  assert.equal(page.headers.get("x-frame-options"), "DENY");
  const api = await fetch(base + "/v1/jobs");
  assert.equal(api.status, 401, "the API still needs the token");
});
