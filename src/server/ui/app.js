// The Oxflow dashboard: a page over the server's /v1 API, polled once a second.
// Graph layout is dagre's, charts are uPlot's (both vendored under /ui/vendor/); this file
// only fetches, computes rates from successive answers, and draws what they lay out.
"use strict";

(() => {
  const POLL_MS = 1000;
  const view = document.getElementById("view");
  const connection = document.getElementById("connection");
  const logout = document.getElementById("logout");
  let poll = null;

  class AuthError extends Error {}
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // One call of the API. The token travels in the session cookie; a 401 means there is none
  // (or it is wrong), and the page asks for it.
  async function api(method, path, body) {
    const init = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = { error: text };
    }
    if (response.status === 401 && path !== "/v1/session") {
      throw new AuthError((data && data.error) || "unauthorized");
    }
    if (!response.ok) {
      throw new ApiError(response.status, (data && data.error) || response.statusText);
    }
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  function fromTemplate(id) {
    view.replaceChildren(document.getElementById(id).content.cloneNode(true));
  }

  const $ = (id) => document.getElementById(id);

  // Figures for people.
  function count(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return "–";
    if (Math.abs(n) >= 1e9) return (n / 1e9).toFixed(2) + " G";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + " M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + " k";
    return Math.round(n).toString();
  }
  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
  }
  function duration(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return ms + " ms";
    const s = ms / 1000;
    if (s < 120) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 120) return m + " min " + Math.floor(s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }
  function time(ms) {
    return ms ? new Date(ms).toLocaleTimeString() : "–";
  }

  // Backpressure as Flink shows it: the share of time a stage's subtasks waited for room
  // downstream, OK up to 10 %, LOW up to 50 %, HIGH beyond.
  function backpressureLevel(ratio) {
    if (ratio === null) return "–";
    if (ratio <= 0.1) return "OK";
    if (ratio <= 0.5) return "LOW";
    return "HIGH";
  }

  function stop() {
    if (poll) clearInterval(poll);
    poll = null;
  }

  function every(fn) {
    stop();
    fn();
    poll = setInterval(fn, POLL_MS);
  }

  function failed(e) {
    if (e instanceof AuthError) {
      showLogin();
      return;
    }
    connection.textContent = "server unreachable: " + e.message;
  }

  // ----- sign in -----

  function showLogin(message) {
    stop();
    logout.hidden = true;
    fromTemplate("login-template");
    if (message) {
      $("login-error").textContent = message;
      $("login-error").hidden = false;
    }
    $("login-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        await api("POST", "/v1/session", { token: $("login-token").value.trim() });
        route();
      } catch (e) {
        $("login-error").textContent =
          e.status === 401 ? "That is not this server's token." : e.message;
        $("login-error").hidden = false;
      }
    });
  }

  logout.addEventListener("click", async () => {
    await api("DELETE", "/v1/session").catch(() => {});
    showLogin();
  });

  // ----- the job list -----

  function showJobs() {
    fromTemplate("jobs-template");
    $("submit-form").addEventListener("submit", submit);
    every(async () => {
      try {
        const { jobs } = await api("GET", "/v1/jobs");
        connection.textContent = "";
        logout.hidden = false;
        const rows = jobs
          .slice()
          .sort((a, b) => b.submitted_at_ms - a.submitted_at_ms)
          .map((j) =>
            el(
              "tr",
              { "data-job": j.id },
              el("td", {}, el("a", { href: "#/jobs/" + j.id }, j.id)),
              el("td", {}, el("span", { class: "state " + j.state }, j.state)),
              el("td", {}, duration(j.uptime_ms)),
              el("td", { class: "num" }, String(j.restarts)),
              el("td", { class: "num" }, j.state === "RUNNING" ? count(j.records_per_sec) : "–"),
            ),
          );
        document.querySelector("#jobs-table tbody").replaceChildren(...rows);
        $("jobs-empty").hidden = jobs.length > 0;
      } catch (e) {
        failed(e);
      }
    });
  }

  async function submit(event) {
    event.preventDefault();
    const error = $("submit-error");
    error.hidden = true;
    let spec;
    try {
      spec = JSON.parse($("submit-spec").value);
    } catch (e) {
      error.textContent = "The spec is not JSON: " + e.message;
      error.hidden = false;
      return;
    }
    const body = { spec };
    const restore = $("submit-restore").value.trim();
    if (restore) body.restore_from = restore;
    try {
      const { id } = await api("POST", "/v1/jobs", body);
      location.hash = "#/jobs/" + id;
    } catch (e) {
      if (e instanceof AuthError) return showLogin();
      error.textContent = "The server refused the job (" + e.status + "): " + e.message;
      error.hidden = false;
    }
  }

  // ----- one job -----

  function showJob(id) {
    fromTemplate("job-template");
    $("job-id").textContent = id;
    const page = { id, drawn: null, previous: null, chart: null, specText: null, last: null };
    $("per-subtask").addEventListener("change", () => page.last && drawSubtasks(page));
    $("action-savepoint").addEventListener("click", () =>
      action(page, "Taking a savepoint (it waits for a checkpoint)…", () =>
        api("POST", `/v1/jobs/${id}/savepoints`).then((r) => "Savepoint written to " + r.path),
      ),
    );
    $("action-stop").addEventListener("click", () =>
      action(page, "Stopping with a savepoint…", () =>
        api("POST", `/v1/jobs/${id}/stop`).then(
          (r) => "Stopped; savepoint in " + r.savepoint + " (resume it with the button above)",
        ),
      ),
    );
    const cancel = $("action-cancel");
    cancel.addEventListener("click", () => {
      // Two clicks: a cancelled job loses what it has not checkpointed.
      if (cancel.dataset.armed !== "yes") {
        cancel.dataset.armed = "yes";
        cancel.textContent = "Click again to cancel";
        setTimeout(() => {
          cancel.dataset.armed = "";
          cancel.textContent = "Cancel";
        }, 4000);
        return;
      }
      cancel.dataset.armed = "";
      cancel.textContent = "Cancel";
      action(page, "Cancelling…", () =>
        api("DELETE", `/v1/jobs/${id}`).then((r) => "The job is " + r.state),
      );
    });
    $("action-restore").addEventListener("click", () =>
      action(page, "Submitting the job again from its savepoint…", () =>
        api("POST", `/v1/jobs/${id}/resume`, {}).then((r) => {
          location.hash = "#/jobs/" + r.id;
          return "Resumed as job " + r.id;
        }),
      ),
    );
    every(async () => {
      try {
        const status = await api("GET", `/v1/jobs/${id}`);
        connection.textContent = "";
        logout.hidden = false;
        render(page, status);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          stop();
          view.replaceChildren(el("p", { class: "error" }, e.message));
          return;
        }
        failed(e);
      }
    });
  }

  async function action(page, waiting, run) {
    const result = $("action-result");
    result.hidden = false;
    result.classList.remove("error");
    result.textContent = waiting;
    for (const b of document.querySelectorAll(".actions button")) b.disabled = true;
    try {
      result.textContent = await run();
    } catch (e) {
      if (e instanceof AuthError) return showLogin();
      result.classList.add("error");
      result.textContent = e.message;
    } finally {
      if (page.last) buttons(page.last);
    }
  }

  function buttons(status) {
    const running = status.state === "RUNNING";
    const ended = ["FINISHED", "FAILED", "CANCELLED", "STOPPED"].includes(status.state);
    $("action-savepoint").disabled = !running;
    $("action-stop").disabled = !running;
    $("action-cancel").disabled = ended;
    const resumable = ended && Boolean(status.savepoint);
    $("action-restore").hidden = !resumable;
    $("action-restore").disabled = !resumable;
  }

  // Rates from two successive answers; null until there are two of the same attempt.
  function rate(now, before, key, seconds) {
    if (!before || seconds <= 0 || now[key] < before[key]) return null;
    return (now[key] - before[key]) / seconds;
  }

  function figures(page, status) {
    const before = page.previous;
    const seconds = before ? (status.sampled_at_ms - before.sampled_at_ms) / 1000 : 0;
    const same = before && before.started_at_ms === status.started_at_ms;
    const byIndex = new Map();
    for (const s of status.operators || []) {
      const old = same ? before.stages.get(s.index) : null;
      const parallelism = Math.max(1, (s.subtasks || []).length);
      const waited = rate(s, old, "backpressure_ms", seconds);
      byIndex.set(s.index, {
        stage: s,
        inRate: rate(s, old, "records_in", seconds),
        outRate: rate(s, old, "records_out", seconds),
        backpressure: backpressureLevel(waited === null ? null : waited / 1000 / parallelism),
        lag: s.watermark_ms === null ? null : status.sampled_at_ms - s.watermark_ms,
        subtasks: (s.subtasks || []).map((t) => {
          const oldT = old && old.subtasks ? old.subtasks[t.index] : null;
          const w = rate(t, oldT, "backpressure_ms", seconds);
          return {
            t,
            inRate: rate(t, oldT, "records_in", seconds),
            outRate: rate(t, oldT, "records_out", seconds),
            backpressure: backpressureLevel(w === null ? null : w / 1000),
            lag: t.watermark_ms === null ? null : status.sampled_at_ms - t.watermark_ms,
          };
        }),
      });
    }
    page.previous = {
      sampled_at_ms: status.sampled_at_ms,
      started_at_ms: status.started_at_ms,
      stages: new Map((status.operators || []).map((s) => [s.index, s])),
    };
    return byIndex;
  }

  function render(page, status) {
    page.last = status;
    const state = $("job-state");
    state.textContent = status.state;
    state.className = "state " + status.state;
    const parts = [];
    if (status.uptime_ms !== null) parts.push("up " + duration(status.uptime_ms));
    parts.push("restarts " + status.restarts);
    if (status.state === "RUNNING") parts.push(count(status.records_per_sec) + " records/s read");
    if (status.checkpoint && status.checkpoint.completed !== null)
      parts.push(status.checkpoint.completed + " checkpoints this attempt");
    if (status.savepoint) parts.push("savepoint " + status.savepoint);
    $("job-summary").textContent = parts.join(" · ");
    buttons(status);
    page.figures = figures(page, status);
    if (status.plan && page.drawn !== JSON.stringify(status.plan)) {
      drawGraph(status.plan);
      page.drawn = JSON.stringify(status.plan);
    }
    updateGraph(page.figures);
    drawSubtasks(page);
    drawCheckpoints(page, status.checkpoint_history || []);
    drawFailures(status.failures || []);
    const spec = JSON.stringify(status.spec, null, 2);
    if (spec !== page.specText) {
      $("job-spec").textContent = spec;
      page.specText = spec;
    }
  }

  // The dataflow: one node per stage (its source, chained operators and sink), one edge per
  // exchange, laid out left to right by dagre.
  function drawGraph(plan) {
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 28, ranksep: 80, marginx: 12, marginy: 12 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const s of plan.stages) {
      const lines = [`${s.name}  ×${s.parallelism}`];
      if (s.source) lines.push("source: " + s.source);
      for (const op of s.operators) lines.push("→ " + op);
      if (s.sink) lines.push("sink: " + s.sink);
      const metrics = ["in – /s · out – /s", "backpressure –", "watermark –"];
      const widest = Math.max(...lines.concat(metrics, ["watermark 00:00:00 (lag 000.0 s)"]).map((l) => l.length));
      g.setNode(String(s.index), {
        width: widest * 7 + 24,
        height: (lines.length + metrics.length) * 16 + 20,
        stage: s,
        lines,
      });
      for (const input of s.inputs) {
        g.setEdge(String(input.from), String(s.index), {
          label: input.exchange,
          width: input.exchange.length * 6.5,
          height: 14,
        });
      }
    }
    dagre.layout(g);
    const { width, height } = g.graph();
    const root = svg("svg", { width: Math.ceil(width), height: Math.ceil(height), id: "graph-svg" });
    const defs = svg("defs");
    const marker = svg("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
      markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse",
    });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
    defs.append(marker);
    root.append(defs);
    for (const e of g.edges()) {
      const edge = g.edge(e);
      const group = svg("g", { class: "edge" });
      const d = edge.points.map((p, i) => (i ? "L" : "M") + p.x.toFixed(1) + "," + p.y.toFixed(1)).join(" ");
      group.append(svg("path", { d, "marker-end": "url(#arrow)" }));
      const label = svg("text", { x: edge.x, y: edge.y - 4, "text-anchor": "middle" });
      label.textContent = edge.label;
      group.append(label);
      root.append(group);
    }
    for (const v of g.nodes()) {
      const node = g.node(v);
      const group = svg("g", {
        class: "node",
        "data-stage": v,
        transform: `translate(${(node.x - node.width / 2).toFixed(1)},${(node.y - node.height / 2).toFixed(1)})`,
      });
      group.append(svg("rect", { width: node.width, height: node.height }));
      let y = 20;
      node.lines.forEach((line, i) => {
        const t = svg("text", { x: 12, y, class: i === 0 ? "title" : "op" });
        t.textContent = line;
        group.append(t);
        y += 16;
      });
      for (const cls of ["rates", "bp", "wm"]) {
        const t = svg("text", { x: 12, y: y + 4, class: cls });
        t.textContent = "–";
        group.append(t);
        y += 16;
      }
      root.append(group);
    }
    $("graph").replaceChildren(root);
  }

  function watermarkText(ms, lag) {
    if (ms === null || ms === undefined) return "watermark –";
    return `watermark ${time(ms)} (lag ${duration(Math.max(0, lag))})`;
  }

  function updateGraph(byIndex) {
    for (const [index, f] of byIndex) {
      const node = document.querySelector(`#graph-svg .node[data-stage="${index}"]`);
      if (!node) continue;
      node.querySelector(".rates").textContent =
        `in ${count(f.inRate)} /s · out ${count(f.outRate)} /s`;
      const bp = node.querySelector(".bp");
      bp.textContent = "backpressure " + f.backpressure;
      bp.setAttribute("class", "bp bp-" + f.backpressure);
      node.setAttribute("class", "node bp-" + f.backpressure);
      node.querySelector(".wm").textContent = watermarkText(f.stage.watermark_ms, f.lag);
    }
  }

  function drawSubtasks(page) {
    const box = $("subtasks");
    box.hidden = !$("per-subtask").checked;
    if (box.hidden || !page.figures) return;
    const names = new Map(((page.last.plan || {}).stages || []).map((s) => [s.index, s.name]));
    const sections = [];
    for (const [index, f] of page.figures) {
      sections.push(el("h3", {}, `${names.get(index) || f.stage.name} (stage ${index})`));
      const rows = f.subtasks.map((s) =>
        el(
          "tr",
          { "data-subtask": `${index}-${s.t.index}` },
          el("td", {}, String(s.t.index)),
          el("td", { class: "num" }, count(s.t.records_in)),
          el("td", { class: "num" }, count(s.inRate)),
          el("td", { class: "num" }, count(s.t.records_out)),
          el("td", { class: "num" }, count(s.outRate)),
          el("td", {}, s.backpressure),
          el("td", {}, watermarkText(s.t.watermark_ms, s.lag).replace("watermark ", "")),
        ),
      );
      sections.push(
        el(
          "table",
          { class: "subtasks" },
          el(
            "thead",
            {},
            el(
              "tr",
              {},
              ...["Subtask", "Records in", "In/s", "Records out", "Out/s", "Backpressure", "Watermark"].map((h) =>
                el("th", {}, h),
              ),
            ),
          ),
          el("tbody", {}, ...rows),
        ),
      );
    }
    box.replaceChildren(...sections);
  }

  function drawCheckpoints(page, history) {
    $("checkpoints-empty").hidden = history.length > 0;
    const rows = history
      .slice()
      .reverse()
      .map((c) =>
        el(
          "tr",
          { "data-checkpoint": String(c.id), class: c.status },
          el("td", {}, String(c.id) + (c.savepoint ? " (savepoint)" : "")),
          el("td", { title: c.reason || "" }, c.status),
          el("td", {}, time(c.triggered_at_ms)),
          el("td", { class: "num" }, duration(c.duration_ms)),
          el("td", { class: "num" }, duration(c.alignment_ms)),
          el("td", { class: "num" }, c.status === "COMPLETED" ? bytes(c.state_bytes) : "–"),
          el("td", { class: "num" }, c.status === "COMPLETED" ? bytes(c.new_bytes) : "–"),
        ),
      );
    document.querySelector("#checkpoint-table tbody").replaceChildren(...rows);
    const completed = history.filter((c) => c.status === "COMPLETED");
    if (completed.length === 0) return;
    const data = [
      completed.map((c) => c.triggered_at_ms / 1000),
      completed.map((c) => c.duration_ms),
      completed.map((c) => c.alignment_ms),
      completed.map((c) => c.state_bytes),
    ];
    if (!page.chart) {
      page.chart = new uPlot(
        {
          width: Math.min(1000, $("checkpoint-chart").clientWidth || 800),
          height: 180,
          series: [
            {},
            { label: "duration (ms)", stroke: "#2f5fd0", scale: "ms" },
            { label: "alignment (ms)", stroke: "#c98a00", scale: "ms" },
            { label: "size", stroke: "#1f8a4c", scale: "bytes", value: (_, v) => bytes(v) },
          ],
          axes: [
            {},
            { scale: "ms", label: "ms" },
            { scale: "bytes", side: 1, grid: { show: false }, values: (_, ticks) => ticks.map(bytes) },
          ],
        },
        data,
        $("checkpoint-chart"),
      );
    } else {
      page.chart.setData(data);
    }
  }

  function drawFailures(failures) {
    $("failures-empty").hidden = failures.length > 0;
    const items = failures
      .slice()
      .reverse()
      .map((f) =>
        el("li", {}, el("div", {}, `attempt ${f.attempt}, ${new Date(f.at_ms).toLocaleString()}`), el("div", { class: "cause" }, f.cause)),
      );
    $("failures").replaceChildren(...items);
  }

  // ----- routing: #/ is the job list, #/jobs/ID a job -----

  function route() {
    stop();
    const match = location.hash.match(/^#\/jobs\/([^/]+)$/);
    if (match) showJob(decodeURIComponent(match[1]));
    else showJobs();
  }

  window.addEventListener("hashchange", route);
  route();
})();
