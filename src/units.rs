//! Units everything shares: durations, byte sizes, rates and RFC 3339 time (a leaf module).
//!
//! Durations and timestamps use `humantime` (a small crate with no dependencies of its own, ~1 s of
//! build) rather than hand-written calendar arithmetic. Sizes stay here: the size crates also accept
//! decimal units (`100MB`), and a configuration must not be misread by a factor of 1.048576, so only
//! `KiB`/`MiB`/`GiB` are accepted. Hex is ten lines, cheaper than a dependency.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// Parse a duration such as `250ms`, `30s`, `5m`, `1h` or `1d` (also compound: `1h30m`).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let trimmed = value.trim();
    // Compact forms only (`1h30m`, not `1 hour 30 minutes`): one way to write each value.
    let plain = trimmed.starts_with(|c: char| c.is_ascii_digit())
        && trimmed.ends_with(|c: char| c.is_ascii_alphabetic())
        && trimmed.bytes().all(|b| b.is_ascii_alphanumeric());
    plain
        .then(|| humantime::parse_duration(trimmed).ok())
        .flatten()
        .ok_or_else(|| {
            format!(
                "invalid duration {value:?}: write a number and a unit, e.g. 250ms, 30s, 5m, 1h"
            )
        })
}

/// A duration in the configuration, written as a string (`30s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ConfigDuration(pub Duration);

impl TryFrom<String> for ConfigDuration {
    type Error = String;
    fn try_from(value: String) -> Result<Self, String> {
        parse_duration(&value).map(ConfigDuration)
    }
}

/// Milliseconds from the Unix epoch to `at` (0 before it): the one clock helper every store,
/// approval and key record uses.
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Whole seconds from the Unix epoch to `at` (0 before it).
pub fn unix_secs(at: SystemTime) -> i64 {
    (unix_ms(at) / 1000) as i64
}

/// Whole seconds since the Unix epoch, now.
pub fn now_secs() -> i64 {
    unix_secs(SystemTime::now())
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-30T16:05:34.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A size written as `1048576`, `512KiB`, `100MiB` or `2GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "serde_yaml::Value")]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("invalid size {text:?}"))?;
        let factor = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(format!("invalid size {text:?}: use B, KiB, MiB or GiB")),
        };
        number
            .checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl TryFrom<serde_yaml::Value> for ByteSize {
    type Error = String;
    fn try_from(value: serde_yaml::Value) -> Result<Self, String> {
        match &value {
            serde_yaml::Value::Number(n) => n.to_string().parse(),
            serde_yaml::Value::String(s) => s.parse(),
            _ => Err("a size must be a number of bytes or a string like 100MiB".into()),
        }
    }
}

/// `N/second`, `N/minute`, `N/hour` or `N/day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    /// Requests per period.
    pub count: u32,
    /// The period.
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate {s:?}: write N/second, N/minute, N/hour or N/day");
        let (count, unit) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = match unit.trim() {
            "second" | "s" => Duration::from_secs(1),
            "minute" | "m" => Duration::from_secs(60),
            "hour" | "h" => Duration::from_secs(3600),
            "day" | "d" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("invalid rate {s:?}: the count must be at least 1"));
        }
        Ok(Rate { count, period })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// A minimum body rate: bytes per second, averaged over a window of time spent waiting for data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyRate {
    /// Bytes per second at least.
    pub bytes_per_second: u64,
    /// Averaged over this much waiting time.
    pub window: Duration,
}

impl FromStr for BodyRate {
    type Err = String;
    /// `1KiB/s` (window 30s) or `1KiB/s over 30s`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid body rate {s:?}: write a size per second, e.g. 1KiB/s or 1KiB/s over 30s"
            )
        };
        let (rate, window) = match s.split_once(" over ") {
            Some((rate, window)) => (rate.trim(), parse_duration(window.trim())?),
            None => (s.trim(), Duration::from_secs(30)),
        };
        let size = rate.strip_suffix("/s").ok_or_else(bad)?;
        let bytes = size.parse::<ByteSize>().map_err(|_| bad())?.0;
        if bytes == 0 || window.is_zero() {
            return Err(bad());
        }
        Ok(BodyRate {
            bytes_per_second: bytes,
            window,
        })
    }
}

/// Lowercase hex of `bytes` (digests in records, keys and ids).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Parse exactly `2 * N` lowercase hex digits into `N` bytes.
pub fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn durations_parse_with_units_and_refuse_bare_numbers() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        for bad in [
            "",
            "30",
            "s",
            "-1s",
            "1 fortnight",
            "ms5",
            "5 seconds",
            "1.5s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_054_734_123);
        assert_eq!(rfc3339(t), "2026-11-30T16:05:34.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn sizes_rates_and_body_rates_parse_and_print() {
        assert_eq!("100MiB".parse::<ByteSize>().unwrap().0, 100 << 20);
        assert_eq!("4096".parse::<ByteSize>().unwrap().0, 4096);
        assert!("10MB".parse::<ByteSize>().is_err());
        let rate: Rate = "30/minute".parse().unwrap();
        assert_eq!(rate.period, Duration::from_secs(60));
        assert_eq!(rate.to_string(), "30/minute");
        for bad in ["30", "0/minute", "x/minute", "3/fortnight", "-1/second"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let body: BodyRate = "1KiB/s over 10s".parse().unwrap();
        assert_eq!(
            (body.bytes_per_second, body.window),
            (1024, Duration::from_secs(10))
        );
        assert_eq!(
            "2KiB/s".parse::<BodyRate>().unwrap().window,
            Duration::from_secs(30)
        );
        assert!("0/s".parse::<BodyRate>().is_err());
    }

    #[test]
    fn hex_round_trips() {
        let bytes = [0x00, 0x7f, 0xab, 0xff];
        assert_eq!(hex(&bytes), "007fabff");
        assert_eq!(parse_hex::<4>("007fabff"), Some(bytes));
        assert_eq!(parse_hex::<4>("007FABFF"), None, "lowercase only");
        assert_eq!(parse_hex::<4>("007fab"), None);
    }
}
