//! A minimal keep-alive HTTP/1.1 client for load generation: one request in flight per
//! connection, responses framed by `Content-Length`. It does far less work per request
//! than a general client, so the figures measure the server, not the generator.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    host: String,
    head_end: usize,
    total: usize,
}

/// A parsed response.
pub struct Response<'a> {
    pub status: u16,
    pub body: &'a [u8],
}

impl Conn {
    pub async fn open(addr: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(64 * 1024),
            host: addr.to_owned(),
            head_end: 0,
            total: 0,
        })
    }

    /// Sends one request and reads its response (10 s timeout).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> anyhow::Result<Response<'_>> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n{headers}\r\n",
            self.host,
            body.len()
        );
        let mut out = Vec::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        tokio::time::timeout(Duration::from_secs(10), self.exchange(&out))
            .await
            .context("response timed out")??;
        self.parse()
    }

    async fn exchange(&mut self, out: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(out).await?;
        self.buf.clear();
        let mut total = None;
        let mut scanned: usize = 0;
        loop {
            if total.is_none() {
                // Scan only bytes not scanned before (minus 3 for a split "\r\n\r\n").
                let from = scanned.saturating_sub(3);
                if let Some(end) = find(&self.buf[from..], b"\r\n\r\n") {
                    total = Some(from + end + 4 + content_length(&self.buf[..from + end])?);
                    self.head_end = from + end;
                }
                scanned = self.buf.len();
            }
            if total.is_some_and(|t| self.buf.len() >= t) {
                self.total = total.unwrap_or(0);
                return Ok(());
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed by server");
            }
        }
    }

    fn parse(&self) -> anyhow::Result<Response<'_>> {
        let status = std::str::from_utf8(self.buf.get(9..12).context("short status line")?)?;
        Ok(Response {
            status: status.parse()?,
            body: &self.buf[self.head_end + 4..self.total],
        })
    }
}

/// The `Content-Length` of a response head (0 when absent).
fn content_length(head: &[u8]) -> anyhow::Result<usize> {
    let head = std::str::from_utf8(head)?;
    Ok(head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()?
        .unwrap_or(0))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Latencies and counts of one phase.
pub struct Tally {
    pub ok: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            ok: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
        }
    }

    pub fn record(&mut self, started: Instant, ok: bool) {
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = self.latency.record(micros.max(1));
        if ok {
            self.ok += 1;
        } else {
            self.errors += 1;
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.errors += other.errors;
        let _ = self.latency.add(&other.latency);
    }
}
