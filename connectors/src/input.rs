//! Where the file sources (JSON lines, CSV, Parquet) read their files: the local file system
//! or an S3 location. Both give the readers the same thing, an [`InputFile`] that reads and
//! seeks, and serves Parquet's ranged reads; an S3 object is read by ranged GETs of
//! [`S3_READ_BYTES`] at a time, so memory stays bounded whatever an object's size.
//!
//! A file is named by its path, or on S3 by its URI (`s3://BUCKET/PREFIX/NAME`), in
//! positions and in messages alike.

use crate::error::{ConnectorError, Result};
use crate::object::S3Location;
use bytes::Bytes;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// How much of an S3 object one GET asks for when read in sequence.
pub const S3_READ_BYTES: u64 = 8 << 20;

/// Where a source's files are.
#[derive(Debug, Clone, Default)]
pub enum FileStore {
    /// The local file system: paths.
    #[default]
    Local,
    /// Objects directly under an S3 location: their URIs.
    S3(S3Location),
}

impl FileStore {
    /// The files of an S3 location a source reads (every object directly under the prefix
    /// but hidden ones), as URIs; an error if there is none.
    pub fn s3_files(location: &S3Location) -> Result<Vec<PathBuf>> {
        let files = location.list_files()?;
        if files.is_empty() {
            return Err(ConnectorError::Config {
                connector: "s3",
                reason: format!("{location:?} holds no file to read"),
            });
        }
        Ok(files
            .into_iter()
            .map(|(name, _)| PathBuf::from(location.uri_of(&name)))
            .collect())
    }

    /// Checks that `path` is a file this store can read.
    pub(crate) fn check(&self, path: &Path, connector: &'static str) -> Result<()> {
        let readable = match self {
            FileStore::Local => path.is_file(),
            FileStore::S3(l) => {
                let name = self.s3_name(l, path)?;
                l.size(name).is_ok()
            }
        };
        if readable {
            Ok(())
        } else {
            Err(ConnectorError::Config {
                connector,
                reason: format!("{} is not a readable file", path.display()),
            })
        }
    }

    fn s3_name<'a>(&self, location: &S3Location, path: &'a Path) -> Result<&'a str> {
        path.to_str()
            .and_then(|p| location.name_in(p))
            .ok_or_else(|| ConnectorError::Config {
                connector: "s3",
                reason: format!("{} is not an object of {location:?}", path.display()),
            })
    }

    /// Opens `path` for reading from its start.
    pub(crate) fn open(&self, path: &Path) -> Result<InputFile> {
        match self {
            FileStore::Local => File::open(path)
                .map(InputFile::Local)
                .map_err(|e| ConnectorError::io(format!("opening {}", path.display()), e)),
            FileStore::S3(location) => {
                let name = self.s3_name(location, path)?.to_string();
                let size = location.size(&name)?;
                Ok(InputFile::S3(S3Object {
                    location: location.clone(),
                    name,
                    size,
                    pos: 0,
                    buffer: Bytes::new(),
                    buffer_start: 0,
                }))
            }
        }
    }
}

/// An open file of a [`FileStore`].
pub(crate) enum InputFile {
    Local(File),
    S3(S3Object),
}

/// An S3 object read in sequence by ranged GETs, or at random by [`S3Object::range`].
#[derive(Clone)]
pub(crate) struct S3Object {
    location: S3Location,
    name: String,
    size: u64,
    /// The next byte `read` gives.
    pos: u64,
    /// Bytes fetched, starting at `buffer_start`.
    buffer: Bytes,
    buffer_start: u64,
}

impl S3Object {
    fn range(&self, start: u64, length: u64) -> std::io::Result<Bytes> {
        let end = start.saturating_add(length).min(self.size);
        if start >= end {
            return Ok(Bytes::new());
        }
        self.location
            .read_range(&self.name, start..end)
            .map_err(std::io::Error::other)
    }
}

impl Read for S3Object {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let in_buffer = self.pos >= self.buffer_start
            && self.pos < self.buffer_start + self.buffer.len() as u64;
        if !in_buffer {
            if self.pos >= self.size {
                return Ok(0);
            }
            self.buffer = self.range(self.pos, S3_READ_BYTES)?;
            self.buffer_start = self.pos;
            if self.buffer.is_empty() {
                return Ok(0);
            }
        }
        let at = (self.pos - self.buffer_start) as usize;
        let n = out.len().min(self.buffer.len() - at);
        out[..n].copy_from_slice(&self.buffer[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for S3Object {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = pos.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

impl Read for InputFile {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        match self {
            InputFile::Local(f) => f.read(out),
            InputFile::S3(o) => o.read(out),
        }
    }
}

impl Seek for InputFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        match self {
            InputFile::Local(f) => f.seek(to),
            InputFile::S3(o) => o.seek(to),
        }
    }
}

impl ::parquet::file::reader::Length for InputFile {
    fn len(&self) -> u64 {
        match self {
            InputFile::Local(f) => f.metadata().map_or(0, |m| m.len()),
            InputFile::S3(o) => o.size,
        }
    }
}

impl ::parquet::file::reader::ChunkReader for InputFile {
    type T = std::io::BufReader<InputFile>;

    fn get_read(&self, start: u64) -> ::parquet::errors::Result<Self::T> {
        let mut copy = match self {
            InputFile::Local(f) => InputFile::Local(f.try_clone()?),
            InputFile::S3(o) => InputFile::S3(o.clone()),
        };
        copy.seek(SeekFrom::Start(start))?;
        Ok(std::io::BufReader::new(copy))
    }

    fn get_bytes(&self, start: u64, length: usize) -> ::parquet::errors::Result<Bytes> {
        match self {
            InputFile::Local(f) => {
                let mut copy = f.try_clone()?;
                copy.seek(SeekFrom::Start(start))?;
                let mut bytes = vec![0; length];
                copy.read_exact(&mut bytes)?;
                Ok(bytes.into())
            }
            InputFile::S3(o) => {
                let bytes = o.range(start, length as u64)?;
                if bytes.len() != length {
                    return Err(::parquet::errors::ParquetError::EOF(format!(
                        "{} ends before byte {}",
                        o.name,
                        start + length as u64
                    )));
                }
                Ok(bytes)
            }
        }
    }
}
