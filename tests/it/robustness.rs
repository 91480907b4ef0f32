//! Bad input never stops the stream and never panics: random bytes, invalid UTF-8, 1 MB lines,
//! truncated JSON and lines that almost match, through the parser and through the whole engine.

use proptest::prelude::*;
use safeguard::parse::{parse_line, YearClock};
use safeguard::pipeline::{Engine, EngineConfig, SourceId};
use safeguard::store::Store;

const REAL: &[&str] = &[
    r#"Mar 16 23:10:17 0.router broker.stdout.log:  {"timestamp":"1458195017.896692991","source":"patroni-broker","message":"patroni-broker.cluster.remove-node.perform","log_level":1,"data":{"backend":"10.58.111.150","instance-id":"6e101b27-ee1b-4f4d-a032-4401a3709ec3","node-uuid":"c8ce128e-7b4c-4fe7-a533-e9379356f906"}}"#,
    r#"Nov 23 19:56:42 cell-c cf-c8ce128e-7b4c-4fe7-a533-e9379356f906:  6e101b-patroni>         STRUCTURED: time=2026-11-23T19:56:42.041488-00 pid=12221 action=push-wal key=s3://b/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/wal_005/000000010000000000000001.lzo prefix=backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/ seg=000000010000000000000001 state=begin"#,
    r#"Oct  6 00:04:22 cell-b cf-aaaaaaaa-0000-4000-8000-000000000001:  6e101b-backup>         DETAIL: Uploading to "s3://bkt/backups/6e101b27-ee1b-4f4d-a032-4401a3709ec3/wal/basebackups_005/base_000000010000000000000003_00000040/tar_partitions/part_00000000.tar.lzo" complete at 20493KiB/s."#,
    r#"<134>1 2016-03-17T06:10:18Z h broker.stdout.log - [a@1 x="]"] {"message":"x"}"#,
    r#"{"message":"  6e101b-backup> NOTICE:  pg_stop_backup complete","host":"c","appname":"cf-c8ce128e-7b4c-4fe7-a533-e9379356f906","timestamp":1475712264}"#,
    "Oct  6 00:04:24 cell-b cf-aaaaaaaa:  6e101b-backup> base_000000010000000000000002_00000040#0112016-10-06T00:04:24.000Z",
];

fn engine() -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8 << 20).unwrap();
    (dir, Engine::new(store, EngineConfig::default()).unwrap())
}

/// A real line cut at `cut`, with byte `flip` replaced: the "almost matches".
fn mangle(i: usize, cut: usize, flip: usize, with: u8) -> Vec<u8> {
    let mut b = REAL[i % REAL.len()].as_bytes().to_vec();
    if !b.is_empty() {
        let f = flip % b.len();
        b[f] = with;
        b.truncate(cut % (b.len() + 1));
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_any_text(s in ".{0,400}") {
        let _ = parse_line(&s, &mut YearClock::default(), 0);
    }

    #[test]
    fn engine_never_panics_and_accounts_for_every_line(
        random in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..40),
        mangled in proptest::collection::vec((0usize..64, 0usize..2000, 0usize..2000, any::<u8>()), 0..40),
    ) {
        let (_dir, mut e) = engine();
        let h = e.add_source(SourceId::stream(b"prop"), "prop", true).unwrap();
        let mut lines: Vec<Vec<u8>> = random.into_iter().map(|l| l.into_iter().filter(|c| *c != b'\n').collect()).collect();
        lines.extend(mangled.into_iter().map(|(i, c, f, w)| mangle(i, c, f, w)).map(|l| l.into_iter().filter(|c| *c != b'\n').collect()));
        let mut buf = Vec::new();
        for l in &lines {
            buf.extend_from_slice(l);
            buf.push(b'\n');
        }
        e.feed_chunk(h, 0, &buf);
        // The same lines one by one through the message path (as the syslog listener feeds them).
        let n = e.add_source(SourceId::Syslog, "syslog", false).unwrap();
        for (i, l) in lines.iter().enumerate() {
            e.feed_line(n, i as u64 + 1, l);
        }
        e.commit(None).unwrap();
        let c = e.counters();
        prop_assert_eq!(c.lines_read, 2 * lines.len() as u64);
        prop_assert!(c.lines_relevant + c.lines_rejected <= c.lines_read);
        // Every relevant line is applied, given up, or still waiting for the line that names its instance.
        prop_assert_eq!(c.lines_attributed + c.lines_unattributed + c.lines_parked, c.lines_relevant);
        prop_assert_eq!(c.rejected_by_reason.values().sum::<u64>(), c.lines_rejected);
        prop_assert_eq!(c.by_source.values().map(|s| s.lines_read).sum::<u64>(), c.lines_read);
        prop_assert_eq!(c.by_source.values().map(|s| s.lines_rejected).sum::<u64>(), c.lines_rejected);
    }
}

#[test]
fn crafted_bad_lines_are_counted_as_rejected_by_reason() {
    let (_dir, mut e) = engine();
    let h = e.add_source(SourceId::Syslog, "syslog", false).unwrap();
    let mut megabyte = b"Mar 16 19:11:48 cell docker/cf-c8ce128e:  patroni> DETAIL: Uploading s3://".to_vec();
    megabyte.resize(1 << 20, b'x');
    let mut bad_utf8 = b"Mar 16 19:11:48 cell docker/cf-c8ce128e:  patroni> DETAIL: s3://b/\xff\xfe".to_vec();
    bad_utf8.push(0xc3);
    let truncated_json = &REAL[0][..REAL[0].len() - 40];
    let almost_wale = r#"Mar 16 19:11:48 cell docker/cf-c8ce128e:  patroni>  DETAIL: Archiving to "s3://b/backups/6e101b27/wa"#;
    let no_envelope = "s3:// is all this line has";
    for (i, l) in [megabyte.as_slice(), &bad_utf8, truncated_json.as_bytes(), almost_wale.as_bytes(), no_envelope.as_bytes()].iter().enumerate() {
        e.feed_line(h, i as u64 + 1, l);
    }
    e.commit(None).unwrap();
    let c = e.counters();
    assert_eq!(c.lines_rejected, 5, "{:?}", c.rejected_by_reason);
    for reason in ["too_long", "utf8", "json", "wal_e", "envelope"] {
        assert_eq!(c.rejected_by_reason.get(reason), Some(&1), "{reason}: {:?}", c.rejected_by_reason);
    }
    assert_eq!(c.events_applied, 0);
}
