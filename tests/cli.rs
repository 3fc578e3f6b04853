//! The `oxflow` binary as our acceptance checks run it.

mod common;

use common::{committed_lines, free_port, oxflow, summary};

#[test]
fn nexmark_prints_one_json_summary_line_last() {
    let out = oxflow(&[
        "nexmark",
        "--query",
        "q5",
        "--events",
        "200000",
        "--workers",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["query"], "q5");
    assert_eq!(last["events"], 200_000);
    assert_eq!(last["workers"], 2);
    for key in ["seconds", "events_per_sec", "cpu_seconds"] {
        assert!(last[key].as_f64().unwrap() > 0.0, "{key}");
    }
    assert!(last["output_rows"].as_u64().unwrap() > 0);
}

#[test]
fn file_sink_writes_visible_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!("file:{}", dir.path().display());
    let out = oxflow(&[
        "nexmark",
        "--query",
        "q7",
        "--events",
        "3000000",
        "--workers",
        "2",
        "--sink",
        &sink,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = 0;
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            !name.starts_with('.'),
            "no in-progress file is left: {name}"
        );
        let text = std::fs::read_to_string(dir.path().join(&name)).unwrap();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["window_start"].as_str().unwrap().ends_with(".000Z"));
            lines += 1;
        }
    }
    assert!(
        lines >= 2,
        "3 M events at 100 K/s is 30 s: at least two 10 s windows"
    );
}

#[test]
fn bad_arguments_get_clear_errors() {
    let out = oxflow(&["nexmark", "--query", "q99"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown query `q99`"));
    let out = oxflow(&["nexmark", "--query", "q0", "--sink", "kafka"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown sink `kafka`"));
    let out = oxflow(&["nexmark", "--query", "q0", "--workers", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--workers must be at least 1"));
    let out = oxflow(&["nexmark", "--query", "q0", "--batch-size", "0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch size must be positive"));
}

#[test]
fn checkpointed_runs_report_their_checkpoints_and_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let chk = tmp.path().join("chk");
    let out = tmp.path().join("out");
    let args = |restore: bool| {
        let mut a = vec![
            "nexmark".to_string(),
            "--query=q5".into(),
            "--events=300000".into(),
            "--rate=600000".into(),
            "--workers=2".into(),
            format!("--sink=file:{}", out.display()),
            format!("--checkpoint-dir={}", chk.display()),
            "--checkpoint-interval-ms=50".into(),
        ];
        if restore {
            a.push("--restore=latest".into());
        }
        a
    };
    let run = |restore| {
        let a = args(restore);
        oxflow(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    // Nothing to restore yet: the run says so and starts from the beginning.
    let first = run(true);
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("starting from the beginning"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let first_summary = summary(&first);
    assert!(
        first_summary["checkpoints"].as_u64().unwrap() >= 3,
        "{first_summary}"
    );
    assert!(
        first_summary["last_checkpoint_ms"].as_u64().is_some(),
        "{first_summary}"
    );
    assert!(
        first_summary["state_bytes"].as_u64().unwrap() > 0,
        "{first_summary}"
    );
    assert_eq!(first_summary["restored_from"], serde_json::Value::Null);
    // The job finished: restoring its last checkpoint only commits, and runs nothing.
    let again = summary(&run(true));
    assert_eq!(again["already_finished"], true, "{again}");
    assert!(again["restored_from"].as_u64().is_some(), "{again}");
}

#[test]
fn a_corrupt_checkpoint_is_named_and_passed_over() {
    let tmp = tempfile::tempdir().unwrap();
    let chk = tmp.path().join("chk");
    let chk_arg = format!("--checkpoint-dir={}", chk.display());
    let base = [
        "nexmark",
        "--query=q11",
        "--events=200000",
        "--rate=400000",
        "--workers=1",
        "--checkpoint-interval-ms=50",
        &chk_arg,
    ];
    summary(&oxflow(&base));
    let mut complete: Vec<std::path::PathBuf> = std::fs::read_dir(&chk)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_manifest.json").exists())
        .collect();
    complete.sort();
    let newest = complete.last().unwrap().clone();
    // Flip one byte of the newest manifest's body.
    let manifest = newest.join("_manifest.json");
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[5] ^= 0x20;
    std::fs::write(&manifest, bytes).unwrap();
    let out = oxflow(&[
        "nexmark",
        "--query=q11",
        "--events=200000",
        "--workers=1",
        &format!("--restore={}", newest.display()),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&newest.display().to_string()) && err.contains("checksum"),
        "{err}"
    );
    // `latest` passes over it, with a warning, to the one before.
    let mut latest = base.to_vec();
    latest.push("--restore=latest");
    let out = oxflow(&latest);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("skipping checkpoint"), "{err}");
    let out_summary = summary(&out);
    let previous = complete[complete.len() - 2]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("chk-")
        .parse::<u64>()
        .unwrap();
    assert_eq!(
        out_summary["restored_from"].as_u64(),
        Some(previous),
        "{out_summary}"
    );
}

#[test]
fn checkpoint_arguments_are_checked() {
    let out = oxflow(&["nexmark", "--query", "q0", "--restore", "latest"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--restore latest needs --checkpoint-dir")
    );
    let out = oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--restore",
        "/nonexistent/chk-1",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/chk-1"));
    let out = oxflow(&["nexmark", "--query", "q5", "--state-memory-budget-mb", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("--state-memory-budget-mb must be at least 1"));
}

#[test]
fn window_state_in_rocksdb_gives_the_same_output_as_in_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let sink = format!("--sink=file:{}", tmp.path().join(name).display());
        let mut args = vec!["nexmark", "--query", "q5", "--events", "300000", &sink];
        args.extend_from_slice(extra);
        let out = oxflow(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        committed_lines(&tmp.path().join(name))
    };
    let in_memory = run("memory", &[]);
    assert!(!in_memory.is_empty());
    assert_eq!(
        run("rocksdb", &["--state-memory-budget-mb", "1"]),
        in_memory
    );
}

#[test]
fn bids_written_to_files_and_read_back_give_the_generators_results() {
    let tmp = tempfile::tempdir().unwrap();
    let bids = tmp.path().join("bids");
    let gen = common::ORDERED_GENERATOR;
    let file = |dir: &std::path::Path| format!("file:{}", dir.display());
    summary(&oxflow(
        &[&gen[..], &["--query", "q0", "--sink", &file(&bids)]].concat(),
    ));
    for query in ["q5", "q11"] {
        let (want, got) = (
            tmp.path().join(format!("{query}-gen")),
            tmp.path().join(query),
        );
        summary(&oxflow(
            &[&gen[..], &["--query", query, "--sink", &file(&want)]].concat(),
        ));
        let from_files = summary(&oxflow(&[
            "nexmark",
            "--query",
            query,
            "--workers",
            "2",
            "--source",
            &file(&bids),
            "--sink",
            &file(&got),
        ]));
        assert!(
            from_files["events"].as_u64().unwrap() > 200_000,
            "{from_files}"
        );
        let (want, got) = (
            common::committed_lines(&want),
            common::committed_lines(&got),
        );
        assert!(!want.is_empty());
        assert_eq!(got, want, "{query} from files differs from the generator");
    }
    let out = oxflow(&["nexmark", "--query", "q0", "--source", &file(tmp.path())]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no part-* file"));

    // The same bids as Parquet, in files rolled at 1 MiB and committed at checkpoints, read
    // back (Parquet by the files' extension) give the same results.
    let parquet = tmp.path().join("parquet");
    let chk = tmp.path().join("chk");
    let written = summary(&oxflow(
        &[
            &gen[..],
            &[
                "--query",
                "q0",
                "--sink",
                &format!("{}?format=parquet&max-file-mb=1", file(&parquet)),
                "--checkpoint-dir",
                &chk.display().to_string(),
                "--checkpoint-interval-ms",
                "100",
            ],
        ]
        .concat(),
    ));
    let files: Vec<_> = std::fs::read_dir(&parquet)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.len() > 1
            && files
                .iter()
                .all(|f| f.starts_with("part-") && f.ends_with(".parquet")),
        "{files:?}"
    );
    let want = tmp.path().join("q5-gen");
    let got = tmp.path().join("q5-parquet");
    let from_parquet = summary(&oxflow(&[
        "nexmark",
        "--query",
        "q5",
        "--workers",
        "2",
        "--source",
        &file(&parquet),
        "--sink",
        &file(&got),
    ]));
    assert_eq!(
        from_parquet["events"], written["output_rows"],
        "{from_parquet}"
    );
    assert_eq!(
        common::committed_lines(&got),
        common::committed_lines(&want),
        "q5 from Parquet differs from the generator"
    );
    let bad = oxflow(&[
        "nexmark",
        "--query",
        "q0",
        "--sink",
        &format!("{}?format=orc", file(&got)),
    ]);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("unknown format `orc`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn query_all_runs_every_query_with_a_line_each() {
    let out = oxflow(&[
        "nexmark",
        "--query",
        "all",
        "--events",
        "100000",
        "--workers",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queries: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["query"].to_string())
        .collect();
    assert_eq!(
        queries,
        [
            "\"q0\"", "\"q1\"", "\"q2\"", "\"q3\"", "\"q4\"", "\"q5\"", "\"q7\"", "\"q8\"",
            "\"q11\""
        ]
    );
    // Bids from files: the join queries need people and auctions, so `all` skips them and
    // asking for one is a clear error.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("part-0.jsonl"),
        r#"{"auction":1000,"bidder":1001,"price":100,"date_time":"2024-01-01T00:00:00.000Z","extra":""}"#,
    )
    .unwrap();
    let source = format!("file:{}", tmp.path().display());
    let out = oxflow(&["nexmark", "--query", "all", "--source", &source]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6);
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipping q3, q4, q8"));
    let out = oxflow(&["nexmark", "--query", "q3", "--source", &source]);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("q3 reads the Auction table, and this input has bids only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = oxflow(&["nexmark", "--query", "all", "--sink", "file:/tmp/x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("use blackhole or stdout"));
}

#[test]
#[allow(clippy::disallowed_methods)] // waits on a real server process
fn the_server_commands_submit_watch_and_refuse_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let token = tmp.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args([
            "server",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .arg("--token-file")
        .arg(&token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let auth = [
        "--server",
        url.as_str(),
        "--token-file",
        token.to_str().unwrap(),
    ];
    let with_auth = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(auth);
        oxflow(&all)
    };
    let started = std::time::Instant::now();
    while !with_auth(&["list"]).status.success() {
        assert!(
            started.elapsed().as_secs() < 30,
            "the server did not come up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let spec = common::repo_path("examples/jobs/nexmark_q7.json");
    let spec = spec.to_str().unwrap();
    let out = with_auth(&["submit", spec]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    loop {
        let out = with_auth(&["status", &id]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if status["state"] == "FINISHED" {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "{status}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let listed = String::from_utf8_lossy(&with_auth(&["list"]).stdout).to_string();
    assert!(listed.contains(&id), "{listed}");
    let out = with_auth(&["stop", &id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("409"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = with_auth(&["cancel", "nope"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404: no job `nope`"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = oxflow(&["list", "--server", &url]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token may come from the environment instead of a file.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(["list", "--server", &url])
        .env("OXFLOW_TOKEN", "t0ken")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = tmp.path().join("bad.json");
    std::fs::write(&bad, r#"{"stream": {}}"#).unwrap();
    let out = with_auth(&["submit", bad.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is not a job spec"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// A spec file in `dir`: bid counts per auction in 2 s windows, into files under `dir/out`.
fn spec_file(dir: &std::path::Path, events: u64, checkpoints: bool) -> std::path::PathBuf {
    let mut spec = serde_json::json!({
        "parallelism": 2,
        "stream": {
            "source": { "nexmark": { "table": "bid", "events": events, "event_rate": 10000, "seed": 3 } },
            "watermarks": { "column": "date_time", "delay_ms": 1000 },
            "steps": [ { "window": {
                "keys": ["auction"],
                "window": { "tumbling": { "size_ms": 2000 } },
                "compute": { "aggregate": ["count(price) AS bids"] } } } ]
        },
        "sink": { "file": { "path": dir.join("out") } }
    });
    if checkpoints {
        spec["checkpoints"] = serde_json::json!({ "interval_ms": 50 });
    }
    let path = dir.join("job.json");
    std::fs::write(&path, spec.to_string()).unwrap();
    path
}

#[test]
fn run_executes_a_spec_embedded_and_restores_from_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(dir.path(), 300_000, true);
    let checkpoints = dir.path().join("checkpoints");
    let args = [
        "run",
        spec.to_str().unwrap(),
        "--checkpoint-dir",
        checkpoints.to_str().unwrap(),
    ];
    let first = summary(&oxflow(&args));
    assert_eq!(first["job"], "job");
    // The sources' records: the bids among the 300 000 events (46 of every 50).
    assert_eq!(first["events"], 276_000, "{first}");
    assert_eq!(first["workers"], 2);
    assert!(first["checkpoints"].as_u64().unwrap() >= 1, "{first}");
    let lines = committed_lines(&dir.path().join("out"));
    assert!(!lines.is_empty());
    // Without checkpoints (output committed at the end) the spec gives the same output.
    let again = dir.path().join("again");
    std::fs::create_dir_all(&again).unwrap();
    summary(&oxflow(&[
        "run",
        spec_file(&again, 300_000, false).to_str().unwrap(),
    ]));
    assert_eq!(committed_lines(&again.join("out")), lines);
    // Restoring the latest checkpoint of a finished job finds it finished.
    let restored = summary(&oxflow(&[
        args[0],
        args[1],
        args[2],
        args[3],
        "--restore",
        "latest",
    ]));
    assert_eq!(restored["already_finished"], true, "{restored}");
    assert_eq!(committed_lines(&dir.path().join("out")), lines);
}

#[test]
fn validate_prints_the_plan_or_says_what_is_wrong_and_where() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(dir.path(), 1000, false);
    let out = oxflow(&["validate", spec.to_str().unwrap()]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["subtasks"], 4);
    let stages = answer["plan"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2);
    assert_eq!(stages[1]["inputs"][0]["exchange"], "hash(auction)");
    // It builds the job (the file sink makes its directory) but runs nothing.
    assert!(
        committed_lines(&dir.path().join("out")).is_empty(),
        "validate writes no output"
    );
    // Not JSON, not a spec, not a job: each says which file and what.
    std::fs::write(dir.path().join("bad.json"), "{\"stream\": ").unwrap();
    std::fs::write(dir.path().join("unknown.json"), "{\"strem\": {}}").unwrap();
    let mut zero: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&spec).unwrap()).unwrap();
    zero["stream"]["steps"][0]["window"]["window"]["tumbling"]["size_ms"] = 0.into();
    std::fs::write(dir.path().join("zero.json"), zero.to_string()).unwrap();
    for (file, said) in [
        ("bad.json", "EOF"),
        ("unknown.json", "strem"),
        ("zero.json", "does not make a job"),
        ("missing.json", "reading"),
    ] {
        let path = dir.path().join(file);
        let out = oxflow(&["validate", path.to_str().unwrap()]);
        assert!(!out.status.success(), "{file}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(file) && stderr.contains(said),
            "{file}: {stderr}"
        );
    }
    // A reader that has gone (`oxflow validate | head`) ends the output without a panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(["validate", spec.to_str().unwrap()])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    // run refuses a checkpoint directory the spec would not use.
    let out = oxflow(&["run", spec.to_str().unwrap(), "--checkpoint-dir", "/tmp/x"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("sets no `checkpoints`"));
}

/// `oxflow` with no AWS settings in its environment, as on a machine with no S3 set up.
fn oxflow_without_aws(args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_oxflow"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command.args(args).output().expect("the binary runs")
}

#[test]
fn an_s3_job_validates_offline_and_runs_only_with_credentials() {
    // Its columns and format are given, so its files are listed when it starts: validate
    // reaches no server (here there is none).
    let spec = common::repo_path("examples/jobs/s3_readings_to_parquet.json");
    let spec = spec.to_str().unwrap();
    let out = oxflow_without_aws(&["validate", spec]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["valid"], true);
    // Running it asks for credentials, and names the server, instead of reaching for the
    // cloud's instance metadata service.
    let out = oxflow_without_aws(&["run", spec]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no credentials")
            && stderr.contains("AWS_ACCESS_KEY_ID")
            && stderr.contains("http://127.0.0.1:9014")
            && !stderr.contains("169.254"),
        "{stderr}"
    );
}

#[test]
fn progress_shows_on_a_terminal_and_stays_off_a_pipe() {
    let args = [
        "nexmark",
        "--query",
        "q1",
        "--events",
        "3000000",
        "--workers",
        "2",
        "--rate",
        "1500000",
    ];
    // A pipe: stderr stays empty.
    let piped = oxflow(&args);
    assert!(piped.status.success());
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !stderr.contains("events/s") && !stderr.contains("/s ·"),
        "{stderr}"
    );
    // A terminal (util-linux `script` gives the command one): the progress line is drawn.
    let command = format!("{} {}", env!("CARGO_BIN_EXE_oxflow"), args.join(" "));
    let tty = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("util-linux script runs");
    assert!(tty.status.success());
    let screen = String::from_utf8_lossy(&tty.stdout);
    assert!(
        screen.contains("events ·") && screen.contains("/s ·") && screen.contains("checkpoints"),
        "{screen}"
    );
    // The summary still ends the output.
    assert!(screen.trim_end().ends_with('}'), "{screen}");
}
