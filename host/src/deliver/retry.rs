//! The retry policy, pure: what a failed attempt leads to, given the client's
//! schedule, how many attempts were made, and what the receiver asked for. No
//! clock and no I/O here, so every rule has a unit test.
//!
//! - `n` waits in the schedule mean `n + 1` attempts in all; after the last
//!   one the delivery has failed.
//! - Each wait is jittered ±20 %, so failed deliveries do not come back in a herd.
//! - A `Retry-After` (seconds or an HTTP date) is honoured when it asks for
//!   longer than the schedule, up to [`MAX_RETRY_AFTER`]: a receiver cannot park
//!   a delivery for a week.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderValue;

/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// What comes after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Try again after this wait.
    RetryIn(Duration),
    /// The schedule is spent.
    GiveUp,
}

/// The step after failed attempt number `attempts` (1 for the first), with
/// `unit` in `0.0..1.0` drawing the jitter.
pub fn next(
    schedule: &[Duration],
    attempts: u32,
    retry_after: Option<Duration>,
    unit: f64,
) -> Next {
    let Some(&wait) = schedule.get(attempts.saturating_sub(1) as usize) else {
        return Next::GiveUp;
    };
    let asked = retry_after.unwrap_or_default().min(MAX_RETRY_AFTER);
    Next::RetryIn(jitter(wait, unit).max(asked))
}

/// `d` give or take 20 %: `unit` 0 gives 0.8 × d, 1 gives 1.2 × d.
pub fn jitter(d: Duration, unit: f64) -> Duration {
    d.mul_f64(0.8 + 0.4 * unit.clamp(0.0, 1.0))
}

/// `Retry-After` as seconds or as an HTTP date (a date in the past is now).
pub fn parse_retry_after(v: &HeaderValue) -> Option<Duration> {
    retry_after_at(v, SystemTime::now())
}

fn retry_after_at(v: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_schedule_gives_one_wait_per_attempt_then_gives_up() {
        let schedule = [S(5), S(300)];
        assert_eq!(next(&schedule, 1, None, 0.5), Next::RetryIn(S(5)));
        assert_eq!(next(&schedule, 2, None, 0.5), Next::RetryIn(S(300)));
        assert_eq!(next(&schedule, 3, None, 0.5), Next::GiveUp);
        assert_eq!(
            next(&[], 1, None, 0.5),
            Next::GiveUp,
            "no waits: one attempt"
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(jitter(S(100), 0.0), S(80));
        assert_eq!(jitter(S(100), 1.0), S(120));
        assert_eq!(jitter(S(100), 0.5), S(100));
        assert_eq!(
            jitter(S(100), 7.0),
            S(120),
            "out-of-range draws are clamped"
        );
        // The longest wait the config allows does not overflow.
        let month = S(30 * 86_400);
        assert_eq!(jitter(month, 1.0), month.mul_f64(1.2));
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_capped() {
        let schedule = [S(5)];
        assert_eq!(next(&schedule, 1, Some(S(60)), 0.5), Next::RetryIn(S(60)));
        assert_eq!(next(&schedule, 1, Some(S(1)), 0.5), Next::RetryIn(S(5)));
        assert_eq!(
            next(&schedule, 1, Some(S(7 * 86_400)), 0.5),
            Next::RetryIn(MAX_RETRY_AFTER)
        );
        assert_eq!(
            next(&schedule, 2, Some(S(60)), 0.5),
            Next::GiveUp,
            "it does not add attempts"
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        let h = HeaderValue::from_static;
        assert_eq!(retry_after_at(&h("120"), now), Some(S(120)));
        assert_eq!(retry_after_at(&h(" 7 "), now), Some(S(7)));
        assert_eq!(
            retry_after_at(&h("Wed, 21 Oct 2015 07:30:00 GMT"), now),
            Some(S(120))
        );
        assert_eq!(
            retry_after_at(&h("Wed, 21 Oct 2015 07:00:00 GMT"), now),
            Some(S(0))
        );
        assert_eq!(retry_after_at(&h("soon"), now), None);
        assert_eq!(retry_after_at(&h("-5"), now), None);
    }
}
