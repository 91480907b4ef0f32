//! Syslog envelopes: RFC 3164 as relayed by the platform (no PRI), `<PRI>` RFC 3164, RFC 5424, JSON from
//! shippers, and bare broker lager lines (a `broker.stdout.log` read directly).

use std::borrow::Cow;

use super::Reject;
use crate::timeutil;

/// A time as the envelope gave it: RFC 3164 has no year, so the caller resolves it (see [`super::YearClock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvTime {
    None,
    Full(i64),
    NoYear { month: u32, day: u32, h: u32, m: u32, s: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    pub time: EnvTime,
    pub host: Cow<'a, str>,
    pub program: Cow<'a, str>,
    pub message: Cow<'a, str>,
}

const MONTHS: [&[u8; 3]; 12] = [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

pub fn parse(line: &str) -> Result<Envelope<'_>, Reject> {
    let line = line.trim_end_matches(['\r', '\n']);
    let t = super::trim_start(line);
    if t.starts_with('{') {
        return parse_json(t);
    }
    let (rest, had_pri) = strip_pri(t)?;
    if had_pri && rest.as_bytes().first() == Some(&b'1') && rest.as_bytes().get(1) == Some(&b' ') {
        return parse_5424(&rest[2..]);
    }
    parse_3164(rest)
}

fn strip_pri(s: &str) -> Result<(&str, bool), Reject> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return Ok((s, false));
    }
    let close = b.iter().take(5).position(|&c| c == b'>').ok_or(Reject::Envelope)?;
    if close < 2 || !b[1..close].iter().all(u8::is_ascii_digit) {
        return Err(Reject::Envelope);
    }
    Ok((&s[close + 1..], true))
}

fn two_digits(b: &[u8]) -> Option<u32> {
    match b {
        [a, c] if a.is_ascii_digit() && c.is_ascii_digit() => Some(((a - b'0') * 10 + (c - b'0')) as u32),
        _ => None,
    }
}

/// The time at the start of an RFC 3164 body (`Mar 16 23:10:17 ` or an ISO stamp followed by a space) and
/// where the rest starts.
fn time_3164(b: &[u8]) -> Option<(EnvTime, usize)> {
    let month = if b.len() >= 16 && b[3] == b' ' { MONTHS.iter().position(|m| &b[..3] == *m) } else { None };
    if let Some(month) = month {
        let month = month as u32 + 1;
        let day = match (b[4], b[5]) {
            (b' ', d) if d.is_ascii_digit() => (d - b'0') as u32,
            (a, d) if a.is_ascii_digit() && d.is_ascii_digit() => ((a - b'0') * 10 + (d - b'0')) as u32,
            _ => return None,
        };
        if b[6] != b' ' || b[9] != b':' || b[12] != b':' || b.get(15) != Some(&b' ') {
            return None;
        }
        let (h, m, sec) = (two_digits(&b[7..9])?, two_digits(&b[10..12])?, two_digits(&b[13..15])?);
        if day == 0 || day > 31 || h > 23 || m > 59 || sec > 60 {
            return None;
        }
        Some((EnvTime::NoYear { month, day, h, m, s: sec }, 16))
    } else if b.len() >= 20 && b[4] == b'-' && b[10] == b'T' {
        let end = memchr::memchr(b' ', b)?;
        let t = timeutil::parse_rfc3339(std::str::from_utf8(&b[..end]).ok()?)?;
        Some((EnvTime::Full(t), end + 1))
    } else {
        None
    }
}

/// The time a raw line's envelope carries, without splitting or decoding the rest of it: what ordering
/// lines by time needs (`ingest` merging archives), at a few byte compares per line. JSON lines take the
/// envelope's or (bare broker lines) the payload's time.
pub fn time_of(line: &[u8]) -> EnvTime {
    let start = line.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(line.len());
    let b = &line[start..];
    if b.first() == Some(&b'{') {
        let Ok(s) = std::str::from_utf8(b) else { return EnvTime::None };
        return match parse(s) {
            Ok(Envelope { time: EnvTime::None, .. }) | Err(_) => json_timestamp(s).map_or(EnvTime::None, EnvTime::Full),
            Ok(env) => env.time,
        };
    }
    let b = if b.first() == Some(&b'<') {
        match b.iter().take(5).position(|&c| c == b'>') {
            Some(close) if close >= 2 && b[1..close].iter().all(u8::is_ascii_digit) => &b[close + 1..],
            _ => return EnvTime::None,
        }
    } else {
        b
    };
    if let [b'1', b' ', rest @ ..] = b {
        let end = memchr::memchr(b' ', rest).unwrap_or(rest.len());
        return std::str::from_utf8(&rest[..end]).ok().and_then(timeutil::parse_rfc3339).map_or(EnvTime::None, EnvTime::Full);
    }
    time_3164(b).map_or(EnvTime::None, |(t, _)| t)
}

/// `Mar 16 23:10:17 host program:  message`; also accepts an ISO timestamp in place of the BSD one
/// (rsyslog's high-precision template).
fn parse_3164(s: &str) -> Result<Envelope<'_>, Reject> {
    let (time, n) = time_3164(s.as_bytes()).ok_or(Reject::Envelope)?;
    let rest = &s[n..];
    let rest = rest.trim_start_matches(' ');
    let sp = memchr::memchr(b' ', rest.as_bytes()).ok_or(Reject::Envelope)?;
    let host = &rest[..sp];
    let rest = &rest[sp + 1..];
    // The tag ends at the first ": " (or ':' at end); a tag has no spaces. One scan finds whichever comes first.
    let (program, message) = match memchr::memchr2(b':', b' ', rest.as_bytes()) {
        Some(i) if rest.as_bytes()[i] == b':' && (i + 1 == rest.len() || rest.as_bytes()[i + 1] == b' ') => (&rest[..i], &rest[(i + 1).min(rest.len())..]),
        _ => ("", rest),
    };
    Ok(Envelope { time, host: host.into(), program: program.into(), message: message.into() })
}

/// `1 2016-03-17T06:10:18Z host app procid msgid [sd] msg` (version already stripped).
fn parse_5424(s: &str) -> Result<Envelope<'_>, Reject> {
    let mut parts = s.splitn(6, ' ');
    let ts = parts.next().ok_or(Reject::Envelope)?;
    let host = parts.next().ok_or(Reject::Envelope)?;
    let app = parts.next().ok_or(Reject::Envelope)?;
    let _procid = parts.next().ok_or(Reject::Envelope)?;
    let _msgid = parts.next().ok_or(Reject::Envelope)?;
    let rest = parts.next().unwrap_or("");
    let time = if ts == "-" { EnvTime::None } else { EnvTime::Full(timeutil::parse_rfc3339(ts).ok_or(Reject::Envelope)?) };
    let message = skip_structured_data(rest)?;
    let message = message.strip_prefix('\u{feff}').unwrap_or(message);
    let host = if host == "-" { "" } else { host };
    let app = if app == "-" { "" } else { app };
    Ok(Envelope { time, host: host.into(), program: app.into(), message: message.into() })
}

fn skip_structured_data(s: &str) -> Result<&str, Reject> {
    if let Some(r) = s.strip_prefix('-') {
        return Ok(r.strip_prefix(' ').unwrap_or(r));
    }
    if !s.starts_with('[') {
        return Ok(s);
    }
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && b[i] == b'[' {
        // Inside an element, `]` may be escaped in param values as `\]`.
        let mut in_quote = false;
        i += 1;
        loop {
            match b.get(i) {
                None => return Err(Reject::Envelope),
                Some(b'\\') => i += 2,
                Some(b'"') => {
                    in_quote = !in_quote;
                    i += 1
                }
                Some(b']') if !in_quote => {
                    i += 1;
                    break;
                }
                Some(_) => i += 1,
            }
        }
    }
    let r = s.get(i..).ok_or(Reject::Envelope)?;
    Ok(r.strip_prefix(' ').unwrap_or(r))
}

#[derive(serde::Deserialize)]
struct JsonEnvelope<'a> {
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    host: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    hostname: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    program: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    appname: Option<Cow<'a, str>>,
    #[serde(default)]
    timestamp: Option<serde_json::Value>,
    // Present on bare lager lines, absent on shipper envelopes.
    #[serde(default)]
    log_level: Option<serde_json::Value>,
    #[serde(default)]
    source: Option<serde_json::Value>,
}

/// A JSON line's `timestamp`: RFC 3339, or epoch seconds / milliseconds as a number or (lager) a string.
fn json_timestamp(s: &str) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Ts {
        timestamp: Option<serde_json::Value>,
    }
    match serde_json::from_str::<Ts>(s).ok()?.timestamp? {
        serde_json::Value::String(t) => timeutil::parse_rfc3339(&t).or_else(|| t.parse::<f64>().ok().and_then(epoch_ms)),
        serde_json::Value::Number(n) => n.as_f64().and_then(epoch_ms),
        _ => None,
    }
}

/// Epoch seconds or milliseconds (told apart by size) as milliseconds.
fn epoch_ms(f: f64) -> Option<i64> {
    (f.is_finite() && f > 0.0 && f < 1e14).then_some(if f > 1e11 { f as i64 } else { (f * 1000.0) as i64 })
}

fn parse_json(s: &str) -> Result<Envelope<'_>, Reject> {
    let j: JsonEnvelope<'_> = serde_json::from_str(s).map_err(|_| Reject::Json)?;
    if j.log_level.is_some() && j.source.is_some() {
        // A broker lager line read without any syslog envelope: the whole line is the message.
        return Ok(Envelope { time: EnvTime::None, host: "".into(), program: "".into(), message: s.into() });
    }
    let message = j.message.ok_or(Reject::Json)?;
    let time = match &j.timestamp {
        Some(serde_json::Value::String(t)) => timeutil::parse_rfc3339(t).map(EnvTime::Full).unwrap_or(EnvTime::None),
        Some(serde_json::Value::Number(n)) => n.as_f64().and_then(epoch_ms).map_or(EnvTime::None, EnvTime::Full),
        _ => EnvTime::None,
    };
    let host = j.host.or(j.hostname).unwrap_or_default();
    let program = j.program.or(j.appname).unwrap_or_default();
    // Shippers that keep the raw syslog line in `message` (e.g. Vector's socket source without parsing).
    if host.is_empty() && program.is_empty() {
        let inner: &str = &message;
        if let Ok(env) = parse(inner) {
            if !env.program.is_empty() {
                return Ok(Envelope {
                    time: if matches!(time, EnvTime::None) { env.time } else { time },
                    host: env.host.into_owned().into(),
                    program: env.program.into_owned().into(),
                    message: env.message.into_owned().into(),
                });
            }
        }
    }
    Ok(Envelope { time, host, program, message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relayed_3164() {
        let e = parse("Mar 16 19:11:48 14ddd22e-719e-4aca-b318-7f291c97fbba docker/cf-c8ce128e-7b4c-4fe7-a533-e9379356f906:  patroni>  DETAIL: x").unwrap();
        assert_eq!(e.host, "14ddd22e-719e-4aca-b318-7f291c97fbba");
        assert_eq!(e.program, "docker/cf-c8ce128e-7b4c-4fe7-a533-e9379356f906");
        assert_eq!(e.message, "  patroni>  DETAIL: x");
        assert_eq!(e.time, EnvTime::NoYear { month: 3, day: 16, h: 19, m: 11, s: 48 });
        let e = parse("<134>Mar  6 01:02:03 host confd[4095]: INFO x").unwrap();
        assert_eq!(e.program, "confd[4095]");
        assert_eq!(e.message, " INFO x");
    }

    #[test]
    fn rfc5424() {
        let e = parse("<134>1 2016-03-17T06:10:18Z host app - - - msg here").unwrap();
        assert_eq!((e.host.as_ref(), e.program.as_ref(), e.message.as_ref()), ("host", "app", "msg here"));
        assert_eq!(e.time, EnvTime::Full(crate::timeutil::parse_rfc3339("2016-03-17T06:10:18Z").unwrap()));
        let e = parse(r#"<14>1 2016-03-17T06:10:18.5+01:00 h a 12 ID [x@1 k="v\]"][y@2] m"#).unwrap();
        assert_eq!(e.message, "m");
        assert!(parse("<14>1 2016-03-17T06:10:18Z h a 1 2 [unterminated").is_err());
    }

    #[test]
    fn json_envelopes() {
        let e = parse(r#"{"message":"  backup> x","host":"cell","appname":"cf-abc","timestamp":"2016-03-17T06:10:18Z"}"#).unwrap();
        assert_eq!((e.host.as_ref(), e.program.as_ref(), e.message.as_ref()), ("cell", "cf-abc", "  backup> x"));
        let e = parse(r#"{"message":"Mar 16 19:11:48 cell docker/cf-1: hi"}"#).unwrap();
        assert_eq!(e.program, "docker/cf-1");
        let bare = r#"{"timestamp":"1458195017.896692991","source":"patroni-broker","message":"patroni-broker.x","log_level":1,"data":{}}"#;
        assert_eq!(parse(bare).unwrap().message, bare);
        assert_eq!(parse(r#"{"message":"#), Err(Reject::Json));
    }

    #[test]
    fn time_of_agrees_with_the_full_parse() {
        let lines = [
            "Mar 16 19:11:48 14ddd22e docker/cf-c8ce: x",
            "Mar  6 01:02:03 h p: m",
            "<134>Mar  6 01:02:03 host confd[4095]: INFO x",
            "<134>1 2016-03-17T06:10:18Z host app - - - msg here",
            "<14>1 - h a 1 2 - m",
            "2016-03-17T06:10:18.123+01:00 host prog: m",
            r#"{"message":"  backup> x","host":"cell","appname":"cf-abc","timestamp":"2016-03-17T06:10:18Z"}"#,
            r#"{"message":"Mar 16 19:11:48 cell docker/cf-1: hi"}"#,
            "  Mar 16 19:11:48 h p: leading blanks",
        ];
        for l in lines {
            assert_eq!(time_of(l.as_bytes()), parse(l).unwrap().time, "{l}");
        }
        for bad in ["", "Mar", "Foo 16 19:11:48 h p: m", "Mar 99 19:11:48 h p: m", "<99999999>x", "continuation of a line"] {
            assert_eq!(time_of(bad.as_bytes()), EnvTime::None, "{bad}");
        }
        assert_eq!(time_of(b"\xff\xfe{"), EnvTime::None);
        assert_eq!(time_of(b"{\xff"), EnvTime::None);
        // A bare broker lager line carries its time in the payload.
        let bare = r#"{"timestamp":"1458195017.896692991","source":"patroni-broker","message":"patroni-broker.x","log_level":1,"data":{}}"#;
        assert_eq!(time_of(bare.as_bytes()), EnvTime::Full(1_458_195_017_896));
    }

    #[test]
    fn rejects_garbage() {
        for l in ["", "Mar", "Foo 16 19:11:48 h p: m", "Mar 99 19:11:48 h p: m", "<99999999>x", "Mar 16 19:11:48 hostonly"] {
            assert!(parse(l).is_err(), "{l:?}");
        }
    }
}
