//! Files and stdin: read in large chunks of whole lines, identify the stream by its first line, resume
//! from the committed offset, and (when following) survive rotation and truncation.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{stream_id, Msg, Sink};
use crate::pipeline::SourceHandle;

/// Small enough that what read() copied is still in L2 when the newline count and the prefilter scan
/// it (4 MiB measured a few percent slower on scripts/bench.sh); lines longer than this grow the buffer.
const READ_SIZE: usize = 256 << 10;
/// A "line" longer than this without a newline is cut (it will be rejected as too long).
const MAX_CARRY: usize = 16 << 20;

/// Splits a byte stream into runs of whole lines, tracking their offsets. One buffer, allocated once
/// and reused: only an unfinished last line is moved between reads.
pub struct Chunker<R> {
    r: R,
    buf: Vec<u8>,
    /// `buf[start..end]` holds bytes read and not yet handed out.
    start: usize,
    end: usize,
    /// Source offset of `buf[start]`.
    base: u64,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    pub fn new(r: R, start: u64) -> Self {
        Chunker { r, buf: vec![0; READ_SIZE], start: 0, end: 0, base: start, eof: false }
    }

    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            // A line longer than the buffer: grow (bounded by MAX_CARRY in next_lines).
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = loop {
            match self.r.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        self.end += n;
        self.eof = n == 0;
        Ok(n)
    }

    /// The stream's first line (for its identity); waits for a newline unless the input ends first.
    pub fn first_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', self.pending()) {
                return Ok(self.pending()[..i].to_vec());
            }
            if self.end - self.start >= MAX_CARRY || self.fill()? == 0 {
                return Ok(self.pending().to_vec());
            }
        }
    }

    /// True when nothing but (at most) an unterminated first line has been read.
    fn only_partial_first_line(&self, first: &[u8]) -> bool {
        self.pending().len() == first.len()
    }

    /// Next run of whole lines as (offset, bytes). At end of input, `flush_partial` also yields an
    /// unterminated last line (a finished file); otherwise it is held back (a file still being written).
    pub fn next_lines(&mut self, flush_partial: bool) -> io::Result<Option<(u64, &[u8])>> {
        loop {
            let pending = self.end - self.start;
            let full = self.end == self.buf.len();
            if let Some(i) = memchr::memrchr(b'\n', self.pending()) {
                if full || self.eof {
                    return Ok(Some(self.take(i + 1)));
                }
            } else if pending >= MAX_CARRY {
                return Ok(Some(self.take(pending)));
            }
            if self.fill()? == 0 {
                if let Some(i) = memchr::memrchr(b'\n', self.pending()) {
                    return Ok(Some(self.take(i + 1)));
                }
                let pending = self.end - self.start;
                if flush_partial && pending > 0 {
                    return Ok(Some(self.take(pending)));
                }
                return Ok(None);
            }
        }
    }

    fn take(&mut self, n: usize) -> (u64, &[u8]) {
        let (from, base) = (self.start, self.base);
        self.start += n;
        self.base += n as u64;
        (base, &self.buf[from..from + n])
    }

    /// Allows more reads after an end of input (a followed file grew).
    pub fn rearm(&mut self) {
        self.eof = false;
    }

    pub fn offset_after_carry(&self) -> u64 {
        self.base + (self.end - self.start) as u64
    }
}

/// Where a stream consumer puts what it read: straight into an engine (`safeguard ingest`) or onto the
/// watcher's channel.
pub trait LineSink {
    fn register(&mut self, id: &str, name: &str) -> io::Result<(SourceHandle, Option<u64>)>;
    fn lines(&mut self, h: SourceHandle, base: u64, bytes: &[u8]) -> io::Result<()>;
}

impl LineSink for Sink {
    fn register(&mut self, id: &str, name: &str) -> io::Result<(SourceHandle, Option<u64>)> {
        self.register_blocking(id, name, true).map_err(|e| io::Error::other(e.to_string()))
    }
    fn lines(&mut self, h: SourceHandle, base: u64, bytes: &[u8]) -> io::Result<()> {
        self.send_blocking(Msg::Chunk { h, base, bytes: bytes.to_vec() }).map_err(|e| io::Error::other(e.to_string()))
    }
}

/// Reads a non-seekable stream (stdin) to its end. Lines already applied are skipped by the engine.
pub fn read_stream<R: Read>(r: R, name: &str, sink: &mut dyn LineSink) -> io::Result<u64> {
    let mut ch = Chunker::new(r, 0);
    let first = ch.first_line()?;
    if first.is_empty() && ch.pending().is_empty() {
        return Ok(0);
    }
    let (h, _) = sink.register(&stream_id("lines", &first), name)?;
    let mut n = 0;
    while let Some((base, bytes)) = ch.next_lines(true)? {
        n += bytes.len() as u64;
        sink.lines(h, base, bytes)?;
    }
    Ok(n)
}

/// Reads a file from its committed offset to its end.
pub fn read_file(path: &Path, sink: &mut dyn LineSink) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let mut ch = Chunker::new(&mut f, 0);
    let first = ch.first_line()?;
    if first.is_empty() && ch.pending().is_empty() {
        return Ok(0);
    }
    let (h, committed) = sink.register(&stream_id("lines", &first), &path.display().to_string())?;
    drop(ch);
    let start = committed.unwrap_or(0);
    f.seek(SeekFrom::Start(start))?;
    let mut ch = Chunker::new(&mut f, start);
    let mut n = 0;
    while let Some((base, bytes)) = ch.next_lines(true)? {
        n += bytes.len() as u64;
        sink.lines(h, base, bytes)?;
    }
    Ok(n)
}

#[cfg(unix)]
fn inode(m: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    m.ino()
}
#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

/// Follows a file like `tail -F`: waits for it to exist, reads what is appended, and when the file is
/// rotated (a new inode at the path) or truncated, finishes the old one and starts on the new stream.
pub fn follow_file(path: PathBuf, mut sink: Sink, poll: Duration, stop: Arc<AtomicBool>) -> io::Result<()> {
    while !stop.load(Ordering::Relaxed) {
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::thread::sleep(poll);
                continue;
            }
            Err(e) => return Err(e),
        };
        let ino = inode(&f.metadata()?);
        let mut probe = Chunker::new(&f, 0);
        let first = probe.first_line()?;
        if !first.is_empty() && probe.only_partial_first_line(&first) {
            // No newline yet: the first line is still being written, and it is the stream's identity.
            std::thread::sleep(poll);
            continue;
        }
        if first.is_empty() && probe.pending().is_empty() {
            std::thread::sleep(poll);
            continue;
        }
        drop(probe);
        let (h, committed) = LineSink::register(&mut sink, &stream_id("lines", &first), &path.display().to_string())?;
        let mut f = f;
        let start = committed.unwrap_or(0);
        f.seek(SeekFrom::Start(start))?;
        let mut ch = Chunker::new(f, start);
        tracing::info!(path = %path.display(), offset = start, "following file");
        loop {
            while let Some((base, bytes)) = ch.next_lines(false)? {
                sink.lines(h, base, bytes)?;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(poll);
            ch.rearm();
            let rotated = match std::fs::metadata(&path) {
                Ok(m) => inode(&m) != ino || m.len() < ch.offset_after_carry(),
                Err(_) => true,
            };
            if rotated {
                // Drain what the old file still has, including a last unterminated line.
                ch.rearm();
                while let Some((base, bytes)) = ch.next_lines(true)? {
                    sink.lines(h, base, bytes)?;
                }
                tracing::info!(path = %path.display(), "file rotated or truncated; reopening");
                break;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunker_yields_whole_lines_and_offsets() {
        let data = b"a\nbb\nccc".to_vec();
        let mut ch = Chunker::new(&data[..], 10);
        assert_eq!(ch.first_line().unwrap(), b"a");
        assert_eq!(ch.next_lines(false).unwrap(), Some((10, &b"a\nbb\n"[..])));
        assert_eq!(ch.next_lines(false).unwrap(), None);
        assert_eq!(ch.next_lines(true).unwrap(), Some((15, &b"ccc"[..])));
    }
}
