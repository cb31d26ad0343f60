//! Circuit breaking on a backend's connections: at most `max_connections` open at once, over every worker,
//! and at most `max_pending` requests waiting for one of them to free up. A request over either limit is
//! refused at once instead of queueing behind a backend that is already saturated.
//!
//! A connection holds a [`Slot`] for as long as it is open (idle in a pool included); dropping the
//! connection frees the slot and wakes one waiting request.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::CircuitBreaker;
use crate::error::CircuitLimit;

/// A backend's connection limits and counts.
#[derive(Debug, Default)]
pub struct Limits {
    open: AtomicUsize,
    pending: AtomicUsize,
    max_connections: AtomicU32,
    max_pending: AtomicU32,
    freed: Notify,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections` reached and no request may wait (`max_pending` is 0, or as many already wait).
    Pending,
    /// Waited for a connection to free up as long as a connect may take, in vain.
    Connections,
}

impl Refusal {
    /// The setting that refused.
    pub fn limit(self) -> CircuitLimit {
        match self {
            Refusal::Pending => CircuitLimit::MaxPending,
            Refusal::Connections => CircuitLimit::MaxConnections,
        }
    }
}

/// One open connection's share of the limit.
#[derive(Debug)]
pub struct Slot(Arc<Limits>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

impl Limits {
    /// Takes reloaded limits; connections already open stay open.
    pub fn set(&self, breaker: &CircuitBreaker) {
        self.max_connections.store(breaker.max_connections, Ordering::Relaxed);
        self.max_pending.store(breaker.max_pending, Ordering::Relaxed);
        // Raised limits may let waiting requests through.
        self.freed.notify_waiters();
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Requests waiting for a connection now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// True while every allowed connection is open.
    pub fn is_full(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed) as usize;
        max > 0 && self.open() >= max
    }

    /// True while a new request would be refused: every connection in use and the waiting room full.
    pub fn is_open_circuit(&self) -> bool {
        self.is_full() && self.pending() >= self.max_pending.load(Ordering::Relaxed) as usize
    }

    /// A slot for a new connection, if one is free now.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max_connections.load(Ordering::Relaxed) as usize;
        let taken = self
            .open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (max == 0 || open < max).then_some(open + 1)
            })
            .is_ok();
        taken.then(|| Slot(Arc::clone(self)))
    }

    /// A connection becomes idle in a pool: a waiting request may take it.
    pub fn connection_idle(&self) {
        self.freed.notify_one();
    }

    /// Whatever `attempt` finds (an idle connection, a slot for a new one): at once when it finds one;
    /// otherwise, if the waiting room has space, after waiting up to `patience` for a connection to close
    /// or go idle. Refused when the waiting room is full or the wait was in vain.
    pub async fn acquire<T>(&self, patience: Duration, mut attempt: impl FnMut() -> Option<T>) -> Result<T, Refusal> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(found) = attempt() {
                return Ok(found);
            }
            if waiting.is_none() {
                let max_pending = self.max_pending.load(Ordering::Relaxed) as usize;
                let joined = self
                    .pending
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |pending| {
                        (pending < max_pending).then_some(pending + 1)
                    })
                    .is_ok();
                if !joined {
                    return Err(Refusal::Pending);
                }
                waiting = Some(Waiting(&self.pending));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return Err(Refusal::Connections);
            }
        }
    }
}

/// A request counted as waiting until dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: u32, max_pending: u32) -> Arc<Limits> {
        let limits = Arc::new(Limits::default());
        limits.set(&CircuitBreaker {
            max_connections,
            max_pending,
            max_requests: 0,
        });
        limits
    }

    #[tokio::test]
    async fn no_limit_means_every_connection_gets_a_slot() {
        let limits = limits(0, 0);
        let slots: Vec<Slot> = (0..100).filter_map(|_| limits.try_acquire()).collect();
        assert_eq!((slots.len(), limits.open()), (100, 100));
        drop(slots);
        assert_eq!(limits.open(), 0);
    }

    #[tokio::test]
    async fn over_max_connections_without_a_waiting_room_is_refused_at_once() {
        let limits = limits(2, 0);
        let _held = [limits.try_acquire(), limits.try_acquire()];
        assert!(limits.try_acquire().is_none());
        assert!(limits.is_open_circuit());
        let refused = limits.acquire(Duration::from_secs(60), || limits.try_acquire()).await;
        assert_eq!(refused.err(), Some(Refusal::Pending));
    }

    #[tokio::test]
    async fn a_waiting_request_gets_the_slot_a_closed_connection_frees() {
        let limits = limits(1, 1);
        let held = limits.try_acquire();
        assert!(held.is_some());
        let waiter = {
            let limits = Arc::clone(&limits);
            tokio::spawn(async move {
                limits
                    .acquire(Duration::from_secs(60), || limits.try_acquire())
                    .await
                    .map(drop)
            })
        };
        // The waiting room holds one: a second waiter is refused while the first waits.
        while limits.pending() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            limits
                .acquire(Duration::from_secs(60), || limits.try_acquire())
                .await
                .err(),
            Some(Refusal::Pending)
        );
        drop(held);
        assert_eq!(waiter.await.ok(), Some(Ok(())));
        assert_eq!((limits.open(), limits.pending()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_in_vain_ends_at_the_deadline() {
        let limits = limits(1, 5);
        let _held = limits.try_acquire();
        let refused = limits
            .acquire(Duration::from_millis(250), || limits.try_acquire())
            .await;
        assert_eq!(refused.err(), Some(Refusal::Connections));
        assert_eq!(limits.pending(), 0);
    }

    #[tokio::test]
    async fn a_connection_going_idle_wakes_a_waiting_request() {
        let limits = limits(1, 1);
        let _busy = limits.try_acquire();
        let idle = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (limits, idle) = (Arc::clone(&limits), Arc::clone(&idle));
            tokio::spawn(async move {
                limits
                    .acquire(Duration::from_secs(60), || {
                        idle.load(Ordering::Relaxed).then_some("pooled")
                    })
                    .await
            })
        };
        while limits.pending() == 0 {
            tokio::task::yield_now().await;
        }
        idle.store(true, Ordering::Relaxed);
        limits.connection_idle();
        assert_eq!(waiter.await.ok(), Some(Ok("pooled")));
    }
}
