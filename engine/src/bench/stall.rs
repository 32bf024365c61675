//! The bench's stall clock: when a run last made progress, and how long it may stand
//! still before it is reported as stalled instead of waited for until its time limit.

use std::future::Future;
use std::time::{Duration, Instant};

/// Progress as the bench sees it: the recipients the sink (or the outbox) accepted and
/// the ledger's count of sent recipients, as last read. Any change restarts the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub accepted: u64,
    pub recorded: u64,
}

/// Measures the time since a run last moved against the window it may stand still.
#[derive(Debug)]
pub struct StallClock {
    window: Duration,
    moved: Instant,
    seen: Progress,
}

impl StallClock {
    /// A clock that starts now, with nothing seen yet.
    pub fn new(window: Duration) -> Self {
        StallClock {
            window,
            moved: Instant::now(),
            seen: Progress::default(),
        }
    }

    /// The window it was given.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Notes what the run shows now; any change restarts the clock.
    pub fn note(&mut self, now: Progress) {
        if now != self.seen {
            self.seen = now;
            self.moved = Instant::now();
        }
    }

    /// How long the run may still stand still: `None` once it has stood still for the
    /// whole window.
    pub fn left(&self) -> Option<Duration> {
        self.window
            .checked_sub(self.moved.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// Runs `call` for at most the time left: `None` if the run stalled first (a
    /// request that a stopped engine never answers ends there).
    pub async fn bound<T>(&self, call: impl Future<Output = T>) -> Option<T> {
        tokio::time::timeout(self.left()?, call).await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(accepted: u64, recorded: u64) -> Progress {
        Progress { accepted, recorded }
    }

    #[test]
    fn standing_still_for_the_window_is_a_stall_and_any_progress_restarts_it() {
        let window = Duration::from_millis(200);
        let mut clock = StallClock::new(window);
        assert!(clock.left().is_some_and(|left| left <= window));

        std::thread::sleep(Duration::from_millis(120));
        // The same counters again are not progress: the clock keeps running.
        clock.note(progress(0, 0));
        let before = clock.left().expect("within the window");
        assert!(before <= Duration::from_millis(80), "{before:?}");

        // One more recipient accepted restarts it; so does the ledger alone.
        clock.note(progress(1, 0));
        assert!(clock.left().expect("restarted") > before);
        std::thread::sleep(Duration::from_millis(120));
        clock.note(progress(1, 1));
        assert!(clock.left().expect("restarted") > Duration::from_millis(80));

        std::thread::sleep(window + Duration::from_millis(20));
        clock.note(progress(1, 1));
        assert_eq!(clock.left(), None);
    }

    #[tokio::test]
    async fn a_call_that_outlasts_the_window_is_cut_off() {
        let clock = StallClock::new(Duration::from_millis(100));
        assert_eq!(clock.bound(async { 7 }).await, Some(7));
        let never = clock.bound(std::future::pending::<()>()).await;
        assert_eq!(never, None);
        // Once stalled, nothing more is started.
        assert_eq!(clock.bound(async { 7 }).await, None);
    }
}
