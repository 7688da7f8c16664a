//! The time souq reads: the system's, or, in tests, the system's moved on by hand.
//!
//! Everything that compares against the time of day (token and session expiry, message and
//! receipt times, presence claims, a chat's activity step) asks a [`Clock`] handed down
//! from the server, never the system directly. A test that needs an hour to pass moves
//! its clock on instead of sleeping; time still runs between the moves, so what is
//! stamped one after another stays in order.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A source of the current time in unix milliseconds. Clones share their offset.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Milliseconds added to the system's time; only an adjustable clock has one.
    ahead: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system's time.
    pub fn system() -> Clock {
        Clock { ahead: None }
    }

    /// The system's time, which [`Clock::advance`] moves on (for tests).
    pub fn adjustable() -> Clock {
        Clock {
            ahead: Some(Arc::new(AtomicI64::new(0))),
        }
    }

    /// Now, in unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let ahead = self.ahead.as_ref().map_or(0, |a| a.load(Ordering::Relaxed));
        system_ms() + ahead
    }

    /// Moves an adjustable clock (and its clones) on by `by`; a system clock cannot be
    /// moved, and this does nothing to it.
    pub fn advance(&self, by: Duration) {
        if let Some(ahead) = &self.ahead {
            let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            ahead.fetch_add(ms, Ordering::Relaxed);
        }
    }
}

/// The system's time in unix milliseconds (0 before 1970, which no clock here shows).
pub fn system_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adjustable_clock_moves_on_for_all_its_clones_and_the_system_clock_does_not() {
        let clock = Clock::adjustable();
        let clone = clock.clone();
        let before = clone.now_ms();
        clock.advance(Duration::from_secs(3600));
        let after = clone.now_ms();
        assert!(
            (3_600_000..3_660_000).contains(&(after - before)),
            "moved {} ms",
            after - before
        );
        let system = Clock::system();
        system.advance(Duration::from_secs(3600));
        assert!(
            system.now_ms() - system_ms() < 60_000,
            "the system clock moved"
        );
    }
}
