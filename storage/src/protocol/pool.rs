//! A small pool of idle connections per peer address.

use super::conn::Conn;
use crate::error::Result;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Keeps a few idle connections per address for reuse.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Conn>>>,
}

const MAX_IDLE: usize = 8;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Pool {
    /// An idle connection to `addr`, or a new one.
    pub fn get(&self, addr: &str) -> Result<Conn> {
        let reused = self.idle.lock().unwrap_or_else(|p| p.into_inner()).get_mut(addr).and_then(|v| v.pop());
        match reused {
            Some(c) => Ok(c),
            None => Conn::connect(addr, CONNECT_TIMEOUT),
        }
    }

    /// An idle connection to `addr`, if there is one.
    pub fn take_idle(&self, addr: &str) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).get_mut(addr).and_then(|v| v.pop())
    }

    /// Returns a connection after a complete exchange (never after an error).
    pub fn put(&self, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = idle.entry(conn.peer().to_string()).or_default();
        if v.len() < MAX_IDLE {
            v.push(conn);
        }
    }

    /// Drops idle connections to `addr` (after it failed).
    pub fn forget(&self, addr: &str) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).remove(addr);
    }
}
