//! Job specs: the JSON form of pipelines round-trips with the Rust API, runs to the same
//! output, and bad specs are refused with messages that say what and where.

mod common;

use common::*;
use oxflow::arrow::array::{Int64Array, RecordBatch};
use oxflow::arrow::datatypes::{DataType, Field, Schema};
use oxflow::prelude::*;
use oxflow::spec::{JobSpec, Registry, SinkSpec, SourceSpec, StateSpec, StreamSpec};
use std::sync::Arc;
use std::time::Duration;

fn bids(events: u64) -> SourceSpec {
    SourceSpec::Nexmark {
        table: "bid".into(),
        events: Some(events),
        event_rate: Some(1000),
        seed: Some(3),
        rate: None,
    }
}

/// A registry with one function: price in dollars (cents / 100) as `dollars`.
fn registry() -> Registry {
    let mut registry = Registry::new();
    let output = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("dollars", DataType::Int64, true),
        Field::new(
            "date_time",
            DataType::Timestamp(oxflow::arrow::datatypes::TimeUnit::Millisecond, None),
            true,
        ),
    ]));
    let schema = output.clone();
    registry.register_map("to_dollars", output, move |batch: RecordBatch| {
        let price = batch
            .column_by_name("price")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("a price column");
        let dollars: Int64Array = price.iter().map(|p| p.map(|p| p / 100)).collect();
        Ok(RecordBatch::try_new(
            schema.clone(),
            vec![
                batch.column_by_name("auction").unwrap().clone(),
                Arc::new(dollars),
                batch.column_by_name("date_time").unwrap().clone(),
            ],
        )?)
    });
    registry
}

/// A job using most of the API: a filter, a select, a registered function, a window
/// aggregate, an interval join with auctions, and a running aggregate.
fn api_job(registry: &Registry, sink: SinkSpec) -> Job {
    let pipeline = Pipeline::new().with_parallelism(2);
    let watermarks = WatermarkStrategy::bounded("date_time", Duration::from_secs(4));
    let auctions = pipeline
        .clone()
        .source_spec(SourceSpec::Nexmark {
            table: "auction".into(),
            events: Some(20_000),
            event_rate: Some(1000),
            seed: Some(3),
            rate: None,
        })
        .unwrap()
        .with_watermarks(watermarks.clone())
        .unwrap()
        .select([col("id"), col("category"), col("date_time")])
        .unwrap();
    pipeline
        .source_spec(bids(20_000))
        .unwrap()
        .with_watermarks(watermarks)
        .unwrap()
        .filter(
            col("price")
                .gt(lit(1_000))
                .and(col("auction").is_not_null()),
        )
        .unwrap()
        .select([col("auction"), col("price"), col("date_time")])
        .unwrap()
        .map(registry.map("to_dollars").unwrap())
        .key_by(["auction"])
        .join(auctions.key_by(["id"]))
        .interval(-2_000, 0)
        .unwrap()
        .key_by(["category"])
        .window(WindowSpec::tumbling(Duration::from_secs(5)))
        .aggregate([
            count(col("dollars")).alias("bids"),
            max(col("dollars")).alias("top"),
        ])
        .unwrap()
        .with_event_time("window_end")
        .unwrap()
        .key_by(["category"])
        .aggregate([sum(col("bids")).alias("total_bids")])
        .unwrap()
        .sink_spec(sink, None)
        .unwrap()
}

fn lines(dir: &std::path::Path) -> Vec<String> {
    committed_lines(dir)
}

#[test]
fn a_job_round_trips_through_json_and_runs_to_the_same_output() {
    let registry = registry();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let job = api_job(&registry, SinkSpec::file(&a));
    let spec = job.to_spec().unwrap();
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let parsed: JobSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed, spec);
    let mut rebuilt_spec = parsed.clone();
    rebuilt_spec.sink = SinkSpec::file(&b);
    // The rebuilt job keeps its window state in RocksDB, under a 1 MiB budget.
    rebuilt_spec.state = Some(StateSpec {
        memory_budget_mb: 1,
    });
    let rebuilt = Pipeline::from_spec(&rebuilt_spec, &registry, None).unwrap();
    // The rebuilt job's spec is the spec it was built from.
    assert_eq!(rebuilt.to_spec().unwrap(), rebuilt_spec);
    job.execute_blocking().unwrap();
    rebuilt.execute_blocking().unwrap();
    let (first, second) = (lines(&a), lines(&b));
    assert!(!first.is_empty());
    assert_eq!(first, second);
}

#[test]
fn the_example_specs_build_and_q5_equals_the_built_in_query() {
    let dir = common::repo_path("examples/jobs");
    let read = |name: &str| -> JobSpec {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    // Kafka's spec only parses here: building it reaches for a broker.
    let kafka = read("kafka_hot_items.json");
    assert!(matches!(kafka.sink, SinkSpec::Kafka { .. }));
    let mut readings = read("readings_to_files.json");
    if let SourceSpec::File { path, .. } = &mut readings.stream.source {
        *path = common::repo_path("").join(&*path);
    }
    let tmp = tempfile::tempdir().unwrap();
    readings.sink = SinkSpec::file(tmp.path().join("readings"));
    Pipeline::from_spec(&readings, &Registry::new(), Some(&tmp.path().join("chk")))
        .unwrap()
        .execute_blocking()
        .unwrap();
    let readings_out = lines(&tmp.path().join("readings"));
    assert!(!readings_out.is_empty());
    // NATS's and RabbitMQ's specs only parse here too (tests/s3.rs runs S3's).
    let nats = read("nats_hot_items.json");
    assert!(matches!(nats.sink, SinkSpec::Nats { .. }));
    let rabbitmq = read("rabbitmq_hot_items.json");
    assert!(matches!(rabbitmq.sink, SinkSpec::RabbitMq { .. }));
    let s3 = read("s3_readings_to_parquet.json");
    assert!(matches!(s3.stream.source, SourceSpec::S3 { .. }));
    // It gives its columns and format, so it builds offline: its files are listed when it
    // starts (tests/cli.rs checks that with no AWS settings at all).
    if let Err(e) = Pipeline::from_spec(&s3, &Registry::new(), Some(&tmp.path().join("chk-s3"))) {
        panic!("the S3 example builds without reaching its server: {e}");
    }
    // Only the listing waits: a format it cannot read is refused while building.
    let mut xml = s3.clone();
    if let SourceSpec::S3 { format, .. } = &mut xml.stream.source {
        *format = Some("xml".into());
    }
    let err = Pipeline::from_spec(&xml, &Registry::new(), Some(&tmp.path().join("chk-xml")))
        .err()
        .expect("an unknown format is refused")
        .to_string();
    assert!(err.contains("unknown format `xml`"), "{err}");
    // The same windows into Parquet files, read back (Parquet by extension) row for row.
    let mut parquet = read("readings_to_parquet.json");
    parquet.stream.source = readings.stream.source.clone();
    if let SinkSpec::File { path, .. } = &mut parquet.sink {
        *path = tmp.path().join("parquet");
    }
    Pipeline::from_spec(
        &parquet,
        &Registry::new(),
        Some(&tmp.path().join("chk-parquet")),
    )
    .unwrap()
    .execute_blocking()
    .unwrap();
    let back = JobSpec {
        parallelism: Some(1),
        max_parallelism: None,
        stream: StreamSpec {
            source: SourceSpec::File {
                path: tmp.path().join("parquet"),
                path_regex: None,
                format: None,
                columns: None,
            },
            watermarks: None,
            steps: Vec::new(),
        },
        sink: SinkSpec::file(tmp.path().join("parquet-as-json")),
        checkpoints: None,
        restart: None,
        state: None,
    };
    Pipeline::from_spec(&back, &Registry::new(), None)
        .unwrap()
        .execute_blocking()
        .unwrap();
    let rows = lines(&tmp.path().join("parquet-as-json"));
    assert_eq!(rows.len(), readings_out.len(), "{rows:?}");
    assert!(
        rows[0].contains("\"avg_c\"") && rows[0].contains("\"readings\""),
        "{}",
        rows[0]
    );
    for (file, query) in [("nexmark_q5.json", "q5"), ("nexmark_q7.json", "q7")] {
        let mut spec = read(file);
        spec.stream.source = SourceSpec::Nexmark {
            table: "bid".into(),
            events: Some(200_000),
            event_rate: None,
            seed: None,
            rate: None,
        };
        let out = CollectSink::new();
        let from_spec = Pipeline::from_spec(&spec, &Registry::new(), None).unwrap();
        let _ = from_spec.to_spec().unwrap();
        spec.sink = SinkSpec::Blackhole;
        let report = Pipeline::from_spec(&spec, &Registry::new(), None)
            .unwrap()
            .execute_blocking()
            .unwrap();
        oxflow::nexmark::job(
            query,
            Pipeline::new().with_parallelism(2),
            NexmarkConfig {
                events: Some(200_000),
                ..Default::default()
            },
            out.clone(),
        )
        .unwrap()
        .execute_blocking()
        .unwrap();
        let built_in: usize = out.batches().iter().map(|b| b.num_rows()).sum();
        assert_eq!(report.output_rows as usize, built_in, "{query}");
    }
}

#[test]
fn bad_specs_say_what_and_where() {
    let registry = registry();
    let build = |json: &str| -> String {
        match serde_json::from_str::<JobSpec>(json) {
            Err(e) => e.to_string(),
            Ok(spec) => match Pipeline::from_spec(&spec, &registry, None) {
                Err(e) => e.to_string(),
                Ok(_) => panic!("accepted: {json}"),
            },
        }
    };
    let source = r#"{"nexmark": {"table": "bid", "events": 1000}}"#;
    let job = |steps: &str| {
        format!(
            r#"{{"stream": {{"source": {source}, "watermarks": {{"column": "date_time", "delay_ms": 0}}, "steps": [{steps}]}}, "sink": "blackhole"}}"#
        )
    };
    let err = build("{\"stream\": ");
    assert!(
        err.contains("EOF while parsing") && err.contains("line 1"),
        "{err}"
    );
    let err = build(&job(r#"{"filtre": "price > 1"}"#));
    assert!(err.contains("unknown variant `filtre`"), "{err}");
    let err = build(&job(r#"{"filter": "price >"}"#));
    assert!(
        err.contains("step 1 (filter)") && err.contains("price >"),
        "{err}"
    );
    let err = build(&job(r#"{"filter": "prize > 1"}"#));
    assert!(err.contains("prize"), "{err}");
    let err = build(&job(r#"{"map": "to_euros"}"#));
    assert!(
        err.contains("no function `to_euros` is registered; registered: [to_dollars]"),
        "{err}"
    );
    let err =
        build(r#"{"stream": {"source": {"nexmark": {"table": "bids"}}}, "sink": "blackhole"}"#);
    assert!(err.contains("unknown Nexmark table `bids`"), "{err}");
    let err = build(r#"{"stream": {"source": {"nexmark": {"table": "bid"}}}}"#);
    assert!(err.contains("missing field `sink`"), "{err}");
    let err = build(&job(
        r#"{"window": {"window": {"tumbling": {"size_ms": 0}}, "compute": {"aggregate": ["count(price)"]}}}"#,
    ));
    assert!(
        err.contains("tumbling window size must be a positive"),
        "{err}"
    );
    let with_state = |state: &str| {
        format!(r#"{{"stream": {{"source": {source}}}, "sink": "blackhole", "state": {state}}}"#)
    };
    let err = build(&with_state(r#"{"memory_budget_mb": 0}"#));
    assert!(
        err.contains("state.memory_budget_mb must be at least 1"),
        "{err}"
    );
    let err = build(&with_state(r#"{"memory_budget": 64}"#));
    assert!(err.contains("unknown field `memory_budget`"), "{err}");
}

#[test]
fn a_job_with_a_closure_has_no_spec_and_says_why() {
    let job = Pipeline::new()
        .source_spec(bids(100))
        .unwrap()
        .map_batches("double", bid_schema(), Ok)
        .sink(CollectSink::new())
        .unwrap();
    let err = job.to_spec().unwrap_err().to_string();
    assert!(
        err.contains("map_batches `double` is a Rust closure"),
        "{err}"
    );
}

/// Every leaf of `value` (and every object and array), by path, for mutation.
fn leaf_paths(value: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(path.clone());
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                path.push(k.clone());
                leaf_paths(v, path, out);
                path.pop();
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                leaf_paths(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at_path<'a>(value: &'a mut serde_json::Value, path: &[String]) -> &'a mut serde_json::Value {
    path.iter().fold(value, |v, key| match v {
        serde_json::Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
        other => &mut other[key.as_str()],
    })
}

/// A JSON leaf of the kinds a spec holds, often extreme.
fn json_leaf() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        prop_oneof![
            Just(0i64),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN),
            any::<i64>()
        ]
        .prop_map(serde_json::Value::from),
        prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        "[ -~]{0,24}".prop_map(serde_json::Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
    /// Fuzz: the example specs with values replaced at random parse and build into a job or
    /// fail with an error; neither the spec parser nor the builder panics.
    #[test]
    fn mutated_specs_never_panic_the_parser_or_the_builder(
        example in 0usize..7,
        edits in proptest::collection::vec((proptest::num::usize::ANY, json_leaf()), 1..4),
    ) {
        let files = [
            "kafka_hot_items.json",
            "nexmark_q5.json",
            "nexmark_q7.json",
            "readings_to_files.json",
            "nats_hot_items.json",
            "readings_to_parquet.json",
            "rabbitmq_hot_items.json",
            // Not the S3 example: a mutation that drops its columns or format has it list
            // the bucket while building, over the network.
        ];
        let path = common::repo_path("examples/jobs").join(files[example]);
        let mut value: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        // No directory is made by a mutated file sink's path.
        value["sink"] = serde_json::json!("blackhole");
        for (at, leaf) in edits {
            let mut paths = Vec::new();
            leaf_paths(&value, &mut Vec::new(), &mut paths);
            let target = paths[at % paths.len()].clone();
            *at_path(&mut value, &target) = leaf;
        }
        if let Ok(spec) = serde_json::from_value::<JobSpec>(value.clone()) {
            let _ = Pipeline::from_spec(&spec, &Registry::new(), None);
        }
        let _ = serde_json::from_str::<JobSpec>(&value.to_string());
    }

    /// Fuzz: any text as a spec is an error or a spec.
    #[test]
    fn any_text_as_a_spec_never_panics(text in "\\PC{0,200}") {
        let _ = serde_json::from_str::<JobSpec>(&text);
    }
}
