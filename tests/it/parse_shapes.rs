//! One data-driven harness over tests/fixtures/shapes.txt: every documented line shape parses to the
//! expected event (or is irrelevant, or is rejected for the expected reason).

use safeguard::parse::{parse_line, Prefilter, YearClock};
use safeguard::timeutil::parse_rfc3339;
use serde_json::Value;

use crate::common;
use common::subset;

#[test]
fn every_documented_shape_parses_as_expected() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/shapes.txt")).unwrap();
    let now = parse_rfc3339("2026-11-24T00:00:00Z").unwrap();
    let prefilter = Prefilter::new();
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut line: Option<&str> = None;
    for (no, l) in text.lines().enumerate() {
        if let Some(input) = l.strip_prefix("> ") {
            line = Some(input);
            continue;
        }
        let Some(expect) = l.strip_prefix("= ") else { continue };
        let input = line.take().unwrap_or_else(|| panic!("line {}: expectation without input", no + 1));
        cases += 1;
        // Year inference is per source; each case stands alone, as if from its own stream.
        let mut clock = YearClock::default();
        let got = parse_line(input, &mut clock, now);
        let relevant = prefilter.is_match(input.as_bytes());
        let outcome = match (expect, &got) {
            ("irrelevant", Ok(None)) => Ok(()),
            (e, Err(r)) if e.strip_prefix("reject:") == Some(r.as_str()) => {
                if relevant {
                    Ok(())
                } else {
                    Err("rejected, but the prefilter would never have shown it to the parser".into())
                }
            }
            (e, Ok(Some(ev))) if e.starts_with('{') => {
                let expected: Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("line {}: bad expectation: {err}", no + 1));
                let actual = serde_json::to_value(ev).unwrap();
                subset(&expected, &actual, "event").and_then(|_| if relevant { Ok(()) } else { Err("parsed, but the prefilter drops this line".into()) })
            }
            (e, g) => Err(format!("expected {e}, got {g:?}")),
        };
        if let Err(msg) = outcome {
            failures.push(format!("shapes.txt:{}: {msg}\n    input: {input}", no + 1));
        }
    }
    assert!(cases > 60, "only {cases} cases read");
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
}
