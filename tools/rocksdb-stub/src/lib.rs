//! Compile-time stand-in for the `rocksdb` crate, patched in through the workspace's
//! `[patch.crates-io]`.
//!
//! Why it exists: `wasmesh-ratelimit` uses limitador's Redis storage only. limitador 0.14 does
//! not compile with its `redis_storage` feature alone (`storage/keys.rs` calls the `bin` key
//! encoding, which is gated on `disk_storage`), so the binary takes limitador's default features,
//! and `disk_storage` pulls in RocksDB: a C++ build from source that took about 14 minutes cold
//! on the 2-core CI machine and needs `clang`/`libclang-dev`. wasmesh never opens a disk storage.
//!
//! This crate provides only the names limitador's `storage/disk` module refers to, written here
//! from their call sites (no code from rocksdb). Nothing is stored: [`DBWithThreadMode::open`]
//! and every database operation return an [`Error`] saying the disk storage is not built in.
//! limitador's `DiskStorage::open` would then fail (it unwraps the open result), which is why
//! `wasmesh-ratelimit` accepts only `redis://` storage URLs and never constructs a disk storage.
//!
//! If limitador ever needs more of the rocksdb API, the build fails loudly here rather than
//! misbehaving at run time.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

const MESSAGE: &str = "rocksdb stand-in: disk storage is not built into wasmesh";

/// The error every operation returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
}

impl Error {
    fn unsupported() -> Self {
        Self {
            kind: ErrorKind::NotSupported,
        }
    }

    /// What went wrong: always [`ErrorKind::NotSupported`].
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MESSAGE)
    }
}

impl std::error::Error for Error {}

/// Error kinds limitador distinguishes (transient ones), plus the one this crate returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Not returned by the stand-in.
    TimedOut,
    /// Not returned by the stand-in.
    TryAgain,
    /// Every operation of the stand-in.
    NotSupported,
}

/// A compaction filter's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactionDecision {
    /// Keep the entry.
    Keep,
    /// Drop the entry.
    Remove,
}

/// Block compression choices limitador names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DBCompressionType {
    /// No compression.
    None,
    /// bzip2.
    Bz2,
}

/// Where an iteration starts.
#[derive(Debug, Clone, Copy)]
pub enum IteratorMode {
    /// From the first key.
    Start,
}

/// Marker for the multi-threaded database mode.
#[derive(Debug)]
pub struct MultiThreaded;

/// The operands of a merge, as limitador's merge operator iterates them.
#[derive(Debug, Default)]
pub struct MergeOperands {
    operands: Vec<Vec<u8>>,
}

impl<'a> IntoIterator for &'a MergeOperands {
    type Item = &'a [u8];
    type IntoIter = std::iter::Map<std::slice::Iter<'a, Vec<u8>>, fn(&'a Vec<u8>) -> &'a [u8]>;

    fn into_iter(self) -> Self::IntoIter {
        self.operands.iter().map(Vec::as_slice)
    }
}

/// Open options; the settings are accepted and dropped.
#[derive(Debug, Default)]
pub struct Options {
    _private: (),
}

impl Options {
    /// Accepted and ignored.
    pub fn set_compression_type(&mut self, _kind: DBCompressionType) {}

    /// Accepted and ignored (the filter is dropped).
    pub fn set_compaction_filter<F>(&mut self, _name: &str, _filter: F)
    where
        F: FnMut(u32, &[u8], &[u8]) -> CompactionDecision + Send + 'static,
    {
    }

    /// Accepted and ignored (the operator is dropped).
    pub fn set_merge_operator_associative<F>(&mut self, _name: &str, _merge: F)
    where
        F: Fn(&[u8], Option<&[u8]>, &MergeOperands) -> Option<Vec<u8>> + Send + Sync + 'static,
    {
    }

    /// Accepted and ignored.
    pub fn create_if_missing(&mut self, _create: bool) {}
}

/// A key/value entry as iterators yield it.
pub type KvEntry = (Box<[u8]>, Box<[u8]>);

/// A database handle; never successfully constructed.
#[derive(Debug)]
pub struct DBWithThreadMode<T> {
    _mode: PhantomData<T>,
}

/// The database type limitador opens.
pub type DB = DBWithThreadMode<MultiThreaded>;

impl<T> DBWithThreadMode<T> {
    /// Always fails: there is no storage engine behind this crate.
    pub fn open<P: AsRef<Path>>(_opts: &Options, _path: P) -> Result<Self, Error> {
        Err(Error::unsupported())
    }

    /// Always fails.
    pub fn get<K: AsRef<[u8]>>(&self, _key: K) -> Result<Option<Vec<u8>>, Error> {
        Err(Error::unsupported())
    }

    /// Always fails.
    pub fn merge<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, _key: K, _value: V) -> Result<(), Error> {
        Err(Error::unsupported())
    }

    /// Always fails.
    pub fn delete<K: AsRef<[u8]>>(&self, _key: K) -> Result<(), Error> {
        Err(Error::unsupported())
    }

    /// Yields one error, then ends.
    pub fn prefix_iterator<P: AsRef<[u8]>>(&self, _prefix: P) -> FailingIter {
        FailingIter { done: false }
    }

    /// Yields one error, then ends.
    pub fn iterator(&self, _mode: IteratorMode) -> FailingIter {
        FailingIter { done: false }
    }
}

/// An iterator that yields a single [`Error`].
#[derive(Debug)]
pub struct FailingIter {
    done: bool,
}

impl Iterator for FailingIter {
    type Item = Result<KvEntry, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        self.done = true;
        Some(Err(Error::unsupported()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_fails() {
        let opts = Options::default();
        let err = DB::open(&opts, "/nonexistent").err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::NotSupported));
        let db: DB = DBWithThreadMode { _mode: PhantomData };
        assert!(db.get(b"k").is_err());
        assert!(db.merge(b"k", b"v").is_err());
        assert!(db.delete(b"k").is_err());
        let items: Vec<_> = db.iterator(IteratorMode::Start).collect();
        assert_eq!(items.len(), 1);
        assert!(items.iter().all(Result::is_err));
        assert_eq!(db.prefix_iterator(b"p").count(), 1);
    }
}
