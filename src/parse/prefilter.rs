//! One multi-pattern scan (aho-corasick, SIMD "Teddy" for few patterns) that every relevant line matches
//! and nearly every unrelated line does not. It runs over whole buffers, so unrelated lines are never
//! split, decoded or looked at one by one: ingest costs about what one `grep -F` pass costs.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

/// Each relevant line shape contains at least one of these (tests/parse_shapes.rs checks every
/// documented shape against them). Few and short on purpose: a longer, more specific list (tried: 20
/// patterns that skip WAL-E's MSG chatter) makes the automaton slower than parsing the extra lines.
pub const PATTERNS: [&str; 10] = [
    "s3://",                 // every WAL-E URL, sysid uploads, clone callbacks
    "-broker.",              // lager message names: patroni-broker.*, dingo-postgresql-broker.*
    "cf-",                   // container programs and the containers broker's create/destroy lines
    "pg_stop_backup",        // the NOTICE that completes a base backup (PostgreSQL 9.x)
    "required WAL segments", // its PostgreSQL 10+ form
    "archive command",       // PostgreSQL archiver failures
    "wal_e",                 // WAL-E logger names on MSG lines (CRITICAL, retry)
    "backup> ",              // script prefixes when a shipper dropped the program name
    "patroni> ",
    "_if_missing> ",
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
