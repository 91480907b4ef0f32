//! One multi-pattern scan (aho-corasick, SIMD "Teddy" for few patterns) that every relevant line matches
//! and nearly every unrelated line does not. It runs over whole buffers, so unrelated lines are never
//! split, decoded or looked at one by one: ingest costs about what one `grep -F` pass costs.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// Each relevant line shape contains at least one of these (tests/parse_shapes.rs checks every
/// documented shape against them). They are specific on purpose: WAL-E's chatty `MSG:` lines and
/// PostgreSQL's own log lines inside containers match none, so they are never parsed.
pub const PATTERNS: [&str; 20] = [
    "s3://",                  // every WAL-E URL, sysid uploads, clone callbacks
    "-broker.",               // lager message names: patroni-broker.*, dingo-postgresql-broker.*
    "DETAIL:",                // WAL-E detail lines (uploads, deletes, partition downloads)
    "STRUCTURED:",            // WAL-E structured lines
    "pg_stop_backup",         // the NOTICE that completes a base backup (PostgreSQL 9.x)
    "required WAL segments",  // its PostgreSQL 10+ form: "all required WAL segments have been archived"
    "archive command",        // PostgreSQL archiver failures
    "CRITICAL",               // WAL-E failures
    "retrying after",         // WAL-E retries
    "could no longer locate", // end of a wal-fetch recovery
    "Docker container",       // cf-containers-broker create/destroy
    "looking up public",      // container start-up registration
    "public address",
    "Enabling wal-e",
    "preparation required",   // restore_leader_if_missing messages
    "new cluster, no existing",
    "etcd missing",
    "Re-initializing",
    "preparing patroni",
    "base_0",                 // backup-list lines
];

#[derive(Clone)]
pub struct Prefilter {
    ac: AhoCorasick,
}

impl Default for Prefilter {
    fn default() -> Self {
        Self::new()
    }
}

impl Prefilter {
    pub fn new() -> Self {
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .kind(Some(AhoCorasickKind::DFA))
            .build(PATTERNS)
            .expect("static patterns build");
        Prefilter { ac }
    }

    pub fn is_match(&self, line: &[u8]) -> bool {
        self.ac.is_match(line)
    }

    /// Start of the first match at or after `from`.
    pub fn find(&self, haystack: &[u8], from: usize) -> Option<usize> {
        let input = aho_corasick::Input::new(haystack).range(from..);
        self.ac.find(input).map(|m| m.start())
    }
}
