//! A chunkserver proves it is one before the master counts it. With a cluster key every channel
//! is sealed, so only a holder of the key can send a heartbeat at all; but a heartbeat still
//! names an address, and a member of the cluster (or one misconfigured: a wildcard, a stale
//! `--advertise`) can name one that is not its own. With `--insecure` anyone can send a
//! heartbeat naming any address. What neither can do is receive what the master sends *to*
//! that address. So when a heartbeat's address has not proved itself, the master connects back
//! to it, checks that a chunkserver known by that address answers, and hands it a random
//! token. Only heartbeats showing that token count.
//!
//! What this does not stop with `--insecure`: someone who can read the traffic between master
//! and chunkserver sees the token; and someone who can reach the chunkserver can send it tokens
//! of their own, pushing the master's out of the few it keeps, which costs it a heartbeat or two
//! until the master checks it again. Sealed channels close both.

use super::Master;
use crate::error::{ErrorKind, GfsError, Result};
use crate::protocol::{ChunkReply, ChunkRequest, Conn, Heartbeat, Reply};
use crate::sync::Unpoisoned;
use std::time::{Duration, Instant};

/// How long the master waits for a chunkserver it checks.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// At most one check per claimed address this often (a forger cannot make the master dial
/// out faster than this per address).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Most claimed addresses with a check on record; older ones are forgotten first.
const MAX_CHECKS: usize = 1024;
/// Longest rack name accepted.
const MAX_RACK: usize = 64;

/// A check sent to a claimed address.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    token: u64,
    sent: Instant,
}

fn unverified(message: String) -> GfsError {
    GfsError::fs(ErrorKind::Unavailable, message)
}

impl Master {
    /// Whether `hb` comes from the chunkserver at the address it names: returns the token it
    /// proved to hold, or an error (after sending a check to that address if none is under
    /// way) telling it to heartbeat again.
    pub(super) fn verify(&self, hb: &Heartbeat) -> Result<u64> {
        crate::util::check_server_addr(&hb.server).map_err(|why| {
            GfsError::fs(ErrorKind::InvalidArgument, format!("heartbeat names server {:?}: {why}", hb.server))
        })?;
        if hb.rack.len() > MAX_RACK || hb.rack.chars().any(char::is_control) {
            return Err(GfsError::fs(ErrorKind::InvalidArgument, "bad rack name"));
        }
        {
            let m = self.meta();
            if let Some(s) = m.servers.index(&hb.server).and_then(|i| m.servers.get(i)) {
                if s.token != 0 && hb.tokens.contains(&s.token) {
                    return Ok(s.token);
                }
            }
        }
        let token = {
            let mut checks = self.checks.lock_unpoisoned();
            if let Some(c) = checks.get(&hb.server).copied() {
                if hb.tokens.contains(&c.token) {
                    checks.remove(&hb.server);
                    tracing::info!(server = %hb.server, "chunkserver proved its address");
                    return Ok(c.token);
                }
                if c.sent.elapsed() < CHECK_EVERY {
                    return Err(unverified(format!("{} is being checked; heartbeat again", hb.server)));
                }
            }
            if checks.len() >= MAX_CHECKS {
                checks.retain(|_, c| c.sent.elapsed() < CHECK_EVERY);
                if checks.len() >= MAX_CHECKS {
                    return Err(unverified("too many chunkservers being checked; heartbeat again".into()));
                }
            }
            let token = crate::util::random_id() | 1;
            checks.insert(hb.server.clone(), Check { token, sent: Instant::now() });
            token
        };
        match send_check(&hb.server, token) {
            Ok(()) => Err(unverified(format!("{} was sent a token: heartbeat again showing it", hb.server))),
            Err(e) => {
                tracing::info!(server = %hb.server, "heartbeat from an address that is not a chunkserver: {e}");
                Err(unverified(format!("cannot check chunkserver {}: {e}", hb.server)))
            }
        }
    }
}

/// Connects to `addr` and gives it `token`; it must answer as the chunkserver known by `addr`.
fn send_check(addr: &str, token: u64) -> Result<()> {
    let mut c = Conn::connect(addr, CHECK_TIMEOUT)?;
    c.set_read_timeout(CHECK_TIMEOUT)?;
    c.send(&ChunkRequest::Verify { token })?;
    match c.recv::<Reply<ChunkReply>>()? {
        Ok(ChunkReply::Verified { addr: known }) if known == addr => Ok(()),
        Ok(ChunkReply::Verified { addr: known }) => Err(GfsError::UnexpectedReply {
            peer: addr.to_string(),
            what: format!("it is the chunkserver known by {known:?}"),
        }),
        Ok(other) => Err(GfsError::UnexpectedReply { peer: addr.to_string(), what: format!("{other:?}") }),
        Err(error) => Err(GfsError::Remote { peer: addr.to_string(), error }),
    }
}
