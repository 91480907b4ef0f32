//! Files and stdin: read in large chunks of whole lines, identify the stream by its first line, resume
//! from the committed offset, and (when following) survive rotation and truncation.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::{fnv1a, Msg, Resume, Sink, SourceHandle, SourceId};
use crate::parse::{line_anchor, YearClock};

/// Small enough that what read() copied is still in L2 when the newline count and the prefilter scan
/// it (4 MiB measured a few percent slower on scripts/bench.sh); lines longer than this grow the buffer.
const READ_SIZE: usize = 256 << 10;
/// A "line" longer than this without a newline is cut (it will be rejected as too long).
const MAX_CARRY: usize = 16 << 20;
/// How far into a stream to look for the first line that carries its year (an anchor).
pub(crate) const ANCHOR_SCAN: u64 = 8 << 20;
/// How much of stdin is held to check that a resumed stream is the one stored; past it, a stdin stream
/// is read again from its start (applying a line twice changes nothing).
pub(crate) const STDIN_VERIFY_MAX: u64 = 64 << 20;

/// How an archive's RFC 3164 years are resolved (`ingest --year`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StreamOptions {
    /// The year of the stream's first year-less line; later lines roll over from it.
    pub year: Option<i64>,
}

/// The first anchor (a time with a year) in the first lines of `buf`.
pub(crate) fn first_anchor(buf: &[u8]) -> Option<i64> {
    buf.split(|&c| c == b'\n').take(100_000).filter(|l| l.len() <= 64 * 1024).find_map(|l| std::str::from_utf8(l).ok().and_then(line_anchor))
}

/// An archive's clock: its mtime bounds the year, the first anchor in its head seeds it.
pub(crate) fn archive_clock(head: &[u8], bound: Option<i64>, opts: StreamOptions) -> YearClock {
    let mut clock = YearClock::archive(bound, opts.year);
    if opts.year.is_none() {
        if let Some(a) = first_anchor(head) {
            clock.seed(a);
        }
    }
    clock
}

pub(crate) fn mtime_ms(m: &std::fs::Metadata) -> Option<i64> {
    let t = m.modified().ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// True when the bytes before the resume offset are the ones the store saw there.
pub(crate) fn tail_matches(bytes_before: &[u8], r: &Resume) -> bool {
    match r.tail {
        // A position stored before tails were kept: trust the first line, as then.
        None => true,
        Some(t) => bytes_before.len() >= t.len as usize && fnv1a(&bytes_before[bytes_before.len() - t.len as usize..]) == t.hash,
    }
}

pub(crate) fn file_tail_matches(f: &mut File, r: &Resume) -> io::Result<bool> {
    let Some(t) = r.tail else { return Ok(true) };
    let len = u64::from(t.len);
    if f.metadata()?.len() < r.offset || len > r.offset {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(r.offset - len))?;
    let mut buf = vec![0; len as usize];
    f.read_exact(&mut buf)?;
    Ok(tail_matches(&buf, r))
}

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
    /// A read error held back until the whole lines read before it are handed out (a truncated
    /// archive still yields every complete line before the cut).
    err: Option<io::Error>,
}

impl<R: Read> Chunker<R> {
    pub fn new(r: R, start: u64) -> Self {
        Self::with_capacity(r, start, READ_SIZE)
    }

    /// A chunker whose reads are `cap` bytes (smaller when many inputs are open at once).
    pub fn with_capacity(r: R, start: u64, cap: usize) -> Self {
        Chunker { r, buf: vec![0; cap.max(4096)], start: 0, end: 0, base: start, eof: false, err: None }
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
            if let Some(e) = self.err.take() {
                return Err(e);
            }
            let got = match self.fill() {
                Ok(n) => n,
                Err(e) => match memchr::memrchr(b'\n', self.pending()) {
                    // Hand out the whole lines first; the error comes on the next call. The unfinished
                    // line before the error is dropped: it was cut, and a cut line can parse as a lie.
                    Some(i) => {
                        self.err = Some(e);
                        return Ok(Some(self.take(i + 1)));
                    }
                    None => return Err(e),
                },
            };
            if got == 0 {
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
    fn register(&mut self, id: SourceId, name: &str, clock: YearClock) -> io::Result<(SourceHandle, Option<Resume>)>;
    /// The stream is not the one stored at its position: it is read from its start.
    fn restart(&mut self, h: SourceHandle) -> io::Result<()>;
    fn lines(&mut self, h: SourceHandle, base: u64, bytes: &[u8]) -> io::Result<()>;
}

impl LineSink for Sink {
    fn register(&mut self, id: SourceId, name: &str, clock: YearClock) -> io::Result<(SourceHandle, Option<Resume>)> {
        self.register_blocking(id, name, true, clock).map_err(|e| io::Error::other(e.to_string()))
    }
    fn restart(&mut self, h: SourceHandle) -> io::Result<()> {
        self.send_blocking(Msg::Restart { h }).map_err(|e| io::Error::other(e.to_string()))
    }
    fn lines(&mut self, h: SourceHandle, base: u64, bytes: &[u8]) -> io::Result<()> {
        self.send_blocking(Msg::Chunk { h, base, bytes: bytes.to_vec() }).map_err(|e| io::Error::other(e.to_string()))
    }
}

/// The first line of a stream's head (all of it when it has no newline).
pub(crate) fn first_line(head: &[u8]) -> &[u8] {
    &head[..memchr::memchr(b'\n', head).unwrap_or(head.len())]
}

/// Hands every line left in `ch` to the sink, a final unterminated one included; returns the bytes.
fn feed_to_end<R: Read>(mut ch: Chunker<R>, h: SourceHandle, sink: &mut dyn LineSink) -> io::Result<u64> {
    let mut n = 0;
    while let Some((base, bytes)) = ch.next_lines(true)? {
        n += bytes.len() as u64;
        sink.lines(h, base, bytes)?;
    }
    Ok(n)
}

/// Registers an open file as a stream (named by its first line, its years read like an archive's) and
/// seeks to where reading goes on: after the stored position when the bytes before it are the stored
/// ones, else the start (another file that shares its first line: the source is restarted). `None` for
/// an empty file.
fn register_file(f: &mut File, path: &Path, sink: &mut dyn LineSink, bound: Option<i64>, opts: StreamOptions) -> io::Result<Option<(SourceHandle, u64)>> {
    f.seek(SeekFrom::Start(0))?;
    let mut head = Vec::new();
    (&mut *f).take(ANCHOR_SCAN).read_to_end(&mut head)?;
    if head.is_empty() {
        return Ok(None);
    }
    let (h, resume) = sink.register(SourceId::stream(first_line(&head)), &path.display().to_string(), archive_clock(&head, bound, opts))?;
    drop(head);
    let start = match resume {
        Some(r) if file_tail_matches(f, &r)? => r.offset,
        Some(_) => {
            tracing::info!(path = %path.display(), "another stream than the one stored under its first line: reading it from the start");
            sink.restart(h)?;
            0
        }
        None => 0,
    };
    f.seek(SeekFrom::Start(start))?;
    Ok(Some((h, start)))
}

/// Reads a non-seekable stream (stdin) to its end. Lines already applied are skipped by the engine once
/// the bytes before the stored position are seen to be the same; otherwise the stream is read as new.
pub fn read_stream<R: Read>(mut r: R, name: &str, sink: &mut dyn LineSink, opts: StreamOptions) -> io::Result<u64> {
    let mut head = Vec::new();
    (&mut r).take(ANCHOR_SCAN).read_to_end(&mut head)?;
    if head.is_empty() {
        return Ok(0);
    }
    let (h, resume) = sink.register(SourceId::stream(first_line(&head)), name, archive_clock(&head, None, opts))?;
    if let Some(res) = resume {
        if res.offset > head.len() as u64 && res.offset <= STDIN_VERIFY_MAX {
            (&mut r).take(res.offset - head.len() as u64).read_to_end(&mut head)?;
        }
        let same = res.offset <= head.len() as u64 && tail_matches(&head[..res.offset as usize], &res);
        if !same {
            tracing::info!(stream = name, "not the stream stored under its first line (or too long to check): reading it from the start");
            sink.restart(h)?;
        }
    }
    feed_to_end(Chunker::new(io::Cursor::new(head).chain(r), 0), h, sink)
}

/// Reads a file from its committed offset to its end (from its start when the bytes before that offset
/// are not the ones stored: another file that shares its first line).
pub fn read_file(path: &Path, sink: &mut dyn LineSink, opts: StreamOptions) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let bound = mtime_ms(&f.metadata()?);
    match register_file(&mut f, path, sink, bound, opts)? {
        Some((h, start)) => feed_to_end(Chunker::new(&mut f, start), h, sink),
        None => Ok(0),
    }
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
        // It may hold days of history before its newest lines: its years are read like an archive's
        // whose bound is the wall clock.
        let mut f = f;
        let Some((h, start)) = register_file(&mut f, &path, &mut sink, None, StreamOptions::default())? else {
            std::thread::sleep(poll);
            continue;
        };
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
