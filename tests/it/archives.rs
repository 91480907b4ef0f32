//! Backfilling the archives operators really have (issue 12), against the real binary: rotated and
//! compressed (gzip, zstd, xz, bzip2, by content), per host, in any argument order, as one `ingest` of
//! files and directories. Each case is compared with one time-ordered plain ingest of the same lines
//! (`show --json` per instance equal); inputs that cannot be read are named with the reason and make the
//! exit code non-zero; replays apply nothing whatever the packaging.

use crate::common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{bin, run};
use proptest::prelude::*;
use safeguard::gen::{GenConfig, Generator, Rng};
use serde_json::Value;

fn corpus(seed: u64, lines: u64) -> Vec<String> {
    let cfg = GenConfig { seed, lines, concurrent_instances: 12, noise: 0.5, delete_fraction: 0.4, ..GenConfig::default() };
    let mut out = Vec::new();
    Generator::new(cfg).write_all(&mut out).unwrap();
    String::from_utf8(out).unwrap().lines().map(str::to_string).collect()
}

fn text(lines: &[String]) -> Vec<u8> {
    (lines.join("\n") + "\n").into_bytes()
}

#[derive(Debug, Clone, Copy)]
enum Pack {
    Plain,
    Gzip,
    GzipTwoMembers,
    Zstd,
    Xz,
    Bzip2,
}

const PACKS: [Pack; 6] = [Pack::Plain, Pack::Gzip, Pack::GzipTwoMembers, Pack::Zstd, Pack::Xz, Pack::Bzip2];

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn pack(b: &[u8], how: Pack) -> Vec<u8> {
    match how {
        Pack::Plain => b.to_vec(),
        Pack::Gzip => gzip(b),
        Pack::GzipTwoMembers => {
            // `cat a.gz b.gz`: logrotate's delaycompress and hand-made archives look like this.
            let cut = b.len() / 2;
            let cut = cut + b[cut..].iter().position(|&c| c == b'\n').map_or(0, |i| i + 1);
            let mut out = gzip(&b[..cut]);
            out.extend(gzip(&b[cut..]));
            out
        }
        Pack::Zstd => zstd::encode_all(b, 3).unwrap(),
        Pack::Xz => {
            let mut out = Vec::new();
            liblzma::read::XzEncoder::new(b, 1).read_to_end(&mut out).unwrap();
            out
        }
        Pack::Bzip2 => {
            let mut out = Vec::new();
            bzip2::read::BzEncoder::new(b, bzip2::Compression::fast()).read_to_end(&mut out).unwrap();
            out
        }
    }
}

fn put(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

/// `safeguard ingest ARGS --json` in its own process: (exit code, summary, stderr).
fn ingest(store: &Path, args: &[&Path]) -> (i32, Value, String) {
    let mut a: Vec<&str> = vec!["ingest"];
    a.extend(args.iter().map(|p| p.to_str().unwrap()));
    a.extend(["--json", "--store", store.to_str().unwrap()]);
    let (code, out, err) = run(&a);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("ingest printed no JSON ({e}): {out}\n{err}"));
    (code, v, err)
}

fn instance_ids(store: &Path) -> Vec<String> {
    let (code, out, err) = run(&["instances", "--json", "--store", store.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rows = v.as_array().cloned().or_else(|| v["instances"].as_array().cloned()).unwrap();
    rows.iter().map(|r| r["instance_id"].as_str().unwrap().to_string()).collect()
}

/// Every instance as `show --json` renders it (risks, judged at the moment of asking, left out).
fn records(store: &Path) -> BTreeMap<String, Value> {
    instance_ids(store)
        .into_iter()
        .map(|id| {
            let (code, out, err) = run(&["show", &id, "--json", "--store", store.to_str().unwrap()]);
            assert_eq!(code, 0, "{err}");
            let mut v: Value = serde_json::from_str(&out).unwrap();
            v.as_object_mut().unwrap().remove("at_risk");
            (id, v)
        })
        .collect()
}

/// What one time-ordered plain ingest of `lines` records.
fn reference(dir: &Path, lines: &[String]) -> BTreeMap<String, Value> {
    let f = put(&dir.join("reference.log"), &text(lines));
    let store = dir.join("reference-store");
    let (code, _, err) = ingest(&store, &[&f]);
    assert_eq!(code, 0, "{err}");
    let r = records(&store);
    assert!(r.len() >= 10, "the corpus should name instances: {}", r.len());
    r
}

fn assert_same(want: &BTreeMap<String, Value>, got: &BTreeMap<String, Value>, how: &str) {
    assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "instances differ {how}");
    for (id, w) in want {
        assert_eq!(&got[id], w, "{id} differs {how}");
    }
}

fn inputs(summary: &Value) -> BTreeMap<String, Value> {
    summary["inputs"].as_array().unwrap().iter().map(|i| (i["input"].as_str().unwrap().to_string(), i.clone())).collect()
}

/// The sending host of a generated line, in any of its envelopes.
fn host_of(l: &str) -> String {
    if l.starts_with('{') {
        let v: Value = serde_json::from_str(l).unwrap();
        return v["host"].as_str().unwrap_or("").to_string();
    }
    let f: Vec<&str> = l.split_whitespace().collect();
    match f.first() {
        Some(p) if p.starts_with("<134>1") => f.get(2),
        _ => f.get(3),
    }
    .unwrap_or(&"")
    .to_string()
}

#[test]
fn a_rotated_set_in_shell_glob_order_reads_like_the_time_ordered_log() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = corpus(11, 12_000);
    let want = reference(tmp.path(), &lines);
    // logrotate: `syslog` is the newest quarter, `syslog.3.zst` the oldest; the shell lists them newest first.
    let q = lines.len() / 4;
    let dir = tmp.path().join("log");
    let files = [
        put(&dir.join("syslog"), &text(&lines[3 * q..])),
        put(&dir.join("syslog.1"), &text(&lines[2 * q..3 * q])),
        put(&dir.join("syslog.2.gz"), &pack(&text(&lines[q..2 * q]), Pack::Gzip)),
        put(&dir.join("syslog.3.zst"), &pack(&text(&lines[..q]), Pack::Zstd)),
    ];
    let store = tmp.path().join("store");
    let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (code, summary, err) = ingest(&store, &args);
    assert_eq!(code, 0, "{err}");
    assert_same(&want, &records(&store), "as a rotated set listed newest first");
    let by = inputs(&summary);
    let formats: Vec<&str> = files.iter().map(|f| by[f.to_str().unwrap()]["format"].as_str().unwrap()).collect();
    assert_eq!(formats, ["plain", "plain", "gzip", "zstd"]);
    let read: u64 = by.values().map(|i| i["lines_read"].as_u64().unwrap()).sum();
    assert_eq!(read, lines.len() as u64);
    assert!(by.values().all(|i| i.get("error").is_none()), "{summary:#}");
}

#[test]
fn a_per_host_directory_with_mixed_compression_reads_like_the_time_ordered_log() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = corpus(12, 12_000);
    let want = reference(tmp.path(), &lines);
    let mut hosts: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in &lines {
        hosts.entry(host_of(l)).or_default().push(l.clone());
    }
    assert!(hosts.len() >= 5, "{}", hosts.len());
    let root = tmp.path().join("remote");
    for (k, (host, ls)) in hosts.iter().enumerate() {
        // Each host's log rotated once, the older half compressed with any of the formats, under a
        // name that says nothing (formats are told by content).
        let half = ls.len() / 2;
        let name = if host.is_empty() { "unnamed".to_string() } else { host.replace('/', "_") };
        put(&root.join(&name).join("syslog"), &text(&ls[half..]));
        put(&root.join(&name).join("syslog.1"), &pack(&text(&ls[..half]), PACKS[k % PACKS.len()]));
    }
    // Hidden files are skipped, whatever they hold.
    put(&root.join(".state"), b"\x00\x01\x02 not a log");
    put(&root.join("h").join(".swp"), &pack(b"Mar  1 00:00:00 h p: never read\n", Pack::Gzip));
    let store = tmp.path().join("store");
    let (code, summary, err) = ingest(&store, &[&root]);
    assert_eq!(code, 0, "{err}\n{summary:#}");
    assert_same(&want, &records(&store), "as a per-host directory");
    let by = inputs(&summary);
    assert_eq!(by.len(), 2 * hosts.len(), "{:?}", by.keys());
    let root_name = root.to_str().unwrap();
    assert!(!by.keys().any(|k| k.strip_prefix(root_name).unwrap().contains("/.")), "hidden entries were read: {:?}", by.keys());
    for f in ["gzip", "zstd", "xz", "bzip2"] {
        assert!(by.values().any(|i| i["format"] == f), "no {f} input in {summary:#}");
    }
}

#[test]
fn a_truncated_gzip_is_named_its_whole_lines_are_read_and_the_exit_code_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = corpus(13, 6_000);
    let half = lines.len() / 2;
    let good = put(&tmp.path().join("syslog"), &text(&lines[half..]));
    let gz = pack(&text(&lines[..half]), Pack::Gzip);
    let cut = put(&tmp.path().join("syslog.1.gz"), &gz[..gz.len() * 2 / 3]);
    let store = tmp.path().join("store");
    let (code, summary, err) = ingest(&store, &[&good, &cut]);
    assert_ne!(code, 0, "a truncated input must fail the run");
    let by = inputs(&summary);
    let c = &by[cut.to_str().unwrap()];
    assert!(c["error"].as_str().unwrap().contains("truncated gzip"), "{c}");
    let got = c["lines_read"].as_u64().unwrap();
    assert!(got > 0 && got < half as u64, "the lines before the cut are read: {got} of {half}");
    assert_eq!(by[good.to_str().unwrap()]["lines_read"], (lines.len() - half) as u64);
    assert!(err.contains(cut.to_str().unwrap()) && err.contains("truncated gzip"), "{err}");
    // Everything read is a whole line of the original: the text output agrees on the line count.
    let (_, out, _) = run(&["ingest", cut.to_str().unwrap(), "--store", tmp.path().join("other").to_str().unwrap()]);
    assert!(out.contains(&format!("{got} lines read")), "{out}");
}

#[test]
fn inputs_that_are_not_syslog_are_named_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let ok_lines = corpus(14, 500);
    let ok = put(&d.join("ok.log"), &text(&ok_lines));
    let cases: Vec<(PathBuf, &str)> = vec![
        (put(&d.join("core"), b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00"), "binary data"),
        (put(&d.join("logs.zip"), b"PK\x03\x04\x14\x00\x00\x00"), "zip"),
        (put(&d.join("syslog.lz4"), &[0x04, 0x22, 0x4d, 0x18, 0x64, 0x40]), "lz4"),
        (put(&d.join("bad.gz"), &[0x1f, 0x8b, 0x08, 0x00, 0xff, 0xff, 0xff, 0xff, 0x00, 0x03, 0xde, 0xad]), "gzip"),
        (d.join("no-such-file"), "cannot read it"),
    ];
    std::fs::create_dir(d.join("empty-dir")).unwrap();
    let mut args: Vec<&Path> = vec![&ok];
    args.extend(cases.iter().map(|(p, _)| p.as_path()));
    let empty = d.join("empty-dir");
    args.push(&empty);
    let store = d.join("store");
    let (code, summary, err) = ingest(&store, &args);
    assert_eq!(code, 1, "{err}");
    let by = inputs(&summary);
    for (p, why) in &cases {
        let name = p.to_str().unwrap();
        let e = by[name]["error"].as_str().unwrap_or_else(|| panic!("{name} not reported: {summary:#}"));
        assert!(e.contains(why), "{name}: {e}");
        assert!(err.contains(name), "stderr does not name {name}: {err}");
    }
    assert!(by[empty.to_str().unwrap()]["error"].as_str().unwrap().contains("no files"));
    // The readable input was ingested all the same.
    assert_eq!(by[ok.to_str().unwrap()]["lines_read"].as_u64(), Some(ok_lines.len() as u64));
    assert!(by[ok.to_str().unwrap()]["lines_relevant"].as_u64().unwrap() > 0);
}

#[test]
fn an_archive_ingested_again_in_any_packaging_applies_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = corpus(15, 8_000);
    let body = text(&lines);
    let store = tmp.path().join("store");
    let first = put(&tmp.path().join("a/syslog.1"), &body);
    let (code, s, err) = ingest(&store, &[&first]);
    assert_eq!(code, 0, "{err}");
    assert!(s["events_applied"].as_u64().unwrap() > 100);
    let before = records(&store);
    let n = lines.len() as u64;
    // Compressed, from another path, recompressed, under a misleading name: the same content.
    for (k, how) in PACKS.iter().enumerate() {
        let p = put(&tmp.path().join(format!("b/{k}/archive.txt")), &pack(&body, *how));
        let (code, s, err) = ingest(&store, &[&p]);
        assert_eq!(code, 0, "{how:?}: {err}");
        assert_eq!(s["events_applied"], 0, "{how:?} applied something again: {s:#}");
        let i = &s["inputs"][0];
        assert_eq!((i["lines_skipped_replay"].as_u64(), i["lines_read"].as_u64()), (Some(n), Some(0)), "{how:?}: {i}");
    }
    // Through stdin, compressed.
    let mut child = Command::new(bin())
        .args(["ingest", "-", "--json", "--store", store.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let gz = pack(&body, Pack::Gzip);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&gz));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["events_applied"], 0);
    assert_eq!(s["inputs"][0]["lines_skipped_replay"].as_u64(), Some(n));
    assert_same(&before, &records(&store), "after every replay");
    // An archive that grew (the live file, rotated later and compressed) applies only its new lines.
    let more = corpus(16, 2_000);
    let mut grown = body.clone();
    grown.extend(text(&more));
    let p = put(&tmp.path().join("c/syslog.1.gz"), &pack(&grown, Pack::Gzip));
    let (code, s, err) = ingest(&store, &[&p]);
    assert_eq!(code, 0, "{err}");
    assert_eq!((s["inputs"][0]["lines_skipped_replay"].as_u64(), s["inputs"][0]["lines_read"].as_u64()), (Some(n), Some(more.len() as u64)));
}

#[test]
fn the_progress_bar_shows_on_a_terminal_only() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = corpus(17, 20_000);
    let f = put(&tmp.path().join("syslog.1.gz"), &pack(&text(&lines), Pack::Gzip));
    let cmd = format!("stty cols 160; {} ingest {} --store {}", bin(), f.display(), tmp.path().join("s1").display());
    // util-linux `script` gives the command a terminal; its transcript is what the terminal showed.
    let out = Command::new("script").args(["-qec", &cmd, "/dev/null"]).output().expect("script (util-linux)");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("lines/s") && shown.contains("ETA") && shown.contains("KiB"), "no progress bar on a terminal:\n{shown}");
    assert!(shown.contains(&format!("{} lines in ", lines.len())), "the final line says what was read:\n{shown}");
    let quiet = Command::new("script").args(["-qec", &format!("{cmd} --quiet"), "/dev/null"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&quiet.stdout).contains("ETA"));
    // Not a terminal: no bar.
    let (code, _, err) = run(&["ingest", f.to_str().unwrap(), "--store", tmp.path().join("s2").to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!err.contains("ETA"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]
    /// Any split (by host, then at random cut points), any packaging per piece and any argument order,
    /// as one `ingest`, gives the records of one time-ordered plain ingest.
    #[test]
    fn any_split_packaging_and_argument_order_gives_the_in_order_records(seed in 1u64..1000, cuts in 0usize..8, shuffle in any::<u64>()) {
        let tmp = tempfile::tempdir().unwrap();
        let lines = corpus(seed, 5_000);
        let want = reference(tmp.path(), &lines);
        let mut rng = Rng::new(shuffle);
        let mut streams: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in &lines {
            streams.entry(host_of(l)).or_default().push(l.clone());
        }
        let mut pieces: Vec<Vec<String>> = streams.into_values().collect();
        for _ in 0..cuts {
            let i = rng.below(pieces.len() as u64) as usize;
            if pieces[i].len() > 1 {
                let at = 1 + rng.below(pieces[i].len() as u64 - 1) as usize;
                let tail = pieces[i].split_off(at);
                pieces.push(tail);
            }
        }
        let mut files = Vec::new();
        for (k, p) in pieces.iter().enumerate() {
            let how = PACKS[rng.below(PACKS.len() as u64) as usize];
            files.push(put(&tmp.path().join(format!("in/{}/piece-{k}", rng.below(3))), &pack(&text(p), how)));
        }
        for i in (1..files.len()).rev() {
            files.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let store = tmp.path().join("store");
        let args: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let (code, summary, err) = ingest(&store, &args);
        prop_assert_eq!(code, 0, "{}", err);
        let got = records(&store);
        prop_assert_eq!(got.len(), want.len());
        for (id, w) in &want {
            prop_assert_eq!(&got[id], w, "{} differs after {} pieces", id, pieces.len());
        }
        prop_assert_eq!(summary["lines_read"].as_u64(), Some(lines.len() as u64));
        prop_assert_eq!(summary["lines_parked"].as_u64(), Some(0));
    }
}
