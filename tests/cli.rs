//! The `oxflow` binary as our acceptance checks run it.

use std::process::Command;

fn oxflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_oxflow"))
        .args(args)
        .output()
        .expect("the binary runs")
}

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
