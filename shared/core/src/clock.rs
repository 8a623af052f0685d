//! Time: the wall clock, and the time scale every waiting period goes through.
//!
//! Everything gitferry waits for or measures against — lease TTLs, retry delays, the poll tick,
//! poll intervals, probe timeouts, deadline margins, staleness — is a [`scaled`] duration. In
//! production the scale is 1 and nothing changes. The test harness that runs the Lambda
//! bootstraps the way AWS runs them (tests/tests/aws.rs) compresses time instead of waiting
//! for it: with `GITFERRY_TIME_SCALE=30` a 900 s function limit is 30 s, the one-minute poll
//! tick 2 s and a 300 s poll interval 10 s. Every ratio between limits stays as deployed, which
//! is what those tests are about. Timestamps stay real Unix milliseconds.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The environment variable that compresses time (tests only; 1 when unset).
pub const TIME_SCALE_ENV: &str = "GITFERRY_TIME_SCALE";

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// How many times faster than real time this process runs its waiting periods (≥ 1).
pub fn scale() -> f64 {
    static SCALE: OnceLock<f64> = OnceLock::new();
    *SCALE.get_or_init(|| parse_scale(std::env::var(TIME_SCALE_ENV).ok().as_deref()))
}

fn parse_scale(value: Option<&str>) -> f64 {
    match value.map(str::parse::<f64>) {
        None => 1.0,
        Some(Ok(s)) if (1.0..=10_000.0).contains(&s) => s,
        Some(_) => {
            tracing::warn!("{TIME_SCALE_ENV} must be a number from 1 to 10000; using 1");
            1.0
        }
    }
}

/// `d` as this process waits for it.
pub fn scaled(d: Duration) -> Duration {
    let s = scale();
    if s == 1.0 { d } else { d.div_f64(s) }
}

/// [`scaled`], but never below `floor`: for margins that cover real work (writing a status
/// after stopping takes the same milliseconds however compressed time is).
pub fn scaled_at_least(d: Duration, floor: Duration) -> Duration {
    scaled(d).max(floor.min(d))
}

/// `secs` seconds as this process waits for them.
pub fn scaled_secs(secs: u64) -> Duration {
    scaled(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_one_unless_a_sane_number_is_given() {
        assert_eq!(parse_scale(None), 1.0);
        assert_eq!(parse_scale(Some("30")), 30.0);
        assert_eq!(parse_scale(Some("0.5")), 1.0);
        assert_eq!(parse_scale(Some("fast")), 1.0);
        assert_eq!(parse_scale(Some("1e9")), 1.0);
    }
}
