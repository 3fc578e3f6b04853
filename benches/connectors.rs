//! Baselines for the connector benchmarks: the same library Oxflow uses, in a plain loop with
//! no job around it. `scripts/bench-connectors.sh` runs each beside `oxflow nexmark --query q0`
//! on the same input, in the same run.
//!
//!   cargo bench --bench connectors -- nats SERVER STREAM_IN STREAM_OUT RECORDS
//!       an ordered consumer reading STREAM_IN, publishing each payload to STREAM_OUT.out
//!       with an acknowledgement awaited for each (up to 1 024 in flight)
//!   cargo bench --bench connectors -- rabbitmq SERVER queue|stream IN OUT RECORDS
//!       a lapin consumer of IN (a queue, acknowledged 1 024 at a time; or a stream from its
//!       first offset), publishing each payload to queue OUT with publisher confirms (up to
//!       1 024 in flight), as Oxflow's RabbitMQ sink does
//!   cargo bench --bench connectors -- parquet DIR
//!       every row group of every `part-*` Parquet file in DIR decoded with arrow-rs
//!
//! Prints one JSON line: records, seconds, records_per_sec, cpu_seconds.

// A benchmark measures wall time itself; the injectable clock is for operators.
#![allow(clippy::disallowed_methods)]

use futures::StreamExt;
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (cpu0, start) = (oxflow::process_cpu_seconds(), Instant::now());
    let records = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["nats", server, input, output, records] => nats(server, input, output, records.parse()?)?,
        ["rabbitmq", server, mode, input, output, records] => {
            rabbitmq(server, mode, input, output, records.parse()?)?
        }
        ["parquet", dir] => parquet(dir)?,
        _ => anyhow::bail!(
            "usage: cargo bench --bench connectors -- nats SERVER IN OUT RECORDS | rabbitmq SERVER queue|stream IN OUT RECORDS | parquet DIR"
        ),
    };
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "records": records,
            "seconds": seconds,
            "records_per_sec": records as f64 / seconds,
            "cpu_seconds": oxflow::process_cpu_seconds() - cpu0,
        })
    );
    Ok(())
}

fn nats(server: &str, input: &str, output: &str, records: u64) -> anyhow::Result<u64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = async_nats::connect(format!("nats://{server}")).await?;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(input).await?;
        let consumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
            .await?;
        let mut messages = consumer.messages().await?;
        let subject = format!("{output}.out");
        let mut acks = std::collections::VecDeque::new();
        let mut n = 0u64;
        while n < records {
            let Some(m) = messages.next().await else {
                break;
            };
            let m = m?;
            acks.push_back(
                js.publish(subject.clone(), m.message.payload.clone())
                    .await?,
            );
            if acks.len() >= 1024 {
                acks.pop_front().expect("non-empty").await?;
            }
            n += 1;
        }
        while let Some(a) = acks.pop_front() {
            a.await?;
        }
        Ok(n)
    })
}

fn rabbitmq(
    server: &str,
    mode: &str,
    input: &str,
    output: &str,
    records: u64,
) -> anyhow::Result<u64> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let uri = format!("amqp://guest:guest@{server}/%2F");
        let connection =
            lapin::Connection::connect(&uri, lapin::ConnectionProperties::default()).await?;
        let reading = connection.create_channel().await?;
        reading.basic_qos(4096, BasicQosOptions::default()).await?;
        let mut arguments = FieldTable::default();
        let stream = match mode {
            "stream" => true,
            "queue" => false,
            other => anyhow::bail!("mode {other}: use queue or stream"),
        };
        if stream {
            arguments.insert(
                "x-stream-offset".into(),
                AMQPValue::LongString("first".into()),
            );
        }
        let mut consumer = reading
            .basic_consume(
                input.into(),
                "".into(),
                BasicConsumeOptions::default(),
                arguments,
            )
            .await?;
        let publishing = connection.create_channel().await?;
        publishing
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let properties = lapin::BasicProperties::default().with_delivery_mode(2);
        let mut confirms = std::collections::VecDeque::new();
        let mut n = 0u64;
        while n < records {
            let Some(delivery) = consumer.next().await else {
                break;
            };
            let delivery = delivery?;
            n += 1;
            // A stream consumer acknowledges every delivery for credit; a queue one, in
            // batches (a checkpoint's worth, as the source does).
            if stream || n.is_multiple_of(1024) || n == records {
                let multiple = BasicAckOptions { multiple: !stream };
                delivery.acker.ack(multiple).await?;
            }
            confirms.push_back(
                publishing
                    .basic_publish(
                        "".into(),
                        output.into(),
                        BasicPublishOptions::default(),
                        &delivery.data,
                        properties.clone(),
                    )
                    .await?,
            );
            if confirms.len() >= 1024 {
                confirms.pop_front().expect("non-empty").await?;
            }
        }
        while let Some(c) = confirms.pop_front() {
            c.await?;
        }
        let _ = connection.close(200, "done".into()).await;
        Ok(n)
    })
}

fn parquet(dir: &str) -> anyhow::Result<u64> {
    let mut rows = 0u64;
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
    });
    paths.sort();
    for path in paths {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(&path)?,
        )?
        .with_batch_size(8192)
        .build()?;
        for batch in reader {
            rows += batch?.num_rows() as u64;
        }
    }
    Ok(rows)
}
