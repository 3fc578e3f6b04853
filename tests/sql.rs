//! Flink SQL on Oxflow: Nexmark's own DDL and queries in Flink's dialect give exactly the
//! output of the same queries written with the Rust API, straight, checkpointed, and killed
//! then restored at another parallelism; errors name the construct and its place.

use datafusion::functions_aggregate::expr_fn::{count, max};
use oxflow::prelude::*;
use oxflow::sql::{SqlOutput, SqlSession};
use std::time::Duration;
mod common;

/// Nexmark's DDL as examples/sql ships it, on `events` events at 100 per second of event
/// time (2,000 events: 20 s, several windows and sessions).
fn ddl(events: u64, rate_limit: Option<u64>) -> String {
    let ddl = std::fs::read_to_string(common::repo_path("examples/sql/nexmark-ddl.sql")).unwrap();
    let limit = rate_limit
        .map(|r| format!(",\n    'rate-limit' = '{r}'"))
        .unwrap_or_default();
    ddl.replace(
        "'events.num' = '10000000'",
        &format!("'events.num' = '{events}'"),
    )
    .replace("'100000'", "'100'")
    .replace(
        "'bid.proportion' = '46'",
        &format!("'bid.proportion' = '46'{limit}"),
    )
}

/// The generator's tables as the Rust API reads them, with the same configuration.
fn table(table: NexmarkTable) -> Stream {
    let config = NexmarkConfig {
        events: Some(EVENTS.with(|e| e.get())),
        event_rate: 100,
        ..Default::default()
    };
    Pipeline::new()
        .with_parallelism(2)
        .source(NexmarkSource::try_new(config, table).unwrap())
        .with_watermarks(oxflow::nexmark::watermarks())
        .unwrap()
}

thread_local! {
    /// The events of the run the Rust API's reference reads (as the SQL's DDL says).
    static EVENTS: std::cell::Cell<u64> = const { std::cell::Cell::new(2_000) };
}

/// A Nexmark query of the Rust API on the same generator.
fn rust_query(query: &str) -> Stream {
    let config = NexmarkConfig {
        events: Some(EVENTS.with(|e| e.get())),
        event_rate: 100,
        ..Default::default()
    };
    let pipeline = Pipeline::new().with_parallelism(2);
    oxflow::nexmark::apply(
        query,
        oxflow::nexmark::Input::generator(pipeline, config, oxflow::nexmark::watermarks()),
    )
    .unwrap()
}

/// Bids per auction per hopping window of 10 s every 2 s (the inner part of q5).
fn hop_counts() -> Stream {
    table(NexmarkTable::Bid)
        .key_by(["auction"])
        .window(WindowSpec::hopping(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .aggregate([count(col("auction")).alias("num")])
        .unwrap()
}

/// One case: a sink table's columns, the SQL that fills it, and the Rust API's version.
struct Case {
    name: &'static str,
    columns: &'static str,
    query: String,
    rust: fn() -> Stream,
}

/// The query of `examples/sql/<name>.sql` (what follows its `INSERT INTO table`), so that the
/// examples are what these tests run.
fn example(name: &str) -> String {
    let path = common::repo_path(&format!("examples/sql/{name}.sql"));
    let text = std::fs::read_to_string(path).unwrap();
    let insert = text.find("INSERT INTO").expect("an INSERT INTO") + "INSERT INTO".len();
    let rest = text[insert..].trim_start();
    let after_table = rest
        .find(char::is_whitespace)
        .expect("a query after the table");
    rest[after_table..].trim().trim_end_matches(';').to_string()
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "q0",
            columns: "auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3), extra VARCHAR",
            query: example("q0"),
            rust: || oxflow::nexmark::apply("q0", oxflow::nexmark::Input::bids(table(NexmarkTable::Bid))).unwrap(),
        },
        Case {
            name: "q1",
            columns: "auction BIGINT, bidder BIGINT, price DOUBLE, date_time TIMESTAMP(3)",
            query: example("q1"),
            rust: || oxflow::nexmark::apply("q1", oxflow::nexmark::Input::bids(table(NexmarkTable::Bid))).unwrap(),
        },
        Case {
            name: "q2",
            columns: "auction BIGINT, price BIGINT",
            query: example("q2"),
            rust: || oxflow::nexmark::apply("q2", oxflow::nexmark::Input::bids(table(NexmarkTable::Bid))).unwrap(),
        },
        Case {
            name: "q11",
            columns: "bidder BIGINT, bid_count BIGINT, window_start TIMESTAMP(3), window_end TIMESTAMP(3)",
            // Nexmark's q11 as published.
            query: example("q11"),
            rust: || oxflow::nexmark::apply("q11", oxflow::nexmark::Input::bids(table(NexmarkTable::Bid))).unwrap(),
        },
        Case {
            name: "q3",
            columns: "name VARCHAR, city VARCHAR, state VARCHAR, id BIGINT",
            // Nexmark's q3 as published: a regular join.
            query: example("q3"),
            rust: || rust_query("q3"),
        },
        Case {
            name: "q5",
            columns: "window_start TIMESTAMP(3), window_end TIMESTAMP(3), auction BIGINT, num BIGINT",
            // Nexmark's q5 as published (the hop counts joined with their windows' maximum).
            query: example("q5"),
            rust: || rust_query("q5"),
        },
        Case {
            name: "q7",
            columns: "window_start TIMESTAMP(3), window_end TIMESTAMP(3), auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3)",
            // The window maximum joined back to the bids of its window.
            query: example("q7"),
            rust: || rust_query("q7"),
        },
        Case {
            name: "q8",
            columns: "id BIGINT, name VARCHAR, window_start TIMESTAMP(3)",
            // Nexmark's q8 as published.
            query: example("q8"),
            rust: || rust_query("q8"),
        },
        Case {
            name: "hop window TVF",
            columns: "window_start TIMESTAMP(3), window_end TIMESTAMP(3), auction BIGINT, num BIGINT",
            query: "SELECT window_start, window_end, auction, COUNT(*) AS num
                    FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
                    GROUP BY auction, window_start, window_end".to_string(),
            rust: || {
                hop_counts()
            },
        },
        Case {
            name: "cascaded windows",
            columns: "starttime TIMESTAMP(3), endtime TIMESTAMP(3), maxn BIGINT",
            // The inner half of Nexmark's q5: per window, the most bids on one auction.
            query: "SELECT CountBids.starttime, CountBids.endtime, MAX(CountBids.num) AS maxn
                    FROM (
                      SELECT COUNT(*) AS num, window_start AS starttime, window_end AS endtime
                      FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
                      GROUP BY auction, window_start, window_end
                    ) AS CountBids
                    GROUP BY CountBids.starttime, CountBids.endtime".to_string(),
            rust: || {
                hop_counts()
                    .window_all(WindowSpec::Inherited)
                    .aggregate([max(col("num")).alias("maxn")])
                    .unwrap()
                    .select([
                        col("window_start").alias("starttime"),
                        col("window_end").alias("endtime"),
                        col("maxn"),
                    ])
                    .unwrap()
            },
        },
        Case {
            name: "legacy tumble with HAVING",
            columns: "ws TIMESTAMP(3), top BIGINT, bids BIGINT",
            query: "SELECT TUMBLE_START(dateTime, INTERVAL '10' SECOND) AS ws, MAX(price) AS top, COUNT(*) AS bids
                    FROM bid WHERE price > 1000
                    GROUP BY TUMBLE(dateTime, INTERVAL '10' SECOND)
                    HAVING COUNT(*) > 10".to_string(),
            rust: || {
                table(NexmarkTable::Bid)
                    .filter(col("price").gt(lit(1000)))
                    .unwrap()
                    .window_all(WindowSpec::tumbling(Duration::from_secs(10)))
                    .aggregate([max(col("price")).alias("top"), count(col("price")).alias("bids")])
                    .unwrap()
                    .filter(col("bids").gt(lit(10)))
                    .unwrap()
                    .select([col("window_start").alias("ws"), col("top"), col("bids")])
                    .unwrap()
            },
        },
        Case {
            name: "union all of people and sellers",
            columns: "id BIGINT, city VARCHAR",
            query: "SELECT id, city FROM person WHERE state = 'OR'
                    UNION ALL
                    SELECT seller, CAST(category AS VARCHAR) FROM auction WHERE category = 10".to_string(),
            rust: || {
                let people = table(NexmarkTable::Person)
                    .filter(col("state").eq(lit("OR")))
                    .unwrap()
                    .select([col("id"), col("city")])
                    .unwrap();
                let sellers = table(NexmarkTable::Auction)
                    .filter(col("category").eq(lit(10)))
                    .unwrap()
                    .select([
                        col("seller").alias("id"),
                        datafusion::prelude::cast(col("category"), datafusion::arrow::datatypes::DataType::Utf8).alias("city"),
                    ])
                    .unwrap();
                people.union(sellers).unwrap()
            },
        },
    ]
}

/// The script of `case` writing into JSON files under `out`.
fn script(
    case: &Case,
    out: &std::path::Path,
    settings: &str,
    (events, rate_limit): (u64, Option<u64>),
) -> String {
    format!(
        "{}\n{settings}\nCREATE TABLE sink ({}) WITH ('connector' = 'filesystem', 'path' = 'file://{}', 'format' = 'json');\nINSERT INTO sink {};",
        ddl(events, rate_limit),
        case.columns,
        out.display(),
        case.query
    )
}

#[test]
fn nexmark_sql_equals_the_rust_api() {
    for case in cases() {
        let expected = common::json_lines(&common::collect((case.rust)()));
        assert!(!expected.is_empty(), "{}: no output to compare", case.name);
        for parallelism in [1, 3] {
            let tmp = tempfile::tempdir().unwrap();
            let out = tmp.path().join("out");
            let settings = format!("SET 'parallelism.default' = '{parallelism}';");
            let job = Pipeline::new()
                .sql(&script(&case, &out, &settings, (2_000, None)), None)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            job.execute_blocking().unwrap();
            assert_eq!(
                common::committed_lines(&out),
                expected,
                "{} at parallelism {parallelism}",
                case.name
            );
        }
    }
}

/// Runs `job` until `checkpoints` checkpoints have completed, then cancels it (an in-process
/// crash: nothing is flushed or committed).
fn run_until_checkpoints(job: Job, checkpoints: u64) {
    let completed = job.metrics().counter("checkpoints.completed");
    let cancel = job.cancel_handle();
    let runner = std::thread::spawn(move || job.execute_blocking());
    while !runner.is_finished() && completed.get() < checkpoints {
        std::thread::sleep(Duration::from_millis(1));
    }
    cancel.cancel();
    let _ = runner.join().unwrap();
}

#[test]
fn nexmark_sql_checkpointed_and_killed_then_restored_at_another_parallelism() {
    // 40,000 events over a second of wall time, in the generator's chunks of 8,192 events:
    // checkpoints every 20 ms fall between them.
    EVENTS.with(|e| e.set(40_000));
    for case in cases() {
        let expected = common::json_lines(&common::collect((case.rust)()));
        let tmp = tempfile::tempdir().unwrap();
        let (out, checkpoints) = (tmp.path().join("out"), tmp.path().join("chk"));
        // Killed after 2 checkpoints at parallelism 2, then after 1 more at 3, then run to the
        // end at 1; each attempt restores the latest checkpoint.
        for (parallelism, wait) in [(2, 2), (3, 1), (1, u64::MAX)] {
            let settings = format!(
                "SET 'parallelism.default' = '{parallelism}';\nSET 'execution.checkpointing.interval' = '20 ms';"
            );
            let job = Pipeline::new()
                .sql(
                    &script(&case, &out, &settings, (40_000, Some(40_000))),
                    Some(&checkpoints),
                )
                .unwrap_or_else(|e| panic!("{}: {e}", case.name))
                .restore_from(RestoreFrom::Latest);
            if wait == u64::MAX {
                let report = job.execute_blocking().unwrap();
                assert!(
                    report.restored_from.is_some(),
                    "{}: the last attempt restored nothing",
                    case.name
                );
            } else {
                run_until_checkpoints(job, wait);
            }
        }
        assert_eq!(
            common::committed_lines(&out),
            expected,
            "{} killed and restored",
            case.name
        );
    }
}

#[test]
fn explain_prints_stages_exchanges_and_state() {
    let mut session = SqlSession::default();
    let out = session
        .execute(&format!(
            "{}\nEXPLAIN SELECT bidder, COUNT(*) AS n, SESSION_END(dateTime, INTERVAL '10' SECOND) AS e
             FROM bid GROUP BY bidder, SESSION(dateTime, INTERVAL '10' SECOND);",
            ddl(2_000, None)
        ))
        .unwrap();
    let [SqlOutput::Explain(plan)] = out.as_slice() else {
        panic!("{out:?}")
    };
    assert!(plan.contains("source: nexmark"), "{plan}");
    assert!(plan.contains("watermarks on date_time"), "{plan}");
    assert!(plan.contains("by hash(bidder)"), "{plan}");
    assert!(plan.contains("window-aggregate"), "{plan}");
    assert!(plan.contains("sink: stdout"), "{plan}");
}

#[test]
fn the_spec_of_a_sql_job_runs_as_any_spec() {
    let tmp = tempfile::tempdir().unwrap();
    let case = &cases()[3];
    let mut session = SqlSession::default();
    let spec = session
        .job_spec(&script(case, &tmp.path().join("out"), "", (2_000, None)))
        .unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back: oxflow::spec::JobSpec = serde_json::from_str(&json).unwrap();
    Pipeline::from_spec(&back, &oxflow::spec::Registry::new(), None)
        .unwrap()
        .execute_blocking()
        .unwrap();
    assert_eq!(
        common::committed_lines(&tmp.path().join("out")),
        common::json_lines(&common::collect((case.rust)()))
    );
}

/// Each bad script fails with these words in its message.
#[test]
fn errors_name_the_construct_and_its_place() {
    let ddl = ddl(2_000, None);
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            "CREATE TABLE t (a INT) WITH ('connector' = 'kafka', 'topc' = 'x', 'format' = 'json')".into(),
            vec!["line 1, column 53", "unknown option 'topc'", "did you mean 'topic'?"],
        ),
        (
            "CREATE TABLE t (a INT) WITH ('connector' = 'filesystm')".into(),
            vec!["connector 'filesystm' is not supported, did you mean 'filesystem'?"],
        ),
        (
            format!("{ddl}\nSELECT bidder, COUNT(*) FROM bid GROUP BY bidder;"),
            vec!["GROUP BY without a window produces an updating result"],
        ),
        (
            format!("{ddl}\nSELECT prize FROM bid;"),
            vec!["column `prize` not found, did you mean 'price'?"],
        ),
        (
            format!("{ddl}\nSELECT datetime FROM bid;"),
            vec!["names are case-sensitive: `dateTime`"],
        ),
        (
            format!("{ddl}\nSELECT * FROM datagen;"),
            vec!["read one kind of event at a time", "WHERE event_type = 0"],
        ),
        (
            format!("{ddl}\nSELECT B.price FROM bid B FULL JOIN person P ON B.bidder = P.id;"),
            vec!["only [INNER] JOIN .. ON and LEFT [OUTER] JOIN .. ON are supported yet"],
        ),
        (
            format!("{ddl}\nSELECT id FROM auction A JOIN person P ON A.seller = P.id;"),
            vec!["column `id` is on both sides of the join: qualify it"],
        ),
        (
            format!("{ddl}\nSELECT P.id FROM auction A JOIN person P ON A.seller > P.id;"),
            vec!["a join needs an equality between a column of each side"],
        ),
        (
            format!("{ddl}\nSELECT window_start FROM TABLE(CUMULATE(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND));"),
            vec!["CUMULATE windows are not supported yet"],
        ),
        (
            format!("{ddl}\nSELECT COUNT(*) FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(extra), INTERVAL '2' SECOND)) GROUP BY window_start, window_end;"),
            vec!["`extra` is not the time attribute here"],
        ),
        (
            "SET 'paralelism.default' = '2'".into(),
            vec!["setting 'paralelism.default' is not supported, did you mean 'parallelism.default'?"],
        ),
        (
            format!("{ddl}\nCREATE TABLE s (a BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO s SELECT auction, price FROM bid;"),
            vec!["the query gives 2 columns (auction, price) and `s` takes 1 (a)"],
        ),
        (
            "CREATE TABLE t (a INT,\n  WATERMARK FOR b AS b) WITH ('connector' = 'print')".into(),
            vec!["line 2, column 17", "has no such column"],
        ),
        (
            "SELECT 1; DELETE FROM t".into(),
            vec!["line 1, column 11", "not supported"],
        ),
    ];
    for (script, words) in cases {
        let err = match SqlSession::default().execute(&script) {
            Ok(out) => panic!("accepted {script}: {out:?}"),
            Err(e) => e.to_string(),
        };
        for w in words {
            assert!(err.contains(w), "`{w}` not in: {err}");
        }
    }
}

#[test]
fn the_cli_runs_sql_files_and_prints_the_summary() {
    let tmp = tempfile::tempdir().unwrap();
    let job = tmp.path().join("job.sql");
    let out = tmp.path().join("out");
    std::fs::write(&job, script(&cases()[2], &out, "", (2_000, None))).unwrap();
    let summary = common::summary(&common::oxflow(&[
        "sql",
        "-f",
        job.to_str().unwrap(),
        "-e",
        "EXPLAIN INSERT INTO sink SELECT auction, price FROM bid WHERE price > 10",
    ]));
    assert_eq!(summary["sql"], "job");
    assert_eq!(summary["events"], 2000);
    assert_eq!(
        summary["output_rows"].as_u64().unwrap() as usize,
        common::committed_lines(&out).len()
    );
    let bad = common::oxflow(&["sql", "-e", "SELECT FROM WHERE"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("in -e statement 1"), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 400, ..Default::default() })]

    /// A script with a character deleted, replaced or inserted anywhere is planned or refused
    /// with an error; it never panics.
    #[test]
    fn a_damaged_script_is_refused_not_a_panic(
        at in 0usize..10_000,
        edit in 0u8..3,
        c in proptest::prelude::any::<char>(),
    ) {
        let script = format!(
            "{}\nCREATE TABLE s (a BIGINT, n BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO s SELECT bidder, COUNT(*) FROM TABLE(HOP(TABLE bid, DESCRIPTOR(dateTime), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) WHERE price > 10 GROUP BY bidder, window_start, window_end HAVING COUNT(*) > 1;",
            ddl(2_000, None)
        );
        let mut chars: Vec<char> = script.chars().collect();
        let i = at % chars.len();
        match edit {
            0 => { chars.remove(i); }
            1 => chars[i] = c,
            _ => chars.insert(i, c),
        }
        let damaged: String = chars.into_iter().collect();
        let _ = SqlSession::default().execute(&damaged);
    }

    /// Arbitrary text is refused or planned, never a panic.
    #[test]
    fn arbitrary_text_is_refused_not_a_panic(text in "\\PC{0,200}") {
        let _ = SqlSession::default().execute(&text);
    }
}

/// Flink's functions (SPLIT_INDEX, REGEXP_EXTRACT, DATE_FORMAT, HOUR, IF) in Nexmark's q21
/// and q22 and a q10-like projection, against the same values computed here from the bids.
#[test]
fn flink_functions_match_a_reference_computed_in_rust() {
    use serde_json::{json, Map, Value};
    let bids: Vec<Value> = common::json_lines(&common::collect(
        table(NexmarkTable::Bid)
            .select([
                col("auction"),
                col("bidder"),
                col("price"),
                col("channel"),
                col("url"),
                col("date_time"),
            ])
            .unwrap(),
    ))
    .iter()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let text = |v: &Value, k: &str| v[k].as_str().unwrap().to_string();
    // The sink leaves out NULL fields.
    let object = |pairs: Vec<(&str, Option<Value>)>| {
        let map: Map<String, Value> = pairs
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect();
        Value::Object(map)
    };
    let run = |columns: &'static str, query: &str| -> Vec<Value> {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        let case = Case {
            name: "functions",
            columns,
            query: query.to_string(),
            rust: || unreachable!("not compared with a Rust query"),
        };
        Pipeline::new()
            .sql(&script(&case, &out, "", (2_000, None)), None)
            .unwrap()
            .execute_blocking()
            .unwrap();
        let mut rows: Vec<Value> = common::committed_lines(&out)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        rows.sort_by_key(|v| v.to_string());
        rows
    };
    let sorted = |mut rows: Vec<Value>| {
        rows.sort_by_key(|v| v.to_string());
        rows
    };

    // q22 and q10's columns.
    let got = run(
        "auction BIGINT, channel VARCHAR, dir1 VARCHAR, dir2 VARCHAR, dir3 VARCHAR, dt VARCHAR, hm VARCHAR, h BIGINT, cheap VARCHAR",
        "SELECT auction, channel, SPLIT_INDEX(url, '/', 3) as dir1, SPLIT_INDEX(url, '/', 4) as dir2,
                SPLIT_INDEX(url, '/', 5) as dir3, DATE_FORMAT(dateTime, 'yyyy-MM-dd'),
                DATE_FORMAT(dateTime, 'HH:mm'), HOUR(dateTime), IF(MOD(auction, 2) = 0, 'even', 'odd')
         FROM bid",
    );
    let expected = sorted(
        bids.iter()
            .map(|b| {
                let url = text(b, "url");
                let part = |i: usize| url.split('/').nth(i).map(|p| json!(p));
                let time = text(b, "date_time");
                let auction = b["auction"].as_i64().unwrap();
                object(vec![
                    ("auction", Some(json!(auction))),
                    ("channel", Some(b["channel"].clone())),
                    ("dir1", part(3)),
                    ("dir2", part(4)),
                    ("dir3", part(5)),
                    ("dt", Some(json!(&time[..10]))),
                    ("hm", Some(json!(&time[11..16]))),
                    ("h", Some(json!(time[11..13].parse::<i64>().unwrap()))),
                    (
                        "cheap",
                        Some(json!(if auction % 2 == 0 { "even" } else { "odd" })),
                    ),
                ])
            })
            .collect(),
    );
    assert!(!expected.is_empty());
    assert_eq!(got, expected, "q22 and q10's columns");

    // q21 as published (examples/sql/q21.sql).
    let q21 = example("q21");
    let got = run(
        "auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, channel_id VARCHAR",
        &q21,
    );
    let expected = sorted(
        bids.iter()
            .filter_map(|b| {
                let url = text(b, "url");
                let extracted = url
                    .split(['&', '?'])
                    .find_map(|p| p.strip_prefix("channel_id="))
                    .filter(|_| url.contains("&channel_id=") || url.starts_with("channel_id="))
                    .map(str::to_string);
                let id = match text(b, "channel").to_lowercase().as_str() {
                    "apple" => Some("0".to_string()),
                    "google" => Some("1".to_string()),
                    "facebook" => Some("2".to_string()),
                    "baidu" => Some("3".to_string()),
                    _ => extracted.clone(),
                };
                let hot = matches!(
                    text(b, "channel").to_lowercase().as_str(),
                    "apple" | "google" | "facebook" | "baidu"
                );
                (hot || extracted.is_some()).then(|| {
                    object(vec![
                        ("auction", Some(b["auction"].clone())),
                        ("bidder", Some(b["bidder"].clone())),
                        ("price", Some(b["price"].clone())),
                        ("channel", Some(b["channel"].clone())),
                        ("channel_id", id.map(|i| json!(i))),
                    ])
                })
            })
            .collect(),
    );
    assert!(!expected.is_empty());
    assert_eq!(got, expected, "q21");
}

/// A filesystem table reads the files its `source.path.regex-pattern` matches (and never
/// hidden ones), and a bad pattern is refused where it is declared.
#[test]
fn a_filesystem_table_reads_the_files_its_pattern_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("part-0.jsonl"), "{\"a\":1}\n{\"a\":2}\n").unwrap();
    std::fs::write(dir.join("part-1.jsonl"), "{\"a\":3}\n").unwrap();
    std::fs::write(dir.join("other.jsonl"), "{\"a\":100}\n").unwrap();
    std::fs::write(dir.join(".part-2.jsonl"), "{\"a\":1000}\n").unwrap();
    let out = tmp.path().join("out");
    let script = |pattern: &str| {
        format!(
            "SET 'parallelism.default' = '1';
             CREATE TABLE t (a BIGINT) WITH ('connector' = 'filesystem', 'path' = 'file://{}', 'format' = 'json', 'source.path.regex-pattern' = '{pattern}');
             CREATE TABLE s (a BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
             INSERT INTO s SELECT a FROM t;",
            dir.display(),
            out.display()
        )
    };
    Pipeline::new()
        .sql(&script(".*/part-[^/]*"), None)
        .unwrap()
        .execute_blocking()
        .unwrap();
    assert_eq!(
        common::committed_lines(&out),
        ["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]
    );
    let Err(err) = Pipeline::new().sql(&script("part-("), None) else {
        panic!("a bad pattern was accepted");
    };
    let err = err.to_string();
    assert!(
        err.contains("option 'source.path.regex-pattern': not a regular expression"),
        "{err}"
    );
}
