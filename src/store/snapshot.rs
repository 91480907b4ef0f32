//! A read-only copy of the whole store, `<store>/snapshot`, so a query with no watcher running answers
//! without opening sled (whose recovery costs tens of milliseconds on a large store, every open).
//!
//! Validity rests on one protocol, kept by [`super::Store`]:
//! - before the first write through an open store, the snapshot is removed and the removal made durable
//!   (fsync of the directory), so a snapshot on disk never predates a write to the store;
//! - when the last handle of a store closes cleanly, the snapshot is written from the store while it is
//!   still locked (write to `snapshot.tmp`, fsync, rename, fsync the directory).
//!
//! A crash leaves no snapshot; the next clean close writes it again. A reader that opened the file
//! before a writer removed it reads the state as of that moment, as if it had queried just before.
//!
//! Format (all integers little endian): a 32-byte header `SGSNAP01`, schema version u32, 4 zero bytes,
//! entry count u64, index offset u64; then every key followed by its value, in key order; then the index,
//! one 16-byte entry per key: data offset u64, key length u32, value length u32.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const FILE_NAME: &str = "snapshot";
const MAGIC: &[u8; 8] = b"SGSNAP01";
const HEADER: u64 = 32;
const ENTRY: u64 = 16;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("the read snapshot {path} is unusable: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error("reading the read snapshot {path} failed: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub fn path_in(store_dir: &Path) -> PathBuf {
    store_dir.join(FILE_NAME)
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Removes the snapshot durably. Absent is fine.
pub fn remove(store_dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path_in(store_dir)) {
        Ok(()) => fsync_dir(store_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Writes every entry of `db` (in key order) as the store's snapshot, atomically.
pub fn write(store_dir: &Path, schema: u32, db: &sled::Db) -> std::io::Result<u64> {
    let tmp = store_dir.join(format!("{FILE_NAME}.tmp"));
    let res = write_file(&tmp, schema, db, |_, _| {}).and_then(|n| {
        std::fs::rename(&tmp, path_in(store_dir))?;
        fsync_dir(store_dir)?;
        Ok(n)
    });
    if res.is_err() {
        // A full disk must not also keep a half-written copy around.
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Writes every entry of `db` (in key order) in this format to `path` (created 0600, fsynced), showing
/// each (key, value) to `visit` on the way; the caller decides where the file goes. Returns the count.
/// The copy is of whatever `db` holds while it is read: a consistent one needs its writers held off
/// (see `Store::write_backup_snapshot`).
pub fn write_file(path: &Path, schema: u32, db: &sled::Db, mut visit: impl FnMut(&[u8], &[u8])) -> std::io::Result<u64> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    w.write_all(&[0u8; HEADER as usize])?;
    let mut index: Vec<u8> = Vec::new();
    let mut off = HEADER;
    let mut count = 0u64;
    for kv in db.iter() {
        let (k, v) = kv.map_err(std::io::Error::other)?;
        let (kl, vl) = (u32::try_from(k.len()).map_err(std::io::Error::other)?, u32::try_from(v.len()).map_err(std::io::Error::other)?);
        w.write_all(&k)?;
        w.write_all(&v)?;
        visit(&k, &v);
        index.extend_from_slice(&off.to_le_bytes());
        index.extend_from_slice(&kl.to_le_bytes());
        index.extend_from_slice(&vl.to_le_bytes());
        off += u64::from(kl) + u64::from(vl);
        count += 1;
    }
    w.write_all(&index)?;
    let mut f = w.into_inner().map_err(|e| e.into_error())?;
    f.seek(SeekFrom::Start(0))?;
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&schema.to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h[24..32].copy_from_slice(&off.to_le_bytes());
    f.write_all(&h)?;
    f.sync_all()?;
    Ok(count)
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// An open snapshot: point lookups by binary search (a few small reads), prefix scans in two reads.
pub struct Snapshot {
    file: File,
    path: PathBuf,
    count: u64,
    index_off: u64,
    schema: u32,
}

impl Snapshot {
    /// Opens the store's snapshot; `Ok(None)` when there is none.
    pub fn open(store_dir: &Path) -> Result<Option<Snapshot>, SnapshotError> {
        Self::open_file(&path_in(store_dir))
    }

    /// Opens a file in this format anywhere (a backup being restored); `Ok(None)` when there is none.
    pub fn open_file(path: &Path) -> Result<Option<Snapshot>, SnapshotError> {
        let path = path.to_path_buf();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(SnapshotError::Io { path, source }),
        };
        let len = file.metadata().map_err(|source| SnapshotError::Io { path: path.clone(), source })?.len();
        let mut h = [0u8; HEADER as usize];
        file.read_exact_at(&mut h, 0).map_err(|source| SnapshotError::Io { path: path.clone(), source })?;
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or_default());
        let (count, index_off) = (u64_at(16), u64_at(24));
        let schema = u32::from_le_bytes(h[8..12].try_into().unwrap_or_default());
        let fits = count.checked_mul(ENTRY).and_then(|n| n.checked_add(index_off)) == Some(len) && index_off >= HEADER;
        if &h[..8] != MAGIC || !fits {
            return Err(SnapshotError::Invalid { path, detail: "bad header or length (not written by this safeguard?)".into() });
        }
        Ok(Some(Snapshot { file, path, count, index_off, schema }))
    }

    pub fn schema(&self) -> u32 {
        self.schema
    }

    /// How many entries it holds.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every entry in key order, `batch` at a time (the last batch may be shorter): one pass over the
    /// index and one sequential pass over the data, so a restore reads the file once.
    pub fn for_each_batch(&self, batch: usize, mut f: impl FnMut(Vec<KeyValue>) -> Result<(), SnapshotError>) -> Result<(), SnapshotError> {
        let batch = batch.max(1) as u64;
        let mut i = 0u64;
        while i < self.count {
            let n = batch.min(self.count - i);
            let idx = self.read(self.index_off + i * ENTRY, usize::try_from(n * ENTRY).map_err(|_| self.bad("index too large"))?)?;
            let entries: Vec<(u64, u32, u32)> = idx.chunks_exact(ENTRY as usize).map(index_entry).collect();
            let start = entries[0].0;
            let end = entries.iter().map(|&(o, k, v)| o + u64::from(k) + u64::from(v)).max().unwrap_or(start);
            if start < HEADER || end > self.index_off || end < start {
                return Err(self.bad("an index entry points outside the data"));
            }
            let data = self.read(start, usize::try_from(end - start).map_err(|_| self.bad("batch too large"))?)?;
            let mut out = Vec::with_capacity(entries.len());
            for (o, k, v) in entries {
                let a = usize::try_from(o.checked_sub(start).ok_or_else(|| self.bad("entries out of order"))?).map_err(|_| self.bad("offset"))?;
                let (k, v) = (k as usize, v as usize);
                let kv = data.get(a..a + k + v).ok_or_else(|| self.bad("an index entry points outside the data"))?;
                out.push((kv[..k].to_vec(), kv[k..].to_vec()));
            }
            f(out)?;
            i += n;
        }
        Ok(())
    }

    fn io(&self, source: std::io::Error) -> SnapshotError {
        SnapshotError::Io { path: self.path.clone(), source }
    }

    fn bad(&self, detail: &str) -> SnapshotError {
        SnapshotError::Invalid { path: self.path.clone(), detail: detail.into() }
    }

    fn entry(&self, i: u64) -> Result<(u64, u32, u32), SnapshotError> {
        let mut e = [0u8; ENTRY as usize];
        self.file.read_exact_at(&mut e, self.index_off + i * ENTRY).map_err(|e| self.io(e))?;
        let (off, kl, vl) = index_entry(&e);
        if off < HEADER || off + u64::from(kl) + u64::from(vl) > self.index_off {
            return Err(self.bad("an index entry points outside the data"));
        }
        Ok((off, kl, vl))
    }

    fn read(&self, off: u64, len: usize) -> Result<Vec<u8>, SnapshotError> {
        let mut b = vec![0u8; len];
        self.file.read_exact_at(&mut b, off).map_err(|e| self.io(e))?;
        Ok(b)
    }

    /// The first index position whose key is >= `key`.
    fn lower_bound(&self, key: &[u8]) -> Result<u64, SnapshotError> {
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (off, kl, _) = self.entry(mid)?;
            if self.read(off, kl as usize)?.as_slice() < key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, SnapshotError> {
        let i = self.lower_bound(key)?;
        if i == self.count {
            return Ok(None);
        }
        let (off, kl, vl) = self.entry(i)?;
        let kv = self.read(off, kl as usize + vl as usize)?;
        Ok((kv[..kl as usize] == *key).then(|| kv[kl as usize..].to_vec()))
    }

    /// The first (key, value) whose key starts with `prefix`, reading that entry only.
    pub fn first_with_prefix(&self, prefix: &[u8]) -> Result<Option<KeyValue>, SnapshotError> {
        let i = self.lower_bound(prefix)?;
        if i == self.count {
            return Ok(None);
        }
        let (off, kl, vl) = self.entry(i)?;
        let kv = self.read(off, kl as usize + vl as usize)?;
        let (k, v) = kv.split_at(kl as usize);
        Ok(k.starts_with(prefix).then(|| (k.to_vec(), v.to_vec())))
    }

    /// Every (key, value) whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, SnapshotError> {
        let lo = self.lower_bound(prefix)?;
        let hi = match successor(prefix) {
            Some(s) => self.lower_bound(&s)?,
            None => self.count,
        };
        if lo >= hi {
            return Ok(Vec::new());
        }
        let idx = self.read(self.index_off + lo * ENTRY, ((hi - lo) * ENTRY) as usize)?;
        let entries: Vec<(u64, u32, u32)> = idx.chunks_exact(ENTRY as usize).map(index_entry).collect();
        let start = entries[0].0;
        let end = entries.iter().map(|&(o, k, v)| o + u64::from(k) + u64::from(v)).max().unwrap_or(start);
        if start < HEADER || end > self.index_off || end < start {
            return Err(self.bad("an index entry points outside the data"));
        }
        let data = self.read(start, (end - start) as usize)?;
        entries
            .into_iter()
            .map(|(o, k, v)| {
                let a = usize::try_from(o - start).map_err(|_| self.bad("offset"))?;
                let (k, v) = (k as usize, v as usize);
                data.get(a..a + k + v).map(|kv| (kv[..k].to_vec(), kv[k..].to_vec())).ok_or_else(|| self.bad("an index entry points outside the data"))
            })
            .collect()
    }
}

/// One 16-byte index entry: (data offset, key length, value length).
fn index_entry(e: &[u8]) -> (u64, u32, u32) {
    let u32_at = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().unwrap_or_default());
    (u64::from_le_bytes(e[..8].try_into().unwrap_or_default()), u32_at(8), u32_at(12))
}

/// The smallest byte string greater than every string starting with `prefix`.
fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut s = prefix.to_vec();
    while let Some(last) = s.pop() {
        if last < 0xff {
            s.push(last + 1);
            return Some(s);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_point_lookups_and_prefix_scans() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("db")).open().unwrap();
        for i in 0..500u32 {
            db.insert(format!("i/{i:05}"), format!("record {i}").as_bytes()).unwrap();
            db.insert(format!("n/{i:05}"), format!("node {i}").as_bytes()).unwrap();
        }
        db.insert("m/schema", &b"1"[..]).unwrap();
        db.insert(&b"p/\xff"[..], &b""[..]).unwrap();
        assert_eq!(write(dir.path(), 1, &db).unwrap(), 1002);
        let s = Snapshot::open(dir.path()).unwrap().unwrap();
        assert_eq!(s.schema(), 1);
        assert_eq!(s.get(b"i/00042").unwrap().as_deref(), Some(&b"record 42"[..]));
        assert_eq!(s.get(b"m/schema").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(s.get(b"i/0004").unwrap(), None);
        assert_eq!(s.get(b"zzz").unwrap(), None);
        assert_eq!(s.get(b"").unwrap(), None);
        let nodes = s.scan_prefix(b"n/").unwrap();
        assert_eq!(nodes.len(), 500);
        assert_eq!(nodes[7], (b"n/00007".to_vec(), b"node 7".to_vec()));
        assert_eq!(s.scan_prefix(b"i/0049").unwrap().len(), 10);
        assert_eq!(s.scan_prefix(b"x/").unwrap().len(), 0);
        assert_eq!(s.scan_prefix(b"p/").unwrap(), vec![(b"p/\xff".to_vec(), Vec::new())]);
        assert_eq!(s.scan_prefix(b"").unwrap().len(), 1002);

        remove(dir.path()).unwrap();
        assert!(Snapshot::open(dir.path()).unwrap().is_none());
        remove(dir.path()).unwrap();
    }

    #[test]
    fn a_truncated_or_foreign_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("db")).open().unwrap();
        db.insert("i/a", &b"x"[..]).unwrap();
        write(dir.path(), 1, &db).unwrap();
        let p = path_in(dir.path());
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(Snapshot::open(dir.path()), Err(SnapshotError::Invalid { .. })));
        std::fs::write(&p, b"hello").unwrap();
        assert!(Snapshot::open(dir.path()).is_err());
    }
}
