//! What every component's config section shares: how a duration is read (humantime, `"2m"`, `"26h"`)
//! and checked, and the one-or-many string list. Each component owns its own section (`[watch]` in
//! `engine::watch`, a Kafka source in `sources::kafka`, ...) and validates it; `app::config` only
//! composes them. Nothing here knows any section.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The longest duration any setting may hold. Durations become millisecond `i64`s added to event times
/// (grace, TTLs, ages); a century keeps every such sum far from overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000); // 100 years of 365.25 days, as humantime counts "100y"

/// Deserializes a humantime duration (`"2m"`, `"26h"`). A value past [`MAX_DURATION`] is refused here,
/// so no setting can overflow later arithmetic; [`check_nonzero`] refuses zero where zero breaks work.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// [`duration`] for a field whose position the error cannot show (inside `[[sources]]`, which serde
/// reads as a whole before it knows the source's type): the message names `key` itself.
pub fn duration_named<'de, D: Deserializer<'de>>(d: D, key: &str) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{key}`: {e}")))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let v = humantime::parse_duration(s.trim()).map_err(|e| format!("`{s}` is not a duration like \"2m\" or \"26h\": {e}"))?;
    if v > MAX_DURATION {
        return Err(format!("`{s}` is longer than any setting may be (100 years); give a shorter duration"));
    }
    Ok(v)
}

/// Serializes a duration as it is configured (`"2m"`), for sections that are also written out.
pub fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

/// `Err` naming the key and its value when a duration that must be positive is zero (a timer that
/// would spin or panic, a timeout that fails every call).
pub fn check_nonzero(key: &str, d: Duration, why: &str) -> Result<(), String> {
    if d.is_zero() {
        return Err(format!("`{key}` = \"{}\" must be greater than zero: {why}", humantime::format_duration(d)));
    }
    Ok(())
}

/// Milliseconds of a duration bounded by [`MAX_DURATION`] (which every configured one is).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A list of strings given as a TOML array or as one comma-separated string.
pub fn string_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let v = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        OneOrMany::Many(v) => v,
    };
    Ok(v)
}

/// This host's name (a pod's name in a StatefulSet), or "safeguard" when it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "safeguard".into())
}

/// `{hostname}` in a setting becomes this host's name: one config file serves every replica of a
/// StatefulSet, each with its own consumer group.
pub fn expand_hostname(s: &str) -> String {
    if s.contains("{hostname}") {
        s.replace("{hostname}", &hostname())
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        #[serde(deserialize_with = "duration")]
        d: Duration,
    }

    #[test]
    fn durations_parse_and_overflow_is_refused_with_the_value() {
        let t: T = toml::from_str("d = \"26h\"").unwrap();
        assert_eq!(t.d, Duration::from_secs(26 * 3600));
        let e = toml::from_str::<T>("d = \"500000000000y\"").unwrap_err().to_string();
        assert!(e.contains("500000000000y"), "{e}");
        let e = toml::from_str::<T>("d = \"101y\"").unwrap_err().to_string();
        assert!(e.contains("101y") && e.contains("100 years"), "{e}");
        let e = check_nonzero("watch.commit_interval", Duration::ZERO, "a timer cannot tick every 0s").unwrap_err();
        assert!(e.contains("watch.commit_interval") && e.contains("\"0s\""), "{e}");
    }
}
