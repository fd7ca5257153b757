//! Value parsers that behave like the Go standard library functions etcd's
//! flags use, so that the same inputs are accepted and rejected.
//!
//! Errors are the short reasons Go's `flag` package reports ("parse error",
//! "value out of range"); callers wrap them into etcd's full messages.

use std::time::Duration;

/// Go's `flag` reason for unparsable input.
pub(crate) const PARSE_ERROR: &str = "parse error";
/// Go's `flag` reason for a number that does not fit the flag's type.
pub(crate) const RANGE_ERROR: &str = "value out of range";

/// Like `strconv.ParseBool`.
pub(crate) fn parse_bool(s: &str) -> Result<bool, &'static str> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(PARSE_ERROR),
    }
}

/// Like `strconv.ParseUint(s, 0, bits)`: accepts `0x`, `0o`, `0b` and legacy
/// leading-zero octal prefixes and `_` digit separators.
pub(crate) fn parse_uint(s: &str, bits: u32) -> Result<u64, &'static str> {
    let (digits, radix) = if let Some(r) = strip_prefix_ci(s, "0x") {
        (r, 16)
    } else if let Some(r) = strip_prefix_ci(s, "0o") {
        (r, 8)
    } else if let Some(r) = strip_prefix_ci(s, "0b") {
        (r, 2)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    if digits.is_empty() || digits.starts_with('_') && radix == 10 || digits.ends_with('_') {
        return Err(PARSE_ERROR);
    }
    let max: u128 = if bits >= 64 {
        u64::MAX as u128
    } else {
        (1u128 << bits) - 1
    };
    let mut value: u128 = 0;
    let mut overflow = false;
    let mut previous_underscore = false;
    for c in digits.chars() {
        if c == '_' {
            if previous_underscore {
                return Err(PARSE_ERROR);
            }
            previous_underscore = true;
            continue;
        }
        previous_underscore = false;
        let d = c.to_digit(radix).ok_or(PARSE_ERROR)?;
        // Keep scanning after an overflow so that a later bad digit still
        // reports a syntax error, as Go does.
        value = value
            .saturating_mul(radix as u128)
            .saturating_add(d as u128);
        if value > max {
            overflow = true;
        }
    }
    if overflow {
        return Err(RANGE_ERROR);
    }
    Ok(value as u64)
}

/// Like `strconv.ParseInt(s, 0, 64)`.
pub(crate) fn parse_int(s: &str) -> Result<i64, &'static str> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_uint(rest, 64)?;
    if negative {
        if magnitude > i64::MAX as u64 + 1 {
            return Err(RANGE_ERROR);
        }
        Ok((magnitude as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(magnitude).map_err(|_| RANGE_ERROR)
    }
}

/// Like `strconv.ParseUint(s, 10, 32)` as used by etcd's `Uint32Value`, whose
/// errors are reported verbatim rather than shortened by the flag package.
pub(crate) fn parse_uint32_decimal(s: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("strconv.ParseUint: parsing {s:?}: invalid syntax"));
    }
    s.parse::<u32>()
        .map_err(|_| format!("strconv.ParseUint: parsing {s:?}: value out of range"))
}

/// Like Go's `time.ParseDuration`, e.g. `5s`, `1h30m`, `1.5ms`, `0`.
///
/// Go durations may be negative; every duration etcd takes treats a
/// non-positive value as "unset/disabled", so negatives clamp to zero.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, &'static str> {
    let (negative, mut rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(PARSE_ERROR);
    }
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(PARSE_ERROR);
        }
        let value: f64 = number.parse().map_err(|_| PARSE_ERROR)?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(PARSE_ERROR),
        };
        rest = &rest[unit_len..];
        total_nanos += value * unit_nanos;
    }
    if total_nanos > i64::MAX as f64 {
        return Err(PARSE_ERROR);
    }
    if negative {
        return Ok(Duration::ZERO);
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

/// Formats a duration the way Go's `time.Duration.String` does for the
/// values that appear in etcd's help text (`5s`, `2h0m0s`, `100ms`).
pub(crate) fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}µs", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let frac = d.subsec_nanos();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let sec_str = if frac == 0 {
        format!("{s}s")
    } else {
        let f = format!("{frac:09}");
        format!("{s}.{}s", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{sec_str}")
    } else if m > 0 {
        format!("{m}m{sec_str}")
    } else {
        sec_str
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools() {
        assert_eq!(parse_bool("T"), Ok(true));
        assert_eq!(parse_bool("False"), Ok(false));
        assert_eq!(parse_bool("yes"), Err(PARSE_ERROR));
        assert_eq!(parse_bool(""), Err(PARSE_ERROR));
    }

    #[test]
    fn unsigned() {
        assert_eq!(parse_uint("100000", 64), Ok(100000));
        assert_eq!(parse_uint("0x10", 64), Ok(16));
        assert_eq!(parse_uint("010", 64), Ok(8));
        assert_eq!(parse_uint("1_000", 64), Ok(1000));
        assert_eq!(parse_uint("-5", 64), Err(PARSE_ERROR));
        assert_eq!(parse_uint("1.5", 64), Err(PARSE_ERROR));
        assert_eq!(parse_uint("abc", 64), Err(PARSE_ERROR));
        assert_eq!(parse_uint("99999999999999999999999", 64), Err(RANGE_ERROR));
        assert_eq!(parse_uint("", 64), Err(PARSE_ERROR));
    }

    #[test]
    fn signed() {
        assert_eq!(parse_int("-1"), Ok(-1));
        assert_eq!(parse_int("+7"), Ok(7));
        assert_eq!(parse_int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_int("9223372036854775808"), Err(RANGE_ERROR));
        assert_eq!(parse_int("-"), Err(PARSE_ERROR));
    }

    #[test]
    fn uint32() {
        assert_eq!(parse_uint32_decimal("7"), Ok(7));
        assert_eq!(
            parse_uint32_decimal("abc").unwrap_err(),
            "strconv.ParseUint: parsing \"abc\": invalid syntax"
        );
        assert_eq!(
            parse_uint32_decimal("5000000000").unwrap_err(),
            "strconv.ParseUint: parsing \"5000000000\": value out of range"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5ms"), Ok(Duration::from_micros(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("-1s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("3"), Err(PARSE_ERROR));
        assert_eq!(parse_duration("abc"), Err(PARSE_ERROR));
        assert_eq!(parse_duration(""), Err(PARSE_ERROR));
        assert_eq!(parse_duration("5x"), Err(PARSE_ERROR));
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h0m0s");
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_millis(100)), "100ms");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m0s");
    }
}
