//! `ingest`'s inputs as one time-ordered stream: files, directories and stdin, plain or compressed, merged
//! by line time (a k-way merge over per-input readers), so any argument order and any split (per host,
//! per rotation) gives the lines in the order one concatenated, time-sorted file would.
//!
//! Every input is probed first (format by magic bytes, first line for its identity, year clock, first
//! time) and then closed; an input is opened only when the merge reaches its first time, so a long
//! rotated set holds open only the files that overlap in time. Each open input holds a bounded buffer
//! ([`MergeOptions::buffer`], plus [`CHANNEL_CHUNKS`] of them when decoded on its own thread); at most
//! [`MergeOptions::max_open`] are open at once. Compressed inputs are decoded on their own threads (up
//! to [`MergeOptions::threads`]) while the caller parses.
//!
//! Identity is content, never a path: a stream is named by its decoded first line and resumes after its
//! stored position only when the decoded bytes before it are the stored ones, so an archive ingested
//! again (from another path, decompressed, or recompressed) skips what was applied.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;

use serde::Serialize;

use super::decode::{self, Format};
use super::file::{archive_clock, file_tail_matches, first_anchor, first_line, mtime_ms, tail_matches, Chunker, StreamOptions, ANCHOR_SCAN, STDIN_VERIFY_MAX};
use super::protocol::{Resume, SourceId};
use crate::parse::envelope::time_of;
use crate::parse::{EnvTime, Prefilter, YearClock};
use crate::timeutil::now_ms;

/// Decoded chunks a decoder thread may run ahead of the merge.
pub const CHANNEL_CHUNKS: usize = 2;
/// First decoded bytes read by the probe; the year anchor search goes on to [`ANCHOR_SCAN`].
const PROBE_HEAD: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub stream: StreamOptions,
    /// A line earlier than the newest line before it in the same input by more than this is reported.
    pub max_backwards_ms: i64,
    /// Inputs open at once (file descriptors and buffers).
    pub max_open: usize,
    /// Decoder threads (compressed inputs beyond this are decoded on the caller's thread).
    pub threads: usize,
    /// Read buffer per open input.
    pub buffer: usize,
}

impl Default for MergeOptions {
    fn default() -> Self {
        MergeOptions {
            stream: StreamOptions::default(),
            max_backwards_ms: 10 * 60_000,
            max_open: 256,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            buffer: 256 << 10,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputKind {
    File(PathBuf),
    Stdin,
}

#[derive(Debug, Clone)]
pub struct Input {
    pub kind: InputKind,
    pub name: String,
}

/// What became of one input.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InputReport {
    pub input: String,
    pub format: Option<Format>,
    /// Bytes of the input itself (compressed, as on disk) read or skipped.
    pub bytes: u64,
    /// Lines skipped by the reader because an earlier run applied them.
    pub lines_skipped_replay: u64,
    /// Lines earlier than a line before them in this input by more than the bound.
    pub lines_backwards: u64,
    /// The largest such step back, in seconds.
    pub max_backwards_seconds: u64,
    /// Why the input could not be read (entirely, or past some point).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Expands arguments into inputs: files as given, directories recursively (sorted; hidden entries and
/// symlinked directories skipped), `-` for stdin. Arguments that name nothing readable come back as
/// failed reports.
pub fn expand(args: &[PathBuf]) -> (Vec<Input>, Vec<InputReport>) {
    let mut inputs = Vec::new();
    let mut failed = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut fail = |name: String, why: String| failed.push(InputReport { input: name, error: Some(why), ..Default::default() });
    let mut stdin = false;
    for a in args {
        if a == Path::new("-") {
            if stdin {
                fail("-".into(), "stdin given twice; it can be read once".into());
            } else {
                stdin = true;
                inputs.push(Input { kind: InputKind::Stdin, name: "stdin".into() });
            }
            continue;
        }
        match std::fs::metadata(a) {
            Err(e) => fail(a.display().to_string(), format!("cannot read it: {e}")),
            Ok(m) if m.is_dir() => {
                let before = inputs.len();
                walk(a, &mut inputs, &mut seen, &mut fail);
                if inputs.len() == before {
                    fail(a.display().to_string(), "the directory holds no files (hidden files are skipped)".into());
                }
            }
            Ok(_) => {
                if seen.insert(canonical(a)) {
                    inputs.push(Input { kind: InputKind::File(a.clone()), name: a.display().to_string() });
                }
            }
        }
    }
    (inputs, failed)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

fn walk(dir: &Path, out: &mut Vec<Input>, seen: &mut std::collections::HashSet<PathBuf>, fail: &mut impl FnMut(String, String)) {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(Result::ok).collect::<Vec<_>>(),
        Err(e) => return fail(dir.display().to_string(), format!("cannot list the directory: {e}")),
    };
    let mut entries: Vec<_> = entries.into_iter().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() {
            walk(&path, out, seen, fail);
        } else if (ft.is_file() || (ft.is_symlink() && path.metadata().is_ok_and(|m| m.is_file()))) && seen.insert(canonical(&path)) {
            out.push(Input { name: path.display().to_string(), kind: InputKind::File(path) });
        }
    }
}

/// Counts the raw bytes read from a file, for progress.
struct Counting<R> {
    inner: R,
    n: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n.fetch_add(k as u64, Ordering::Relaxed);
        Ok(k)
    }
}

/// A reader that fails with a given error (a stdin decode error met while probing).
struct Failing(Option<io::Error>);

impl Read for Failing {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        match self.0.take() {
            Some(e) => Err(e),
            None => Ok(0),
        }
    }
}

type BoxRead = Box<dyn Read + Send>;

/// What the probe learned of an input.
struct Probe {
    format: Format,
    id: SourceId,
    clock: YearClock,
    /// Sort key of the input's first line (its first time; lines before it go with it).
    first_key: i64,
    tiebreak: u64,
    /// stdin only (it cannot be opened again): the decoded head and the rest of the stream.
    stdin: Option<(Vec<u8>, BoxRead)>,
}

/// Opens an input's raw bytes and tells its format.
fn open_raw(input: &Input, counter: &Arc<AtomicU64>) -> Result<(Format, BoxRead, Option<i64>), String> {
    let (mut raw, bound): (BoxRead, Option<i64>) = match &input.kind {
        InputKind::File(p) => {
            let f = File::open(p).map_err(|e| format!("cannot open it: {e}"))?;
            let bound = f.metadata().ok().as_ref().and_then(mtime_ms);
            (Box::new(Counting { inner: f, n: counter.clone() }), bound)
        }
        InputKind::Stdin => (Box::new(Counting { inner: io::stdin(), n: counter.clone() }), None),
    };
    let mut magic = Vec::with_capacity(decode::MAGIC_LEN);
    decode::read_up_to(&mut raw, &mut magic, decode::MAGIC_LEN).map_err(|e| format!("read failed: {e}"))?;
    let format = decode::sniff(&magic).map_err(|e| e.to_string())?;
    let decoded = decode::decoder(io::Cursor::new(magic).chain(raw), format).map_err(|e| format!("cannot start the {format} decoder: {e}"))?;
    Ok((format, decoded, bound))
}

fn probe(input: &Input, opts: &MergeOptions, counter: &Arc<AtomicU64>, now: i64) -> Result<Option<Probe>, String> {
    let (format, mut r, bound) = open_raw(input, counter)?;
    let mut head = Vec::new();
    let mut deferred: Option<io::Error> = None;
    // What decoded before an error is still read; the reader meets the error again and reports it.
    let read_more = |r: &mut BoxRead, head: &mut Vec<u8>, n: usize, deferred: &mut Option<io::Error>| -> Result<(), String> {
        match decode::read_up_to(r, head, n) {
            Ok(()) => Ok(()),
            Err(e) if !head.is_empty() => {
                *deferred = Some(e);
                Ok(())
            }
            Err(e) => Err(decode::describe_read_error(&e, format)),
        }
    };
    read_more(&mut r, &mut head, PROBE_HEAD, &mut deferred)?;
    if head.is_empty() {
        return Ok(None);
    }
    decode::check_text(&head, format).map_err(|e| e.to_string())?;
    // Grow the head until it holds an anchor for the year (or the scan's limit, or the end).
    while first_anchor(&head).is_none() && (head.len() as u64) < ANCHOR_SCAN && deferred.is_none() {
        let (before, want) = (head.len(), (head.len() * 2).min(ANCHOR_SCAN as usize));
        read_more(&mut r, &mut head, want, &mut deferred)?;
        if head.len() == before {
            break;
        }
    }
    let clock = archive_clock(&head, bound, opts.stream);
    let first = first_line(&head);
    let id = SourceId::stream(first);
    let SourceId::Lines { first_line: tiebreak } = id else { unreachable!("a stream id is a lines id") };
    let mut c = clock.clone();
    let first_key = head.split(|&b| b == b'\n').take(10_000).find_map(|l| line_time(l, &mut c, now)).unwrap_or(i64::MIN);
    let stdin = match input.kind {
        InputKind::Stdin => Some((
            head,
            match deferred {
                Some(e) => Box::new(Failing(Some(e))) as BoxRead,
                None => r,
            },
        )),
        InputKind::File(_) => None,
    };
    Ok(Some(Probe { format, id, clock, first_key, tiebreak, stdin }))
}

/// A line's time, its year resolved by the input's clock.
fn line_time(line: &[u8], clock: &mut YearClock, now: i64) -> Option<i64> {
    match time_of(line) {
        EnvTime::None => None,
        t => clock.resolve(t, now).map(|(t, _)| t),
    }
}

/// One message from an input's reader.
enum Feed {
    Chunk { base: u64, bytes: Vec<u8> },
    End,
    Failed(String),
}

/// Reads an input's decoded lines in chunks.
struct LineReader {
    ch: Chunker<BoxRead>,
    format: Format,
}

impl LineReader {
    /// The next chunk, copied into `spare` (the buffer the last chunk was in): a fresh 256 KiB buffer
    /// per chunk cost a page fault every 4 KiB of the input.
    fn next(&mut self, mut spare: Vec<u8>) -> Feed {
        match self.ch.next_lines(true) {
            Ok(Some((base, bytes))) => {
                spare.clear();
                spare.extend_from_slice(bytes);
                Feed::Chunk { base, bytes: spare }
            }
            Ok(None) => Feed::End,
            Err(e) => Feed::Failed(decode::describe_read_error(&e, self.format)),
        }
    }
}

/// How a reader starts: where, and what the stored position said.
struct Started {
    reader: LineReader,
    restarted: bool,
    skipped_lines: u64,
}

/// Skips a non-seekable stream to the stored position, checking that the bytes before it are the stored
/// ones. `hold` keeps what was skipped (stdin, which cannot be read again). Returns the lines skipped and
/// whether the stream is the stored one.
fn skip_to(r: &mut BoxRead, res: &Resume, mut hold: Option<&mut Vec<u8>>) -> io::Result<(bool, u64)> {
    let mut tail: Vec<u8> = Vec::new();
    let keep = res.tail.map_or(0, |t| t.len as usize);
    let mut buf = vec![0u8; 64 << 10];
    let (mut got, mut lines) = (0u64, 0u64);
    let mut limited = r.take(res.offset);
    loop {
        let n = match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let b = &buf[..n];
        got += n as u64;
        lines += memchr::memchr_iter(b'\n', b).count() as u64;
        if let Some(h) = hold.as_deref_mut() {
            h.extend_from_slice(b);
        }
        if keep > 0 {
            if tail.len() + n > 4 * keep.max(n) {
                tail.drain(..tail.len().saturating_sub(keep));
            }
            tail.extend_from_slice(b);
        }
    }
    Ok((got == res.offset && tail_matches(&tail, res), lines))
}

/// Opens an input for reading from where its stored position says (its start when the stored bytes
/// differ or there is none).
fn start(input: &Input, probe: &mut Probe, resume: Option<Resume>, counter: &Arc<AtomicU64>, cap: usize) -> Result<Started, String> {
    let format = probe.format;
    let reader = |r: BoxRead, at: u64| LineReader { ch: Chunker::with_capacity(r, at, cap), format };
    let fresh = |restarted: bool| -> Result<Started, String> {
        let (_, r, _) = open_raw(input, counter)?;
        Ok(Started { reader: reader(r, 0), restarted, skipped_lines: 0 })
    };
    match (&input.kind, format, resume) {
        (InputKind::Stdin, _, res) => {
            let (mut head, mut rest) = probe.stdin.take().ok_or("stdin was already read")?;
            let Some(res) = res else {
                return Ok(Started { reader: reader(Box::new(io::Cursor::new(head).chain(rest)), 0), restarted: false, skipped_lines: 0 });
            };
            if res.offset > STDIN_VERIFY_MAX {
                // Too long to hold while checking: read it again from its start (a fact applied twice
                // changes nothing).
                return Ok(Started { reader: reader(Box::new(io::Cursor::new(head).chain(rest)), 0), restarted: true, skipped_lines: 0 });
            }
            if (head.len() as u64) < res.offset {
                let want = res.offset as usize;
                decode::read_up_to(&mut rest, &mut head, want).map_err(|e| decode::describe_read_error(&e, format))?;
            }
            let at = (res.offset as usize).min(head.len());
            let same = head.len() as u64 >= res.offset && tail_matches(&head[..at], &res);
            if same {
                let lines = memchr::memchr_iter(b'\n', &head[..at]).count() as u64;
                let rest_of_head = head.split_off(at);
                Ok(Started { reader: reader(Box::new(io::Cursor::new(rest_of_head).chain(rest)), res.offset), restarted: false, skipped_lines: lines })
            } else {
                Ok(Started { reader: reader(Box::new(io::Cursor::new(head).chain(rest)), 0), restarted: true, skipped_lines: 0 })
            }
        }
        (InputKind::File(_), _, None) => fresh(false),
        (InputKind::File(p), Format::Plain, Some(res)) => {
            let mut f = File::open(p).map_err(|e| format!("cannot open it: {e}"))?;
            if !file_tail_matches(&mut f, &res).map_err(|e| format!("read failed: {e}"))? {
                return fresh(true);
            }
            // Count what is skipped for the summary (a scan for newlines, no parsing); the scan leaves
            // the file at the stored offset.
            f.seek(SeekFrom::Start(0)).map_err(|e| format!("read failed: {e}"))?;
            let mut prefix: BoxRead = Box::new(f.try_clone().map_err(|e| format!("read failed: {e}"))?);
            let (_, lines) = skip_to(&mut prefix, &Resume { offset: res.offset, tail: None }, None).map_err(|e| format!("read failed: {e}"))?;
            drop(prefix);
            f.seek(SeekFrom::Start(res.offset)).map_err(|e| format!("read failed: {e}"))?;
            counter.fetch_add(res.offset, Ordering::Relaxed);
            Ok(Started { reader: reader(Box::new(Counting { inner: f, n: counter.clone() }), res.offset), restarted: false, skipped_lines: lines })
        }
        (InputKind::File(_), _, Some(res)) => {
            let (_, mut r, _) = open_raw(input, counter)?;
            let (same, lines) = skip_to(&mut r, &res, None).map_err(|e| decode::describe_read_error(&e, format))?;
            if same {
                Ok(Started { reader: reader(r, res.offset), restarted: false, skipped_lines: lines })
            } else {
                // Not the stream stored under its first line: read it again, from the start.
                fresh(true)
            }
        }
    }
}

/// Where an open input's chunks come from.
enum Src {
    Inline(LineReader),
    Thread(Receiver<Feed>),
}

impl Src {
    fn next(&mut self, spare: Vec<u8>) -> Feed {
        match self {
            Src::Inline(r) => r.next(spare),
            Src::Thread(rx) => rx.recv().unwrap_or_else(|_| Feed::Failed("its decoder thread stopped".into())),
        }
    }
}

struct Active {
    src: Src,
    threaded: bool,
    buf: Vec<u8>,
    base: u64,
    pos: usize,
    clock: YearClock,
    /// Key of the line at `pos`, computed once.
    head_key: Option<i64>,
    /// Key of the last line keyed (lines without a time go with the line before them).
    last_key: i64,
    max_time: i64,
    /// The chunk's lines that hold a prefilter pattern, found once per chunk (a run hands its share on).
    cands: Vec<(usize, usize)>,
    /// The first of `cands` not handed out yet.
    ci: usize,
}

struct Slot {
    input: Input,
    report: InputReport,
    probe: Option<Probe>,
    active: Option<Active>,
    tiebreak: u64,
}

/// What the merge hands the caller next.
pub enum Step<'a> {
    /// A run of whole lines of one input starting at byte `base` of it: `lines` of them, and the
    /// prefilter's candidate lines among them as spans into the input's buffer, where the run starts at
    /// `shift` (see `Engine::feed_run`).
    Lines { input: usize, base: u64, bytes: &'a [u8], lines: u64, candidates: &'a [(usize, usize)], shift: usize },
    /// The input is another stream than the one stored under its id: it is read from its start.
    Restart { input: usize },
    /// The reader skipped lines an earlier run applied.
    Skipped { input: usize, lines: u64 },
}

/// Registers an input's stream (`input`, stream id, name, clock) and returns its stored position.
pub type Register<'r> = dyn FnMut(usize, SourceId, &str, YearClock) -> io::Result<Option<Resume>> + 'r;

type Key = (i64, u64, usize);

pub struct Merger {
    slots: Vec<Slot>,
    /// Probed inputs not opened yet, latest first key first (popped from the end).
    pending: Vec<usize>,
    heap: BinaryHeap<Reverse<Key>>,
    notes: VecDeque<(usize, Note)>,
    /// The slot whose run was handed out last: put back (or refilled) on the next call.
    last: Option<usize>,
    open: usize,
    threads: usize,
    opts: MergeOptions,
    now: i64,
    read: Arc<AtomicU64>,
    total: Option<u64>,
    prefilter: Prefilter,
    /// More inputs overlapped in time than may be open at once.
    pub overflowed: bool,
    /// The most inputs open at once.
    pub peak_open: usize,
}

enum Note {
    Restart,
    Skipped(u64),
}

impl Merger {
    /// Probes every input (format, identity, first time). Inputs that cannot be read are reported, not
    /// fatal.
    pub fn new(inputs: Vec<Input>, opts: MergeOptions) -> Merger {
        let read = Arc::new(AtomicU64::new(0));
        let now = now_ms();
        let mut total = Some(0u64);
        let mut slots = Vec::with_capacity(inputs.len());
        for input in inputs {
            let size = match &input.kind {
                InputKind::File(p) => std::fs::metadata(p).ok().map(|m| m.len()),
                InputKind::Stdin => None,
            };
            total = total.zip(size).map(|(a, b)| a + b);
            let mut report = InputReport { input: input.name.clone(), ..Default::default() };
            // Probing a file reads its head only, again when it is opened: not progress. stdin is read once.
            let counter = if input.kind == InputKind::Stdin { read.clone() } else { Arc::new(AtomicU64::new(0)) };
            let probe = match probe(&input, &opts, &counter, now) {
                Ok(p) => p,
                Err(e) => {
                    report.error = Some(e);
                    None
                }
            };
            report.format = probe.as_ref().map(|p| p.format);
            let tiebreak = probe.as_ref().map_or(0, |p| p.tiebreak);
            slots.push(Slot { input, report, probe, active: None, tiebreak });
        }
        let mut pending: Vec<usize> = (0..slots.len()).filter(|&i| slots[i].probe.is_some()).collect();
        let key = |i: usize| (slots[i].probe.as_ref().map_or(i64::MIN, |p| p.first_key), slots[i].tiebreak, i);
        pending.sort_by_key(|&i| Reverse(key(i)));
        // Empty inputs have nothing to merge; their report says 0 lines.
        Merger {
            slots,
            pending,
            heap: BinaryHeap::new(),
            notes: VecDeque::new(),
            last: None,
            open: 0,
            threads: 0,
            opts,
            now,
            read,
            total,
            prefilter: Prefilter::new(),
            overflowed: false,
            peak_open: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Raw input bytes read so far and in all (unknown with stdin).
    pub fn progress(&self) -> (u64, Option<u64>) {
        (self.read.load(Ordering::Relaxed), self.total)
    }

    pub fn name(&self, input: usize) -> &str {
        &self.slots[input].input.name
    }

    /// Every input's report, with the raw bytes read.
    pub fn into_reports(self) -> Vec<InputReport> {
        self.slots.into_iter().map(|s| s.report).collect()
    }

    fn pending_key(&self) -> Option<Key> {
        let &i = self.pending.last()?;
        Some((self.slots[i].probe.as_ref().map_or(i64::MIN, |p| p.first_key), self.slots[i].tiebreak, i))
    }

    /// The next step of the merged stream; `None` when every input is read.
    pub fn next(&mut self, reg: &mut Register<'_>) -> io::Result<Option<Step<'_>>> {
        if let Some(i) = self.last.take() {
            self.requeue(i);
        }
        loop {
            if let Some((input, note)) = self.notes.pop_front() {
                return Ok(Some(match note {
                    Note::Restart => Step::Restart { input },
                    Note::Skipped(lines) => Step::Skipped { input, lines },
                }));
            }
            // Open every input whose first line is due (all of them may start before the current head).
            let due = match (self.pending_key(), self.heap.peek()) {
                (Some(_), None) => true,
                (Some(p), Some(Reverse(h))) => p <= *h,
                (None, _) => false,
            };
            if due {
                // With the heap empty nothing is open, so the bound cannot stop the merge.
                if self.open >= self.opts.max_open && !self.heap.is_empty() {
                    self.overflowed = true;
                } else {
                    let i = self.pending.pop().expect("due implies pending");
                    self.activate(i, reg)?;
                    continue;
                }
            }
            let Some(Reverse((_, _, i))) = self.heap.pop() else {
                return Ok(None);
            };
            // Run this input's lines up to the next head (or the next input to open).
            let mut limit = self.heap.peek().map(|r| r.0);
            if self.open < self.opts.max_open {
                if let Some(p) = self.pending_key() {
                    limit = Some(limit.map_or(p, |l| l.min(p)));
                }
            } else if !self.pending.is_empty() {
                self.overflowed = true;
            }
            let (base, from, to, lines, (c0, c1)) = self.take_run(i, limit);
            self.last = Some(i);
            let a = self.slots[i].active.as_ref().expect("heap holds open inputs");
            return Ok(Some(Step::Lines { input: i, base, bytes: &a.buf[from..to], lines, candidates: &a.cands[c0..c1], shift: from }));
        }
    }

    fn activate(&mut self, i: usize, reg: &mut Register<'_>) -> io::Result<()> {
        let slot = &mut self.slots[i];
        let Some(mut probe) = slot.probe.take() else { return Ok(()) };
        let resume = reg(i, probe.id.clone(), &slot.input.name, probe.clock.clone())?;
        let clock = probe.clock.clone();
        let compressed = probe.format.is_compressed();
        let threaded = compressed && self.threads < self.opts.threads.max(1);
        let cap = self.opts.buffer;
        let started = if threaded {
            // The decoder thread also does the skip to the stored position, off the caller's thread.
            let (tx, rx) = sync_channel(CHANNEL_CHUNKS);
            let (stx, srx) = sync_channel(1);
            let (input, counter) = (slot.input.clone(), self.read.clone());
            std::thread::Builder::new()
                .name("ingest-decode".into())
                .spawn(move || {
                    let mut reader = match start(&input, &mut probe, resume, &counter, cap) {
                        Ok(s) => {
                            let _ = stx.send(Ok((s.restarted, s.skipped_lines)));
                            s.reader
                        }
                        Err(e) => {
                            let _ = stx.send(Err(e));
                            return;
                        }
                    };
                    loop {
                        let f = reader.next(Vec::new());
                        let last = !matches!(f, Feed::Chunk { .. });
                        if tx.send(f).is_err() || last {
                            return;
                        }
                    }
                })
                .map_err(|e| io::Error::other(format!("cannot start a decoder thread: {e}")))?;
            srx.recv().unwrap_or_else(|_| Err("its decoder thread stopped".into())).map(|(r, s)| (Src::Thread(rx), r, s))
        } else {
            start(&slot.input, &mut probe, resume, &self.read, cap).map(|s| (Src::Inline(s.reader), s.restarted, s.skipped_lines))
        };
        let (src, restarted, skipped) = match started {
            Ok(s) => s,
            Err(e) => {
                slot.report.error = Some(e);
                return Ok(());
            }
        };
        if restarted {
            tracing::info!(input = %slot.input.name, "another stream than the one stored under its first line: reading it from the start");
            self.notes.push_back((i, Note::Restart));
        }
        if skipped > 0 {
            slot.report.lines_skipped_replay += skipped;
            self.notes.push_back((i, Note::Skipped(skipped)));
        }
        slot.active = Some(Active {
            src,
            threaded,
            buf: Vec::new(),
            base: 0,
            pos: 0,
            clock,
            head_key: None,
            last_key: i64::MIN,
            max_time: i64::MIN,
            cands: Vec::new(),
            ci: 0,
        });
        self.open += 1;
        self.peak_open = self.peak_open.max(self.open);
        self.threads += usize::from(threaded);
        self.requeue(i);
        Ok(())
    }

    /// Puts an open input back on the heap by its next line, reading its next chunk when the last is
    /// used up; closes it at its end.
    fn requeue(&mut self, i: usize) {
        loop {
            let slot = &mut self.slots[i];
            let Some(a) = slot.active.as_mut() else { return };
            if a.pos < a.buf.len() {
                let k = match a.head_key {
                    Some(k) => k,
                    None => {
                        let end = line_end(&a.buf, a.pos);
                        let k = key_line(a, &mut slot.report, a.pos, end, self.now, self.opts.max_backwards_ms);
                        a.head_key = Some(k);
                        k
                    }
                };
                self.heap.push(Reverse((k, slot.tiebreak, i)));
                return;
            }
            match a.src.next(std::mem::take(&mut a.buf)) {
                Feed::Chunk { base, bytes } => {
                    a.buf = bytes;
                    a.base = base;
                    a.pos = 0;
                    a.head_key = None;
                    a.cands.clear();
                    a.ci = 0;
                    self.prefilter.candidate_lines(&a.buf, 0, &mut a.cands);
                }
                Feed::End => return self.close(i),
                Feed::Failed(e) => {
                    slot.report.error = Some(e);
                    return self.close(i);
                }
            }
        }
    }

    fn close(&mut self, i: usize) {
        if let Some(a) = self.slots[i].active.take() {
            self.open -= 1;
            self.threads -= usize::from(a.threaded);
        }
    }

    /// The lines of input `i` from its head while their keys stay at or below `limit`.
    fn take_run(&mut self, i: usize, limit: Option<Key>) -> (u64, usize, usize, u64, (usize, usize)) {
        let (now, bound) = (self.now, self.opts.max_backwards_ms);
        let slot = &mut self.slots[i];
        let tb = slot.tiebreak;
        let a = slot.active.as_mut().expect("open");
        let from = a.pos;
        a.head_key = None;
        // Only the lines the parser will see are keyed: the others (95% of a platform's log) are dropped
        // unread, so they go with the line before them. Stepping from candidate to candidate, not line
        // to line, and not reading the others' times, took a quarter off an ingest.
        let first_end = line_end(&a.buf, from);
        let mut p = a.buf.len();
        let mut j = a.ci;
        while j < a.cands.len() && a.cands[j].0 < first_end {
            j += 1;
        }
        while let Some(&(start, end)) = a.cands.get(j) {
            let k = key_line(a, &mut slot.report, start, end, now, bound);
            if limit.is_some_and(|l| (k, tb, i) > l) {
                a.head_key = Some(k);
                p = start;
                break;
            }
            j += 1;
        }
        // Whole lines: every one ends in a newline but perhaps the input's last.
        let lines = memchr::memchr_iter(b'\n', &a.buf[from..p]).count() as u64 + u64::from(p > from && a.buf[p - 1] != b'\n');
        a.pos = p;
        // `j` is the first candidate at or after `p`: the run hands on those before it.
        let c0 = a.ci;
        a.ci = j;
        (a.base + from as u64, from, p, lines, (c0, a.ci))
    }
}

/// The end of the line starting at `at` (after its newline).
fn line_end(buf: &[u8], at: usize) -> usize {
    memchr::memchr(b'\n', &buf[at..]).map_or(buf.len(), |i| at + i + 1)
}

/// The sort key of `buf[from..to]` (its time, or the previous line's), counting steps back in time.
fn key_line(a: &mut Active, report: &mut InputReport, from: usize, to: usize, now: i64, bound: i64) -> i64 {
    let Some(t) = line_time(&a.buf[from..to], &mut a.clock, now) else { return a.last_key };
    if t < a.max_time.saturating_sub(bound) {
        report.lines_backwards += 1;
        report.max_backwards_seconds = report.max_backwards_seconds.max(((a.max_time - t) / 1000) as u64);
    }
    a.max_time = a.max_time.max(t);
    a.last_key = t;
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A line the prefilter passes ("cf-"), so the merge orders it by its time.
    fn line(sec: u32, host: &str) -> String {
        format!("2026-03-16T10:{:02}:{:02}Z {host} cf-prog: line {sec}\n", sec / 60, sec % 60)
    }

    /// Everything the merge hands out, as lines, with a fresh registration per input.
    fn merged(paths: &[PathBuf], opts: MergeOptions) -> (Vec<String>, Vec<InputReport>) {
        let (lines, reports, _) = merged_peak(paths, opts);
        (lines, reports)
    }

    fn merged_peak(paths: &[PathBuf], opts: MergeOptions) -> (Vec<String>, Vec<InputReport>, usize) {
        let max_open = opts.max_open;
        let (inputs, failed) = expand(paths);
        assert!(failed.is_empty(), "{failed:?}");
        let mut m = Merger::new(inputs, opts);
        let mut out = Vec::new();
        let mut reg = |_: usize, _: SourceId, _: &str, _: YearClock| Ok(None);
        while let Some(s) = m.next(&mut reg).unwrap() {
            if let Step::Lines { bytes, .. } = s {
                out.extend(String::from_utf8(bytes.to_vec()).unwrap().lines().map(str::to_string));
            }
        }
        assert!(m.peak_open <= max_open, "{} open at once, bound {max_open}", m.peak_open);
        let peak = m.peak_open;
        (out, m.into_reports(), peak)
    }

    #[test]
    fn any_split_and_order_merges_to_the_sorted_lines() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<String> = (0..600).map(|s| line(s, ["a", "b", "c"][(s as usize * 7) % 3])).collect();
        // Per host, each host's file rotated in two, one half compressed; listed newest first.
        let mut paths = Vec::new();
        for h in ["a", "b", "c"] {
            let mine: Vec<&String> = all.iter().filter(|l| l.contains(&format!("Z {h} "))).collect();
            let (old, new) = mine.split_at(mine.len() / 2);
            paths.push(write(dir.path(), &format!("{h}/syslog"), new.iter().map(|s| s.as_str()).collect::<String>().as_bytes()));
            paths.push(write(dir.path(), &format!("{h}/syslog.1.gz"), &gz(old.iter().map(|s| s.as_str()).collect::<String>().as_bytes())));
        }
        let want: Vec<String> = all.iter().map(|l| l.trim_end().to_string()).collect();
        for opts in [MergeOptions::default(), MergeOptions { max_open: 2, threads: 0, buffer: 4096, ..Default::default() }] {
            let (got, reports) = merged(&paths, opts.clone());
            if opts.max_open >= 6 {
                assert_eq!(got, want);
            } else {
                // Fewer open at once than overlap: every line still comes, once.
                let mut g = got.clone();
                g.sort();
                let mut w = want.clone();
                w.sort();
                assert_eq!(g, w);
            }
            assert!(reports.iter().all(|r| r.error.is_none() && r.lines_backwards == 0), "{reports:?}");
        }
        // The directory, in any argument order, is the same stream; a host's older file is closed before
        // its newer one opens.
        let (got, _, peak) = merged_peak(&[dir.path().to_path_buf()], MergeOptions::default());
        assert_eq!(got, want);
        assert_eq!(peak, 3, "one open file per host");
        paths.reverse();
        assert_eq!(merged(&paths, MergeOptions::default()).0, want);
    }

    /// A line no parser reads (no prefilter pattern) is not keyed by its own time: it stays with the line
    /// before it, and its time, however far back, is not reported.
    #[test]
    fn lines_the_parser_never_reads_go_with_the_line_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let noise = |sec: u32| format!("2026-03-16T10:{:02}:{:02}Z a other: noise {sec}\n", sec / 60, sec % 60);
        let a = [line(100, "a"), noise(5), line(300, "a")].concat();
        let b = [line(200, "b"), noise(900), line(400, "b")].concat();
        let (pa, pb) = (write(dir.path(), "a", a.as_bytes()), write(dir.path(), "b", b.as_bytes()));
        let (got, reports) = merged(&[pa, pb], MergeOptions::default());
        let want: Vec<String> =
            [line(100, "a"), noise(5), line(200, "b"), noise(900), line(300, "a"), line(400, "b")].concat().lines().map(str::to_string).collect();
        assert_eq!(got, want);
        assert!(reports.iter().all(|r| r.lines_backwards == 0), "{reports:?}");
    }

    #[test]
    fn a_file_going_back_in_time_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let body = [line(1000, "a"), line(1001, "a"), line(10, "a"), line(1002, "a")].concat();
        let p = write(dir.path(), "f", body.as_bytes());
        let (got, reports) = merged(&[p], MergeOptions::default());
        assert_eq!(got.len(), 4);
        assert_eq!((reports[0].lines_backwards, reports[0].max_backwards_seconds), (1, 991));
    }

    #[test]
    fn a_truncated_archive_gives_its_whole_lines_and_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = (0..5000).map(|s| line(s, "a")).collect();
        let raw = gz(body.as_bytes());
        let p = write(dir.path(), "cut.gz", &raw[..raw.len() * 3 / 4]);
        let (got, reports) = merged(&[p], MergeOptions::default());
        assert!(reports[0].error.as_deref().unwrap().contains("truncated gzip"), "{reports:?}");
        assert!(got.len() > 1000 && got.len() < 5000, "{}", got.len());
        // Every line handed out is a whole line of the original.
        assert!(got.iter().all(|l| body.contains(&format!("{l}\n"))));
    }

    #[test]
    fn inputs_that_are_not_syslog_are_named_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let bin = write(dir.path(), "x.bin", b"\x7fELF\x02\x01\x01\x00\x00\x00");
        let zip = write(dir.path(), "x.zip", b"PK\x03\x04rest");
        let ok = write(dir.path(), "ok", line(1, "a").as_bytes());
        let empty = write(dir.path(), "empty", b"");
        std::fs::create_dir(dir.path().join("nothing")).unwrap();
        let (inputs, failed) = expand(&[bin, zip, ok, empty, dir.path().join("nothing"), dir.path().join("missing")]);
        assert_eq!(failed.len(), 2, "{failed:?}");
        assert!(failed[0].error.as_deref().unwrap().contains("holds no files"));
        assert!(failed[1].error.as_deref().unwrap().contains("cannot read it"));
        let mut m = Merger::new(inputs, MergeOptions::default());
        let mut reg = |_: usize, _: SourceId, _: &str, _: YearClock| Ok(None);
        let mut n = 0;
        while let Some(s) = m.next(&mut reg).unwrap() {
            if let Step::Lines { bytes, .. } = s {
                n += bytes.len();
            }
        }
        assert_eq!(n, line(1, "a").len());
        let r = m.into_reports();
        assert!(r[0].error.as_deref().unwrap().contains("binary data"), "{:?}", r[0]);
        assert!(r[1].error.as_deref().unwrap().contains("zip"), "{:?}", r[1]);
        assert!(r[2].error.is_none() && r[3].error.is_none());
    }
}
