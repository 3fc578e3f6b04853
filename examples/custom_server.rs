//! Your own runtime server, with your Rust functions compiled in (as a Flink job brings its
//! jar): registers `to_dollars`, starts the server on a free loopback port, submits a spec
//! that names the function, waits for the job to finish and prints its status.
//!
//! `cargo run --release --example custom_server`

use oxflow::arrow::array::{Int64Array, RecordBatch};
use oxflow::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use oxflow::client::Client;
use oxflow::server::{Server, ServerConfig};
use oxflow::spec::{JobSpec, Registry};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let output = Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, true),
        Field::new("dollars", DataType::Int64, true),
        Field::new(
            "date_time",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
    ]));
    let mut registry = Registry::new();
    let schema = output.clone();
    registry.register_map("to_dollars", output, move |batch: RecordBatch| {
        let cents = batch
            .column_by_name("price")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .expect("bids have a price");
        let dollars: Int64Array = cents.iter().map(|c| c.map(|c| c / 100)).collect();
        Ok(RecordBatch::try_new(
            schema.clone(),
            vec![
                batch.column_by_name("auction").expect("auction").clone(),
                Arc::new(dollars),
                batch
                    .column_by_name("date_time")
                    .expect("date_time")
                    .clone(),
            ],
        )?)
    });

    let data = tempfile::tempdir()?;
    let mut config = ServerConfig::new(data.path());
    config.listen = "127.0.0.1:0".parse()?;
    let server = Server::new(registry).start(config).await?;
    let client = Client::new(&format!("http://{}", server.addr), server.token.clone())?;

    let spec: JobSpec = serde_json::from_str(
        r#"{
          "parallelism": 2,
          "stream": {
            "source": { "nexmark": { "table": "bid", "events": 500000 } },
            "watermarks": { "column": "date_time", "delay_ms": 4000 },
            "steps": [
              { "select": ["auction", "price", "date_time"] },
              { "map": "to_dollars" },
              { "window": { "keys": ["auction"], "window": { "tumbling": { "size_ms": 1000 } },
                            "compute": { "aggregate": ["max(dollars) AS top_dollars"] } } }
            ]
          },
          "sink": "blackhole"
        }"#,
    )?;
    let id = client.submit(&spec, None).await?;
    println!("submitted job {id} to http://{}", server.addr);
    let status = loop {
        let status = client.status(&id).await?;
        if status["state"] != "RUNNING" && status["state"] != "RESTARTING" {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("job {id}: {}", status["state"]);
    anyhow::ensure!(
        status["state"] == "FINISHED",
        "the job did not finish: {status}"
    );
    server.shutdown().await?;
    Ok(())
}
