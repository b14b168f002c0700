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
        loop {
            if let Some(total) = complete_len(&self.buf)? {
                if self.buf.len() >= total {
                    return Ok(());
                }
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
        let head_end = find(&self.buf, b"\r\n\r\n").context("no header end")?;
        let status =
            std::str::from_utf8(self.buf.get(9..12).context("short status line")?)?.parse()?;
        let total = complete_len(&self.buf)?.context("incomplete")?;
        Ok(Response {
            status,
            body: &self.buf[head_end + 4..total],
        })
    }
}

/// Total response length once the headers are in, from `Content-Length`.
fn complete_len(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| value.trim().parse::<usize>())
        .transpose()?
        .unwrap_or(0);
    Ok(Some(head_end + 4 + length))
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
