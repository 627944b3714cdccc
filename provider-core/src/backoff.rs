//! Exponential backoff with full jitter.

use std::time::Duration;

use rand::Rng as _;

/// Delays between attempts: `initial * 2^attempt`, capped at `max`, each drawn uniformly from the
/// upper half of that window so that retrying links do not fall into step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Longest delay between two attempts.
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1 for the first retry).
    #[must_use]
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self.initial.saturating_mul(1 << exp).min(self.max);
        let half = ceiling / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=ceiling - half)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(
                d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = b.delay(3);
            assert!(
                d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400),
                "{d3:?}"
            );
            let d20 = b.delay(20);
            assert!(
                d20 >= Duration::from_secs(1) && d20 <= Duration::from_secs(2),
                "{d20:?}"
            );
            assert!(b.delay(u32::MAX) <= Duration::from_secs(2));
        }
    }
}
