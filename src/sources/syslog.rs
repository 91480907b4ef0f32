//! The embedded default source: a local syslog listener on UDP and TCP (RFC 6587 octet counting or
//! newline framing, detected per message), so `safeguard watch` works with no Kafka at all.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{Msg, Sink};
use crate::pipeline::SourceHandle;

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

async fn serve_conn(stream: TcpStream, h: SourceHandle, sink: Sink) -> std::io::Result<()> {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        // Octet counting: "LEN SP MSG"; anything else is a newline-terminated message.
        let digits = buf.iter().take_while(|c| c.is_ascii_digit()).count();
        let msg = if digits > 0 && digits < 8 && buf.get(digits) == Some(&b' ') {
            let len: usize = std::str::from_utf8(&buf[..digits]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            r.consume(digits + 1);
            let mut m = vec![0u8; len.min(MAX_FRAME)];
            r.read_exact(&mut m).await?;
            if len > MAX_FRAME {
                // Discard the rest of an oversized frame.
                let mut rest = (&mut r).take((len - MAX_FRAME) as u64);
                tokio::io::copy(&mut rest, &mut tokio::io::sink()).await?;
            }
            m
        } else {
            let mut m = Vec::new();
            let n = (&mut r).take(MAX_FRAME as u64).read_until(b'\n', &mut m).await?;
            if n == 0 {
                return Ok(());
            }
            if m.last() != Some(&b'\n') && n == MAX_FRAME {
                // Skip to the end of an oversized line.
                let mut junk = Vec::new();
                r.read_until(b'\n', &mut junk).await?;
            }
            while let Some(b'\n' | b'\r') = m.last() {
                m.pop();
            }
            m
        };
        if msg.is_empty() {
            continue;
        }
        if sink.send(Msg::Line { h, end: next(&SEQ), bytes: msg }).await.is_err() {
            return Ok(());
        }
    }
}
