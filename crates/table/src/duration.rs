//! `HumanDuration` from k8s.io/apimachinery/pkg/util/duration, byte for byte.
//!
//! kube-apiserver renders every AGE cell with it, so `kubectl get` shows `5s`, `3m2s`, `10m`, `2d3h`,
//! `45d`, `3y`. The thresholds (and the integer truncation toward zero) follow the Go source exactly:
//! seconds below 2m, `XmYs` below 10m, minutes below 3h, `XhYm` below 8h, hours below 48h,
//! `XdYh` below 8d, days below 2y, `XyYd` below 8y, then years.

use chrono::TimeDelta;

const NANOS_PER_SECOND: i64 = 1_000_000_000;
const NANOS_PER_MINUTE: i64 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: i64 = 60 * NANOS_PER_MINUTE;

/// Succinct human representation of `d` with about 2-3 significant figures, as
/// `duration.HumanDuration` does. Durations below -1s are `<invalid>`; -1s..0 is `0s`
/// (clock skew tolerance).
pub fn human_duration(d: TimeDelta) -> String {
    // Go's time.Duration is int64 nanoseconds and saturates; do the same.
    let nanos = d.num_nanoseconds().unwrap_or(if d < TimeDelta::zero() {
        i64::MIN
    } else {
        i64::MAX
    });
    human_duration_nanos(nanos)
}

/// [`human_duration`] on a Go-style `time.Duration` (nanoseconds).
pub fn human_duration_nanos(d: i64) -> String {
    // Go: int(d.Seconds()) truncates toward zero, as Rust integer division does.
    let seconds = d / NANOS_PER_SECOND;
    if seconds < -1 {
        return "<invalid>".to_string();
    } else if seconds < 0 {
        return "0s".to_string();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = d / NANOS_PER_MINUTE;
    if minutes < 10 {
        let s = (d / NANOS_PER_SECOND) % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = d / NANOS_PER_HOUR;
    if hours < 8 {
        let m = (d / NANOS_PER_MINUTE) % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        return format!("{hours}h{m}m");
    } else if hours < 48 {
        return format!("{hours}h");
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        return format!("{}d{}h", hours / 24, h);
    } else if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        return format!("{}y{}d", hours / 24 / 365, dy);
    }
    format!("{}y", hours / 24 / 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;
    const S: i64 = NANOS_PER_SECOND;
    const M: i64 = NANOS_PER_MINUTE;
    const H: i64 = NANOS_PER_HOUR;

    fn check(cases: &[(i64, &str)]) {
        for (d, want) in cases {
            assert_eq!(human_duration_nanos(*d), *want, "HumanDuration({d}ns)");
        }
    }

    /// TestHumanDuration from apimachinery's duration_test.go.
    #[test]
    fn upstream_examples() {
        check(&[
            (S, "1s"),
            (70 * S, "70s"),
            (190 * S, "3m10s"),
            (70 * M, "70m"),
            (47 * H, "47h"),
            (49 * H, "2d1h"),
            ((8 * 24 + 2) * H, "8d"),
            (367 * 24 * H, "367d"),
            ((365 * 2 * 24 + 25) * H, "2y1d"),
            ((365 * 8 * 24 + 2) * H, "8y"),
        ]);
    }

    /// TestHumanDurationBoundaries from apimachinery's duration_test.go.
    #[test]
    fn upstream_boundaries() {
        check(&[
            (-2 * S, "<invalid>"),
            (-2 * S + 1, "0s"),
            (0, "0s"),
            (S - MS, "0s"),
            (2 * M - MS, "119s"),
            (2 * M, "2m"),
            (2 * M + S, "2m1s"),
            (10 * M - MS, "9m59s"),
            (10 * M, "10m"),
            (10 * M + S, "10m"),
            (3 * H - MS, "179m"),
            (3 * H, "3h"),
            (3 * H + M, "3h1m"),
            (8 * H - MS, "7h59m"),
            (8 * H, "8h"),
            (8 * H + 59 * M, "8h"),
            (2 * 24 * H - MS, "47h"),
            (2 * 24 * H, "2d"),
            (2 * 24 * H + H, "2d1h"),
            (8 * 24 * H - MS, "7d23h"),
            (8 * 24 * H, "8d"),
            (8 * 24 * H + 23 * H, "8d"),
            (2 * 365 * 24 * H - MS, "729d"),
            (2 * 365 * 24 * H, "2y"),
            (2 * 365 * 24 * H + 23 * H, "2y"),
            (2 * 365 * 24 * H + 23 * H + 59 * M, "2y"),
            (2 * 365 * 24 * H + 24 * H - MS, "2y"),
            (2 * 365 * 24 * H + 24 * H, "2y1d"),
            (3 * 365 * 24 * H, "3y"),
            (4 * 365 * 24 * H, "4y"),
            (5 * 365 * 24 * H, "5y"),
            (6 * 365 * 24 * H, "6y"),
            (7 * 365 * 24 * H, "7y"),
            (8 * 365 * 24 * H - MS, "7y364d"),
            (8 * 365 * 24 * H, "8y"),
            (8 * 365 * 24 * H + 364 * 24 * H, "8y"),
            (9 * 365 * 24 * H, "9y"),
        ]);
    }

    /// The examples from the brief, plus the chrono entry point.
    #[test]
    fn brief_examples_and_chrono() {
        check(&[
            (5 * S, "5s"),
            (3 * M + 2 * S, "3m2s"),
            (10 * M, "10m"),
            ((2 * 24 + 3) * H, "2d3h"),
            (45 * 24 * H, "45d"),
            (3 * 365 * 24 * H, "3y"),
        ]);
        assert_eq!(human_duration(TimeDelta::seconds(182)), "3m2s");
        assert_eq!(human_duration(TimeDelta::milliseconds(-1500)), "0s");
        assert_eq!(human_duration(TimeDelta::seconds(-3)), "<invalid>");
        // Beyond i64 nanoseconds (~292y) Go saturates; so do we.
        assert_eq!(human_duration(TimeDelta::days(365 * 400)), "292y");
        assert_eq!(human_duration(TimeDelta::days(-365 * 400)), "<invalid>");
    }
}
