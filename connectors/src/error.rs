//! The connectors' one error type.

use oxflow_runtime::RuntimeError;

/// Result with [`ConnectorError`].
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// What can go wrong in a source or sink.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A record could not be parsed; says which file and line.
    #[error("{path}:{line}: {reason}")]
    BadRecord {
        /// The file.
        path: String,
        /// 1-based line number.
        line: u64,
        /// What was wrong.
        reason: String,
    },
    /// Input that is not a line of a file could not be read: a Parquet row group, a NATS
    /// message; says where.
    #[error("{at}: {reason}")]
    BadInput {
        /// Where: a file and row group, a stream, subject and sequence.
        at: String,
        /// What was wrong.
        reason: String,
    },
    /// A connector setting is invalid.
    #[error("invalid {connector} config: {reason}")]
    Config {
        /// Which connector.
        connector: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// An I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (with the path).
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// A Kafka client request failed.
    #[error("kafka: {context}: {source}")]
    Kafka {
        /// What was being done (brokers, topic, partition).
        context: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// Another producer with the sink's transactional id took over (a second instance of the
    /// job, or a zombie's successor): fatal for this attempt, never retried in place.
    #[error("kafka: {context}: fenced by another producer with the same transactional id (is a second instance of this job running?): {source}")]
    Fenced {
        /// What was being done.
        context: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// Records sent to Kafka were not written (librdkafka reported it after the send).
    #[error("kafka: {0}")]
    Delivery(String),
    /// A Kafka record could not be decoded (with the `fail` policy).
    #[error("bad record in topic {topic} partition {partition} at offset {offset}: {reason}")]
    BadKafkaRecord {
        /// Its topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
        /// What was wrong.
        reason: String,
    },
    /// A NATS request failed.
    #[error("nats: {context}: {reason}")]
    Nats {
        /// What was being done (servers, stream, subject).
        context: String,
        /// async-nats' error.
        reason: String,
    },
    /// A RabbitMQ request failed.
    #[error("rabbitmq: {context}: {reason}")]
    RabbitMq {
        /// What was being done (server, queue).
        context: String,
        /// lapin's error.
        reason: String,
    },
    /// Arrow failed (schema inference, encoding).
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

impl ConnectorError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ConnectorError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<ConnectorError> for RuntimeError {
    fn from(e: ConnectorError) -> Self {
        match e {
            ConnectorError::Io { context, source } => RuntimeError::Io { context, source },
            ConnectorError::Arrow(a) => RuntimeError::Arrow(a),
            ConnectorError::BadRecord { .. }
            | ConnectorError::BadKafkaRecord { .. }
            | ConnectorError::BadInput { .. } => RuntimeError::BadInput(e.to_string()),
            ConnectorError::Kafka { .. }
            | ConnectorError::Delivery(_)
            | ConnectorError::Nats { .. }
            | ConnectorError::RabbitMq { .. } => RuntimeError::Connector(e.to_string()),
            ConnectorError::Config { .. } => RuntimeError::InvalidJob(e.to_string()),
            ConnectorError::Fenced { .. } => RuntimeError::Fenced(e.to_string()),
        }
    }
}
