//! GCRA, pure: a limit of N per period with burst B admits B at once, then
//! one more every period/N. The state of a key is one number, its
//! theoretical arrival time (TAT), in nanoseconds of Unix time, so that any
//! store (and any replica) can hold it and step it.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::clock::nanos;

/// One GCRA limit: `count` per `period`, at most `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    count: NonZeroU32,
    period: Duration,
    burst: NonZeroU32,
    interval: u64,
}

impl Limit {
    /// A limit of `count` per `period` with the given burst.
    pub fn new(count: NonZeroU32, period: Duration, burst: NonZeroU32) -> Self {
        let interval = (nanos(period) / u64::from(count.get())).max(1);
        Self {
            count,
            period,
            burst,
            interval,
        }
    }

    /// `count` per minute with burst `count`.
    pub fn per_minute(count: NonZeroU32) -> Self {
        Self::new(count, Duration::from_secs(60), count)
    }

    /// How many the limit allows per period.
    pub fn count(&self) -> u32 {
        self.count.get()
    }

    /// The period the count is given for.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// How many the limit admits at once.
    pub fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The time one unit takes to come back, in nanoseconds.
    pub fn interval_nanos(&self) -> u64 {
        self.interval
    }

    /// How far ahead of now a key's TAT may run: the burst, in nanoseconds.
    pub fn tolerance(&self) -> u64 {
        self.interval.saturating_mul(u64::from(self.burst.get()))
    }
}

/// What a limiter step does to a key's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cost {
    /// Report only; change nothing.
    Peek,
    /// Admit and charge one unit, if the limit allows.
    Charge,
    /// Give back one unit charged earlier.
    Refund,
}

/// The result of one limiter step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request was admitted (for a peek: whether one would be).
    pub allowed: bool,
    /// Units left right now, after this step.
    pub remaining: u32,
    /// Time until the key is back to its full burst.
    pub reset_after: Duration,
    /// Time until one more unit is available; zero when one is.
    pub retry_after: Duration,
}

/// One GCRA step on a key's TAT: returns the new TAT and the decision.
pub fn gcra(tat: Option<u64>, now: u64, limit: &Limit, cost: Cost) -> (Option<u64>, Decision) {
    let t = limit.interval;
    let tolerance = limit.tolerance();
    let base = tat.map_or(now, |tat| tat.max(now));
    let decide = |base: u64, allowed: bool| {
        let used = base - now;
        let remaining = (tolerance.saturating_sub(used) / t) as u32;
        let retry_after = (base + t).saturating_sub(tolerance).saturating_sub(now);
        Decision {
            allowed,
            remaining,
            reset_after: Duration::from_nanos(used),
            retry_after: Duration::from_nanos(retry_after),
        }
    };
    match cost {
        Cost::Peek => (tat, decide(base, base + t - now <= tolerance)),
        Cost::Charge => {
            let next = base + t;
            if next - now <= tolerance {
                (Some(next), decide(next, true))
            } else {
                (tat, decide(base, false))
            }
        }
        Cost::Refund => {
            let back = base.saturating_sub(t).max(now);
            (Some(back), decide(back, true))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_peek_says_whether_the_next_charge_would_be_admitted_and_charges_nothing() {
        let limit = Limit::new(nz(10), Duration::from_secs(3600), nz(2));
        let now = 1_000_000_000_000;
        let (tat, peek) = gcra(None, now, &limit, Cost::Peek);
        assert!(peek.allowed);
        assert_eq!((tat, peek.remaining), (None, 2), "nothing charged");
        let (tat, _) = gcra(tat, now, &limit, Cost::Charge);
        let (tat, _) = gcra(tat, now, &limit, Cost::Charge);
        let (after, peek) = gcra(tat, now, &limit, Cost::Peek);
        assert!(!peek.allowed, "the burst is spent");
        assert_eq!(after, tat);
        let later = now + limit.interval;
        assert!(
            gcra(tat, later, &limit, Cost::Peek).1.allowed,
            "one interval later"
        );
    }

    #[test]
    fn gcra_matches_the_spec_definition() {
        // N per period with burst B admits B at once, then one every period/N.
        let limit = Limit::new(nz(4), Duration::from_secs(60), nz(3));
        let mut tat = None;
        let mut admitted = 0;
        for _ in 0..10 {
            let (next, decision) = gcra(tat, 0, &limit, Cost::Charge);
            tat = next;
            admitted += u32::from(decision.allowed);
        }
        assert_eq!(admitted, 3);
        let at = nanos(Duration::from_secs(15));
        let (_, decision) = gcra(tat, at, &limit, Cost::Charge);
        assert!(decision.allowed, "one more after period/N = 15 s");
    }
}
