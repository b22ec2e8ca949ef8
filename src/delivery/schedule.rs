//! The retry rule: how long a delivery waits after a failed automatic
//! attempt, and what an endpoint's `Retry-After` may change about it.
//!
//! Pure: the time and the random number for jitter are passed in, so every
//! rule here is unit-tested without a clock. It owns the rule only; the
//! queue (`queue.rs`) decides what runs when, and `http.rs` hands over the
//! raw header.
//!
//! The rule (contract §4): the wait after the n-th failure is step n of
//! `retry_schedule`, jittered by ±20% so that a backlog does not come back
//! all at once. A `Retry-After` on a 429 or 503 can only lengthen that wait,
//! up to twice the step; it never shortens it. An endpoint that answers
//! `Retry-After: 0` to everything therefore gets the schedule, not a burst
//! that uses up every step in seconds.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

/// Jitter spreads a step over ±this many percent.
const JITTER_PERCENT: u64 = 20;

/// The wait before the next automatic attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    /// From the end of the failed attempt to the next one.
    pub wait: Duration,
    /// How long the endpoint asked us to stay away (a `Retry-After` above
    /// zero, capped at twice the step): until then, not even a release of
    /// the failing gate sends the delivery. `None` when it asked nothing.
    pub hold: Option<Duration>,
}

/// The step's wait, jittered: uniformly in [step − 20%, step + 20%].
pub fn jittered(step: Duration, random: u64) -> Duration {
    let step_ms = step.as_millis().min(u64::MAX as u128 / 2) as u64;
    let spread = (step_ms as u128 * (2 * JITTER_PERCENT as u128) / 100) as u64;
    let offset = if spread == 0 {
        0
    } else {
        random % (spread + 1)
    };
    Duration::from_millis(step_ms - spread / 2 + offset)
}

/// The wait after `failures` failed automatic attempts, or `None` when the
/// schedule is used up (the delivery is dead). `retry_after` is what the
/// endpoint asked (see [`retry_after`]): it raises the jittered wait, never
/// lowers it, and counts for at most twice the step.
pub fn next_wait(
    schedule: &[Duration],
    failures: u32,
    retry_after: Option<Duration>,
    random: u64,
) -> Option<Wait> {
    let step = *schedule.get(failures.checked_sub(1)? as usize)?;
    let base = jittered(step, random);
    let hold = retry_after
        .filter(|asked| !asked.is_zero())
        .map(|asked| asked.min(step.saturating_mul(2)));
    Some(Wait {
        wait: hold.map_or(base, |h| base.max(h)),
        hold,
    })
}

/// A `Retry-After` header that is neither delta-seconds nor an HTTP date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Retry-After {value:?} ignored: neither a number of seconds nor an HTTP date")]
pub struct BadRetryAfter {
    pub value: String,
}

/// What an answer's `Retry-After` asks for, at `now_ms`: only a 429 or a
/// 503 can ask (RFC 9110 gives it no meaning on a failure otherwise). A date
/// in the past asks for nothing more than the schedule (zero).
pub fn retry_after(
    status: Option<u16>,
    header: Option<&str>,
    now_ms: u64,
) -> Result<Option<Duration>, BadRetryAfter> {
    let (Some(429 | 503), Some(value)) = (status, header) else {
        return Ok(None);
    };
    parse_retry_after(value, now_ms)
        .map(Some)
        .ok_or_else(|| BadRetryAfter {
            value: value.chars().take(100).collect(),
        })
}

/// `Retry-After` as delta-seconds or an HTTP date (IMF-fixdate, and the
/// obsolete RFC 850 and asctime forms RFC 9110 still asks recipients to
/// read), as a wait from `now_ms`.
pub fn parse_retry_after(value: &str, now_ms: u64) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Beyond u64 seconds is still "very long": the cap applies anyway.
        return Some(Duration::from_secs(
            value.parse::<u64>().unwrap_or(u64::MAX),
        ));
    }
    let when_ms = http_date_ms(value)?;
    Some(Duration::from_millis(when_ms.saturating_sub(now_ms)))
}

fn http_date_ms(value: &str) -> Option<u64> {
    let utc: DateTime<Utc> = if let Ok(t) = DateTime::parse_from_rfc2822(value) {
        t.with_timezone(&Utc)
    } else {
        // RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`), asctime
        // (`Sun Nov  6 08:49:37 1994`).
        let naive = NaiveDateTime::parse_from_str(value, "%A, %d-%b-%y %H:%M:%S GMT")
            .or_else(|_| NaiveDateTime::parse_from_str(value, "%a %b %e %H:%M:%S %Y"))
            .ok()?;
        naive.and_utc()
    };
    u64::try_from(utc.timestamp_millis()).ok().or(Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn jitter_stays_within_twenty_percent_of_the_step() {
        // (step, random, expected)
        let table = [
            (S(10), 0, MS(8000)),
            (S(10), 4000, MS(12000)),
            (S(10), 4001, MS(8000)), // wraps: random % (spread + 1)
            (S(10), 2000, MS(10000)),
            (MS(0), 12345, MS(0)),
            (MS(1), u64::MAX, MS(1)),
        ];
        for (step, random, want) in table {
            assert_eq!(
                jittered(step, random),
                want,
                "step {step:?} random {random}"
            );
        }
        for step in [MS(7), MS(700), S(5), S(300), S(36_000)] {
            let lo = step.mul_f64(0.8);
            let hi = step.mul_f64(1.2);
            for r in (0..2000u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
                let w = jittered(step, r);
                assert!(
                    w + MS(1) >= lo && w <= hi + MS(1),
                    "{w:?} outside {lo:?}..{hi:?}"
                );
            }
        }
    }

    #[test]
    fn jitter_spreads_waits() {
        let waits: std::collections::BTreeSet<_> =
            (0..50u64).map(|r| jittered(S(100), r * 7919)).collect();
        assert!(waits.len() > 10, "jitter gives different waits");
    }

    #[test]
    fn schedule_is_followed_then_used_up() {
        let s = [S(5), S(60)];
        let w = |failures, random| next_wait(&s, failures, None, random).map(|w| w.wait);
        assert_eq!(w(1, 0), Some(S(4)));
        assert_eq!(w(2, 24_000), Some(S(72)));
        assert_eq!(w(3, 0), None);
        assert_eq!(w(0, 0), None);
        assert_eq!(next_wait(&[], 1, None, 0), None);
    }

    /// Retry-After only ever lengthens the jittered wait, up to twice the
    /// step; zero holds nothing.
    #[test]
    fn retry_after_only_lengthens_the_wait() {
        let s = [S(10)];
        // (asked, random, wait, hold)
        let table = [
            (None, 0, S(8), None),
            (Some(S(0)), 0, S(8), None),
            (Some(S(0)), 4000, S(12), None),
            (Some(S(1)), 0, S(8), Some(S(1))),
            (Some(S(9)), 0, S(9), Some(S(9))),
            (Some(S(9)), 4000, S(12), Some(S(9))),
            (Some(S(15)), 0, S(15), Some(S(15))),
            (Some(S(3600)), 0, S(20), Some(S(20))),
            (Some(Duration::MAX), 4000, S(20), Some(S(20))),
        ];
        for (asked, random, wait, hold) in table {
            assert_eq!(
                next_wait(&s, 1, asked, random),
                Some(Wait { wait, hold }),
                "Retry-After {asked:?}, random {random}"
            );
        }
        // A used-up schedule stays used up whatever the endpoint asks.
        assert_eq!(next_wait(&s, 2, Some(S(5)), 0), None);
    }

    #[test]
    fn retry_after_counts_on_429_and_503_only() {
        let now = 1_000_000_000_000;
        // (status, header, expected)
        type Row<'a> = (Option<u16>, Option<&'a str>, Result<Option<Duration>, ()>);
        let table: [Row; 9] = [
            (Some(503), Some("120"), Ok(Some(S(120)))),
            (Some(429), Some(" 7 "), Ok(Some(S(7)))),
            (Some(503), Some("0"), Ok(Some(S(0)))),
            (Some(503), None, Ok(None)),
            (Some(500), Some("120"), Ok(None)),
            (Some(502), Some("120"), Ok(None)),
            (Some(200), Some("120"), Ok(None)),
            (None, Some("120"), Ok(None)),
            (Some(503), Some("soon"), Err(())),
        ];
        for (status, header, want) in table {
            let got = retry_after(status, header, now).map_err(|_| ());
            assert_eq!(got, want, "{status:?} {header:?}");
        }
        let err = retry_after(Some(429), Some("-5"), now).expect_err("negative");
        assert!(err.to_string().contains("\"-5\""), "{err}");
    }

    #[test]
    fn retry_after_as_seconds_or_an_http_date() {
        // 2024-01-01T00:00:00Z
        let now = 1_704_067_200_000;
        let table = [
            ("120", Some(S(120))),
            ("0", Some(S(0))),
            (
                "99999999999999999999999",
                Some(Duration::from_secs(u64::MAX)),
            ),
            ("Mon, 01 Jan 2024 00:00:30 GMT", Some(S(30))),
            ("Monday, 01-Jan-24 00:01:00 GMT", Some(S(60))),
            ("Mon Jan  1 00:00:05 2024", Some(S(5))),
            // A date in the past asks for nothing.
            ("Sun, 06 Nov 1994 08:49:37 GMT", Some(S(0))),
            ("", None),
            ("soon", None),
            ("1.5", None),
            ("-1", None),
        ];
        for (value, want) in table {
            assert_eq!(parse_retry_after(value, now), want, "{value:?}");
        }
    }

    #[test]
    fn an_http_date_raises_the_wait_like_seconds_do() {
        let now = 1_704_067_200_000;
        let asked =
            retry_after(Some(503), Some("Mon, 01 Jan 2024 00:00:15 GMT"), now).expect("a date");
        let w = next_wait(&[S(10)], 1, asked, 0).expect("a wait");
        assert_eq!(
            w,
            Wait {
                wait: S(15),
                hold: Some(S(15))
            }
        );
    }
}
