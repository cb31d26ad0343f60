//! Which worker thread the caller runs on. A backend's transport keeps one set of connection pools per
//! worker, because a connection is driven by the runtime that made it; each worker thread says which it is
//! as it starts, and every other thread (the control thread's probes) uses a set of its own.

use std::cell::Cell;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker thread running the caller, if it runs on one.
pub fn current() -> Option<usize> {
    INDEX.get()
}

/// Marks the calling thread as worker `index`, for the rest of its life.
pub fn enter(index: usize) {
    INDEX.set(Some(index));
}
