//! Object storage for the file sink and the file sources: S3 and servers that speak its
//! protocol, through the `object_store` crate. Sources read objects by ranged GETs
//! (`crate::input`), never whole.
//!
//! S3 has no rename, so a file cannot be written under a hidden name and renamed at commit as
//! on a local disk. Instead each file is a *multipart upload*: a writer starts the upload when
//! it opens the file and sends a part every [`PART_BYTES`]; at the checkpoint barrier it sends
//! the rest and hands over the upload (key, upload id, part ids). Parts of an upload that is not
//! completed are invisible to readers. Once the checkpoint's manifest is written, the commit
//! *completes* the upload, and only then does the object appear, whole. A commit replayed
//! after a crash completes it again, or finds the object already there (completing twice is
//! not possible: the second attempt finds no upload, and the object's existence says it was
//! done).

use crate::error::{ConnectorError, Result};
use crate::io_runtime::run;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use oxflow_runtime::store::{CheckpointStore, FileStore, StoreRef};
use oxflow_runtime::Result as RuntimeResult;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A part is sent once this many bytes are buffered (S3 takes parts of 5 MiB to 5 GiB, but
/// for the last).
pub const PART_BYTES: usize = 8 << 20;

/// Where a file sink writes on S3: a bucket, a key prefix, and the client for them.
#[derive(Clone)]
pub struct S3Location {
    store: Arc<object_store::aws::AmazonS3>,
    bucket: String,
    prefix: ObjectPath,
    /// The endpoint, when it names an S3-compatible server and the environment gives no
    /// credentials: every request then fails saying so, rather than the client asking the
    /// cloud's instance metadata service (which no such server's users have) and failing
    /// with its error.
    no_credentials: Option<Arc<str>>,
}

impl std::fmt::Debug for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

impl S3Location {
    /// Parses `s3://BUCKET[/PREFIX][?endpoint=URL&region=R&...]`. Credentials come from the
    /// environment as for every AWS client (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT`), never from the URI, so they stay out
    /// of specs, logs and answers. `endpoint` names an S3-compatible server (plain `http://`
    /// is then allowed); the other options are returned for the sink to read.
    pub fn parse(uri: &str) -> Result<(Self, BTreeMap<String, String>)> {
        let bad = |reason: String| ConnectorError::Config {
            connector: "s3",
            reason: format!("`{uri}`: {reason}"),
        };
        let rest = uri
            .strip_prefix("s3://")
            .ok_or_else(|| bad("an S3 location starts with s3://".into()))?;
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket after s3://".into()));
        }
        let mut options = BTreeMap::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("`{pair}` in the query is not key=value")))?;
            options.insert(k.to_string(), v.to_string());
        }
        // A few quick retries, a bound of 30 s in all: a wrong endpoint fails a job in seconds
        // (object_store's default retries for up to 3 minutes).
        let retry = object_store::RetryConfig {
            max_retries: 5,
            retry_timeout: std::time::Duration::from_secs(30),
            ..Default::default()
        };
        let mut builder = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry);
        let mut no_credentials = None;
        if let Some(endpoint) = options.remove("endpoint") {
            if !credentials_in_env() {
                no_credentials = Some(Arc::from(endpoint.as_str()));
            }
            builder = builder
                .with_allow_http(endpoint.starts_with("http://"))
                .with_endpoint(endpoint);
        }
        if let Some(region) = options.remove("region") {
            builder = builder.with_region(region);
        }
        let store = builder.build().map_err(|e| bad(e.to_string()))?;
        let prefix = ObjectPath::parse(prefix.trim_end_matches('/'))
            .map_err(|e| bad(format!("prefix `{prefix}`: {e}")))?;
        Ok((
            S3Location {
                store: Arc::new(store),
                bucket: bucket.to_string(),
                prefix,
                no_credentials,
            },
            options,
        ))
    }

    /// Parses a location that takes no options but endpoint and region (a source's files, a
    /// sink's directory): any other is named as an error, not ignored. `what` says whose.
    pub fn parse_plain(uri: &str, what: &str) -> Result<Self> {
        let (location, rest) = Self::parse(uri)?;
        match rest.keys().next() {
            Some(key) => Err(ConnectorError::Config {
                connector: "s3",
                reason: format!(
                    "{what} `{uri}`: unknown option `{key}`; the location takes endpoint and region"
                ),
            }),
            None => Ok(location),
        }
    }

    /// The client, or why it cannot sign requests.
    fn client(&self) -> Result<Arc<object_store::aws::AmazonS3>> {
        match &self.no_credentials {
            None => Ok(self.store.clone()),
            Some(endpoint) => Err(self.s3_error(
                "no credentials",
                format!(
                    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the server at {endpoint} \
                     (or AWS_SKIP_SIGNATURE=true for unsigned requests)"
                ),
            )),
        }
    }

    /// The key of `name` under the prefix, each `/` of it starting a level (the file sink's
    /// names have none; a checkpoint store's keys do).
    fn key(&self, name: &str) -> ObjectPath {
        name.split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    fn s3_error(&self, what: &str, e: impl std::fmt::Display) -> ConnectorError {
        ConnectorError::Config {
            connector: "s3",
            reason: format!("{what} in s3://{}/{}: {e}", self.bucket, self.prefix),
        }
    }

    /// Every object under the prefix, at any depth.
    fn list_all(&self) -> Result<Vec<object_store::ObjectMeta>> {
        use futures::TryStreamExt;
        let (store, prefix) = (self.client()?, self.prefix.clone());
        run(async move {
            object_store::ObjectStore::list(store.as_ref(), Some(&prefix))
                .try_collect()
                .await
        })
        .map_err(|e| self.s3_error("listing", e))
    }

    /// The names (under the prefix) of the objects there.
    pub fn list(&self) -> Result<Vec<String>> {
        let listed = self.list_all()?;
        let mut names: Vec<String> = listed
            .into_iter()
            .filter_map(|m| m.location.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// The bytes of object `name` under the prefix.
    pub fn read(&self, name: &str) -> Result<Vec<u8>> {
        let (store, key) = (self.client()?, self.key(name));
        run(async move { store.get(&key).await?.bytes().await })
            .map(|b| b.to_vec())
            .map_err(|e| self.s3_error(&format!("reading {name}"), e))
    }

    /// The objects directly under the prefix that a file source reads: name and size, sorted
    /// by name, leaving out hidden ones (`.`, `_`: in progress, markers).
    pub fn list_files(&self) -> Result<Vec<(String, u64)>> {
        let depth = self.prefix.parts().count() + 1;
        let listed = self.list_all()?;
        let mut files: Vec<(String, u64)> = listed
            .into_iter()
            .filter(|m| m.location.parts().count() == depth)
            .filter_map(|m| Some((m.location.filename()?.to_string(), m.size)))
            .filter(|(name, _)| !name.starts_with('.') && !name.starts_with('_'))
            .collect();
        files.sort();
        Ok(files)
    }

    /// The size of object `name` under the prefix (an error names a missing one).
    pub fn size(&self, name: &str) -> Result<u64> {
        let (store, key) = (self.client()?, self.key(name));
        run(async move { store.head(&key).await })
            .map(|m| m.size)
            .map_err(|e| self.s3_error(&format!("finding {name}"), e))
    }

    /// Bytes `range` of object `name` under the prefix.
    pub fn read_range(&self, name: &str, range: std::ops::Range<u64>) -> Result<bytes::Bytes> {
        let (store, key) = (self.client()?, self.key(name));
        let what = format!("reading bytes {}..{} of {name}", range.start, range.end);
        run(async move { store.get_range(&key, range).await }).map_err(|e| self.s3_error(&what, e))
    }

    /// Writes object `name` under the prefix whole, at once (for tests, tools and the
    /// checkpoint store; the file sink uploads in parts, completed at commit).
    pub fn write_object(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let (store, key) = (self.client()?, self.key(name));
        run(async move { store.put(&key, PutPayload::from(bytes)).await })
            .map(|_| ())
            .map_err(|e| self.s3_error(&format!("writing {name}"), e))
    }

    /// The URI of object `name` under the prefix, as positions and messages name it.
    pub fn uri_of(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }

    /// The object name under the prefix of `uri` (one [`S3Location::uri_of`] made).
    pub fn name_in<'a>(&self, uri: &'a str) -> Option<&'a str> {
        let base = format!("s3://{}/{}", self.bucket, self.prefix);
        let rest = uri.strip_prefix(base.trim_end_matches('/'))?;
        let name = rest.strip_prefix('/')?;
        (!name.is_empty() && !name.contains('/')).then_some(name)
    }

    /// Records, before checkpoint `checkpoint`'s uploads are completed, which objects they
    /// make: `_commits/<checkpoint>.json` under the prefix (hidden from file sources). A
    /// restore that falls back past later checkpoints (their manifests corrupt or gone) reads
    /// these records to remove what those checkpoints committed; nothing else says which
    /// objects they were. Records more than [`COMMIT_LOG_KEPT`] checkpoints old are removed.
    pub(crate) fn log_commit(&self, checkpoint: u64, keys: &[String]) -> Result<()> {
        let log = self.commit_log();
        let body = serde_json::to_vec(keys).expect("names serialize");
        log.write_object(&format!("{checkpoint:020}.json"), body)?;
        for (name, _) in log.list_files()? {
            match commit_of(&name) {
                Some(c) if c + COMMIT_LOG_KEPT < checkpoint => log.delete(&name)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes the objects checkpoints after `checkpoint` committed, as their records say, and
    /// the records; objects already gone are fine (a rollback interrupted and done again).
    pub(crate) fn roll_back_commits_after(&self, checkpoint: u64) -> Result<()> {
        let log = self.commit_log();
        for (name, _) in log.list_files()? {
            if commit_of(&name).is_none_or(|c| c <= checkpoint) {
                continue;
            }
            let keys: Vec<String> = serde_json::from_slice(&log.read(&name)?)
                .map_err(|e| log.s3_error(&format!("reading the commit record {name}"), e))?;
            for key in keys.iter().filter(|k| !k.contains('/')) {
                self.delete(key)?;
            }
            log.delete(&name)?;
        }
        Ok(())
    }

    fn commit_log(&self) -> S3Location {
        S3Location {
            prefix: self.key("_commits"),
            ..self.clone()
        }
    }

    /// Deletes object `name` under the prefix; one not there is fine.
    fn delete(&self, name: &str) -> Result<()> {
        let (store, key) = (self.client()?, self.key(name));
        match run(async move { store.delete(&key).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.s3_error(&format!("deleting {name}"), e)),
        }
    }

    /// Completes an upload a writer handed over; one completed before (a replayed commit) is
    /// found by its object and left as it is.
    pub(crate) fn complete(&self, pending: &PendingUpload) -> Result<()> {
        if pending.key.contains('/') {
            return Err(self.s3_error(
                "committing",
                format!("`{}` is not a part name", pending.key),
            ));
        }
        let (store, key) = (self.client()?, self.key(&pending.key));
        let (id, parts) = (
            pending.upload_id.clone(),
            pending
                .parts
                .iter()
                .map(|p| PartId {
                    content_id: p.clone(),
                })
                .collect(),
        );
        let done = run(async move {
            match store.complete_multipart(&key, &id, parts).await {
                Ok(_) => Ok(()),
                Err(e) => match store.head(&key).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(e),
                },
            }
        });
        done.map_err(|e| self.s3_error(&format!("completing {}", pending.key), e))
    }
}

/// How many checkpoints back the commit records reach: a restore can fall back this far and
/// still remove what later checkpoints committed (checkpoints are retained far fewer).
pub const COMMIT_LOG_KEPT: u64 = 1000;

/// The checkpoint of a commit record's name.
/// Whether the environment gives the client a way to sign requests other than the instance
/// metadata service: keys, a web identity (Kubernetes service accounts), a container's
/// credentials endpoint, or a request for unsigned requests.
/// Checkpoints kept in S3 ([`oxflow_runtime::store`]): keys are paths under the prefix.
impl CheckpointStore for S3Location {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    fn put(&self, key: &str, bytes: Vec<u8>) -> RuntimeResult<()> {
        Ok(self.write_object(key, bytes)?)
    }

    fn get(&self, key: &str) -> RuntimeResult<Option<Vec<u8>>> {
        let (store, path) = (self.client()?, self.key(key));
        match run(async move { store.get(&path).await?.bytes().await }) {
            Ok(bytes) => Ok(Some(bytes.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.s3_error(&format!("reading {key}"), e).into()),
        }
    }

    fn list(&self, prefix: &str) -> RuntimeResult<Vec<String>> {
        let listed = self.list_all()?;
        let depth = self.prefix.parts().count();
        let mut keys: Vec<String> = listed
            .into_iter()
            .map(|m| {
                m.location
                    .parts()
                    .skip(depth)
                    .map(|p| p.as_ref().to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .filter(|k| k.starts_with(prefix))
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn delete(&self, key: &str) -> RuntimeResult<()> {
        Ok(S3Location::delete(self, key)?)
    }
}

/// The checkpoint store `uri` names: `s3://BUCKET/PREFIX[?endpoint=URL&region=R]` or
/// `file:///DIR` (a local or mounted, shared directory).
pub fn checkpoint_store(uri: &str) -> Result<StoreRef> {
    if let Some(dir) = uri.strip_prefix("file://") {
        if !dir.starts_with('/') {
            return Err(ConnectorError::Config {
                connector: "checkpoint store",
                reason: format!("`{uri}`: a file store names an absolute directory, file:///DIR"),
            });
        }
        return Ok(StoreRef(Arc::new(FileStore::new(dir))));
    }
    if uri.starts_with("s3://") {
        return Ok(StoreRef(Arc::new(S3Location::parse_plain(
            uri,
            "checkpoint store",
        )?)));
    }
    Err(ConnectorError::Config {
        connector: "checkpoint store",
        reason: format!("`{uri}`: a checkpoint store is s3://BUCKET/PREFIX or file:///DIR"),
    })
}

fn credentials_in_env() -> bool {
    [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_SKIP_SIGNATURE",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
}

fn commit_of(name: &str) -> Option<u64> {
    name.strip_suffix(".json")?.parse().ok()
}

/// An upload a writer handed over, to be completed at commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PendingUpload {
    /// The object's name under the prefix.
    pub key: String,
    pub upload_id: String,
    /// The parts' ids (ETags), in order.
    pub parts: Vec<String>,
}

/// A file being written to S3: a multipart upload and the bytes not sent yet.
pub(crate) struct Upload {
    location: S3Location,
    name: String,
    id: String,
    parts: Vec<String>,
    buffer: Vec<u8>,
}

impl Upload {
    /// Starts the upload of object `name` under the location's prefix.
    pub(crate) fn create(location: &S3Location, name: &str) -> Result<Self> {
        let (store, key) = (location.client()?, location.key(name));
        let id = run(async move { store.create_multipart(&key).await })
            .map_err(|e| location.s3_error(&format!("starting the upload of {name}"), e))?;
        Ok(Upload {
            location: location.clone(),
            name: name.to_string(),
            id,
            parts: Vec::new(),
            buffer: Vec::new(),
        })
    }

    fn send_part(&mut self) -> Result<()> {
        let data = PutPayload::from(std::mem::take(&mut self.buffer));
        let (store, key, id, index) = (
            self.location.client()?,
            self.location.key(&self.name),
            self.id.clone(),
            self.parts.len(),
        );
        let part =
            run(async move { store.put_part(&key, &id, index, data).await }).map_err(|e| {
                self.location
                    .s3_error(&format!("sending part {index} of {}", self.name), e)
            })?;
        self.parts.push(part.content_id);
        Ok(())
    }

    /// Sends the rest; what to complete at commit.
    pub(crate) fn finish(mut self) -> Result<PendingUpload> {
        if !self.buffer.is_empty() || self.parts.is_empty() {
            self.send_part()?;
        }
        Ok(PendingUpload {
            key: self.name,
            upload_id: self.id,
            parts: self.parts,
        })
    }
}

impl std::io::Write for Upload {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(buf);
        if self.buffer.len() >= PART_BYTES {
            self.send_part().map_err(std::io::Error::other)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_bad_ones_are_named() {
        let (l, options) =
            S3Location::parse("s3://out/jobs/q5/?endpoint=http://127.0.0.1:9000&format=parquet")
                .unwrap();
        assert_eq!(format!("{l:?}"), "s3://out/jobs/q5");
        assert_eq!(options.get("format").map(String::as_str), Some("parquet"));
        assert!(!options.contains_key("endpoint"));
        for (uri, want) in [
            ("file:/tmp", "starts with s3://"),
            ("s3:///x", "no bucket"),
            ("s3://b/p?x", "not key=value"),
        ] {
            let e = S3Location::parse(uri).unwrap_err().to_string();
            assert!(e.contains(want), "{uri}: {e}");
        }
    }
}
