//! The embedded default source: a local syslog listener on UDP and TCP (RFC 6587 octet counting or
//! newline framing, detected per message), so `safeguard watch` works with no Kafka at all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{Msg, Sink, SourceHandle, SourceId, StartError};

/// Where `safeguard watch` listens (UDP and TCP) when the config names no source.
pub const DEFAULT_SYSLOG: &str = "127.0.0.1:5514";

/// `type = "syslog"`: either address may be left out to disable that protocol. The TCP side is bounded:
/// connections at once, idle time per connection, and bytes per message (what a connection buffers).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    /// TCP connections served at once; more are closed as they arrive (and counted).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// A TCP connection that sends nothing for this long is closed (senders such as rsyslog reconnect).
    #[serde(default = "default_idle_timeout", deserialize_with = "de_idle_timeout")]
    pub idle_timeout: Duration,
    /// The longest message kept; a longer one is cut here, its rest dropped up to its end, and counted.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

fn default_max_connections() -> usize {
    256
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_max_message_bytes() -> usize {
    64 << 10
}
fn de_idle_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    crate::settings::duration_named(d, "idle_timeout")
}

impl Default for SyslogConfig {
    fn default() -> Self {
        SyslogConfig {
            udp: None,
            tcp: None,
            max_connections: default_max_connections(),
            idle_timeout: default_idle_timeout(),
            max_message_bytes: default_max_message_bytes(),
        }
    }
}

impl SyslogConfig {
    /// The embedded default: UDP and TCP on [`DEFAULT_SYSLOG`].
    pub fn default_listener() -> SyslogConfig {
        let a: SocketAddr = DEFAULT_SYSLOG.parse().expect("static address");
        SyslogConfig::on(a)
    }

    /// UDP and TCP on one address, with the default bounds.
    pub fn on(a: SocketAddr) -> SyslogConfig {
        SyslogConfig { udp: Some(a), tcp: Some(a), ..SyslogConfig::default() }
    }

    /// Checks the bounds; errors name the key and the accepted range.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=65_536).contains(&self.max_connections) {
            return Err(format!("syslog source: `max_connections` = {} must be between 1 and 65536", self.max_connections));
        }
        if !(1024..=MAX_MESSAGE_LIMIT).contains(&self.max_message_bytes) {
            return Err(format!("syslog source: `max_message_bytes` = {} must be between 1024 and {MAX_MESSAGE_LIMIT}", self.max_message_bytes));
        }
        crate::settings::check_nonzero("idle_timeout", self.idle_timeout, "every TCP connection would be closed at once")
    }
}

/// The largest `max_message_bytes` accepted (a connection buffers about this much).
pub const MAX_MESSAGE_LIMIT: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot listen for syslog on {proto} {addr}: {source}; is another syslog daemon using the port? set [[sources]] udp/tcp in the config")]
    Bind { proto: &'static str, addr: SocketAddr, source: std::io::Error },
}

pub async fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, ListenError> {
    UdpSocket::bind(addr).await.map_err(|source| ListenError::Bind { proto: "UDP", addr, source })
}

pub async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    TcpListener::bind(addr).await.map_err(|source| ListenError::Bind { proto: "TCP", addr, source })
}

/// Registers the listener and binds its sockets (a port in use fails here, at start-up); returns the
/// tasks that serve them.
pub async fn start(cfg: &SyslogConfig, sink: &Sink) -> Result<Vec<tokio::task::JoinHandle<()>>, StartError> {
    let (h, _) = sink.register(SourceId::Syslog, "syslog listener", false).await?;
    let mut tasks = Vec::new();
    if let Some(a) = cfg.udp {
        let sock = bind_udp(a).await?;
        tracing::info!(addr = %sock.local_addr().unwrap_or(a), "listening for syslog on UDP");
        tasks.push(tokio::spawn(run_udp(sock, h, sink.clone())));
    }
    if let Some(a) = cfg.tcp {
        let l = bind_tcp(a).await?;
        tracing::info!(addr = %l.local_addr().unwrap_or(a), "listening for syslog on TCP");
        tasks.push(tokio::spawn(run_tcp(l, h, sink.clone(), Limits::of(cfg))));
    }
    Ok(tasks)
}

/// Datagrams the kernel dropped on the UDP socket bound to `addr` (its receive buffer was full: the
/// listener fell behind), as `/proc/net/udp{,6}` count them since the socket was opened. `None` when no
/// such socket is open (or not on Linux).
pub fn udp_drops(addr: SocketAddr) -> Option<u64> {
    let mut found = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(drops)) = (f.get(1), f.last()) else { continue };
            let port = local.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if port == Some(addr.port()) {
                *found.get_or_insert(0) += drops.parse::<u64>().unwrap_or(0);
            }
        }
    }
    found
}

/// Counter that orders network messages; they are not replayable, so it is only informational.
fn next(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

pub async fn run_udp(sock: UdpSocket, h: SourceHandle, sink: Sink) {
    let mut buf = vec![0u8; 65_536];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, _)) => {
                let mut msg = &buf[..n];
                while let [rest @ .., b'\n' | b'\r' | 0] = msg {
                    msg = rest;
                }
                // An empty datagram is no line.
                if msg.is_empty() {
                    continue;
                }
                if sink.send(Msg::Line { h, end: next(&SEQ), bytes: msg.to_vec() }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "syslog UDP receive failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// The TCP side's bounds, from [`SyslogConfig`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub max_frame: usize,
}

impl Limits {
    pub fn of(cfg: &SyslogConfig) -> Limits {
        Limits { max_connections: cfg.max_connections, idle_timeout: cfg.idle_timeout, max_frame: cfg.max_message_bytes }
    }
}

pub async fn run_tcp(listener: TcpListener, h: SourceHandle, sink: Sink, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    metrics::counter!("safeguard_syslog_connections_refused_total").increment(1);
                    tracing::debug!(%peer, max = limits.max_connections, "syslog TCP connection refused: too many open");
                    continue;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = serve_conn(stream, h, sink, limits).await {
                        tracing::debug!(%peer, error = %e, "syslog TCP connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "syslog TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// What the bytes at the front of a connection's buffer hold.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A message at `buf[start..end]`; `consumed` bytes are done with.
    Msg {
        start: usize,
        end: usize,
        consumed: usize,
    },
    /// A message longer than the bound: its first `max` bytes are at `buf[start..start + max]` (they go on,
    /// to be rejected as too long); the rest of it is dropped as it arrives: `skip` more bytes of an
    /// octet-counted frame, or everything up to the next newline (`to_newline`).
    Oversize {
        start: usize,
        consumed: usize,
        skip: usize,
        to_newline: bool,
    },
    /// The connection ended inside an octet-counted frame: its bytes are dropped, not delivered.
    Truncated,
    NeedMore,
}

/// RFC 6587 framing, decided per message: `LEN SP MSG` when the message starts with digits and a space,
/// else up to the next newline. A frame split across reads waits for the rest, including a length
/// whose digits arrived without their space. Nothing past `max` bytes of one message is ever buffered.
fn next_frame(buf: &[u8], eof: bool, max: usize) -> Frame {
    if buf.is_empty() {
        return Frame::NeedMore;
    }
    let digits = buf.iter().take(10).take_while(|c| c.is_ascii_digit()).count();
    if digits == buf.len() && digits < 10 && !eof {
        return Frame::NeedMore;
    }
    if digits > 0 && digits < 10 && buf.get(digits) == Some(&b' ') {
        let len: usize = std::str::from_utf8(&buf[..digits]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let start = digits + 1;
        if len > max {
            if buf.len() >= start + max {
                return Frame::Oversize { start, consumed: start + max, skip: len - max, to_newline: false };
            }
            return if eof { Frame::Truncated } else { Frame::NeedMore };
        }
        if buf.len() >= start + len {
            return Frame::Msg { start, end: start + len, consumed: start + len };
        }
        return if eof { Frame::Truncated } else { Frame::NeedMore };
    }
    match memchr::memchr(b'\n', &buf[..buf.len().min(max + 1)]) {
        Some(nl) if nl <= max => Frame::Msg { start: 0, end: nl, consumed: nl + 1 },
        _ if buf.len() > max => Frame::Oversize { start: 0, consumed: max, skip: 0, to_newline: true },
        // A last line without its newline is whole: the sender closed after it.
        _ if eof => Frame::Msg { start: 0, end: buf.len(), consumed: buf.len() },
        _ => Frame::NeedMore,
    }
}

async fn serve_conn(mut stream: TcpStream, h: SourceHandle, sink: Sink, limits: Limits) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(limits.max_frame.min(64 << 10) + 1);
    let mut eof = false;
    let mut skip = 0usize;
    let mut to_newline = false;
    loop {
        // Dropping the rest of an over-long message.
        if skip > 0 && !buf.is_empty() {
            let n = skip.min(buf.len());
            buf.drain(..n);
            skip -= n;
            continue;
        }
        if to_newline && !buf.is_empty() {
            match memchr::memchr(b'\n', &buf) {
                Some(nl) => {
                    buf.drain(..=nl);
                    to_newline = false;
                }
                None => buf.clear(),
            }
            continue;
        }
        let frame = if skip > 0 || to_newline { Frame::NeedMore } else { next_frame(&buf, eof, limits.max_frame) };
        match frame {
            Frame::NeedMore => {
                if eof {
                    return Ok(());
                }
                // Read at most what completes one message, so a connection holds at most the bound.
                let room = (limits.max_frame + 16).saturating_sub(buf.len()).max(1);
                let mut limited = (&mut stream).take(room as u64);
                match tokio::time::timeout(limits.idle_timeout, limited.read_buf(&mut buf)).await {
                    Ok(Ok(0)) => eof = true,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        metrics::counter!("safeguard_syslog_connections_idle_closed_total").increment(1);
                        return Ok(());
                    }
                }
            }
            Frame::Truncated => {
                metrics::counter!("safeguard_syslog_frames_truncated_total").increment(1);
                tracing::debug!(bytes = buf.len(), "syslog TCP connection closed inside a frame; its bytes are dropped");
                return Ok(());
            }
            Frame::Oversize { start, consumed, skip: rest, to_newline: nl } => {
                metrics::counter!("safeguard_syslog_messages_cut_total").increment(1);
                let msg = buf[start..consumed].to_vec();
                buf.drain(..consumed);
                skip = rest;
                to_newline = nl;
                if sink.send(Msg::Line { h, end: next(&SEQ), bytes: msg }).await.is_err() {
                    return Ok(());
                }
            }
            Frame::Msg { start, end, consumed } => {
                let mut msg = &buf[start..end];
                while let [rest @ .., b'\r' | b'\n'] = msg {
                    msg = rest;
                }
                let msg = msg.to_vec();
                buf.drain(..consumed);
                if !msg.is_empty() && sink.send(Msg::Line { h, end: next(&SEQ), bytes: msg }).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 64 << 10;

    #[test]
    fn frames_split_anywhere_wait_for_the_rest() {
        assert_eq!(next_frame(b"12", false, MAX), Frame::NeedMore, "digits without their space yet");
        assert_eq!(next_frame(b"5 hel", false, MAX), Frame::NeedMore);
        assert_eq!(next_frame(b"5 hello6 world", false, MAX), Frame::Msg { start: 2, end: 7, consumed: 7 });
        assert_eq!(next_frame(b"Mar 16 x\nnext", false, MAX), Frame::Msg { start: 0, end: 8, consumed: 9 });
        assert_eq!(next_frame(b"2016-03-17 x\n", false, MAX), Frame::Msg { start: 0, end: 12, consumed: 13 });
        assert_eq!(next_frame(b"no newline yet", false, MAX), Frame::NeedMore);
        assert_eq!(next_frame(b"last line", true, MAX), Frame::Msg { start: 0, end: 9, consumed: 9 });
        let big = format!("{} ", MAX + 10);
        let mut b = big.as_bytes().to_vec();
        b.resize(big.len() + MAX, b'x');
        assert_eq!(next_frame(&b, false, MAX), Frame::Oversize { start: big.len(), consumed: big.len() + MAX, skip: 10, to_newline: false });
    }

    #[test]
    fn an_over_long_line_is_cut_and_its_tail_is_never_a_line() {
        let mut b = vec![b'x'; MAX + 100];
        b.extend_from_slice(b"<13>Mar 16 19:11:48 h p: tail\nnext\n");
        assert_eq!(next_frame(&b, false, MAX), Frame::Oversize { start: 0, consumed: MAX, skip: 0, to_newline: true });
        // A frame cut by the connection's end is dropped, not delivered.
        assert_eq!(next_frame(b"100 only part", true, MAX), Frame::Truncated);
        assert_eq!(next_frame(format!("{} abc", MAX + 1).as_bytes(), true, MAX), Frame::Truncated);
    }

    proptest::proptest! {
        /// Any bytes, split anywhere: the framer never panics, never yields a message longer than the
        /// bound, and consumes what it reports.
        #[test]
        fn framing_is_bounded_on_any_input(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4096), max in 16usize..512, eof: bool) {
            match next_frame(&data, eof, max) {
                Frame::Msg { start, end, consumed } => {
                    proptest::prop_assert!(start <= end && end <= consumed && consumed <= data.len() && end - start <= max);
                    proptest::prop_assert!(consumed > 0);
                }
                Frame::Oversize { start, consumed, .. } => proptest::prop_assert!(consumed - start == max && consumed <= data.len()),
                Frame::Truncated => proptest::prop_assert!(eof),
                Frame::NeedMore => proptest::prop_assert!(data.len() <= max + 11),
            }
        }
    }
}
