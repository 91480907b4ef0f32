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

/// Where the search starts inside each pattern; a hit is then checked against the whole pattern. Teddy
/// fingerprints a pattern by its first three bytes, and "req" starts words all over HTTP services' logs:
/// searching "WAL segments" instead made the scan a fifth faster (scripts/bench.sh's file).
const SEARCH_FROM: [usize; PATTERNS.len()] = [0, 0, 0, 0, "required ".len(), 0, 0, 0, 0, 0];

#[derive(Clone)]
pub struct Prefilter {
    searcher: Searcher,
}

#[derive(Clone)]
enum Searcher {
    /// Teddy on its own: the automaton wrapped around it cost a tenth of the scan.
    Packed(aho_corasick::packed::Searcher),
    /// Where Teddy is unavailable (no SSSE3 or NEON).
    Automaton(AhoCorasick),
}

impl Default for Prefilter {
    fn default() -> Self {
        Self::new()
    }
}

fn searched() -> impl Iterator<Item = &'static str> {
    PATTERNS.iter().zip(SEARCH_FROM).map(|(p, k)| &p[k..])
}

fn automaton() -> AhoCorasick {
    AhoCorasick::builder().match_kind(MatchKind::LeftmostFirst).kind(Some(AhoCorasickKind::DFA)).build(searched()).expect("static patterns build")
}

impl Prefilter {
    pub fn new() -> Self {
        let mut packed = aho_corasick::packed::Config::new();
        packed.match_kind(aho_corasick::packed::MatchKind::LeftmostFirst);
        let searcher = match packed.builder().extend(searched()).build() {
            Some(p) => Searcher::Packed(p),
            None => Searcher::Automaton(automaton()),
        };
        Prefilter { searcher }
    }

    pub fn is_match(&self, line: &[u8]) -> bool {
        self.find(line, 0).is_some()
    }

    /// The lines of `buf` from `from` on that hold a pattern, as (start, end) spans without their
    /// newline, in order; each line once however many patterns it holds.
    pub fn candidate_lines(&self, buf: &[u8], from: usize, out: &mut Vec<(usize, usize)>) {
        let mut pos = from;
        while pos < buf.len() {
            let Some(at) = self.find(buf, pos) else { return };
            let start = memchr::memrchr(b'\n', &buf[pos..at]).map_or(pos, |i| pos + i + 1);
            let end = memchr::memchr(b'\n', &buf[at..]).map_or(buf.len(), |i| at + i);
            out.push((start, end));
            pos = end + 1;
        }
    }

    /// Start of a pattern that lies wholly at or after `from`: the first such, or one beginning inside it,
    /// so always on the first such pattern's line (no pattern holds a newline).
    pub fn find(&self, haystack: &[u8], mut from: usize) -> Option<usize> {
        loop {
            let (i, start) = match &self.searcher {
                Searcher::Packed(p) => p.find_in(haystack, aho_corasick::Span::from(from..haystack.len())).map(|m| (m.pattern().as_usize(), m.start()))?,
                Searcher::Automaton(ac) => ac.find(aho_corasick::Input::new(haystack).range(from..)).map(|m| (m.pattern().as_usize(), m.start()))?,
            };
            let k = SEARCH_FROM[i];
            if k == 0 {
                return Some(start);
            }
            let whole = PATTERNS[i].as_bytes();
            match start.checked_sub(k) {
                Some(at) if at >= from && haystack.get(at..at + whole.len()) == Some(whole) => return Some(at),
                // Only the searched part is there: not a match; look further.
                _ => from = start + 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_searched_for_counts_only_inside_its_whole_pattern() {
        let fallback = Prefilter { searcher: Searcher::Automaton(automaton()) };
        for pf in [&Prefilter::new(), &fallback] {
            assert!(pf.is_match(b"NOTICE: all required WAL segments have been archived"));
            assert!(!pf.is_match(b"NOTICE: all WAL segments have been archived"));
            assert!(!pf.is_match(b"required WAL segment"));
            let h = b"x WAL segments y\nz required WAL segments\n";
            assert_eq!(pf.find(h, 0), Some(19));
            // The whole pattern would begin before `from`.
            assert_eq!(pf.find(h, 20), None);
            assert_eq!(pf.find(b"WAL segments; cf-1", 0), Some(14));
        }
    }
}
