// SPDX-License-Identifier: MIT
//! How many log lines a peer domain may cause.
//!
//! A peer decides how often the driver refuses its requests, how often
//! its device connects and disconnects, how often its XenBus state is
//! wrong: every line it can trigger is charged to a budget of its own,
//! keyed by its domain id exactly (two peers never share one, so a noisy
//! peer cannot silence the lines about another) and kept across its
//! sessions (a frontend cycling Closing → Closed → Initialising gets no
//! fresh budget per cycle).
//!
//! A budget is a token bucket: [`LOG_BURST`] lines at once, then one more
//! every [`LOG_REFILL_MS`]. A line over budget is counted, not printed;
//! the next printed line of that peer says how many were suppressed. A
//! budget that is full again holds nothing a fresh one would not, so the
//! table of budgets keeps only peers that logged recently
//! ([`LogBudget::is_idle`]): its size is bounded by the peers active in
//! the last `LOG_BURST * LOG_REFILL_MS`, not by every domain ever seen.

/// Lines a peer may cause in a burst.
pub const LOG_BURST: u32 = 10;

/// Milliseconds for a spent budget to earn one line back: a peer that
/// keeps misbehaving gets one line a second (as a whole, the kernel's own
/// default rate limit allows two), enough to see each kind of fault it
/// keeps making, never a flood.
pub const LOG_REFILL_MS: u64 = 1_000;

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Print it; `suppressed` lines of this peer were dropped since the
    /// last one printed (say so with it when non-zero).
    Print {
        /// Lines dropped since the last printed one.
        suppressed: u32,
    },
    /// Drop it (counted).
    Suppress,
}

/// One peer's budget of log lines.
///
/// # Invariants
///
/// `tokens <= LOG_BURST`; `refilled_at` is the time the last token was
/// earned (or the budget created), never in the future of a `now` it was
/// given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBudget {
    tokens: u32,
    refilled_at: u64,
    suppressed: u32,
}

impl LogBudget {
    /// A full budget at time `now_ms`.
    pub const fn new(now_ms: u64) -> Self {
        LogBudget {
            tokens: LOG_BURST,
            refilled_at: now_ms,
            suppressed: 0,
        }
    }

    /// Earns the tokens due by `now_ms` (a clock that went back earns
    /// nothing).
    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.refilled_at);
        let earned = elapsed / LOG_REFILL_MS;
        if earned == 0 {
            return;
        }
        let room = u64::from(LOG_BURST - self.tokens);
        // INVARIANT: at most LOG_BURST - tokens are added.
        self.tokens += u32::try_from(earned.min(room)).unwrap_or(0);
        self.refilled_at = if self.tokens == LOG_BURST {
            now_ms
        } else {
            self.refilled_at + earned * LOG_REFILL_MS
        };
    }

    /// Charges one line at `now_ms`.
    pub fn admit(&mut self, now_ms: u64) -> Verdict {
        self.refill(now_ms);
        if self.tokens == 0 {
            self.suppressed = self.suppressed.saturating_add(1);
            return Verdict::Suppress;
        }
        self.tokens -= 1;
        let suppressed = core::mem::take(&mut self.suppressed);
        Verdict::Print { suppressed }
    }

    /// Whether, at `now_ms`, the budget is as a fresh one: full, nothing
    /// suppressed untold. Such a budget can be forgotten.
    pub fn is_idle(&self, now_ms: u64) -> bool {
        let mut b = *self;
        b.refill(now_ms);
        b.tokens == LOG_BURST && b.suppressed == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printed(b: &mut LogBudget, now: u64, lines: u32) -> u32 {
        (0..lines)
            .filter(|_| matches!(b.admit(now), Verdict::Print { .. }))
            .count() as u32
    }

    #[test]
    fn a_burst_then_silence() {
        let mut b = LogBudget::new(0);
        assert_eq!(printed(&mut b, 0, 100), LOG_BURST);
        assert_eq!(b.admit(LOG_REFILL_MS - 1), Verdict::Suppress);
    }

    #[test]
    fn the_next_printed_line_counts_what_was_dropped() {
        let mut b = LogBudget::new(0);
        printed(&mut b, 0, LOG_BURST + 7);
        assert_eq!(b.admit(LOG_REFILL_MS), Verdict::Print { suppressed: 7 });
        assert_eq!(b.admit(2 * LOG_REFILL_MS), Verdict::Print { suppressed: 0 });
    }

    #[test]
    fn a_steady_flood_gets_one_line_per_refill() {
        let mut b = LogBudget::new(0);
        // One line every 100 ms for ten minutes: 6,000 attempts.
        let total: u32 = (0..6_000u64)
            .map(|i| u32::from(matches!(b.admit(i * 100), Verdict::Print { .. })))
            .sum();
        let expected = LOG_BURST + (600_000 / LOG_REFILL_MS) as u32;
        assert!(total <= expected && total + 1 >= expected, "{total}");
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let mut b = LogBudget::new(0);
        printed(&mut b, 0, 3);
        assert_eq!(printed(&mut b, u64::MAX / 2, 100), LOG_BURST);
    }

    #[test]
    fn a_clock_going_back_earns_nothing() {
        let mut b = LogBudget::new(1_000_000);
        printed(&mut b, 1_000_000, LOG_BURST);
        assert_eq!(b.admit(0), Verdict::Suppress);
        assert_eq!(b.admit(1_000_000), Verdict::Suppress);
    }

    #[test]
    fn idle_once_refilled_and_told() {
        let mut b = LogBudget::new(0);
        assert!(b.is_idle(0));
        printed(&mut b, 0, LOG_BURST + 1);
        assert!(!b.is_idle(0));
        // Full again, but one suppressed line is still untold.
        assert!(!b.is_idle(LOG_BURST as u64 * LOG_REFILL_MS));
        assert_eq!(
            b.admit(LOG_BURST as u64 * LOG_REFILL_MS),
            Verdict::Print { suppressed: 1 }
        );
        assert!(b.is_idle(LOG_BURST as u64 * LOG_REFILL_MS + LOG_REFILL_MS));
    }
}
