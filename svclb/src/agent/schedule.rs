//! When the next sync is due. Changes are applied once the source has been quiet for
//! [`DEBOUNCE`], so a burst of changes (an editor's writes, a rollout's EndpointSlice updates)
//! makes one sync, but never later than [`MAX_DELAY`] after the first change of the burst,
//! however busy the source. A sync that could not write everything is retried after
//! [`RETRY_MIN`], doubling up to [`RETRY_MAX`] while retries fail; a new change starts again
//! from the minimum. A sync may also be asked for at a time (changes that wait for the next
//! full sync under map pressure).

use std::time::{Duration, Instant};

pub const DEBOUNCE: Duration = Duration::from_millis(20);
pub const MAX_DELAY: Duration = Duration::from_secs(1);
pub const RETRY_MIN: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct SyncSchedule {
    /// When the next sync is due (`None`: nothing to do).
    due: Option<Instant>,
    /// When the burst of changes the next sync answers began.
    burst_began: Option<Instant>,
    /// How long after a failed sync the next try comes.
    retry_after: Duration,
}

impl Default for SyncSchedule {
    fn default() -> Self {
        Self {
            due: None,
            burst_began: None,
            retry_after: RETRY_MIN,
        }
    }
}

impl SyncSchedule {
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// A sync is wanted at once (the source has just become ready).
    pub fn now(&mut self, now: Instant) {
        self.due = Some(now);
    }

    /// The source reported a change at `now`.
    pub fn changed(&mut self, now: Instant) {
        let began = *self.burst_began.get_or_insert(now);
        self.due = Some((now + DEBOUNCE).min(began + MAX_DELAY));
    }

    /// A sync is starting. `first` says no sync has completed yet. Returns whether it is a
    /// retry of what an earlier sync could not write (no change came since).
    pub fn begin(&mut self, first: bool) -> bool {
        self.due = None;
        if self.burst_began.take().is_some() || first {
            self.retry_after = RETRY_MIN;
            false
        } else {
            self.retry_after = (self.retry_after * 2).min(RETRY_MAX);
            true
        }
    }

    /// A sync is wanted at `at` (changes wait for it): it answers them, it is no retry.
    pub fn at(&mut self, at: Instant) {
        self.due = Some(self.due.map_or(at, |due| due.min(at)));
        self.burst_began.get_or_insert(at);
    }

    /// The sync that began ended at `now`; `incomplete` when something could not be written.
    pub fn end(&mut self, now: Instant, incomplete: bool) {
        if incomplete {
            self.due = Some(now + self.retry_after);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nothing_is_due_until_something_happens() {
        let schedule = SyncSchedule::default();
        assert_eq!(schedule.due(), None);
    }

    #[test]
    fn a_quiet_source_syncs_one_debounce_after_its_last_change() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::default();
        s.changed(t0);
        assert_eq!(s.due(), Some(t0 + DEBOUNCE));
        s.changed(t0 + 10 * MS);
        assert_eq!(
            s.due(),
            Some(t0 + 10 * MS + DEBOUNCE),
            "a later change pushes it out"
        );
    }

    #[test]
    fn a_busy_source_syncs_at_most_max_delay_after_the_burst_began() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::default();
        for i in 0..200 {
            s.changed(t0 + i * 10 * MS);
        }
        assert_eq!(s.due(), Some(t0 + MAX_DELAY));
        // The sync answers the burst; the next change starts a new one.
        assert!(!s.begin(false));
        s.end(t0 + MAX_DELAY, false);
        assert_eq!(s.due(), None);
        s.changed(t0 + 3 * MAX_DELAY);
        assert_eq!(s.due(), Some(t0 + 3 * MAX_DELAY + DEBOUNCE));
    }

    #[test]
    fn failed_syncs_are_retried_with_doubling_backoff_up_to_the_maximum() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::default();
        s.changed(t0);
        assert!(
            !s.begin(false),
            "the sync answering a change is not a retry"
        );
        s.end(t0, true);
        assert_eq!(s.due(), Some(t0 + RETRY_MIN));
        let mut waits = Vec::new();
        let mut at = t0;
        for _ in 0..8 {
            at = s.due().expect("a retry is due");
            assert!(s.begin(false), "no change came: a retry");
            s.end(at, true);
            waits.push(s.due().expect("due again") - at);
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 8, 16, 30, 30, 30, 30]);
        // A retry that writes everything ends the backoff; nothing is due.
        assert!(s.begin(false));
        s.end(at, false);
        assert_eq!(s.due(), None);
    }

    #[test]
    fn a_change_during_backoff_starts_from_the_minimum_again() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::default();
        s.changed(t0);
        s.begin(false);
        s.end(t0, true);
        s.begin(false);
        s.end(t0, true);
        assert_eq!(s.due(), Some(t0 + 2 * RETRY_MIN));
        s.changed(t0 + 100 * MS);
        assert_eq!(
            s.due(),
            Some(t0 + 100 * MS + DEBOUNCE),
            "the change comes first"
        );
        assert!(!s.begin(false));
        s.end(t0 + 200 * MS, true);
        assert_eq!(s.due(), Some(t0 + 200 * MS + RETRY_MIN));
    }

    #[test]
    fn the_first_sync_is_never_a_retry() {
        let t0 = Instant::now();
        let mut s = SyncSchedule::default();
        s.now(t0);
        assert_eq!(s.due(), Some(t0));
        assert!(!s.begin(true));
        s.end(t0, true);
        assert_eq!(s.due(), Some(t0 + RETRY_MIN));
        assert!(!s.begin(true), "still no complete sync: keep the minimum");
        s.end(t0, true);
        assert_eq!(s.due(), Some(t0 + RETRY_MIN));
    }
}
