//! The embedded default source: a local syslog listener on UDP and TCP (RFC 6587 octet counting or
//! newline framing, detected per message), so `safeguard watch` works with no Kafka at all.

use std::net::SocketAddr;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{Msg, Sink, SourceHandle, SourceId, StartError};

/// Where `safeguard watch` listens (UDP and TCP) when the config names no source.
pub const DEFAULT_SYSLOG: &str = "127.0.0.1:5514";

/// `type = "syslog"`: either address may be left out to disable that protocol.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
}

impl SyslogConfig {
    /// The embedded default: UDP and TCP on [`DEFAULT_SYSLOG`].
    pub fn default_listener() -> SyslogConfig {
        let a: SocketAddr = DEFAULT_SYSLOG.parse().expect("static address");
        SyslogConfig { udp: Some(a), tcp: Some(a) }
    }
}

/// Frames longer than this are cut off (and will be rejected as too long).
const MAX_FRAME: usize = 1 << 20;

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
        tasks.push(tokio::spawn(run_tcp(l, h, sink.clone())));
    }
    Ok(tasks)
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

pub async fn run_tcp(listener: TcpListener, h: SourceHandle, sink: Sink) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let sink = sink.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve_conn(stream, h, sink).await {
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
    /// An octet-counted frame too long to keep: its first `MAX_FRAME` bytes go on (to be rejected as too
    /// long), and `skip` more bytes of it are dropped as they arrive.
    Oversize {
        consumed: usize,
        skip: usize,
    },
    NeedMore,
}

/// RFC 6587 framing, decided per message: `LEN SP MSG` when the message starts with digits and a space,
/// else up to the next newline. A frame split across reads waits for the rest, including a length
/// whose digits arrived without their space.
fn next_frame(buf: &[u8], eof: bool) -> Frame {
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
        if len > MAX_FRAME {
            if buf.len() >= start + MAX_FRAME {
                return Frame::Oversize { consumed: start + MAX_FRAME, skip: len - MAX_FRAME };
            }
            return if eof { Frame::Msg { start, end: buf.len(), consumed: buf.len() } } else { Frame::NeedMore };
        }
        if buf.len() >= start + len {
            return Frame::Msg { start, end: start + len, consumed: start + len };
        }
        return if eof { Frame::Msg { start, end: buf.len(), consumed: buf.len() } } else { Frame::NeedMore };
    }
    match memchr::memchr(b'\n', buf) {
        Some(nl) => Frame::Msg { start: 0, end: nl, consumed: nl + 1 },
        None if eof || buf.len() >= MAX_FRAME => Frame::Msg { start: 0, end: buf.len().min(MAX_FRAME), consumed: buf.len().min(MAX_FRAME) },
        None => Frame::NeedMore,
    }
}

async fn serve_conn(mut stream: TcpStream, h: SourceHandle, sink: Sink) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut eof = false;
    let mut skip = 0usize;
    loop {
        if skip > 0 && !buf.is_empty() {
            let n = skip.min(buf.len());
            buf.drain(..n);
            skip -= n;
            continue;
        }
        let frame = if skip > 0 { Frame::NeedMore } else { next_frame(&buf, eof) };
        match frame {
            Frame::NeedMore => {
                if eof {
                    return Ok(());
                }
                if stream.read_buf(&mut buf).await? == 0 {
                    eof = true;
                }
            }
            Frame::Oversize { consumed, skip: rest } => {
                let msg = buf[..consumed].to_vec();
                buf.drain(..consumed);
                skip = rest;
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

    #[test]
    fn frames_split_anywhere_wait_for_the_rest() {
        assert_eq!(next_frame(b"12", false), Frame::NeedMore, "digits without their space yet");
        assert_eq!(next_frame(b"5 hel", false), Frame::NeedMore);
        assert_eq!(next_frame(b"5 hello6 world", false), Frame::Msg { start: 2, end: 7, consumed: 7 });
        assert_eq!(next_frame(b"Mar 16 x\nnext", false), Frame::Msg { start: 0, end: 8, consumed: 9 });
        assert_eq!(next_frame(b"2016-03-17 x\n", false), Frame::Msg { start: 0, end: 12, consumed: 13 });
        assert_eq!(next_frame(b"no newline yet", false), Frame::NeedMore);
        assert_eq!(next_frame(b"last line", true), Frame::Msg { start: 0, end: 9, consumed: 9 });
        let big = format!("{} ", MAX_FRAME + 10);
        let mut b = big.as_bytes().to_vec();
        b.resize(big.len() + MAX_FRAME, b'x');
        assert_eq!(next_frame(&b, false), Frame::Oversize { consumed: big.len() + MAX_FRAME, skip: 10 });
    }
}
