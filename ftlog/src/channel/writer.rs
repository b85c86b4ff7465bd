//! The writer thread both ends share: drains the bounded send queue onto the socket and sends a
//! heartbeat (and, on the backup, the latest acknowledgement) on every tick.

use super::wire::Message;
use crossbeam_channel::{select, Receiver};
use std::io::Write;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The backup's acknowledgement state: the position its receiver holds, and a nudge the receiver
/// sends when a batch has been taken in.
pub(crate) struct Acks {
    pub held: Arc<AtomicU64>,
    pub nudge: Receiver<()>,
}

/// What a heartbeat carries: the primary's send time, or the backup's echo of the latest one.
pub(crate) enum Stamp {
    Own(crate::PeerWatch),
    Echo(Arc<AtomicU64>),
}

impl Stamp {
    fn value(&self) -> u64 {
        match self {
            Stamp::Own(watch) => watch.now_ns(),
            Stamp::Echo(latest) => latest.load(Ordering::Acquire),
        }
    }
}

/// Runs until it has sent a Close, the queue's senders are all gone (the queue is drained
/// first), or a write fails (then the socket is shut down, so the receiver sees the break too).
pub(crate) fn run(
    mut stream: seal::Writer,
    queue: Receiver<Message>,
    heartbeat: Duration,
    stamp: Stamp,
    acks: Option<Acks>,
) {
    let ticker = crossbeam_channel::tick(heartbeat);
    let never = crossbeam_channel::never();
    let mut nudge = acks.as_ref().map_or_else(|| never.clone(), |acks| acks.nudge.clone());
    let mut frame = Vec::with_capacity(64 * 1024);
    let mut acked_sent = 0u64;
    loop {
        frame.clear();
        let mut ack_now = false;
        select! {
            recv(queue) -> message => match message {
                Ok(Message::Close) => {
                    // The last word: nothing queued after it is sent.
                    let _ = Message::Close.encode_into(&mut frame);
                    let _ = stream.write_all(&frame).and_then(|()| stream.flush());
                    let _ = stream.get_ref().shutdown(Shutdown::Write);
                    return;
                }
                Ok(message) => {
                    if let Err(error) = message.encode_into(&mut frame) {
                        tracing::error!(%error, "logging channel: dropping an oversized message");
                    }
                }
                Err(_) => {
                    let _ = stream.flush();
                    let _ = stream.get_ref().shutdown(Shutdown::Write);
                    return;
                }
            },
            recv(ticker) -> _ => {
                ack_now = true;
                let _ = Message::Heartbeat { stamp: stamp.value() }.encode_into(&mut frame);
            }
            recv(nudge) -> nudged => match nudged {
                Ok(()) => ack_now = true,
                // The receiver is gone: the ticker still carries the last acknowledgement.
                Err(_) => nudge = never.clone(),
            },
        }
        if let (true, Some(acks)) = (ack_now, &acks) {
            let held = acks.held.load(Ordering::Acquire);
            if held > acked_sent {
                let _ = Message::Ack { position: held }.encode_into(&mut frame);
                acked_sent = held;
            }
        }
        if frame.is_empty() {
            continue;
        }
        if let Err(error) = stream.write_all(&frame) {
            tracing::debug!(%error, "logging channel: write failed");
            let _ = stream.get_ref().shutdown(Shutdown::Both);
            return;
        }
    }
}
