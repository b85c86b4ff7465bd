//! The live side's listener thread: each backup that passes the handshake gets a join thread,
//! which copies memory while the guest runs and then hands the backup to the vCPU thread (see
//! [`super::primary::Primary`]), asking it to pause for the rest of the copy.

use super::join;
use crate::control::VcpuControl;
use ftlog::channel::{Hello, PrimaryLink};
use ftlog::PeerWatch;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// A backup that connected, passed the handshake and received the live rounds of the copy,
/// waiting for the vCPU to pause for the rest.
pub(super) struct Join {
    pub(super) link: PrimaryLink,
    pub(super) watch: PeerWatch,
    pub(super) prepared: join::Prepared,
}

/// What the listener needs to let a backup join.
pub(super) struct Joining {
    pub(super) hello: Arc<Mutex<Hello>>,
    pub(super) paired: Arc<AtomicBool>,
    pub(super) joins: crossbeam_channel::Sender<Join>,
    pub(super) control: VcpuControl,
    pub(super) channel: ftlog::channel::ChannelConfig,
    pub(super) memory: join::MemorySource,
    pub(super) mode: join::JoinMode,
}

/// The listener: each backup that passes the handshake gets a join thread, which copies memory
/// while the guest runs and then hands the backup to the vCPU thread, asking it to pause; while
/// one is joining or paired, others are turned away.
pub(super) fn accept_backups(links: crossbeam_channel::Receiver<TcpStream>, joining: Joining) {
    let Joining { hello, paired, joins, control, channel, memory, mode } = joining;
    for stream in links {
        let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
        if paired.swap(true, Ordering::AcqRel) {
            tracing::warn!(%peer, "a second backup was turned away: this VM already has one");
            continue;
        }
        let ours = match hello.lock() {
            Ok(hello) => hello.clone(),
            Err(_) => return,
        };
        let watch = PeerWatch::new();
        match PrimaryLink::accept(stream, &ours, watch.clone(), &channel) {
            Ok(link) => {
                tracing::info!(%peer, backup = %link.backup().id, ?mode, "a backup connected; copying memory");
                let (joins, control, memory, free) = (joins.clone(), control.clone(), memory.clone(), paired.clone());
                let spawned = std::thread::Builder::new()
                    .name("ft-join".into())
                    .spawn(move || copy_for_join(link, watch, &memory, mode, &joins, &control, &free));
                if let Err(error) = spawned {
                    tracing::warn!(%peer, "could not start a join: {error}");
                    paired.store(false, Ordering::Release);
                }
            }
            Err(error) => {
                tracing::warn!(%peer, "a backup's handshake failed: {error}");
                paired.store(false, Ordering::Release);
            }
        }
    }
}

/// A join thread: the live rounds of the copy while the vCPU runs, then the hand-over to the
/// vCPU thread for the pause. A backup lost on the way leaves the VM running alone as it was,
/// and the next backup may join at once.
fn copy_for_join(
    link: PrimaryLink,
    watch: PeerWatch,
    memory: &join::MemorySource,
    mode: join::JoinMode,
    joins: &crossbeam_channel::Sender<Join>,
    control: &VcpuControl,
    paired: &AtomicBool,
) {
    let addr = link.backup().listen.clone();
    match join::prepare(memory, link.transfer_sink(), mode) {
        Ok(prepared) => {
            if joins.send(Join { link, watch, prepared }).is_ok() {
                control.pause();
            }
        }
        Err(error) => {
            link.abort();
            drop(link);
            tracing::warn!(%addr, "a backup went away while it joined; running alone: {error}");
            paired.store(false, Ordering::Release);
        }
    }
}
