//! Streaming SQL in Flink's dialect: scripts of `CREATE TABLE`, `CREATE VIEW`, `SET`,
//! `INSERT INTO` and `EXPLAIN`, planned into the same pipelines the Rust API builds.
//!
//! How a statement becomes a job:
//! 1. [`parse`] reads the script (Flink's DDL on top of sqlparser; queries are sqlparser's).
//! 2. DDL and `SET` change the [`SqlSession`]: its tables (a connector and its options,
//!    checked when declared), views and settings.
//! 3. An `INSERT INTO` (or a query alone, printed) is planned by [`plan`] bottom-up into a
//!    [`Stream`](crate::Stream) through the public API: a table scan becomes a source with its
//!    watermarks, `WHERE` a filter, the select list a projection, `GROUP BY` over a window
//!    table function (or a legacy group window) a window aggregate, and so on. Expressions
//!    become DataFusion expressions, so they run exactly as the Rust API's do.
//! 4. The job's [`JobSpec`] is the result: plan as data, run embedded
//!    ([`SqlSession::job`]) or submitted to a server as any spec is.
//!
//! What Flink SQL has and Oxflow does not yet is refused with the construct's line and
//! column; docs/sql.md lists both, point by point.

mod catalog;
mod parse;
mod plan;

use crate::error::{OxflowError, Result};
use crate::spec::{CheckpointSpec, JobSpec, Registry};
use crate::{Job, Pipeline};
use catalog::Catalog;
use datafusion::sql::sqlparser::tokenizer::Location;
use parse::Statement;
use std::collections::BTreeMap;
use std::path::Path;

/// A value and where the script says it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Located<T> {
    pub value: T,
    pub at: Location,
}

impl<T> Located<T> {
    pub fn new(value: T, at: Location) -> Self {
        Located { value, at }
    }
}

/// An error of the SQL front end, with no position (sqlparser's own messages carry one).
pub(crate) fn sql_error(message: impl Into<String>) -> OxflowError {
    OxflowError::Sql(message.into())
}

/// An error at `location` of the script.
pub(crate) fn at(location: Location, message: impl AsRef<str>) -> OxflowError {
    if location.line == 0 {
        return sql_error(message.as_ref());
    }
    OxflowError::Sql(format!(
        "line {}, column {}: {}",
        location.line,
        location.column,
        message.as_ref()
    ))
}

/// What a statement of a script gave.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlOutput {
    /// A job to run: an `INSERT INTO`, or a query alone (its rows printed).
    Job(Box<JobSpec>),
    /// The plan an `EXPLAIN` describes.
    Explain(String),
}

/// A SQL session, as Flink's SQL client keeps one: tables, views and settings declared so
/// far. Statements run in order; each `INSERT INTO` is planned into a job.
pub struct SqlSession {
    pipeline: Pipeline,
    catalog: Catalog,
    settings: BTreeMap<String, String>,
    check: Option<ConnectorCheck>,
}

/// A check of each table's connector, given as a one-table spec (the table as source, or a
/// generator if it cannot be read; as sink, or a blackhole), before anything reads it.
pub type ConnectorCheck = Box<dyn Fn(&JobSpec) -> Result<()> + Send>;

/// The settings `SET` takes, with what each does.
const SETTINGS: [(&str, &str); 7] = [
    (
        "table.exec.state.ttl",
        "how long a regular join keeps a row, in event time ('1 h'; default: forever)",
    ),
    ("parallelism.default", "subtasks per stage"),
    ("pipeline.max-parallelism", "key groups"),
    (
        "execution.checkpointing.interval",
        "checkpoint interval ('10 s', '500 ms', '1 min')",
    ),
    (
        "execution.runtime-mode",
        "'streaming' (the only mode: bounded sources end the job)",
    ),
    ("table.local-time-zone", "'UTC' (the only zone)"),
    (
        "state.backend.rocksdb.memory-budget-mb",
        "keep state in RocksDB beyond this many MiB per operator subtask",
    ),
];

impl Default for SqlSession {
    fn default() -> Self {
        Self::new(Pipeline::new())
    }
}

impl SqlSession {
    /// A session whose jobs start from `pipeline`'s settings (parallelism, key groups).
    pub fn new(pipeline: Pipeline) -> Self {
        SqlSession {
            pipeline,
            catalog: Catalog::default(),
            settings: BTreeMap::new(),
            check: None,
        }
    }

    /// Checks every table's connector with `check` when it is declared (a server refuses
    /// paths and properties its policy does not allow before planning touches them).
    pub fn with_connector_check(mut self, check: ConnectorCheck) -> Self {
        self.check = Some(check);
        self
    }

    /// The one-table spec [`ConnectorCheck`] is given for table `name`.
    fn probe(&self, name: &str) -> Option<JobSpec> {
        let table = self.catalog.tables.get(name)?;
        let source = table.source().unwrap_or(crate::spec::SourceSpec::Nexmark {
            table: "bid".into(),
            events: Some(0),
            event_rate: None,
            seed: None,
            rate: None,
        });
        Some(JobSpec {
            parallelism: None,
            max_parallelism: None,
            stream: crate::spec::StreamSpec {
                source,
                watermarks: None,
                steps: Vec::new(),
            },
            sink: table.sink().unwrap_or(crate::spec::SinkSpec::Blackhole),
            checkpoints: None,
            restart: None,
            state: None,
        })
    }

    /// Runs a script's statements in order. DDL and `SET` change the session; every
    /// `INSERT INTO` or query alone gives a job's spec, and every `EXPLAIN` a plan.
    pub fn execute(&mut self, script: &str) -> Result<Vec<SqlOutput>> {
        let mut out = Vec::new();
        for statement in parse::parse_script(script)? {
            match statement {
                Statement::CreateTable(def) => {
                    let name = def.name.clone();
                    self.catalog.create_table(*def)?;
                    if let (Some(check), Some(probe)) = (&self.check, self.probe(&name.value)) {
                        if let Err(e) = check(&probe) {
                            self.catalog.tables.remove(&name.value);
                            return Err(at(name.at, format!("table `{}`: {e}", name.value)));
                        }
                    }
                }
                Statement::CreateView {
                    name,
                    columns,
                    query,
                } => self.catalog.create_view(name, columns, query)?,
                Statement::Set { key, value } => self.set(key, value)?,
                Statement::Insert { .. } | Statement::Query(_) => {
                    out.push(SqlOutput::Job(Box::new(self.plan(&statement)?)))
                }
                Statement::Explain(inner) => {
                    let spec = self.plan(&inner)?;
                    let job = self.job(&spec, None)?;
                    out.push(SqlOutput::Explain(job.plan().to_string()));
                }
            }
        }
        Ok(out)
    }

    /// The one job a script defines (its other statements being DDL, `SET` or `EXPLAIN`).
    pub fn job_spec(&mut self, script: &str) -> Result<JobSpec> {
        let mut jobs: Vec<JobSpec> = self
            .execute(script)?
            .into_iter()
            .filter_map(|o| match o {
                SqlOutput::Job(spec) => Some(*spec),
                SqlOutput::Explain(_) => None,
            })
            .collect();
        match jobs.len() {
            1 => Ok(jobs.remove(0)),
            0 => Err(sql_error("the script has no INSERT INTO or query to run")),
            n => Err(sql_error(format!(
                "the script has {n} INSERT INTO statements; running several as one job (a statement set) is not supported yet"
            ))),
        }
    }

    /// The job a spec from this session describes, with checkpoints in `checkpoint_dir` if
    /// the spec asks for them.
    pub fn job(&self, spec: &JobSpec, checkpoint_dir: Option<&Path>) -> Result<Job> {
        self.pipeline
            .clone()
            .job_from_spec(spec, &Registry::new(), checkpoint_dir)
    }

    fn set(&mut self, key: Located<String>, value: String) -> Result<()> {
        let Some(_) = SETTINGS.iter().find(|(k, _)| *k == key.value) else {
            let known: Vec<&str> = SETTINGS.iter().map(|(k, _)| *k).collect();
            return Err(at(
                key.at,
                format!(
                    "setting '{}' is not supported{}; supported: {}",
                    key.value,
                    catalog::did_you_mean(&key.value, &known),
                    known.join(", ")
                ),
            ));
        };
        let bad = |why: &str| at(key.at, format!("'{}' = '{value}': {why}", key.value));
        match key.value.as_str() {
            "parallelism.default" | "pipeline.max-parallelism" => {
                let n: usize = value.trim().parse().map_err(|_| bad("not a number"))?;
                if n == 0 {
                    return Err(bad("must be at least 1"));
                }
                if key.value == "parallelism.default" {
                    self.pipeline = self.pipeline.clone().with_parallelism(n);
                } else {
                    self.pipeline = self.pipeline.clone().with_max_parallelism(n);
                }
            }
            "table.exec.state.ttl" => {
                catalog::duration_ms(&value).map_err(|e| bad(&e))?;
            }
            "execution.checkpointing.interval"
                if catalog::duration_ms(&value).map_err(|e| bad(&e))? == 0 =>
            {
                return Err(bad("must be at least 1 ms"));
            }
            "execution.runtime-mode" if !value.eq_ignore_ascii_case("streaming") => {
                return Err(bad("Oxflow runs streaming mode only"))
            }
            "table.local-time-zone" if value != "UTC" => {
                return Err(bad("Oxflow keeps time in UTC only"))
            }
            "state.backend.rocksdb.memory-budget-mb" => {
                let mb: u64 = value.trim().parse().map_err(|_| bad("not a number"))?;
                if mb == 0 {
                    return Err(bad("must be at least 1"));
                }
            }
            _ => {}
        }
        self.settings.insert(key.value, value);
        Ok(())
    }

    /// Plans an `INSERT INTO` or a query into its spec. The sink is not built while
    /// planning (a file sink makes its directory): the spec names it.
    fn plan(&self, statement: &Statement) -> Result<JobSpec> {
        let ttl = self
            .settings
            .get("table.exec.state.ttl")
            .map(|v| catalog::duration_ms(v).map_err(sql_error))
            .transpose()?
            .filter(|ms| *ms > 0)
            .map(std::time::Duration::from_millis);
        let planner = plan::Planner::new(&self.catalog, self.pipeline.clone(), ttl);
        let mut spec = match statement {
            Statement::Insert {
                table,
                columns,
                query,
            } => planner.insert(table, columns, query)?,
            Statement::Query(query) => planner.print(query)?,
            _ => return Err(sql_error("only INSERT INTO and queries are planned")),
        };
        if let Some(interval) = self.settings.get("execution.checkpointing.interval") {
            spec.checkpoints = Some(CheckpointSpec {
                interval_ms: catalog::duration_ms(interval).map_err(sql_error)?,
                min_pause_ms: None,
                retained: None,
            });
        }
        if let Some(mb) = self.settings.get("state.backend.rocksdb.memory-budget-mb") {
            spec.state = Some(crate::spec::StateSpec {
                memory_budget_mb: mb.trim().parse().map_err(|_| sql_error("bad budget"))?,
            });
        }
        Ok(spec)
    }
}

impl Pipeline {
    /// Plans a Flink SQL script (`CREATE TABLE`, views, `SET`, and one `INSERT INTO`) into a
    /// job on this pipeline's settings; `checkpoint_dir` is where its checkpoints go if the
    /// script sets `execution.checkpointing.interval`.
    pub fn sql(self, script: &str, checkpoint_dir: Option<&Path>) -> Result<Job> {
        let mut session = SqlSession::new(self);
        let spec = session.job_spec(script)?;
        session.job(&spec, checkpoint_dir)
    }
}
