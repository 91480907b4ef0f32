//! `[alerts.digest]`: when the daily digest goes out. `at` is a local time of day (`HH:MM`, 24 h) in
//! `timezone` (an IANA name such as `Europe/Berlin`, with its daylight-saving rules; `UTC`, the
//! default; or a fixed offset such as `+02:00`). The digest for a local date is due from the first
//! moment that date's `at` has passed; what it says is `safeguard_core::digest`, and the watcher raises
//! it (`engine::digest`).
//!
//! Zones come from the system's zoneinfo (`/usr/share/zoneinfo`) or, where an image ships none, from
//! the copy of the time zone database built into the binary.

use jiff::civil::{Date, Time};
use jiff::tz::{Offset, TimeZone};
use jiff::Timestamp;
use serde::Deserialize;

/// `[alerts.digest]` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestConfig {
    /// Local time of day the digest is sent at (the first engine tick at or after it), `HH:MM`.
    pub at: String,
    /// IANA zone name (`Europe/Berlin`), `UTC`, or a fixed offset (`+02:00`).
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

impl DigestConfig {
    /// Checks `at` and `timezone`; errors name the key and its value.
    pub fn validate(&self) -> Result<(), String> {
        self.schedule().map(|_| ())
    }

    /// The parsed schedule; errors name the key and its value.
    pub fn schedule(&self) -> Result<Schedule, String> {
        let at = parse_at(&self.at)
            .ok_or_else(|| format!("`alerts.digest.at` = {:?} is not a time of day: write HH:MM on a 24-hour clock, e.g. \"08:00\"", self.at))?;
        let tz = zone(&self.timezone).map_err(|why| {
            format!(
                "`alerts.digest.timezone` = {:?} {why}: use an IANA zone name such as \"Europe/Berlin\" or \"America/New_York\", \"UTC\", or a fixed offset such as \"+02:00\"",
                self.timezone
            )
        })?;
        Ok(Schedule { at, tz, zone: self.timezone.clone() })
    }
}

/// `H:MM` or `HH:MM`, hours 0..=23, minutes 00..=59.
fn parse_at(s: &str) -> Option<Time> {
    let (h, m) = s.trim().split_once(':')?;
    let number = |x: &str, lens: std::ops::RangeInclusive<usize>| {
        (lens.contains(&x.len()) && x.bytes().all(|b| b.is_ascii_digit())).then(|| x.parse::<i8>().ok()).flatten()
    };
    let (h, m) = (number(h, 1..=2)?, number(m, 2..=2)?);
    if h > 23 || m > 59 {
        return None;
    }
    Time::new(h, m, 0, 0).ok()
}

/// A zone by name, or a fixed offset `±HH:MM` / `±HHMM` / `±HH`.
fn zone(name: &str) -> Result<TimeZone, String> {
    let n = name.trim();
    if n.eq_ignore_ascii_case("utc") || n == "Z" {
        return Ok(TimeZone::UTC);
    }
    if let Some(rest) = n.strip_prefix('+').map(|r| (1, r)).or_else(|| n.strip_prefix('-').map(|r| (-1, r))) {
        let (sign, r) = rest;
        let digits: String = r.chars().filter(|c| *c != ':').collect();
        let ok_shape = digits.len() == 2 || digits.len() == 4;
        let colon_ok = !r.contains(':') || (r.len() == 5 && r.as_bytes()[2] == b':');
        if !ok_shape || !colon_ok || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("is not a fixed offset (write ±HH:MM)".into());
        }
        let h: i32 = digits[..2].parse().map_err(|_| "is not a fixed offset".to_string())?;
        let m: i32 = if digits.len() == 4 { digits[2..].parse().map_err(|_| "is not a fixed offset".to_string())? } else { 0 };
        if h > 14 || m > 59 {
            return Err("is not an offset the world uses (at most ±14:00)".into());
        }
        let off = Offset::from_seconds(sign * (h * 3600 + m * 60)).map_err(|e| format!("is not a fixed offset: {e}"))?;
        return Ok(TimeZone::fixed(off));
    }
    TimeZone::get(n).map_err(|_| "is not a known time zone".to_string())
}

/// When digests are due: a local time of day in a zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    at: Time,
    tz: TimeZone,
    /// The zone as configured, for the digest's text.
    pub zone: String,
}

impl Schedule {
    /// The local date at `now_ms`, `YYYY-MM-DD`.
    pub fn local_date(&self, now_ms: i64) -> String {
        self.date_at(now_ms).map(|d| d.to_string()).unwrap_or_default()
    }

    fn date_at(&self, now_ms: i64) -> Option<Date> {
        Some(Timestamp::from_millisecond(now_ms).ok()?.to_zoned_datetime(self.tz.clone()).date())
    }

    /// The moment the digest for local `date` is due: `at` on that date in the zone. A time that the
    /// zone skips that day (a daylight-saving gap) is taken as the same length after the gap starts, as
    /// RFC 5545 and most calendars do: 02:30 on the day clocks jump from 02:00 to 03:00 is 03:30.
    pub fn due_at(&self, date: &str) -> Option<i64> {
        let d: Date = date.parse().ok()?;
        Some(d.to_datetime(self.at).to_zoned_datetime(self.tz.clone()).ok()?.timestamp().as_millisecond())
    }

    /// The local date whose digest is due at `now_ms`: today's once today's `at` has passed, else none
    /// (yesterday's, if missed, is not sent late).
    pub fn due(&self, now_ms: i64) -> Option<String> {
        let today = self.local_date(now_ms);
        (now_ms >= self.due_at(&today)?).then_some(today)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeutil::parse_rfc3339;

    fn cfg(at: &str, tz: &str) -> DigestConfig {
        DigestConfig { at: at.into(), timezone: tz.into() }
    }

    fn ms(s: &str) -> i64 {
        parse_rfc3339(s).unwrap()
    }

    #[test]
    fn not_before_at_and_once_past_it_the_local_date_across_daylight_saving() {
        let s = cfg("08:00", "Europe/Berlin").schedule().unwrap();
        // Winter (UTC+1): 08:00 local is 07:00Z.
        assert_eq!(s.due(ms("2026-03-28T06:59:59.999Z")), None);
        assert_eq!(s.due(ms("2026-03-28T07:00:00Z")).as_deref(), Some("2026-03-28"));
        // The night clocks go forward (29 March 2026, 02:00 -> 03:00): 08:00 local is 06:00Z now.
        assert_eq!(s.due_at("2026-03-29"), Some(ms("2026-03-29T06:00:00Z")));
        assert_eq!(s.due(ms("2026-03-29T05:59:59Z")), None);
        assert_eq!(s.due(ms("2026-03-29T06:00:00Z")).as_deref(), Some("2026-03-29"));
        // 23:30Z on 28 March is already 29 March in Berlin (00:30), before 08:00: nothing due, and
        // the 28th's digest is not sent late.
        assert_eq!(s.local_date(ms("2026-03-28T23:30:00Z")), "2026-03-29");
        assert_eq!(s.due(ms("2026-03-28T23:30:00Z")), None);
        // Back to winter time on 25 October 2026: 08:00 local is 07:00Z again.
        assert_eq!(s.due_at("2026-10-25"), Some(ms("2026-10-25T07:00:00Z")));
        // A time inside the spring-forward gap is due the gap's length later (03:30 CEST).
        let gap = cfg("02:30", "Europe/Berlin").schedule().unwrap();
        assert_eq!(gap.due_at("2026-03-29"), Some(ms("2026-03-29T01:30:00Z")));
        assert_eq!(gap.due_at("2026-03-30"), Some(ms("2026-03-30T00:30:00Z")));
        // UTC by default, and fixed offsets.
        let utc: DigestConfig = toml::from_str("at = \"8:05\"\n").unwrap();
        assert_eq!(utc.timezone, "UTC");
        assert_eq!(utc.schedule().unwrap().due_at("2026-01-01"), Some(ms("2026-01-01T08:05:00Z")));
        let east = cfg("00:00", "+05:30").schedule().unwrap();
        assert_eq!(east.due_at("2026-01-01"), Some(ms("2025-12-31T18:30:00Z")));
        assert_eq!(east.local_date(ms("2025-12-31T18:29:59Z")), "2025-12-31");
        assert_eq!(east.due(ms("2025-12-31T18:30:00Z")).as_deref(), Some("2026-01-01"));
        assert_eq!(cfg("23:59", "-08").schedule().unwrap().due_at("2026-01-01"), Some(ms("2026-01-02T07:59:00Z")));
    }

    #[test]
    fn a_bad_time_or_zone_is_refused_with_its_key_and_value() {
        for at in ["24:00", "8", "08:60", "08:5", "8:00pm", "", "-1:00", "08:00:00", "123:00"] {
            let e = cfg(at, "UTC").validate().unwrap_err();
            assert!(e.contains("alerts.digest.at") && e.contains(&format!("{at:?}")), "{at}: {e}");
        }
        for tz in ["Europe/Berln", "CEST+2", "+25:00", "+2:00", "Mars/Olympus_Mons", ""] {
            let e = cfg("08:00", tz).validate().unwrap_err();
            assert!(e.contains("alerts.digest.timezone") && e.contains(&format!("{tz:?}")), "{tz}: {e}");
        }
        for (at, tz) in [("0:00", "UTC"), ("23:59", "America/New_York"), ("08:00", "Asia/Kolkata"), ("12:00", "-03:30"), ("07:15", "+0200")] {
            cfg(at, tz).validate().unwrap_or_else(|e| panic!("{at} {tz}: {e}"));
        }
        let e = toml::from_str::<DigestConfig>("at = \"08:00\"\nzone = \"UTC\"\n").unwrap_err().to_string();
        assert!(e.contains("zone"), "{e}");
    }
}
