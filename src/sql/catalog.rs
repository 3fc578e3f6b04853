//! The session's tables and views, and what each table's connector options mean: Flink's
//! connector names and option keys, turned into Oxflow's source and sink specs.
//!
//! A table's options are checked when it is declared (an unknown key is refused with the
//! nearest known one), so a script fails at its `CREATE TABLE`, not when a job starts.

use super::parse::{ColumnKind, SqlType, TableDef};
use super::{at, Located};
use crate::error::Result;
use crate::spec::{ColumnSpec, SinkSpec, SourceSpec};
use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::{Ident, Query};
use oxflow_connectors::nexmark::NexmarkTable;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Tables and views by name (Flink's names are case-sensitive; so are these).
#[derive(Default)]
pub(crate) struct Catalog {
    pub tables: BTreeMap<String, Table>,
    pub views: BTreeMap<String, View>,
}

/// A declared table and its connector.
pub(crate) struct Table {
    pub def: TableDef,
    pub connector: Connector,
}

/// A declared view.
pub(crate) struct View {
    pub columns: Vec<Ident>,
    pub query: Box<Query>,
}

/// What a table reads or writes.
#[derive(Debug, Clone)]
pub(crate) enum Connector {
    /// Nexmark's generator as one table of all events (`event_type`, `person`, `auction`,
    /// `bid`); a scan reads one kind of event.
    Nexmark {
        events: Option<u64>,
        event_rate: Option<u64>,
        /// Oxflow's own option: events per second of wall time.
        rate_limit: Option<u64>,
    },
    /// Files: a source reads a file or a directory's `part-*` files, a sink writes them.
    Filesystem {
        path: String,
        path_regex: Option<String>,
        format: String,
        max_file_mb: Option<u64>,
        rollover_ms: Option<u64>,
    },
    /// A Kafka topic of JSON records, as a `kafka://` URI for a source and for a sink.
    Kafka { source: String, sink: String },
    /// Rows printed to standard output.
    Print,
    /// Rows discarded.
    Blackhole,
}

/// Connectors Oxflow has, and the option keys each takes besides `connector`.
const CONNECTORS: [(&str, &[&str]); 5] = [
    (
        "nexmark",
        &[
            "events.num",
            "first-event.rate",
            "next-event.rate",
            "person.proportion",
            "auction.proportion",
            "bid.proportion",
            "rate-limit",
        ],
    ),
    (
        "filesystem",
        &[
            "path",
            "format",
            "json.timestamp-format.standard",
            "source.path.regex-pattern",
            "sink.rolling-policy.file-size",
            "sink.rolling-policy.rollover-interval",
        ],
    ),
    (
        "kafka",
        &[
            "topic",
            "properties.bootstrap.servers",
            "properties.group.id",
            "scan.startup.mode",
            "scan.startup.timestamp-millis",
            "format",
            "value.format",
            "sink.delivery-guarantee",
        ],
    ),
    ("print", &[]),
    ("blackhole", &[]),
];

/// `, did you mean 'x'?` for the candidate nearest `word`, if one is near enough.
pub(crate) fn did_you_mean(word: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(2))
        .min()
        .map(|(_, c)| format!(", did you mean '{c}'?"))
        .unwrap_or_default()
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The leading whole number of `text`, its unit (lower case, trimmed) and the trimmed text;
/// the error says `text` is not `what`.
fn number_and_unit(text: &str, what: &str) -> std::result::Result<(u64, String, String), String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n = number
        .parse()
        .map_err(|_| format!("`{text}` is not {what}"))?;
    Ok((n, unit.trim().to_ascii_lowercase(), text.to_string()))
}

/// Milliseconds of a Flink duration: `10 s`, `500ms`, `1 min`, `2 h`, `1 d`, or a bare
/// number of milliseconds.
pub(crate) fn duration_ms(text: &str) -> std::result::Result<u64, String> {
    let (n, unit, text) = number_and_unit(text, "a duration such as '10 s' or '500 ms'")?;
    let unit_ms: u64 = match unit.as_str() {
        "" | "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
        "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        other => return Err(format!("unknown time unit `{other}` in `{text}`")),
    };
    n.checked_mul(unit_ms)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// MiB of a Flink memory size (`128MB`, `1 gb`, `512kb`), rounded up.
fn memory_mb(text: &str) -> std::result::Result<u64, String> {
    let (n, unit, text) = number_and_unit(text, "a size such as '128MB'")?;
    let bytes: u64 = match unit.as_str() {
        "" | "b" | "bytes" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit `{other}` in `{text}`")),
    };
    Ok(n.saturating_mul(bytes).div_ceil(1 << 20))
}

/// The Arrow type of a scalar SQL type.
pub(crate) fn arrow_type(ty: &SqlType) -> Option<DataType> {
    use datafusion::arrow::datatypes::TimeUnit;
    Some(match ty {
        SqlType::Scalar("int64") => DataType::Int64,
        SqlType::Scalar("int32") => DataType::Int32,
        SqlType::Scalar("float64") => DataType::Float64,
        SqlType::Scalar("bool") => DataType::Boolean,
        SqlType::Scalar("string") => DataType::Utf8,
        SqlType::Scalar("timestamp_ms") => DataType::Timestamp(TimeUnit::Millisecond, None),
        _ => return None,
    })
}

impl Catalog {
    /// Whether `name` is a table or view already.
    fn taken(&self, name: &Located<String>) -> Result<()> {
        if self.tables.contains_key(&name.value) || self.views.contains_key(&name.value) {
            return Err(at(
                name.at,
                format!("`{}` is already declared in this session", name.value),
            ));
        }
        Ok(())
    }

    pub fn create_table(&mut self, def: TableDef) -> Result<()> {
        self.taken(&def.name)?;
        let connector = connector(&def)?;
        if let Some(w) = &def.watermark {
            if !def.columns.iter().any(|c| c.name.value == w.column.value) {
                return Err(at(
                    w.column.at,
                    format!(
                        "WATERMARK FOR `{}`: table `{}` has no such column",
                        w.column.value, def.name.value
                    ),
                ));
            }
        }
        for key in &def.primary_key {
            if !def.columns.iter().any(|c| &c.name.value == key) {
                return Err(at(
                    def.name.at,
                    format!(
                        "PRIMARY KEY column `{key}` is not a column of `{}`",
                        def.name.value
                    ),
                ));
            }
        }
        self.tables
            .insert(def.name.value.clone(), Table { def, connector });
        Ok(())
    }

    pub fn create_view(
        &mut self,
        name: Located<String>,
        columns: Vec<Ident>,
        query: Box<Query>,
    ) -> Result<()> {
        self.taken(&name)?;
        self.views.insert(name.value, View { columns, query });
        Ok(())
    }
}

/// A table's WITH options, with errors that name the option's place.
struct Options<'a> {
    def: &'a TableDef,
    connector: &'a str,
}

impl<'a> Options<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.def
            .options
            .iter()
            .find(|(k, _)| k.value == key)
            .map(|(_, v)| v.as_str())
    }

    fn bad(&self, key: &str, why: impl AsRef<str>) -> crate::OxflowError {
        let place = self
            .def
            .options
            .iter()
            .find(|(k, _)| k.value == key)
            .map(|(k, _)| k.at)
            .unwrap_or(self.def.name.at);
        at(
            place,
            format!(
                "table `{}`: option '{key}': {}",
                self.def.name.value,
                why.as_ref()
            ),
        )
    }

    fn required(&self, key: &str) -> Result<&'a str> {
        self.get(key).ok_or_else(|| {
            at(
                self.def.name.at,
                format!(
                    "table `{}`: connector '{}' needs the option '{key}'",
                    self.def.name.value, self.connector
                ),
            )
        })
    }

    fn number(&self, key: &str) -> Result<Option<u64>> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| self.bad(key, format!("`{v}` is not a whole number")))
            })
            .transpose()
    }
}

fn connector(def: &TableDef) -> Result<Connector> {
    let table = &def.name.value;
    let Some((connector_key, name)) = def.options.iter().find(|(k, _)| k.value == "connector")
    else {
        return Err(at(
            def.name.at,
            format!("table `{table}` names no 'connector' in its WITH options"),
        ));
    };
    let name = name.as_str();
    let names: Vec<&str> = CONNECTORS.iter().map(|(n, _)| *n).collect();
    let Some((_, keys)) = CONNECTORS.iter().find(|(n, _)| *n == name) else {
        let hint = match name {
            "upsert-kafka" => {
                " (it writes updating results, which Oxflow SQL does not produce yet)".to_string()
            }
            "datagen" => " yet".to_string(),
            _ => did_you_mean(name, &names),
        };
        return Err(at(
            connector_key.at,
            format!(
                "table `{table}`: connector '{name}' is not supported{hint}; Oxflow has {}",
                names.join(", ")
            ),
        ));
    };
    for (key, _) in &def.options {
        let known = key.value == "connector"
            || keys.contains(&key.value.as_str())
            || (name == "kafka" && key.value.starts_with("properties."));
        if !known {
            return Err(at(
                key.at,
                format!(
                    "table `{table}`: unknown option '{}' for connector '{name}'{}",
                    key.value,
                    did_you_mean(&key.value, keys)
                ),
            ));
        }
    }
    let o = Options {
        def,
        connector: name,
    };
    Ok(match name {
        "nexmark" => {
            nexmark_columns(def)?;
            let proportions = [
                ("person.proportion", 1),
                ("auction.proportion", 3),
                ("bid.proportion", 46),
            ];
            for (key, ours) in proportions {
                if let Some(p) = o.number(key)? {
                    if p != ours {
                        return Err(o.bad(key, format!("the generator's proportions are fixed at person 1, auction 3, bid 46; {p} differs")));
                    }
                }
            }
            let first = o.number("first-event.rate")?;
            let next = o.number("next-event.rate")?;
            if let (Some(f), Some(n)) = (first, next) {
                if f != n {
                    return Err(o.bad(
                        "next-event.rate",
                        format!("the generator keeps one rate; first-event.rate is {f}"),
                    ));
                }
            }
            let event_rate = first.or(next);
            if event_rate == Some(0) {
                return Err(o.bad("first-event.rate", "must be at least 1"));
            }
            let rate_limit = o.number("rate-limit")?;
            if rate_limit == Some(0) {
                return Err(o.bad("rate-limit", "must be at least 1"));
            }
            Connector::Nexmark {
                events: o.number("events.num")?,
                event_rate,
                rate_limit,
            }
        }
        "filesystem" => {
            let format = o.required("format")?.to_string();
            if !["json", "csv", "parquet"].contains(&format.as_str()) {
                return Err(o.bad("format", format!("`{format}` is not json, csv or parquet")));
            }
            if let Some(v) = o.get("json.timestamp-format.standard") {
                if v != "ISO-8601" {
                    return Err(o.bad(
                        "json.timestamp-format.standard",
                        format!("only ISO-8601 (what Oxflow writes) is read, not `{v}`"),
                    ));
                }
            }
            let size_key = "sink.rolling-policy.file-size";
            let max_file_mb = o
                .get(size_key)
                .map(|v| match memory_mb(v) {
                    Ok(0) => Err(o.bad(size_key, "must be at least 1MB")),
                    Ok(mb) => Ok(mb),
                    Err(e) => Err(o.bad(size_key, e)),
                })
                .transpose()?;
            let interval_key = "sink.rolling-policy.rollover-interval";
            let rollover_ms = o
                .get(interval_key)
                .map(|v| duration_ms(v).map_err(|e| o.bad(interval_key, e)))
                .transpose()?;
            let path_regex = o.get("source.path.regex-pattern").map(str::to_string);
            if let Some(r) = &path_regex {
                regex::Regex::new(r).map_err(|e| {
                    o.bad(
                        "source.path.regex-pattern",
                        format!("not a regular expression: {e}"),
                    )
                })?;
            }
            Connector::Filesystem {
                path: o.required("path")?.to_string(),
                path_regex,
                format,
                max_file_mb,
                rollover_ms,
            }
        }
        "kafka" => kafka(&o)?,
        "print" => Connector::Print,
        _ => Connector::Blackhole,
    })
}

/// A Kafka table's `kafka://` URIs.
fn kafka(o: &Options) -> Result<Connector> {
    let format = o
        .get("format")
        .or(o.get("value.format"))
        .ok_or_else(|| o.bad("format", "a Kafka table needs 'format' = 'json'"))?;
    if format != "json" {
        return Err(o.bad("format", format!("only json is supported, not `{format}`")));
    }
    let servers = o.required("properties.bootstrap.servers")?;
    let topic = o.required("topic")?;
    let mut properties: Vec<String> = Vec::new();
    for (key, value) in &o.def.options {
        if let Some(p) = key.value.strip_prefix("properties.") {
            if p == "bootstrap.servers" {
                continue;
            }
            if value.contains(['&', '=']) {
                return Err(o.bad(&key.value, "a value may not hold `&` or `=`"));
            }
            properties.push(format!("{p}={value}"));
        }
    }
    let mut source = properties.clone();
    match o.get("scan.startup.mode") {
        None | Some("earliest-offset") => source.push("start=earliest".into()),
        Some("latest-offset") => source.push("start=latest".into()),
        Some("timestamp") => {
            let ms = o.required("scan.startup.timestamp-millis")?;
            source.push(format!("start={ms}"));
        }
        Some(other) => {
            return Err(o.bad(
                "scan.startup.mode",
                format!("`{other}` is not supported; use earliest-offset, latest-offset or timestamp (Oxflow keeps offsets in its checkpoints, not in a group)"),
            ))
        }
    }
    match o.get("sink.delivery-guarantee") {
        None | Some("exactly-once") | Some("at-least-once") => {}
        Some(other) => {
            return Err(o.bad(
                "sink.delivery-guarantee",
                format!("`{other}`: Oxflow's Kafka sink is exactly-once with checkpoints and at-least-once without"),
            ))
        }
    }
    let uri = |options: &[String]| {
        let query = if options.is_empty() {
            String::new()
        } else {
            format!("?{}", options.join("&"))
        };
        format!("kafka://{servers}/{topic}{query}")
    };
    let source = uri(&source);
    // The URI is checked as the CLI's are, now rather than when the job starts.
    oxflow_connectors::kafka::KafkaUri::parse(&source)
        .map_err(|e| o.bad("properties.bootstrap.servers", e.to_string()))?;
    Ok(Connector::Kafka {
        source,
        sink: uri(&properties),
    })
}

/// Checks that a nexmark table declares Nexmark's own columns: `event_type INT` and the
/// `person`, `auction` and `bid` ROWs with the generator's fields in its order (names may
/// differ: Nexmark's DDL says `dateTime` where the generator says `date_time`).
fn nexmark_columns(def: &TableDef) -> Result<()> {
    for column in &def.columns {
        let ColumnKind::Physical(ty) = &column.kind else {
            continue;
        };
        let name = column.name.value.as_str();
        let expected = match name {
            "event_type" => {
                if !matches!(ty, SqlType::Scalar("int32") | SqlType::Scalar("int64")) {
                    return Err(at(column.name.at, "event_type is an INT in Nexmark's DDL"));
                }
                continue;
            }
            "person" => NexmarkTable::Person,
            "auction" => NexmarkTable::Auction,
            "bid" => NexmarkTable::Bid,
            other => {
                return Err(at(
                    column.name.at,
                    format!("a nexmark table has the columns event_type, person, auction and bid (and computed ones), not `{other}`"),
                ))
            }
        };
        let schema = expected.schema();
        let SqlType::Row(fields) = ty else {
            return Err(at(
                column.name.at,
                format!("`{name}` is a ROW in Nexmark's DDL"),
            ));
        };
        let want: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        let same = fields.len() == schema.fields().len()
            && fields
                .iter()
                .zip(schema.fields())
                .all(|((_, t), f)| arrow_type(t).as_ref() == Some(f.data_type()));
        if !same {
            return Err(at(
                column.name.at,
                format!(
                    "`{name}` must have the generator's fields in this order: {}",
                    want.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

impl Table {
    /// The source of a table other than nexmark: its physical columns, read by its
    /// connector.
    pub fn source(&self) -> Result<SourceSpec> {
        let name = &self.def.name;
        let columns = self
            .def
            .columns
            .iter()
            .filter_map(|c| match &c.kind {
                ColumnKind::Physical(SqlType::Scalar(ty)) => Some(Ok(ColumnSpec {
                    name: c.name.value.clone(),
                    data_type: ty.to_string(),
                })),
                ColumnKind::Physical(ty @ SqlType::Row(_)) => Some(Err(at(
                    c.name.at,
                    format!(
                        "column `{}` of table `{}`: {} columns are read by the nexmark connector only",
                        c.name.value,
                        name.value,
                        ty.describe()
                    ),
                ))),
                ColumnKind::Computed(_) => None,
            })
            .collect::<Result<Vec<_>>>()?;
        match &self.connector {
            Connector::Filesystem {
                path,
                path_regex,
                format,
                ..
            } => {
                if path.starts_with("s3://") {
                    if path_regex.is_some() {
                        return Err(at(
                            name.at,
                            format!("table `{}`: 'source.path.regex-pattern' is supported on local paths only", name.value),
                        ));
                    }
                    return Ok(SourceSpec::S3 {
                        uri: path.clone(),
                        format: Some(format.clone()),
                        columns: Some(columns),
                    });
                }
                Ok(SourceSpec::File {
                    path: local_path(path),
                    path_regex: path_regex.clone(),
                    format: Some(format.clone()),
                    columns: Some(columns),
                })
            }
            Connector::Kafka { source, .. } => Ok(SourceSpec::Kafka {
                uri: source.clone(),
                columns,
            }),
            Connector::Print | Connector::Blackhole => Err(at(
                name.at,
                format!(
                    "table `{}` is a sink (print or blackhole): it cannot be read",
                    name.value
                ),
            )),
            Connector::Nexmark { .. } => Err(at(
                name.at,
                "a nexmark table is read one kind of event at a time",
            )),
        }
    }

    /// The sink of this table.
    pub fn sink(&self) -> Result<SinkSpec> {
        let name = &self.def.name;
        Ok(match &self.connector {
            Connector::Filesystem {
                path,
                format,
                max_file_mb,
                rollover_ms,
                ..
            } => {
                let format = match format.as_str() {
                    "csv" => {
                        return Err(at(
                            name.at,
                            format!(
                                "table `{}`: the filesystem sink writes json or parquet, not csv",
                                name.value
                            ),
                        ))
                    }
                    other => Some(other.to_string()),
                };
                if path.starts_with("s3://") {
                    SinkSpec::S3 {
                        uri: path.clone(),
                        format,
                        max_file_mb: *max_file_mb,
                        rollover_ms: *rollover_ms,
                    }
                } else {
                    SinkSpec::File {
                        path: local_path(path),
                        format,
                        max_file_mb: *max_file_mb,
                        rollover_ms: *rollover_ms,
                    }
                }
            }
            Connector::Kafka { sink, .. } => SinkSpec::Kafka { uri: sink.clone() },
            Connector::Print => SinkSpec::Stdout,
            Connector::Blackhole => SinkSpec::Blackhole,
            Connector::Nexmark { .. } => {
                return Err(at(
                    name.at,
                    format!(
                        "table `{}` is the nexmark generator: it cannot be written",
                        name.value
                    ),
                ))
            }
        })
    }
}

/// A local path from Flink's `file://` form or a plain path.
fn local_path(path: &str) -> PathBuf {
    PathBuf::from(path.strip_prefix("file://").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_names_are_suggested() {
        assert_eq!(
            did_you_mean("topc", &["topic", "format"]),
            ", did you mean 'topic'?"
        );
        assert_eq!(did_you_mean("zzzzzz", &["topic", "format"]), "");
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn durations_and_sizes_read_as_flink_writes_them() {
        assert_eq!(duration_ms("10 s"), Ok(10_000));
        assert_eq!(duration_ms("500ms"), Ok(500));
        assert_eq!(duration_ms("2 min"), Ok(120_000));
        assert_eq!(duration_ms("250"), Ok(250));
        assert!(duration_ms("ten s").is_err());
        assert!(duration_ms("1 fortnight").is_err());
        assert_eq!(memory_mb("128MB"), Ok(128));
        assert_eq!(memory_mb("1 gb"), Ok(1024));
        assert_eq!(memory_mb("1kb"), Ok(1));
    }
}
