//! Connections open per client address, against `server.max_connections_per_client`: one address (an
//! IPv6 address by its /64, a subscriber's prefix) cannot take every slot of `server.max_connections` or
//! `quic.max_connections`. A client's entry exists only while it has a connection open, so the table never
//! holds more entries than there are connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use crate::policy::limit::Key;

/// Open connections by client, for one protocol family (TCP or QUIC).
#[derive(Debug, Default)]
pub struct PerClient {
    open: Arc<Mutex<HashMap<Key, usize>>>,
}

/// One connection's place in its client's count; dropping it gives the place back.
#[derive(Debug)]
pub struct ClientSlot {
    key: Key,
    open: Arc<Mutex<HashMap<Key, usize>>>,
}

impl PerClient {
    /// A place for a connection from `client`, unless it has `limit` open already (0: no limit).
    pub fn admit(&self, client: IpAddr, limit: usize) -> Option<ClientSlot> {
        let key = Key::address(client);
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if limit > 0 && *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            key,
            open: Arc::clone(&self.open),
        })
    }

    /// Clients with a connection open.
    pub fn clients(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_share_and_its_entry_goes_with_its_last_connection() {
        let table = PerClient::default();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap_or(IpAddr::from([0; 4]));
        let first = table.admit(ip("192.0.2.1"), 2);
        let second = table.admit(ip("192.0.2.1"), 2);
        assert!(first.is_some() && second.is_some());
        assert!(table.admit(ip("192.0.2.1"), 2).is_none());
        assert!(table.admit(ip("192.0.2.2"), 2).is_some_and(|_| true));
        let v6 = table.admit(ip("2001:db8::1"), 1);
        assert!(v6.is_some() && table.admit(ip("2001:db8::2"), 1).is_none(), "one /64");
        drop((first, second, v6));
        assert_eq!(table.clients(), 0);
        assert!(table.admit(ip("192.0.2.1"), 0).is_some(), "0 is no limit");
    }
}
