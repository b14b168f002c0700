//! Wall-clock instants as milliseconds since the Unix epoch, and their RFC 3339 form.
//!
//! Rows store `created_at` and `expires_at` as integer milliseconds in both databases, so
//! comparisons are plain integer comparisons. The API shows them as RFC 3339 UTC timestamps
//! with millisecond precision (`2026-11-22T01:12:35.123Z`); formatting is done without
//! allocation because every listed row carries two of them.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// Milliseconds since the Unix epoch (UTC).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub i64);

impl Millis {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Millis(ms)
    }

    /// This instant plus `secs` seconds (saturating).
    pub fn plus_secs(self, secs: u32) -> Self {
        Millis(self.0.saturating_add(i64::from(secs) * 1000))
    }

    /// The RFC 3339 text of this instant, e.g. `2026-11-22T01:12:35.123Z`.
    pub fn rfc3339(self) -> Rfc3339 {
        Rfc3339::new(self)
    }
}

/// An RFC 3339 timestamp formatted into a fixed stack buffer.
#[derive(Clone, Copy)]
pub struct Rfc3339 {
    buf: [u8; 24],
}

impl Rfc3339 {
    fn new(at: Millis) -> Self {
        // Clamp to years 0000..=9999 so the fixed-width form always fits.
        const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
        let ms = at.0.clamp(-62_167_219_200_000, MAX_MS);
        let days = ms.div_euclid(86_400_000);
        let ms_of_day = ms.rem_euclid(86_400_000);
        let (year, month, day) = civil_from_days(days);
        let secs = ms_of_day / 1000;
        let mut buf = *b"0000-00-00T00:00:00.000Z";
        put_digits(&mut buf[0..4], year);
        put_digits(&mut buf[5..7], month);
        put_digits(&mut buf[8..10], day);
        put_digits(&mut buf[11..13], secs / 3600);
        put_digits(&mut buf[14..16], secs / 60 % 60);
        put_digits(&mut buf[17..19], secs % 60);
        put_digits(&mut buf[20..23], ms_of_day % 1000);
        Rfc3339 { buf }
    }

    /// The timestamp as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written into the buffer.
        std::str::from_utf8(&self.buf).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Millis {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.rfc3339().as_str())
    }
}

fn put_digits(out: &mut [u8], mut value: i64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month, day), following
/// the well-known era-based method (400-year eras of 146,097 days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(Millis(0).rfc3339().as_str(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            Millis(1_795_223_555_123).rfc3339().as_str(),
            "2026-11-21T01:12:35.123Z"
        );
        assert_eq!(
            Millis(951_782_400_000).rfc3339().as_str(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn agrees_with_chrono_over_a_range() {
        let mut ms = -2_000_000_000_000_i64;
        while ms < 4_000_000_000_000 {
            let ours = Millis(ms).rfc3339().to_string();
            let theirs = chrono::DateTime::from_timestamp_millis(ms)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            assert_eq!(Some(ours), theirs, "at {ms}");
            ms += 7_777_777_777;
        }
    }
}
