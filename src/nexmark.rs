//! The Nexmark queries, written with the public pipeline API like any user's job.

use crate::error::{OxflowError, Result};
use crate::pipeline::{Job, Pipeline, Stream};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::functions_aggregate::expr_fn::{avg, count, max};
use datafusion::prelude::{cast, col, lit};
use oxflow_connectors::file::{FileFormat, FileSource};
use oxflow_connectors::input::FileStore;
use oxflow_connectors::kafka::{KafkaSource, KafkaSourceConfig};
use oxflow_connectors::nexmark::{NexmarkConfig, NexmarkSource, NexmarkTable};
use oxflow_operators::WindowSpec;
use oxflow_runtime::sink::Sink;
use oxflow_runtime::watermark::WatermarkStrategy;
use std::sync::Arc;
use std::time::Duration;

/// The queries this build runs.
pub const QUERIES: [&str; 9] = ["q0", "q1", "q2", "q3", "q4", "q5", "q7", "q8", "q11"];

/// The queries that join people or auctions with something: they need the generator, which
/// is the only input with every table.
pub const JOIN_QUERIES: [&str; 3] = ["q3", "q4", "q8"];

/// Where a query reads its tables: the generator (every table), files of every table (as
/// [`write_tables`] lays them out), or a stream of bids alone (from Kafka or files).
pub struct Input {
    generator: Option<(Pipeline, NexmarkConfig, WatermarkStrategy)>,
    files: Option<(Pipeline, std::path::PathBuf, WatermarkStrategy)>,
    bids: Option<Stream>,
}

/// The directory of `table` under a directory written by [`write_tables`].
pub fn table_dir(dir: &std::path::Path, table: NexmarkTable) -> std::path::PathBuf {
    dir.join(match table {
        NexmarkTable::Person => "person",
        NexmarkTable::Auction => "auction",
        NexmarkTable::Bid => "bid",
    })
}

/// Writes the generator's three tables as JSON lines under `dir` (`person/`, `auction/` and
/// `bid/`, each a file sink's `part-*` files), so that another system can read exactly the
/// events Oxflow's queries read. Returns the rows written per table.
pub fn write_tables(
    pipeline: Pipeline,
    config: NexmarkConfig,
    dir: &std::path::Path,
) -> Result<Vec<(NexmarkTable, u64)>> {
    [
        NexmarkTable::Person,
        NexmarkTable::Auction,
        NexmarkTable::Bid,
    ]
    .into_iter()
    .map(|table| {
        let sink = oxflow_connectors::sinks::FileSink::try_new(table_dir(dir, table))?;
        let report = pipeline
            .clone()
            .source(NexmarkSource::try_new(config.clone(), table)?)
            .sink(sink)?
            .execute_blocking()?;
        Ok((table, report.output_rows))
    })
    .collect()
}

impl Input {
    /// Every table from the generator, each with `watermarks` (on `date_time`).
    pub fn generator(
        pipeline: Pipeline,
        config: NexmarkConfig,
        watermarks: WatermarkStrategy,
    ) -> Self {
        Input {
            generator: Some((pipeline, config, watermarks)),
            files: None,
            bids: None,
        }
    }

    /// Every table from files under `dir`, as [`write_tables`] lays them out (bids are read
    /// with [`bid_json_schema`]'s columns), each with `watermarks`.
    pub fn files(
        pipeline: Pipeline,
        dir: std::path::PathBuf,
        watermarks: WatermarkStrategy,
    ) -> Self {
        Input {
            generator: None,
            files: Some((pipeline, dir, watermarks)),
            bids: None,
        }
    }

    /// Bids only, from a stream with event time already set.
    pub fn bids(bids: Stream) -> Self {
        Input {
            generator: None,
            files: None,
            bids: Some(bids),
        }
    }

    /// The longest an auction stays open: the generator's bound, or for files the longest
    /// any auction in them stays open (read once, at build time). `None` without auctions.
    fn max_auction_duration_ms(&self) -> Result<Option<i64>> {
        if let Some((_, config, _)) = &self.generator {
            return Ok(Some(config.max_auction_duration_ms()));
        }
        let Some((_, dir, _)) = &self.files else {
            return Ok(None);
        };
        let schema = NexmarkTable::Auction.schema();
        let paths = part_files(&table_dir(dir, NexmarkTable::Auction))?;
        let out = oxflow_connectors::sinks::CollectSink::new();
        Pipeline::new()
            .with_parallelism(1)
            .source(FileSource::try_new(
                paths,
                FileFormat::JsonLines,
                Some(schema),
            )?)
            .select([(cast(col("expires"), DataType::Int64)
                - cast(col("date_time"), DataType::Int64))
            .alias("open")])?
            .sink(out.clone())?
            .execute_blocking()?;
        let mut longest = 0;
        for batch in out.batches() {
            let open = batch
                .column(0)
                .as_any()
                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                .ok_or_else(|| {
                    OxflowError::InvalidPipeline("auction durations are not integers".into())
                })?;
            longest = open.iter().flatten().fold(longest, i64::max);
        }
        Ok(Some(longest))
    }

    fn table(&mut self, table: NexmarkTable, query: &str) -> Result<Stream> {
        if let Some((pipeline, config, watermarks)) = &self.generator {
            return pipeline
                .clone()
                .source(NexmarkSource::try_new(config.clone(), table)?)
                .with_watermarks(watermarks.clone());
        }
        if let Some((pipeline, dir, watermarks)) = &self.files {
            let schema = match table {
                NexmarkTable::Bid => bid_json_schema(),
                other => other.schema(),
            };
            let dir = table_dir(dir, table);
            let paths = part_files(&dir)?;
            let source = FileSource::try_new(paths, FileFormat::JsonLines, Some(schema))?;
            return pipeline
                .clone()
                .source(source)
                .with_watermarks(watermarks.clone());
        }
        match (table, self.bids.take()) {
            (NexmarkTable::Bid, Some(bids)) => Ok(bids),
            _ => Err(OxflowError::InvalidPipeline(format!(
                "{query} reads the {table:?} table, and this input has bids only; run it on the generator"
            ))),
        }
    }
}

/// The watermark every query uses: 4 s of bounded out-of-orderness on `date_time`.
pub fn watermarks() -> WatermarkStrategy {
    WatermarkStrategy::bounded("date_time", Duration::from_secs(4))
}

/// The columns of bids written as JSON (q0's output: `auction`, `bidder`, `price`,
/// `date_time`, `extra`) and read back from Kafka or files, typed as the generator's.
pub fn bid_json_schema() -> SchemaRef {
    let bid = NexmarkTable::Bid.schema();
    let fields = ["auction", "bidder", "price", "date_time", "extra"]
        .iter()
        .map(|n| bid.field_with_name(n).expect("a bid column").clone())
        .collect::<Vec<_>>();
    Arc::new(Schema::new(fields))
}

/// Bids read from Kafka (JSON objects with [`bid_json_schema`]'s columns), with watermarks
/// `delay` behind the newest `date_time` of each partition.
pub fn kafka_bids(
    pipeline: Pipeline,
    config: KafkaSourceConfig,
    watermarks: WatermarkStrategy,
) -> Result<Stream> {
    pipeline
        .source(KafkaSource::try_new(config)?)
        .with_watermarks(watermarks)
}

/// Bids from JSON-lines or Parquet files (q0's output, e.g. a file sink's directory), with
/// watermarks.
pub fn file_bids(
    pipeline: Pipeline,
    paths: Vec<std::path::PathBuf>,
    watermarks: WatermarkStrategy,
) -> Result<Stream> {
    file_bids_in(pipeline, FileStore::Local, paths, watermarks)
}

/// Bids from files of `store` (on S3: as [`FileStore::s3_files`] lists them), JSON lines or
/// Parquet as for [`file_bids`].
pub fn file_bids_in(
    pipeline: Pipeline,
    store: FileStore,
    paths: Vec<std::path::PathBuf>,
    watermarks: WatermarkStrategy,
) -> Result<Stream> {
    let schema = Some(bid_json_schema());
    if all_parquet(&paths) {
        let source = oxflow_connectors::parquet::ParquetSource::try_new_in(store, paths, schema)?;
        return pipeline.source(source).with_watermarks(watermarks);
    }
    let source = FileSource::try_new_in(store, paths, FileFormat::JsonLines, schema)?;
    pipeline.source(source).with_watermarks(watermarks)
}

/// A file, or the committed `part-*` files of a directory (a file sink's output), sorted.
pub fn part_files(path: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let listing = std::fs::read_dir(path).map_err(|e| {
        OxflowError::InvalidPipeline(format!("cannot list {}: {e}", path.display()))
    })?;
    let mut files: Vec<std::path::PathBuf> = listing
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("part-"))
        })
        .collect();
    if files.is_empty() {
        return Err(OxflowError::InvalidPipeline(format!(
            "{} holds no part-* file to read",
            path.display()
        )));
    }
    files.sort();
    Ok(files)
}

/// Whether every file of `files` is a Parquet file (by its extension): a file source then
/// reads them as Parquet unless told otherwise.
pub fn all_parquet(files: &[std::path::PathBuf]) -> bool {
    !files.is_empty()
        && files
            .iter()
            .all(|f| f.extension().is_some_and(|e| e == "parquet"))
}

/// Whether `dir` is laid out as [`write_tables`] writes (it has a `bid/` directory).
pub fn is_tables_dir(dir: &std::path::Path) -> bool {
    table_dir(dir, NexmarkTable::Bid).is_dir()
}

/// Builds query `query` over `input`'s tables.
pub fn apply(query: &str, mut input: Input) -> Result<Stream> {
    let secs = Duration::from_secs;
    if JOIN_QUERIES.contains(&query) {
        return join_query(query, &mut input);
    }
    let bids = input.table(NexmarkTable::Bid, query)?;
    match query {
        "q0" => bids.select([
            col("auction"),
            col("bidder"),
            col("price"),
            col("date_time"),
            col("extra"),
        ]),
        "q1" => bids.select([
            col("auction"),
            col("bidder"),
            (col("price") * lit(0.908)).alias("price"),
            col("date_time"),
        ]),
        "q2" => bids
            .filter((col("auction") % lit(123)).eq(lit(0)))?
            .select([col("auction"), col("price")]),
        "q5" => bids
            .key_by(["auction"])
            .window(WindowSpec::hopping(secs(10), secs(2)))
            .aggregate([count(col("auction")).alias("num")])?
            .key_by(["window_start", "window_end"])
            .window(WindowSpec::Inherited)
            .top_n("num", 1),
        "q7" => bids
            .select([
                col("auction"),
                col("bidder"),
                col("price"),
                col("date_time"),
            ])?
            .window_all(WindowSpec::tumbling(secs(10)))
            .top_n("price", 1),
        "q11" => bids
            .key_by(["bidder"])
            .window(WindowSpec::session(secs(10)))
            .aggregate([count(col("auction")).alias("bid_count")])?
            .select([
                col("bidder"),
                col("bid_count"),
                col("window_start"),
                col("window_end"),
            ]),
        other => Err(OxflowError::InvalidPipeline(format!(
            "unknown Nexmark query `{other}`; this build runs {}",
            QUERIES.join(", ")
        ))),
    }
}

/// The queries that join tables.
fn join_query(query: &str, input: &mut Input) -> Result<Stream> {
    let max_open = if query == "q4" {
        input.max_auction_duration_ms()?
    } else {
        None
    };
    let mut table = |t| input.table(t, query);
    match query {
        // Sellers in Oregon, Idaho or California of auctions in category 10: an unbounded
        // join (every person and auction stays in state).
        "q3" => {
            let auctions = table(NexmarkTable::Auction)?
                .select([col("id"), col("seller"), col("category")])?
                .filter(col("category").eq(lit(10)))?
                .select([col("id"), col("seller")])?;
            let people = table(NexmarkTable::Person)?
                .select([col("id"), col("name"), col("city"), col("state")])?
                .filter(col("state").in_list(vec![lit("OR"), lit("ID"), lit("CA")], false))?;
            auctions
                .key_by(["seller"])
                .join(people.key_by(["id"]))
                .regular(None)?
                .select([col("name"), col("city"), col("state"), col("id")])
        }
        // Average closing price per category: each auction's bids while it is open (an
        // interval join bounded by the longest an auction stays open, then `date_time <=
        // expires`), the highest when it closes (a window per auction, [opened, expires]),
        // and per category the running average of those, one row per closed auction.
        "q4" => {
            let auctions = table(NexmarkTable::Auction)?.select([
                col("id"),
                col("category"),
                col("date_time"),
                col("expires"),
            ])?;
            let bids = table(NexmarkTable::Bid)?.select([
                col("auction"),
                col("price"),
                col("date_time"),
            ])?;
            let ms = |c: &str| cast(col(c), DataType::Int64);
            auctions
                .key_by(["id"])
                .join(bids.key_by(["auction"]))
                .interval(0, max_open.unwrap_or(0))?
                .filter(col("right_date_time").lt_eq(col("expires")))?
                .select([
                    ms("date_time").alias("window_start"),
                    (ms("expires") + lit(1i64)).alias("window_end"),
                    col("id"),
                    col("category"),
                    col("price"),
                ])?
                .key_by(["id", "category"])
                .window(WindowSpec::Inherited)
                .aggregate([max(col("price")).alias("final")])?
                .with_event_time("window_end")?
                .key_by(["category"])
                .aggregate([avg(col("final")).alias("avg_final")])
        }
        // People who opened an auction in the same 10 s window they registered in: a window
        // join, then one row per person and window however many auctions they opened.
        "q8" => {
            let people =
                table(NexmarkTable::Person)?.select([col("id"), col("name"), col("date_time")])?;
            let auctions =
                table(NexmarkTable::Auction)?.select([col("seller"), col("date_time")])?;
            people
                .key_by(["id"])
                .join(auctions.key_by(["seller"]))
                .window(WindowSpec::tumbling(Duration::from_secs(10)))?
                .key_by(["id", "name"])
                .window(WindowSpec::Inherited)
                .aggregate([count(col("seller")).alias("auctions")])?
                .select([col("id"), col("name"), col("window_start")])
        }
        other => Err(OxflowError::InvalidPipeline(format!(
            "`{other}` is not a join query"
        ))),
    }
}

/// Query `query` on the generator into `sink`.
pub fn job(
    query: &str,
    pipeline: Pipeline,
    config: NexmarkConfig,
    sink: impl Sink + 'static,
) -> Result<Job> {
    apply(query, Input::generator(pipeline, config, watermarks()))?.sink(sink)
}
