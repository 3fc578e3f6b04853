//! The Nexmark generator, exactly as the project's Nexmark page fixes it.
//!
//! Event `e` is a person (`e % 50 == 0`), an auction (`1..=3`) or a bid (`4..=49`); its ids,
//! time and random choices derive from `e` and the seed alone. Splits read chunks of
//! `batch_size` events round-robin (split `k` of `p` takes chunks `k, k + p, ..`), so every
//! split advances along the one global timeline and any parallelism yields the same events.
//!
//! A source reads one table (bids, auctions or people): the events of the other kinds are
//! counted in the event number but not built, which is where Flink pushes its projections too.

use crate::error::{ConnectorError, Result};
use crate::random::RecordRng;
use crate::split::{ChunkGenerator, GeneratedReader};
use datafusion::arrow::array::{
    ArrayRef, Int64Builder, RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use oxflow_runtime::source::{Source, SourceReader, SourceRef};
use oxflow_runtime::SubtaskInfo;
use std::sync::Arc;

/// Events per proportion cycle: 1 person, 3 auctions, 46 bids.
pub const CYCLE: u64 = 50;
const FIRST_ID: i64 = 1000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];

/// Generator settings.
#[derive(Debug, Clone, PartialEq)]
pub struct NexmarkConfig {
    /// Events to generate (all kinds); `None`: unbounded.
    pub events: Option<u64>,
    /// Events per second of event time (default 100,000).
    pub event_rate: u64,
    /// Event time of event 0, ms since the epoch (default 2024-01-01T00:00:00Z).
    pub base_time: i64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Events per chunk (a split's batch covers one chunk).
    pub batch_size: usize,
    /// Throttle: events per second of wall time over all splits; `None`: as fast as possible.
    pub rate_limit: Option<f64>,
}

impl NexmarkConfig {
    /// `2h` ms, h being the event time in which 100 more auctions are generated (3 per
    /// cycle): an auction expires `1 + uniform[0, 2h)` ms after it opens.
    fn auction_spread(&self) -> u64 {
        ((2 * 100 * CYCLE * 1000) / (3 * self.event_rate.max(1))).max(1)
    }

    /// The longest an auction stays open (`expires - date_time`), in ms.
    pub fn max_auction_duration_ms(&self) -> i64 {
        self.auction_spread() as i64
    }
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            events: Some(1_000_000),
            event_rate: 100_000,
            base_time: 1_704_067_200_000,
            seed: 0,
            batch_size: 8192,
            rate_limit: None,
        }
    }
}

impl NexmarkConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: &str| {
            Err(ConnectorError::Config {
                connector: "nexmark",
                reason: reason.into(),
            })
        };
        if self.event_rate == 0 {
            return bad("event rate must be positive");
        }
        if self.batch_size == 0 {
            return bad("batch size must be positive");
        }
        if let Some(r) = self.rate_limit {
            if r.is_nan() || r <= 0.0 {
                return bad("rate limit must be a positive number of events per second");
            }
        }
        Ok(())
    }

    /// Event time of event `e`.
    #[inline]
    pub fn date_time(&self, e: u64) -> i64 {
        // u64 arithmetic unless e * 1000 overflows it (128-bit division is slow).
        let ms = match e.checked_mul(1000) {
            Some(x) => x / self.event_rate,
            None => (e as u128 * 1000 / self.event_rate as u128) as u64,
        };
        self.base_time + ms as i64
    }
}

/// Which of Nexmark's three tables a source reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexmarkTable {
    /// People registering.
    Person,
    /// Auctions opening.
    Auction,
    /// Bids.
    Bid,
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

impl NexmarkTable {
    /// The table's Arrow schema (fields as the Nexmark page lists them).
    pub fn schema(self) -> SchemaRef {
        let f = |n: &str, t: DataType| Field::new(n, t, false);
        use DataType::{Int64, Utf8};
        Arc::new(Schema::new(match self {
            NexmarkTable::Person => vec![
                f("id", Int64),
                f("name", Utf8),
                f("email_address", Utf8),
                f("credit_card", Utf8),
                f("city", Utf8),
                f("state", Utf8),
                f("date_time", ts()),
                f("extra", Utf8),
            ],
            NexmarkTable::Auction => vec![
                f("id", Int64),
                f("item_name", Utf8),
                f("description", Utf8),
                f("initial_bid", Int64),
                f("reserve", Int64),
                f("date_time", ts()),
                f("expires", ts()),
                f("seller", Int64),
                f("category", Int64),
                f("extra", Utf8),
            ],
            NexmarkTable::Bid => vec![
                f("auction", Int64),
                f("bidder", Int64),
                f("price", Int64),
                f("channel", Utf8),
                f("url", Utf8),
                f("date_time", ts()),
                f("extra", Utf8),
            ],
        }))
    }

    fn is(self, e: u64) -> bool {
        let r = e % CYCLE;
        match self {
            NexmarkTable::Person => r == 0,
            NexmarkTable::Auction => (1..=3).contains(&r),
            NexmarkTable::Bid => r >= 4,
        }
    }
}

/// Id of the newest person at event `e`.
#[inline]
pub fn last_person(e: u64) -> i64 {
    (e / CYCLE) as i64 + FIRST_ID
}

/// Id of the newest auction at event `e` (the first auction's id before any exists).
#[inline]
pub fn last_auction(e: u64) -> i64 {
    let block = (e / CYCLE) as i64;
    match e % CYCLE {
        0 => (block * 3 - 1 + FIRST_ID).max(FIRST_ID),
        r @ 1..=3 => block * 3 + (r as i64 - 1) + FIRST_ID,
        _ => block * 3 + 2 + FIRST_ID,
    }
}

/// A log-uniform price in cents, 100 to 10^8.
#[inline]
fn price(rng: &mut RecordRng) -> i64 {
    // powf, literally the page's formula: a faster exp() could round a price differently.
    (10f64.powf(rng.unit() * 6.0) * 100.0).round() as i64
}

/// A random person who is active: among the last 1000 plus 10 ahead.
#[inline]
fn active_person(rng: &mut RecordRng, last: i64) -> i64 {
    rng.range((last - 1000).max(FIRST_ID), last + 10)
}

fn extra(rng: &mut RecordRng, current: usize, desired: usize, out: &mut String) {
    if current >= desired {
        return;
    }
    let avg = desired - current;
    let delta = (avg / 5).max(1) as i64;
    let len = (avg as i64 + rng.range(-delta, delta)).max(0) as usize;
    rng.letters(len, out);
}

/// Builds a batch of one table from a range of events.
struct Builder {
    table: NexmarkTable,
    /// Which of the table's string columns to build (a projection skips the others; their
    /// random draws are still made, so every other value stays the same).
    want: Vec<bool>,
    ints: Vec<Int64Builder>,
    strings: Vec<StringBuilder>,
    times: Vec<TimestampMillisecondBuilder>,
    scratch: String,
}

impl Builder {
    fn new(table: NexmarkTable, capacity: usize, want: Vec<bool>) -> Self {
        let (ints, strings, times) = match table {
            NexmarkTable::Bid => (3, 3, 1),
            NexmarkTable::Auction => (5, 3, 2),
            NexmarkTable::Person => (1, 6, 1),
        };
        Builder {
            table,
            want,
            ints: (0..ints)
                .map(|_| Int64Builder::with_capacity(capacity))
                .collect(),
            strings: (0..strings)
                .map(|_| StringBuilder::with_capacity(capacity, capacity * 64))
                .collect(),
            times: (0..times)
                .map(|_| TimestampMillisecondBuilder::with_capacity(capacity))
                .collect(),
            scratch: String::with_capacity(512),
        }
    }

    fn push(&mut self, cfg: &NexmarkConfig, e: u64) {
        let mut rng = RecordRng::new(cfg.seed, e);
        let date_time = cfg.date_time(e);
        let s = &mut self.scratch;
        match self.table {
            NexmarkTable::Bid => {
                let last_a = last_auction(e);
                let auction = if rng.chance(1, 2) {
                    (last_a / 100) * 100
                } else {
                    rng.range((last_a - 100).max(FIRST_ID), last_a + 10)
                };
                let last_p = last_person(e);
                let bidder = if rng.chance(3, 4) {
                    (last_p / 100) * 100 + 1
                } else {
                    active_person(&mut rng, last_p)
                };
                let price = if self.want[2] {
                    price(&mut rng)
                } else {
                    // The same one draw as a price takes, without its powf.
                    rng.next_u64();
                    0
                };
                let hot = rng.chance(1, 2);
                let channel_index = if hot { rng.below(4) } else { rng.below(10_000) };
                let channel_len = if hot {
                    HOT_CHANNELS[channel_index as usize].len()
                } else {
                    "channel-".len() + channel_index.max(1).ilog10() as usize + 1
                };
                if self.want[3] {
                    s.clear();
                    if hot {
                        s.push_str(HOT_CHANNELS[channel_index as usize]);
                    } else {
                        use std::fmt::Write;
                        write!(s, "channel-{channel_index}").expect("writing to a String");
                    }
                    self.strings[0].append_value(&*s);
                }
                const URL_LEN: usize =
                    "https://www.nexmark.com/".len() + 5 + 1 + 5 + "/item.htm?query=1".len();
                s.clear();
                if self.want[4] {
                    s.push_str("https://www.nexmark.com/");
                    rng.letters(5, s);
                    s.push('/');
                    rng.letters(5, s);
                    s.push_str("/item.htm?query=1");
                    self.strings[1].append_value(&*s);
                } else {
                    // The same two draws as the five-letter parts take.
                    rng.next_u64();
                    rng.next_u64();
                }
                if self.want[6] {
                    s.clear();
                    extra(&mut rng, 32 + channel_len + URL_LEN, 100, s);
                    self.strings[2].append_value(&*s);
                }
                self.ints[0].append_value(auction);
                self.ints[1].append_value(bidder);
                self.ints[2].append_value(price);
                self.times[0].append_value(date_time);
            }
            NexmarkTable::Auction => {
                let id = last_auction(e);
                let initial_bid = price(&mut rng);
                let reserve = initial_bid + price(&mut rng);
                let expires = date_time + 1 + rng.below(cfg.auction_spread()) as i64;
                let last_p = last_person(e);
                let seller = if rng.chance(3, 4) {
                    (last_p / 100) * 100
                } else {
                    active_person(&mut rng, last_p)
                };
                let category = 10 + rng.below(5) as i64;
                s.clear();
                rng.letters(12, s);
                self.strings[0].append_value(&*s);
                s.clear();
                rng.letters(40, s);
                self.strings[1].append_value(&*s);
                s.clear();
                extra(&mut rng, 12 + 40 + 48, 500, s);
                self.strings[2].append_value(&*s);
                self.ints[0].append_value(id);
                self.ints[1].append_value(initial_bid);
                self.ints[2].append_value(reserve);
                self.ints[3].append_value(seller);
                self.ints[4].append_value(category);
                self.times[0].append_value(date_time);
                self.times[1].append_value(expires);
            }
            NexmarkTable::Person => {
                let id = last_person(e);
                let first = FIRST_NAMES[rng.below(11) as usize];
                let last = LAST_NAMES[rng.below(9) as usize];
                s.clear();
                s.push_str(first);
                s.push(' ');
                s.push_str(last);
                self.strings[0].append_value(&*s);
                let name_len = s.len();
                s.clear();
                s.push_str(&first.to_lowercase());
                s.push('.');
                s.push_str(&last.to_lowercase());
                s.push('@');
                rng.letters(6, s);
                s.push_str(".com");
                self.strings[1].append_value(&*s);
                let email_len = s.len();
                s.clear();
                for g in 0..4 {
                    if g > 0 {
                        s.push(' ');
                    }
                    let n = rng.below(10_000);
                    use std::fmt::Write;
                    write!(s, "{n:04}").expect("writing to a String");
                }
                self.strings[2].append_value(&*s);
                let city = CITIES[rng.below(10) as usize];
                let state = STATES[rng.below(6) as usize];
                self.strings[3].append_value(city);
                self.strings[4].append_value(state);
                s.clear();
                extra(
                    &mut rng,
                    16 + name_len + email_len + 19 + city.len() + 2,
                    200,
                    s,
                );
                self.strings[5].append_value(&*s);
                self.ints[0].append_value(id);
                self.times[0].append_value(date_time);
            }
        }
    }

    fn projection(&self) -> Vec<usize> {
        (0..self.want.len()).filter(|&c| self.want[c]).collect()
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let mut i = self
            .ints
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef);
        let mut s = self
            .strings
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef);
        let mut t = self
            .times
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef);
        let next =
            |it: &mut dyn Iterator<Item = ArrayRef>| it.next().expect("one builder per column");
        let columns: Vec<ArrayRef> = match self.table {
            NexmarkTable::Bid => vec![
                next(&mut i),
                next(&mut i),
                next(&mut i),
                next(&mut s),
                next(&mut s),
                next(&mut t),
                next(&mut s),
            ],
            NexmarkTable::Auction => {
                let (id, ib, res, seller) =
                    (next(&mut i), next(&mut i), next(&mut i), next(&mut i));
                let category = next(&mut i);
                vec![
                    id,
                    next(&mut s),
                    next(&mut s),
                    ib,
                    res,
                    next(&mut t),
                    next(&mut t),
                    seller,
                    category,
                    next(&mut s),
                ]
            }
            NexmarkTable::Person => {
                let id = next(&mut i);
                vec![
                    id,
                    next(&mut s),
                    next(&mut s),
                    next(&mut s),
                    next(&mut s),
                    next(&mut s),
                    next(&mut t),
                    next(&mut s),
                ]
            }
        };
        // Columns a projection skipped were never built (they are empty here).
        let projection = self.projection();
        let schema = self.table.schema().project(&projection)?;
        let columns = projection.iter().map(|&c| columns[c].clone()).collect();
        Ok(RecordBatch::try_new(Arc::new(schema), columns)?)
    }
}

/// The Nexmark generator as a source of one table.
#[derive(Debug, Clone)]
pub struct NexmarkSource {
    config: NexmarkConfig,
    table: NexmarkTable,
    /// Which columns of the table to produce (all by default).
    want: Vec<bool>,
}

impl NexmarkSource {
    /// A source of `table` generated with `config`.
    pub fn try_new(config: NexmarkConfig, table: NexmarkTable) -> Result<Self> {
        config.validate()?;
        let want = vec![true; table.schema().fields().len()];
        Ok(NexmarkSource {
            config,
            table,
            want,
        })
    }

    /// Generates events `range` of `table` as one batch (what a split does per chunk).
    pub fn generate(&self, range: std::ops::Range<u64>) -> Result<RecordBatch> {
        let mut b = Builder::new(
            self.table,
            (range.end - range.start) as usize,
            self.want.clone(),
        );
        for e in range.filter(|&e| self.table.is(e)) {
            b.push(&self.config, e);
        }
        b.finish()
    }
}

impl Source for NexmarkSource {
    fn name(&self) -> String {
        "nexmark".into()
    }
    fn schema(&self) -> SchemaRef {
        let columns: Vec<usize> = (0..self.want.len()).filter(|&c| self.want[c]).collect();
        Arc::new(
            self.table
                .schema()
                .project(&columns)
                .expect("indices come from the schema"),
        )
    }
    fn with_projection(&self, columns: &[usize]) -> Option<SourceRef> {
        let mut want = vec![false; self.want.len()];
        for &c in columns {
            *want.get_mut(c)? = true;
        }
        Some(Arc::new(NexmarkSource {
            want,
            ..self.clone()
        }))
    }
    fn restore_reader(
        &self,
        split: SubtaskInfo,
        positions: &[serde_json::Value],
    ) -> oxflow_runtime::Result<Box<dyn SourceReader>> {
        let c = &self.config;
        let chunks = (c.batch_size, c.events, c.rate_limit);
        GeneratedReader::boxed(self.clone(), split, chunks, positions)
    }
}

impl ChunkGenerator for NexmarkSource {
    fn generate(&self, range: std::ops::Range<u64>) -> Result<RecordBatch> {
        NexmarkSource::generate(self, range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::compute::concat_batches;
    use oxflow_runtime::source::SourcePoll;

    fn read_all(source: &NexmarkSource, p: usize) -> RecordBatch {
        let mut batches = vec![];
        for index in 0..p {
            let mut r = source
                .create_reader(SubtaskInfo {
                    index,
                    parallelism: p,
                    max_parallelism: 128,
                })
                .unwrap();
            while let SourcePoll::Batch(b) = r.poll_next().unwrap() {
                batches.push(b);
            }
        }
        concat_batches(&source.schema(), &batches).unwrap()
    }

    fn canonical(b: &RecordBatch) -> Vec<String> {
        let mut out = Vec::new();
        crate::json::encode_json_lines(b, &mut out).unwrap();
        let mut lines: Vec<String> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn same_events_at_any_parallelism_and_batch_size() {
        for table in [
            NexmarkTable::Bid,
            NexmarkTable::Auction,
            NexmarkTable::Person,
        ] {
            let cfg = NexmarkConfig {
                events: Some(5_000),
                batch_size: 100,
                ..Default::default()
            };
            let one = canonical(&read_all(
                &NexmarkSource::try_new(cfg.clone(), table).unwrap(),
                1,
            ));
            for (p, batch_size) in [(2, 100), (3, 7), (4, 1000)] {
                let c = NexmarkConfig {
                    batch_size,
                    ..cfg.clone()
                };
                let other = canonical(&read_all(&NexmarkSource::try_new(c, table).unwrap(), p));
                assert_eq!(one, other, "{table:?} at parallelism {p}");
            }
        }
    }

    #[test]
    fn a_projected_source_yields_the_same_values() {
        let cfg = NexmarkConfig {
            events: Some(3_000),
            ..Default::default()
        };
        for table in [
            NexmarkTable::Bid,
            NexmarkTable::Auction,
            NexmarkTable::Person,
        ] {
            let full_source = NexmarkSource::try_new(cfg.clone(), table).unwrap();
            let full = full_source.generate(0..3_000).unwrap();
            let n = full.num_columns();
            for columns in [vec![0, 5], vec![n - 1], vec![1, 2, 3], (0..n).collect()] {
                let projected = full_source.with_projection(&columns).unwrap();
                assert_eq!(
                    projected.schema(),
                    Arc::new(full.schema().project(&columns).unwrap())
                );
                let mut r = projected
                    .create_reader(SubtaskInfo {
                        index: 0,
                        parallelism: 1,
                        max_parallelism: 128,
                    })
                    .unwrap();
                let SourcePoll::Batch(b) = r.poll_next().unwrap() else {
                    panic!("a batch")
                };
                assert_eq!(b, full.project(&columns).unwrap(), "{table:?} {columns:?}");
            }
            assert!(
                full_source.with_projection(&[n]).is_none(),
                "a column past the end"
            );
        }
    }

    #[test]
    fn proportions_ids_and_times_are_as_specified() {
        let cfg = NexmarkConfig {
            events: Some(50_000),
            ..Default::default()
        };
        let count = |t| read_all(&NexmarkSource::try_new(cfg.clone(), t).unwrap(), 1).num_rows();
        assert_eq!(count(NexmarkTable::Person), 1_000);
        assert_eq!(count(NexmarkTable::Auction), 3_000);
        assert_eq!(count(NexmarkTable::Bid), 46_000);
        let people = NexmarkSource::try_new(cfg.clone(), NexmarkTable::Person)
            .unwrap()
            .generate(0..100)
            .unwrap();
        let ids = people
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1000, 1001]);
        let auctions = NexmarkSource::try_new(cfg.clone(), NexmarkTable::Auction)
            .unwrap()
            .generate(50..100)
            .unwrap();
        let ids = auctions
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.values(), &[1003, 1004, 1005]);
        assert_eq!(cfg.date_time(100_000), cfg.base_time + 1000);
        let states = people
            .column(5)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert!(states.iter().flatten().all(|s| STATES.contains(&s)));
    }

    #[test]
    fn bids_reference_existing_or_near_future_ids_and_prices_are_bounded() {
        let cfg = NexmarkConfig {
            events: Some(20_000),
            ..Default::default()
        };
        let src = NexmarkSource::try_new(cfg, NexmarkTable::Bid).unwrap();
        let bids = src.generate(0..20_000).unwrap();
        let price = bids
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert!(price
            .values()
            .iter()
            .all(|p| (100..=100_000_000).contains(p)));
        let auction = bids
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let max_auction = last_auction(19_999) + 10;
        assert!(auction
            .values()
            .iter()
            .all(|a| (1000..max_auction).contains(a)));
        // Four 8-byte numbers, channel, url and extra: about 100 bytes a bid.
        let strings = |c: usize| {
            bids.column(c)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .iter()
                .map(|s| s.unwrap().len())
                .sum::<usize>()
        };
        let avg = (32 * bids.num_rows() + strings(3) + strings(4) + strings(6)) as f64
            / bids.num_rows() as f64;
        assert!(
            (90.0..110.0).contains(&avg),
            "a bid is about 100 bytes: {avg}"
        );
        let hot = (0..auction.len())
            .filter(|&i| auction.value(i) % 100 == 0)
            .count();
        assert!(
            hot as f64 / auction.len() as f64 > 0.45,
            "half the bids go to the hot auction"
        );
    }
}
