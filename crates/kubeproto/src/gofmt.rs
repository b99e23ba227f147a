//! Go's text forms for time values: `time.RFC3339`, metav1's RFC 3339 with microseconds, and
//! `time.Duration.String()`.

/// Seconds from 0001-01-01T00:00:00Z to the Unix epoch: Go's zero `time.Time` is this many seconds before 1970.
pub(crate) const GO_ZERO_UNIX: i64 = -62_135_596_800;

/// Formats a UTC instant like Go's `t.UTC().Format(time.RFC3339)` (`micros: false`) or metav1's
/// `RFC3339Micro` (`micros: true`). `None` when the year is outside 0..=9999.
pub(crate) fn rfc3339(seconds: i64, nanos: i64, micros: bool) -> Option<String> {
    // Normalise like time.Unix: nanos may be outside [0, 1e9).
    let secs = seconds.checked_add(nanos.div_euclid(1_000_000_000))?;
    let nanos = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
    Some(if micros {
        format!(
            "{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}Z",
            nanos / 1000
        )
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    })
}

/// Howard Hinnant's days-from-civil inverse: days since 1970-01-01 → (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Go's `time.Duration(ns).String()`: "0s", "1.5µs", "300ms", "5m0s", "1h0m0s", "-2h3m4.5s".
pub(crate) fn duration(ns: i64) -> String {
    let neg = ns < 0;
    let mut u = ns.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        let (prec, unit) = match u {
            0 => return "0s".to_string(),
            1..=999 => (0, "ns"),
            1_000..=999_999 => (3, "µs"),
            _ => (6, "ms"),
        };
        let frac = frac(&mut u, prec);
        out.push_str(&format!("{u}{frac}{unit}"));
    } else {
        let frac = frac(&mut u, 9);
        let s = u % 60;
        u /= 60;
        if u > 0 {
            let m = u % 60;
            u /= 60;
            if u > 0 {
                out.push_str(&format!("{u}h"));
            }
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&format!("{s}{frac}s"));
    }
    if neg {
        out.insert(0, '-');
    }
    out
}

/// Go's fmtFrac: splits off `prec` decimal digits of `*v` as ".ddd" without trailing zeros.
fn frac(v: &mut u64, prec: u32) -> String {
    let p = 10u64.pow(prec);
    let f = *v % p;
    *v /= p;
    if f == 0 {
        return String::new();
    }
    let digits = format!("{f:0width$}", width = prec as usize);
    format!(".{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_matches_go() {
        assert_eq!(
            rfc3339(0, 0, false).as_deref(),
            Some("1970-01-01T00:00:00Z")
        );
        assert_eq!(
            rfc3339(1_700_000_000, 123_456_789, false).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            rfc3339(1_700_000_000, 123_456_789, true).as_deref(),
            Some("2023-11-14T22:13:20.123456Z")
        );
        assert_eq!(
            rfc3339(951_782_400, 0, false).as_deref(),
            Some("2000-02-29T00:00:00Z")
        );
        assert_eq!(
            rfc3339(GO_ZERO_UNIX, 0, false).as_deref(),
            Some("0001-01-01T00:00:00Z")
        );
        assert_eq!(
            rfc3339(-1, 0, false).as_deref(),
            Some("1969-12-31T23:59:59Z")
        );
        assert_eq!(
            rfc3339(10, -1, true).as_deref(),
            Some("1970-01-01T00:00:09.999999Z")
        );
        assert_eq!(rfc3339(i64::MAX, 0, false), None);
        assert_eq!(rfc3339(i64::MIN, -1, false), None);
    }

    #[test]
    fn duration_matches_go() {
        for (ns, s) in [
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (300_000_000_000, "5m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (-7_384_500_000_000, "-2h3m4.5s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
            (i64::MAX, "2562047h47m16.854775807s"),
        ] {
            assert_eq!(duration(ns), s, "{ns}");
        }
    }
}
