//! The one redaction: what every URL, error text and echoed body goes through before it is printed,
//! logged, serialized or stored. Nothing here knows a component; adapters hold their URLs as
//! [`SecretUrl`], whose `Display`, `Debug` and `Serialize` are redacted, so a new call site that shows
//! one is safe by default, and the real URL is only reachable through [`SecretUrl::expose`] (for the
//! request itself).
//!
//! - [`url`]: a URL's userinfo password becomes `***` (`http://root:***@host`), and so does the value of
//!   every query or fragment parameter whose name looks like a secret ([`is_secret_name`]: `token`,
//!   `key`, `secret`, `password`, `sig`, `signature`, `x-amz-signature`, `access_token`, ...).
//! - [`text`]: free text (error messages, a server's answer, an echoed request): every URL in it as
//!   above; `Authorization:`/`Cookie:` header values; `Bearer <token>` and `Basic <credentials>`
//!   anywhere; `name=value`, `name: value` and `"name": "value"` for secret-looking names.
//! - [`with_secrets`]: [`text`], plus exact values the caller knows are secret (a configured password,
//!   header values), wherever they appear.
//! - [`json`]: a JSON document with [`text`] applied to each of its strings (escapes decoded first, so
//!   an echoed body inside a string is seen as it was sent); layout and key order are kept.
//! - [`Writer`]: an `io::Write` that applies [`text`] to what passes through (the log on stderr).
//!
//! Redaction is idempotent (`***` is never taken for a secret), and it only ever replaces secrets: the
//! rest of a message, which says what failed and what to do, stays as it was.

use std::fmt;

/// What a secret is replaced with.
pub const MASK: &str = "***";

/// Whether a query parameter, header or field called `name` holds a secret: exact names (`password`,
/// `token`, `key`, `sig`, `authorization`, `cookie`, ...) and names ending in a secret word
/// (`access_token`, `client_secret`, `x-amz-signature`, `x-api-key`, `db_password`, ...). Case, `-` and
/// `_` do not matter.
pub fn is_secret_name(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "apikey",
        "sig",
        "signature",
        "auth",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "credential",
        "credentials",
        "session",
        "sessionid",
        "session_id",
        "sid",
    ];
    const SUFFIX: &[&str] = &[
        "_password",
        "_passwd",
        "_pwd",
        "_secret",
        "_token",
        "_signature",
        "_sig",
        "_apikey",
        "_api_key",
        "_access_key",
        "_secret_key",
        "_private_key",
        "_credential",
        "_credentials",
    ];
    let n: String = name.trim().chars().map(|c| if c == '-' { '_' } else { c.to_ascii_lowercase() }).collect();
    EXACT.contains(&n.as_str()) || SUFFIX.iter().any(|s| n.ends_with(s))
}

/// [`is_secret_name`] for a field in free text: a bare `key` there is an S3 object or an etcd key (the
/// words this program's messages are full of), not a secret; in a URL's query it is one.
fn is_secret_field(name: &str) -> bool {
    !name.eq_ignore_ascii_case("key") && is_secret_name(name)
}

/// Names whose value is a whole header value: `Authorization: Digest a="b", c="d"` is masked up to the
/// end of the line, keeping the scheme.
fn is_header_credential(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('-', "_");
    matches!(n.as_str(), "authorization" | "proxy_authorization" | "cookie" | "set_cookie")
}

/// One URL with its userinfo password and secret parameters masked. A string without `://` is not a
/// URL and is redacted as [`text`].
pub fn url(u: &str) -> String {
    let Some(sep) = u.find("://").filter(|_| !u.contains(char::is_whitespace)) else { return text(u) };
    let mut out = String::with_capacity(u.len());
    one_url(u, sep, &mut out);
    out
}

/// `u` is `scheme://...` with `://` at `sep`; appends it redacted to `out`.
fn one_url(u: &str, sep: usize, out: &mut String) {
    out.push_str(&u[..sep + 3]);
    let rest = &u[sep + 3..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(c) => {
                    out.push_str(&userinfo[..c]);
                    out.push(':');
                    out.push_str(MASK);
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let q = tail.find(['?', '#']).unwrap_or(tail.len());
    out.push_str(&tail[..q]);
    params(&tail[q..], out);
}

/// `?a=1&token=x#frag`: every `name=value` whose name is a secret gets `name=***`.
fn params(s: &str, out: &mut String) {
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest[1..].find(['&', ';', '#']).map_or(rest.len(), |i| i + 1);
        let (param, next) = rest.split_at(end);
        // The delimiter that starts this parameter (`?`, `&`, `;`, `#`), then `name=value`.
        let (delim, body) = param.split_at(if param.starts_with(['?', '&', ';', '#']) { 1 } else { 0 });
        out.push_str(delim);
        match body.split_once('=') {
            Some((name, value)) if !value.is_empty() && value != MASK && is_secret_name(&percent_decoded(name)) => {
                out.push_str(name);
                out.push('=');
                out.push_str(MASK);
            }
            _ => out.push_str(body),
        }
        rest = next;
    }
}

/// `x%2Damz%2Dsignature` as `x-amz-signature` (names only: enough to recognise them).
fn percent_decoded(s: &str) -> String {
    if !s.contains('%') {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Characters that end a URL inside free text. `)`, `]`, `,`, `.` and the like are taken off its end
/// afterwards (`(see http://h/x).`).
fn ends_url(c: u8) -> bool {
    c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'<' | b'>' | b'`' | b'\\' | b'|' | b'{' | b'}' | b'^')
}

fn is_name_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Where the value that follows a `name: ` or `name=` ends: at a blank, a quote, a separator of
/// parameters or fields, or a closing bracket.
fn ends_value(c: u8) -> bool {
    c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'&' | b',' | b';' | b')' | b']' | b'}' | b'<' | b'>' | b'|' | b'\\')
}

/// Characters of a token or of base64 credentials after `Bearer`/`Basic`.
fn is_credential_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b':' | b'%')
}

/// The URLs in `s`: (start, end) byte ranges, in order.
fn url_spans(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(i) = s[from..].find("://").map(|i| i + from) {
        let mut start = i;
        while start > 0 && (b[start - 1].is_ascii_alphanumeric() || matches!(b[start - 1], b'+' | b'-' | b'.')) {
            start -= 1;
        }
        // A scheme starts with a letter.
        while start < i && !b[start].is_ascii_alphabetic() {
            start += 1;
        }
        let mut end = i + 3;
        while end < b.len() && !ends_url(b[end]) {
            end += 1;
        }
        while end > i + 3 && matches!(b[end - 1], b'.' | b',' | b';' | b':' | b'!' | b'?' | b')' | b']') {
            end -= 1;
        }
        if start < i && spans.last().is_none_or(|&(_, e)| e <= start) {
            spans.push((start, end));
        }
        from = end.max(i + 3);
    }
    spans
}

/// Free text with every secret this module recognises masked: URLs (see [`url`]), header credentials,
/// `Bearer`/`Basic` credentials and secret-named fields in `name=value`, `name: value` and JSON forms.
pub fn text(s: &str) -> String {
    let spans = url_spans(s);
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for (start, end) in spans {
        fields(&s[last..start], &mut out);
        let seg = &s[start..end];
        one_url(seg, seg.find("://").unwrap_or(0), &mut out);
        last = end;
    }
    fields(&s[last..], &mut out);
    out
}

/// [`text`] for text without URLs.
fn fields(s: &str, out: &mut String) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let at_word = is_name_byte(b[i]) && (i == 0 || !is_name_byte(b[i - 1]));
        if !at_word {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && is_name_byte(b[j]) {
            j += 1;
        }
        let name = &s[i..j];
        // `Bearer <token>` / `Basic <credentials>` wherever they appear.
        if name.eq_ignore_ascii_case("bearer") || name.eq_ignore_ascii_case("basic") {
            if let Some((from, to)) = credential_after(b, j) {
                out.push_str(&s[copied..from]);
                out.push_str(MASK);
                copied = to;
                i = to;
                continue;
            }
        }
        if is_secret_field(name) {
            if let Some((from, to)) = value_after(b, j, name) {
                out.push_str(&s[copied..from]);
                out.push_str(MASK);
                copied = to;
                i = to;
                continue;
            }
        }
        i = j;
    }
    out.push_str(&s[copied..]);
}

/// After `Bearer`/`Basic` at `j`: blanks, then a credential that looks like one (8 characters or more,
/// or with a digit or `=`), so that prose ("Bearer tokens are ...") is left alone.
fn credential_after(b: &[u8], j: usize) -> Option<(usize, usize)> {
    let mut k = j;
    while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
        k += 1;
    }
    if k == j {
        return None;
    }
    let mut e = k;
    while e < b.len() && is_credential_byte(b[e]) {
        e += 1;
    }
    let tok = &b[k..e];
    let looks_secret = tok.len() >= 8 || tok.iter().any(|c| c.is_ascii_digit() || *c == b'=');
    (e > k && looks_secret && &b[k..e] != MASK.as_bytes()).then_some((k, e))
}

/// After a secret-looking name ending at `j`: an optional closing quote, blanks, `:` or `=`, blanks,
/// then the value: a quoted string (masked inside its quotes), a header credential (masked to the end
/// of the line, its scheme kept), or a bare token.
fn value_after(b: &[u8], j: usize, name: &str) -> Option<(usize, usize)> {
    let mut k = j;
    if k < b.len() && (b[k] == b'"' || b[k] == b'\'') {
        k += 1;
    }
    while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
        k += 1;
    }
    if k >= b.len() || !(b[k] == b':' || b[k] == b'=') {
        return None;
    }
    k += 1;
    // `a == b`, `a := b`, `::` are not assignments.
    if k < b.len() && (b[k] == b'=' || b[k] == b':') {
        return None;
    }
    while k < b.len() && (b[k] == b' ' || b[k] == b'\t') {
        k += 1;
    }
    if k >= b.len() {
        return None;
    }
    if b[k] == b'"' || b[k] == b'\'' {
        let q = b[k];
        let from = k + 1;
        let mut e = from;
        while e < b.len() && b[e] != q {
            e += if b[e] == b'\\' { 2 } else { 1 };
        }
        let e = e.min(b.len());
        return (e > from && &b[from..e] != MASK.as_bytes()).then_some((from, e));
    }
    let line_end = |from: usize| {
        let mut e = from;
        while e < b.len() && !matches!(b[e], b'\r' | b'\n' | b'"' | b'\'' | b'\\') {
            e += 1;
        }
        while e > from && b[e - 1].is_ascii_whitespace() {
            e -= 1;
        }
        e
    };
    if is_header_credential(name) {
        // Keep a scheme word (`Bearer`, `Basic`, `Digest`, `AWS4-HMAC-SHA256`) followed by a blank.
        let mut s = k;
        while s < b.len() && (b[s].is_ascii_alphanumeric() || b[s] == b'-') {
            s += 1;
        }
        let from = if s > k && s < b.len() && b[s] == b' ' && !name.to_ascii_lowercase().contains("cookie") { s + 1 } else { k };
        let e = line_end(from);
        return (e > from && &b[from..e] != MASK.as_bytes()).then_some((from, e));
    }
    let mut e = k;
    while e < b.len() && !ends_value(b[e]) {
        e += 1;
    }
    (e > k && &b[k..e] != MASK.as_bytes()).then_some((k, e))
}

/// [`text`], then every exact `secret` (3 characters or more; shorter ones would mask ordinary words)
/// wherever it still appears.
pub fn with_secrets<'a>(s: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = text(s);
    for secret in secrets {
        if secret.len() >= 3 && secret != MASK {
            out = out.replace(secret, MASK);
        }
    }
    out
}

/// A JSON document (as `serde_json` writes it) with every string literal, keys included, passed through
/// [`text`]: each literal is decoded, redacted and encoded again only when something was masked, so the
/// document stays valid and keeps its layout and key order. Text that is not JSON is redacted as text.
pub fn json(doc: &str) -> String {
    let b = doc.as_bytes();
    let mut out = String::with_capacity(doc.len());
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let mut e = i + 1;
        while e < b.len() && b[e] != b'"' {
            e += if b[e] == b'\\' { 2 } else { 1 };
        }
        if e >= b.len() {
            return text(doc);
        }
        let lit = &doc[i..=e];
        if let Ok(v) = serde_json::from_str::<String>(lit) {
            let r = text(&v);
            if r != v {
                out.push_str(&doc[copied..i]);
                out.push_str(&serde_json::to_string(&r).unwrap_or_else(|_| format!("\"{MASK}\"")));
                copied = e + 1;
            }
        }
        i = e + 1;
    }
    out.push_str(&doc[copied..]);
    out
}

/// A URL that may carry credentials (userinfo, a token parameter). Shown, logged and serialized
/// redacted; [`SecretUrl::expose`] gives the real one, for the request only.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> SecretUrl {
        SecretUrl(url.into())
    }

    /// The real URL, credentials included: for building requests, never for messages.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// This URL with `path` appended (`base.join("/v2/keys")`).
    pub fn join(&self, path: &str) -> SecretUrl {
        SecretUrl(format!("{}{path}", self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url(&self.0))
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&url(&self.0), f)
    }
}

impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&url(&self.0))
    }
}

/// `serialize_with` for a config field holding a URL: the section, when shown, shows it redacted.
pub fn serialize_url<S: serde::Serializer>(u: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&url(u))
}

/// [`serialize_url`] for an optional URL.
pub fn serialize_opt_url<S: serde::Serializer>(u: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match u {
        Some(u) => s.serialize_some(&url(u)),
        None => s.serialize_none(),
    }
}

/// Writes [`text`] of what it is given to `W`. The log writes each event in one call, so an event is
/// redacted as a whole; a write is reported as complete when all of it was redacted and written.
pub struct Writer<W>(pub W);

impl<W: std::io::Write> std::io::Write for Writer<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let redacted = text(&String::from_utf8_lossy(buf));
        self.0.write_all(redacted.as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_and_secret_parameters() {
        assert_eq!(url("http://root:pw@10.0.0.1:4001"), "http://root:***@10.0.0.1:4001");
        assert_eq!(url("http://root:p@ss@10.0.0.1:4001/v2/keys"), "http://root:***@10.0.0.1:4001/v2/keys");
        assert_eq!(
            url("https://api.example.com/x?a=1&token=T0k&X-Amz-Signature=abc#access_token=zz"),
            "https://api.example.com/x?a=1&token=***&X-Amz-Signature=***#access_token=***"
        );
        assert_eq!(url("https://h/x?sig=1;key=2&keep=3&Password="), "https://h/x?sig=***;key=***&keep=3&Password=");
        assert_eq!(url("https://h/x?x%2Damz%2Dsignature=s"), "https://h/x?x%2Damz%2Dsignature=***");
        assert_eq!(url("http://user@h:1/"), "http://user@h:1/", "a user without a password is kept");
        assert_eq!(url("http://10.0.0.1:4001"), "http://10.0.0.1:4001");
        assert_eq!(url("unix:///var/run/docker.sock"), "unix:///var/run/docker.sock");
        // Idempotent.
        let once = url("http://root:pw@h/?token=t");
        assert_eq!(url(&once), once);
    }

    #[test]
    fn text_masks_urls_headers_bearer_and_fields_but_keeps_the_message() {
        let t = text("could not reach etcd at http://root:PW1@127.0.0.1:1 to read /service: error sending request for url (http://127.0.0.1:1/v2/keys/service?token=TK2). Check etcd.url");
        assert_eq!(t, "could not reach etcd at http://root:***@127.0.0.1:1 to read /service: error sending request for url (http://127.0.0.1:1/v2/keys/service?token=***). Check etcd.url");
        let echo = "HTTP 500: POST /hooks?token=QT HTTP/1.1\r\nauthorization: Bearer abc.def-123\r\nx-api-key: K3Y\r\nidempotency-key: deletion:x\r\ncookie: a=b; c=d\r\n\r\n{\"password\":\"pw\",\"access_token\": \"at\",\"key\":\"/service/x\"}";
        let r = text(echo);
        for s in ["QT", "abc.def-123", "K3Y", "a=b", "\"pw\"", "\"at\""] {
            assert!(!r.contains(s), "{s} left in {r}");
        }
        assert!(r.contains("authorization: Bearer ***\r\n"), "{r}");
        assert!(r.contains("idempotency-key: deletion:x"), "{r}");
        assert!(r.contains("\"key\":\"/service/x\""), "an etcd key is not a secret: {r}");
        assert!(r.contains("\"password\":\"***\""), "{r}");
        assert_eq!(text("grant_type=password&username=u&password=hunter2"), "grant_type=password&username=u&password=***");
        assert_eq!(text("Authorization: Basic dXNlcjpwYXNz"), "Authorization: Basic ***");
        assert_eq!(text("sent with Bearer eyJhbGciOi.x.y here"), "sent with Bearer *** here");
        assert_eq!(text("client_secret = s3cr3t, next"), "client_secret = ***, next");
        // Prose is left alone.
        for p in [
            "check etcd.username / etcd.password and the cluster's v2 auth roles",
            "Bearer tokens expire",
            "Check the credentials (s3.access_key_id/s3.secret_access_key or the AWS_* environment)",
            "deleted 3 object(s) under s3://bucket/backups/x/wal/",
            "a == b, token_type=bearer, token_endpoint: http://uaa/x",
            "DELETE /v2/keys/service/x/initialize key: /service/x/initialize",
        ] {
            assert_eq!(text(p), p);
        }
        let twice = text(echo);
        assert_eq!(text(&twice), twice, "idempotent");
    }

    proptest::proptest! {
        /// Any text (any Unicode, cut anywhere) is redacted without a panic, and a secret planted in
        /// each shape never survives whatever surrounds it.
        #[test]
        fn any_text_is_safe(pre in "\\PC{0,40}", suf in "\\PC{0,40}", secret in "[A-Za-z0-9]{12}", shape in 0usize..6) {
            let planted = match shape {
                0 => format!("http://u:{secret}@h:1/x"),
                1 => format!("https://h/p?a=1&access_token={secret}"),
                2 => format!("\nAuthorization: Bearer {secret}\n"),
                3 => format!(" password={secret} "),
                4 => format!("{{\"client_secret\": \"{secret}\"}}"),
                _ => format!(" Bearer {secret} "),
            };
            let out = text(&format!("{pre} {planted} {suf}"));
            proptest::prop_assert!(!out.contains(&secret), "{out}");
            let _ = url(&format!("{pre}{suf}"));
        }
    }

    #[test]
    fn json_strings_are_redacted_decoded_and_the_document_stays_valid() {
        let doc = r#"{
  "z_first": "kept in place",
  "last_error": "HTTP 500: you sent:\r\nauthorization: Bearer tok3n-XYZ\r\n{\"password\": \"pw-\\\"q\"}",
  "url": "http://root:pw1@h:1/?sig=s9",
  "n": 3,
  "token": 5
}"#;
        let r = json(doc);
        let back: serde_json::Value = serde_json::from_str(&r).unwrap_or_else(|e| panic!("{e}: {r}"));
        assert_eq!(back["last_error"], "HTTP 500: you sent:\r\nauthorization: Bearer ***\r\n{\"password\": \"***\"}");
        assert_eq!(back["url"], "http://root:***@h:1/?sig=***");
        assert_eq!((back["n"].clone(), back["token"].clone()), (3.into(), 5.into()), "only strings change");
        assert!(r.find("z_first").unwrap() < r.find("last_error").unwrap(), "the layout is kept: {r}");
        let plain = serde_json::to_string_pretty(&serde_json::json!({"a": "nothing secret", "b": [1, "x"]})).unwrap();
        assert_eq!(json(&plain), plain);
    }

    #[test]
    fn known_values_and_the_url_type() {
        assert_eq!(with_secrets("user pw hunter2 and hunter2", ["hunter2", "x"]), "user pw *** and ***");
        let u = SecretUrl::new("http://root:PW@h:4001");
        assert_eq!(u.to_string(), "http://root:***@h:4001");
        assert_eq!(format!("{u:?}"), "\"http://root:***@h:4001\"");
        assert_eq!(serde_json::to_string(&u).unwrap(), "\"http://root:***@h:4001\"");
        assert_eq!(u.join("/v2/keys").expose(), "http://root:PW@h:4001/v2/keys");
        let mut w = Writer(Vec::new());
        std::io::Write::write_all(&mut w, b"level=warn url=http://a:b@c/?sig=1\n").unwrap();
        assert_eq!(String::from_utf8(w.0).unwrap(), "level=warn url=http://a:***@c/?sig=***\n");
    }
}
