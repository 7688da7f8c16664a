//! How often one client may do the few things anyone can do without a token: make a
//! widget visitor (a customer and a chat each), and fail to sign in. A token bucket per
//! key: a burst of `per_minute`, then one every `60 / per_minute` seconds.

use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::{Error, Result};

/// Buckets per key, refilled by the clock the caller reads.
#[derive(Debug)]
pub(crate) struct RateLimit<K: Hash + Eq> {
    per_minute: u32,
    buckets: DashMap<K, Bucket>,
    /// Calls so far: every [`SWEEP_EVERY`]th drops the buckets that are full again.
    calls: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at_ms: i64,
}

/// How many calls go between two sweeps of full buckets (which are as good as none).
const SWEEP_EVERY: u64 = 4096;

impl<K: Hash + Eq + Clone> RateLimit<K> {
    /// `per_minute` of 0 means no limit.
    pub(crate) fn new(per_minute: u32) -> Self {
        RateLimit {
            per_minute,
            buckets: DashMap::new(),
            calls: AtomicU64::new(0),
        }
    }

    fn refilled(&self, bucket: Bucket, now_ms: i64) -> Bucket {
        let per_ms = f64::from(self.per_minute) / 60_000.0;
        let elapsed = (now_ms - bucket.at_ms).max(0) as f64;
        Bucket {
            tokens: (bucket.tokens + elapsed * per_ms).min(f64::from(self.per_minute)),
            at_ms: now_ms,
        }
    }

    /// `RateLimited` with the seconds until `key` may go on, if it has nothing left.
    pub(crate) fn check(&self, key: &K, now_ms: i64) -> Result<()> {
        if self.per_minute == 0 {
            return Ok(());
        }
        match self.buckets.get(key) {
            Some(b) => {
                let b = self.refilled(*b, now_ms);
                if b.tokens >= 1.0 {
                    Ok(())
                } else {
                    let per_ms = f64::from(self.per_minute) / 60_000.0;
                    let wait_s = ((1.0 - b.tokens) / per_ms / 1000.0).ceil() as u64;
                    Err(Error::RateLimited(wait_s.max(1)))
                }
            }
            None => Ok(()),
        }
    }

    /// Takes one go of `key`: `RateLimited` (and nothing taken) if it has none left.
    pub(crate) fn take(&self, key: K, now_ms: i64) -> Result<()> {
        if self.per_minute == 0 {
            return Ok(());
        }
        self.check(&key, now_ms)?;
        {
            let full = Bucket {
                tokens: f64::from(self.per_minute),
                at_ms: now_ms,
            };
            let mut entry = self.buckets.entry(key).or_insert(full);
            let mut b = self.refilled(*entry, now_ms);
            b.tokens = (b.tokens - 1.0).max(0.0);
            *entry = b;
        }
        if self.calls.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let cap = f64::from(self.per_minute);
            self.buckets
                .retain(|_, b| self.refilled(*b, now_ms).tokens < cap);
        }
        Ok(())
    }
}

/// The limits of a node, from [`super::Limits`].
#[derive(Debug)]
pub(crate) struct Throttles {
    /// Widget visitors made, per client address.
    pub visitors_by_address: RateLimit<IpAddr>,
    /// Widget visitors made, per widget key (a key spread over many addresses).
    pub visitors_by_key: RateLimit<String>,
    /// Failed sign-ins, per client address: past the limit even a right password is
    /// refused until the bucket refills, so that guessing gains nothing.
    pub failed_sign_ins: RateLimit<IpAddr>,
}

impl Throttles {
    pub(crate) fn new(limits: &super::Limits) -> Throttles {
        Throttles {
            visitors_by_address: RateLimit::new(limits.visitors_per_minute),
            visitors_by_key: RateLimit::new(limits.visitors_per_minute_per_key),
            failed_sign_ins: RateLimit::new(limits.failed_sign_ins_per_minute),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;
    use crate::domain::Error;

    #[test]
    fn a_burst_then_one_per_interval() {
        let limit = RateLimit::new(6); // one every 10 s
        for _ in 0..6 {
            limit.take("a", 0).expect("within the burst");
        }
        assert!(matches!(limit.take("a", 0), Err(Error::RateLimited(10))));
        limit.take("b", 0).expect("another key has its own bucket");
        assert!(matches!(limit.take("a", 9_000), Err(Error::RateLimited(1))));
        limit.take("a", 10_000).expect("refilled by one");
        assert!(limit.take("a", 10_000).is_err());
        limit.check(&"c", 0).expect("an unseen key may go");
    }

    #[test]
    fn zero_means_no_limit() {
        let limit = RateLimit::new(0);
        for _ in 0..1000 {
            limit.take(1, 0).expect("unlimited");
        }
    }

    #[test]
    fn full_buckets_are_swept() {
        let limit = RateLimit::new(60);
        for i in 0..super::SWEEP_EVERY as i64 {
            limit.take(i, 0).expect("one each");
        }
        // All were taken at 0; swept at the last call, none had refilled yet.
        assert_eq!(limit.buckets.len(), super::SWEEP_EVERY as usize);
        for i in 0..super::SWEEP_EVERY as i64 {
            limit.take(-1 - i, 120_000).expect("one each");
        }
        // Two minutes on, the first ones are full again and gone.
        assert_eq!(limit.buckets.len(), super::SWEEP_EVERY as usize);
    }
}
