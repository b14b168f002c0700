//! Raw TCP clients for the connection-handling tests: sockets bound to a chosen 127.x
//! source address, slow writers, and checks for whether the server closed a socket.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Opens a TCP connection from `source` (any port) to `server`, as a non-blocking std
/// socket.
pub async fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = match source {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind source");
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(server))
        .await
        .expect("connect within 10 s")
        .expect("connect")
        .into_std()
        .expect("std socket");
    stream.set_nonblocking(true).expect("nonblocking");
    stream
}

/// Whether the server closed (or reset) `stream`; data sent by the server is read and
/// dropped.
pub fn is_closed(mut stream: &TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(err) if err.kind() == ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Polls until the server closed `stream`, for up to `timeout`; whether it did.
pub async fn closed_within(stream: &TcpStream, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if is_closed(stream) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    is_closed(stream)
}

/// Sends `bytes` on a non-blocking socket without waiting (errors ignored: the server may
/// have closed it).
pub fn nudge(mut stream: &TcpStream, bytes: &[u8]) {
    let _ = stream.write(bytes);
}

/// Reads one HTTP/1.1 response (head and `content-length` body) from a blocking socket;
/// `None` if the connection ends first. Returns (status, lowercased head, body).
pub fn read_response(stream: &mut TcpStream, timeout: Duration) -> Option<(u16, String, String)> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    }
    let body = String::from_utf8_lossy(&data[head_end..head_end + length]).into_owned();
    Some((status, head, body))
}

/// Waits up to `timeout` for the server to close a blocking socket; returns how long it
/// took, or `None` if it stayed open.
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// The value of a metric line `NAME{LABELS} VALUE` (or `NAME VALUE`) in Prometheus text.
pub fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}
