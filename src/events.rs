//! The recent events an operator wants to see in order: health transitions, reloads, drains. A bounded
//! ring, newest last; the admin console shows it as a timeline. Logs and metrics stay the record.

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// How many events are kept.
const KEPT: usize = 200;

/// One event.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: SystemTime,
    /// `health`, `reload` or `drain`.
    pub kind: &'static str,
    pub upstream: Option<String>,
    pub backend: Option<String>,
    pub message: String,
}

/// The last [`KEPT`] events.
#[derive(Debug, Default)]
pub struct Events {
    recent: Mutex<VecDeque<Event>>,
}

impl Events {
    /// Records an event about `backend` of `upstream` (both optional), dropping the oldest when full.
    pub fn record(&self, kind: &'static str, upstream: Option<&str>, backend: Option<&str>, message: String) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(Event {
            at: SystemTime::now(),
            kind,
            upstream: upstream.map(str::to_owned),
            backend: backend.map(str::to_owned),
            message,
        });
    }

    /// The kept events, oldest first.
    pub fn recent(&self) -> Vec<Event> {
        self.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_in_order() {
        let events = Events::default();
        for n in 0..KEPT + 5 {
            events.record("reload", None, None, format!("event {n}"));
        }
        let recent = events.recent();
        assert_eq!(recent.len(), KEPT);
        assert_eq!(recent[0].message, "event 5");
        assert_eq!(recent[KEPT - 1].message, format!("event {}", KEPT + 4));
    }
}
