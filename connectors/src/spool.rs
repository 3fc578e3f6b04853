//! Spooled epochs: the records a sink writer received between two checkpoint barriers, kept
//! in a file beside the job's checkpoints until the checkpoint completes and the sink sends
//! them (the Kafka sink in one transaction, the NATS sink with message ids that the server
//! deduplicates). A replayed commit sends exactly the same records in the same order, which is
//! what makes both idempotent.
//!
//! A file is the records, each `key length (u32, u32::MAX for none), key, value length, value`
//! (little endian), then a trailer: a magic, the record count and a CRC-32 of the records, so
//! that a torn or corrupt file is named rather than half sent.

use crate::error::{ConnectorError, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

const SPOOL_MAGIC: &[u8; 4] = b"OXK1";

/// Bytes of records gathered before they are written.
const SPOOL_BUFFER: usize = 256 << 10;

/// Spool files are named `epoch-<writer>-<process token>-<counter>`.
pub(crate) const SPOOL_PREFIX: &str = "epoch-";

/// A record of an epoch: key (if any) and value.
pub(crate) type SpooledRecord = (Option<Vec<u8>>, Vec<u8>);

/// Tells apart the epochs of this process.
static NEXT_EPOCH: AtomicU64 = AtomicU64::new(0);

/// A random number drawn once per process (process ids are reused): with the counter, epoch
/// names never repeat, so a marker or a message id can never name an epoch it does not mean.
pub(crate) fn process_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static TOKEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TOKEN.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// An epoch being written.
pub(crate) struct SpoolFile {
    dir: PathBuf,
    name: String,
    out: std::fs::File,
    /// Records not yet written.
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    count: u64,
}

impl SpoolFile {
    /// A new, empty epoch of `writer` (a transactional id, a subtask's name) in `dir`.
    pub(crate) fn create(dir: &Path, writer: &str) -> Result<Self> {
        let name = format!(
            "{SPOOL_PREFIX}{writer}-{}-{}",
            process_token(),
            NEXT_EPOCH.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(&name);
        let file = std::fs::File::create(&path).map_err(|e| {
            ConnectorError::io(format!("creating spool file {}", path.display()), e)
        })?;
        Ok(SpoolFile {
            dir: dir.to_path_buf(),
            name,
            out: file,
            buf: Vec::with_capacity(SPOOL_BUFFER),
            crc: crc32fast::Hasher::new(),
            count: 0,
        })
    }

    /// Appends a record. Records gather in a buffer, written (and checksummed) in large
    /// pieces: a write and a checksum update per field of every record cost more than the
    /// record's copy.
    pub(crate) fn append(&mut self, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        match key {
            None => self.buf.extend_from_slice(&u32::MAX.to_le_bytes()),
            Some(k) => {
                self.buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(k);
            }
        }
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
        self.count += 1;
        if self.buf.len() >= SPOOL_BUFFER {
            self.write_buffer()?;
        }
        Ok(())
    }

    fn write_buffer(&mut self) -> Result<()> {
        self.crc.update(&self.buf);
        self.out
            .write_all(&self.buf)
            .map_err(|e| ConnectorError::io(format!("writing spool file {}", self.name), e))?;
        self.buf.clear();
        Ok(())
    }

    /// Closes the epoch, durable (trailer, fsync of the file and of its directory): its name
    /// and record count, for the checkpoint.
    pub(crate) fn seal(mut self) -> Result<(String, u64)> {
        self.write_buffer()?;
        let path = self.dir.join(&self.name).display().to_string();
        let io = |e| ConnectorError::io(format!("writing spool file {path}"), e);
        let trailer = [
            SPOOL_MAGIC.as_slice(),
            &self.count.to_le_bytes(),
            &self.crc.clone().finalize().to_le_bytes(),
        ]
        .concat();
        self.out.write_all(&trailer).map_err(&io)?;
        self.out.sync_all().map_err(&io)?;
        oxflow_runtime::checkpoint::sync_dir(&self.dir).map_err(|e| ConnectorError::Config {
            connector: "spool",
            reason: e.to_string(),
        })?;
        Ok((self.name, self.count))
    }
}

/// Removes a spool file; one already gone is fine (a commit replayed after a crash).
pub(crate) fn remove_spool(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ConnectorError::io(
            format!("removing {}", path.display()),
            e,
        )),
    }
}

/// Removes every spool file in `dir` (epochs of checkpoints after the one restored).
pub(crate) fn remove_all(dir: &Path) -> Result<()> {
    let listing = |e| ConnectorError::io(format!("listing {}", dir.display()), e);
    for entry in std::fs::read_dir(dir).map_err(listing)? {
        let entry = entry.map_err(listing)?;
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SPOOL_PREFIX)
        {
            remove_spool(&entry.path())?;
        }
    }
    Ok(())
}

/// Reads a spool file back, checking its trailer (magic, record count, CRC-32).
/// `connector` names the sink in errors.
pub(crate) fn read_spool(
    path: &Path,
    expected: u64,
    connector: &'static str,
) -> Result<Vec<SpooledRecord>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| {
            ConnectorError::io(format!("reading the spooled epoch {}", path.display()), e)
        })?;
    let corrupt = |why: &str| ConnectorError::Config {
        connector,
        reason: format!("spooled epoch {} is corrupt: {why}", path.display()),
    };
    if bytes.len() < 16 {
        return Err(corrupt("too short for its trailer"));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - 16);
    if &trailer[..4] != SPOOL_MAGIC {
        return Err(corrupt("bad trailer"));
    }
    let count = u64::from_le_bytes(trailer[4..12].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(trailer[12..16].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(body) {
        return Err(corrupt("checksum mismatch"));
    }
    if count != expected {
        return Err(corrupt(&format!(
            "{count} records, the checkpoint says {expected}"
        )));
    }
    // Each record takes at least 8 bytes: a count the body cannot hold is corrupt, and must
    // not size an allocation.
    if count > body.len() as u64 / 8 {
        return Err(corrupt("more records than bytes"));
    }
    let mut records = Vec::with_capacity(count as usize);
    let mut rest = body;
    let take = |rest: &mut &[u8], n: usize| -> Result<Vec<u8>> {
        if rest.len() < n {
            return Err(corrupt("a record runs past the end"));
        }
        let (head, tail) = rest.split_at(n);
        *rest = tail;
        Ok(head.to_vec())
    };
    for _ in 0..count {
        let key_len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes"));
        let key = if key_len == u32::MAX {
            None
        } else {
            Some(take(&mut rest, key_len as usize)?)
        };
        let value_len = u32::from_le_bytes(take(&mut rest, 4)?.try_into().expect("4 bytes"));
        records.push((key, take(&mut rest, value_len as usize)?));
    }
    if !rest.is_empty() {
        return Err(corrupt("bytes after the last record"));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_round_trip_and_corruption_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = SpoolFile::create(dir.path(), "t-0").unwrap();
        f.append(Some(b"7"), br#"{"k":7}"#).unwrap();
        f.append(None, br#"{"k":8}"#).unwrap();
        let (name, count) = f.seal().unwrap();
        assert_eq!(count, 2);
        assert!(name.starts_with("epoch-t-0-"), "{name}");
        let path = dir.path().join(&name);
        let records = read_spool(&path, 2, "test").unwrap();
        assert_eq!(records[0], (Some(b"7".to_vec()), br#"{"k":7}"#.to_vec()));
        assert_eq!(records[1], (None, br#"{"k":8}"#.to_vec()));
        let err = read_spool(&path, 3, "test").unwrap_err().to_string();
        assert!(err.contains("the checkpoint says 3"), "{err}");
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_spool(&path, 2, "test").unwrap_err().to_string();
        assert!(
            err.contains("checksum mismatch") && err.contains("epoch-t-0"),
            "{err}"
        );
        remove_all(dir.path()).unwrap();
        assert!(!path.exists());
        remove_spool(&path).unwrap();
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]
        /// Fuzz: any bytes as a spool file read to records or an error, never a panic or a
        /// huge allocation.
        #[test]
        fn any_file_reads_or_fails_cleanly(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            count in 0u64..u64::MAX,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("epoch-x");
            let mut bytes = body.clone();
            bytes.extend_from_slice(SPOOL_MAGIC);
            bytes.extend_from_slice(&count.to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            std::fs::write(&path, &bytes).unwrap();
            let _ = read_spool(&path, count, "test");
        }
    }
}
