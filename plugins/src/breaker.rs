//! The circuit breaker: a plugin that keeps misbehaving is switched off for the
//! campaign it misbehaves in, so its batches fail fast (with a reason that says so)
//! instead of burning a fuel budget each.
//!
//! The state is per process: each worker trips on its own after `threshold` failed
//! batches in a row. A success closes nothing once open: an open breaker stays open for
//! that campaign until the process restarts, because a plugin that traps on real data
//! usually keeps trapping.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::PluginError;

/// Entries kept at most; the oldest failing streaks are forgotten beyond it.
const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Default)]
struct Streak {
    consecutive: u32,
    last: String,
    open: bool,
}

/// Tracks failures per (campaign, plugin).
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    streaks: Mutex<HashMap<(u64, String), Streak>>,
}

/// What recording an outcome did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEvent {
    /// Nothing changed state.
    None,
    /// This failure tripped the breaker.
    Tripped,
}

impl CircuitBreaker {
    /// A breaker that opens after `threshold` failed batches in a row (0 disables it).
    pub fn new(threshold: u32) -> Self {
        CircuitBreaker {
            threshold,
            streaks: Mutex::new(HashMap::new()),
        }
    }

    /// `Err` when the plugin is switched off for this campaign.
    pub fn check(&self, campaign_id: u64, plugin: &str) -> Result<(), PluginError> {
        let streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        match streaks.get(&(campaign_id, plugin.to_owned())) {
            Some(s) if s.open => Err(PluginError::SwitchedOff {
                failures: s.consecutive,
                last: s.last.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Records one batch's outcome. Only misbehaviour counts
    /// ([`PluginError::is_misbehaviour`]).
    pub fn record(
        &self,
        campaign_id: u64,
        plugin: &str,
        outcome: Result<(), &PluginError>,
    ) -> BreakerEvent {
        if self.threshold == 0 {
            return BreakerEvent::None;
        }
        let mut streaks = self.streaks.lock().unwrap_or_else(|p| p.into_inner());
        let key = (campaign_id, plugin.to_owned());
        match outcome {
            Err(e) if e.is_misbehaviour() => {
                if !streaks.contains_key(&key) && streaks.len() >= MAX_ENTRIES {
                    let closed: Vec<_> = streaks
                        .iter()
                        .filter(|(_, s)| !s.open)
                        .map(|(k, _)| k.clone())
                        .take(MAX_ENTRIES / 10)
                        .collect();
                    for k in closed {
                        streaks.remove(&k);
                    }
                }
                let streak = streaks.entry(key).or_default();
                if streak.open {
                    return BreakerEvent::None;
                }
                streak.consecutive += 1;
                streak.last = e.to_string();
                if streak.consecutive >= self.threshold {
                    streak.open = true;
                    return BreakerEvent::Tripped;
                }
                BreakerEvent::None
            }
            _ => {
                if streaks.get(&key).is_some_and(|s| !s.open) {
                    streaks.remove(&key);
                }
                BreakerEvent::None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_consecutive_misbehaviours_and_stays_open() {
        let breaker = CircuitBreaker::new(3);
        let trap = PluginError::Trap("unreachable".into());
        assert_eq!(breaker.record(1, "p", Err(&trap)), BreakerEvent::None);
        assert_eq!(breaker.record(1, "p", Err(&trap)), BreakerEvent::None);
        assert!(breaker.check(1, "p").is_ok());
        assert_eq!(breaker.record(1, "p", Err(&trap)), BreakerEvent::Tripped);
        let err = breaker.check(1, "p").expect_err("open");
        assert!(
            err.to_string().contains("3 failed batches in a row"),
            "{err}"
        );
        assert!(err.to_string().contains("unreachable"), "{err}");
        // Another campaign, or another plugin, is untouched.
        assert!(breaker.check(2, "p").is_ok());
        assert!(breaker.check(1, "q").is_ok());
        // A success does not close an open breaker.
        breaker.record(1, "p", Ok(()));
        assert!(breaker.check(1, "p").is_err());
    }

    #[test]
    fn a_success_resets_the_streak_and_refusals_do_not_count() {
        let breaker = CircuitBreaker::new(2);
        let trap = PluginError::Trap("x".into());
        breaker.record(1, "p", Err(&trap));
        breaker.record(1, "p", Ok(()));
        assert_eq!(breaker.record(1, "p", Err(&trap)), BreakerEvent::None);
        let host = PluginError::Host("pool busy".into());
        assert_eq!(breaker.record(1, "p", Err(&host)), BreakerEvent::None);
        assert!(breaker.check(1, "p").is_ok());
        assert_eq!(
            CircuitBreaker::new(0).record(1, "p", Err(&trap)),
            BreakerEvent::None
        );
    }
}
