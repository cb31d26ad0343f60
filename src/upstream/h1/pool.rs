//! A worker's idle HTTP/1.1 connections to one backend, most recently used first.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::time::Instant;

use super::super::connect::Stream;
use super::super::limits::Limits;

/// Idle connections kept per backend and worker.
const MAX_IDLE: usize = 256;

/// A connection to a backend with what was read from it and not yet used.
#[derive(Debug)]
pub struct Conn {
    pub(super) stream: Stream,
    pub(super) buffer: BytesMut,
    /// Taken from the pool (it served a request before).
    pub reused: bool,
}

impl Conn {
    /// A fresh connection.
    pub fn new(stream: Stream) -> Self {
        Self {
            stream,
            buffer: BytesMut::new(),
            reused: false,
        }
    }
}

/// One worker's idle connections to one backend.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<Vec<(Conn, Instant)>>,
    /// Told when a connection goes idle, for requests waiting under the backend's connection limit.
    limits: Arc<Limits>,
}

impl Pool {
    /// An empty pool whose connections count against `limits`.
    pub fn new(limits: Arc<Limits>) -> Self {
        Self {
            idle: Mutex::default(),
            limits,
        }
    }

    /// The most recently used idle connection still fit for a request: idle less than `max_idle` and not
    /// closed by the backend meanwhile.
    pub fn checkout(&self, max_idle: Duration) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some((mut conn, since)) = idle.pop() {
            if since.elapsed() < max_idle && conn.stream.idle_usable() {
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange is complete, for the next request.
    pub(super) fn checkin(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
            drop(idle);
            self.limits.connection_idle();
        }
    }

    /// Closes the longest-idle connection, freeing its slot; false when none is idle.
    pub fn close_oldest(&self) -> bool {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_empty() {
            return false;
        }
        drop(idle.remove(0));
        true
    }

    /// Closes connections idle longer than `max_idle`.
    pub fn prune(&self, max_idle: Duration) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(_, since)| since.elapsed() < max_idle);
    }
}
