//! Announcing a guest's MAC address from a new host, as QEMU's announce-self does: a few RARP
//! broadcasts from the guest's MAC at growing intervals, so every switch on the path learns the
//! port the guest is behind now. A backup that goes live sends them, and sends them again if a
//! late frame from the old host could have pulled a switch back.

use super::spec::MacAddr;
use std::time::Duration;

/// EtherType of RARP.
const ETHERTYPE_RARP: u16 = 0x8035;
/// RARP opcode 3: "request reverse", what announce-self sends.
const RARP_REQUEST_REVERSE: u16 = 3;
/// Ethernet's minimum frame length without the FCS: the frame is padded to it.
const MIN_FRAME: usize = 60;

/// The RARP broadcast announcing `mac`: Ethernet header (broadcast destination, `mac` as the
/// source), then an RARP "request reverse" naming `mac` as sender and target, padded to 60 bytes.
pub fn rarp_announcement(mac: MacAddr) -> Vec<u8> {
    let mut frame = Vec::with_capacity(MIN_FRAME);
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&mac.0);
    frame.extend_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    frame.extend_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    frame.extend_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    frame.push(6); // hardware address length
    frame.push(4); // protocol address length
    frame.extend_from_slice(&RARP_REQUEST_REVERSE.to_be_bytes());
    frame.extend_from_slice(&mac.0); // sender hardware address
    frame.extend_from_slice(&[0; 4]); // sender protocol address: unknown
    frame.extend_from_slice(&mac.0); // target hardware address
    frame.extend_from_slice(&[0; 4]); // target protocol address: unknown
    frame.resize(MIN_FRAME, 0);
    frame
}

/// When to send the announcements: `rounds` of them, the first at once, each gap `step` longer
/// than the one before (QEMU's defaults: 5 rounds, 50 ms then +100 ms each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceSchedule {
    pub rounds: u32,
    pub initial: Duration,
    pub step: Duration,
}

impl Default for AnnounceSchedule {
    fn default() -> Self {
        Self { rounds: 5, initial: Duration::from_millis(50), step: Duration::from_millis(100) }
    }
}

impl AnnounceSchedule {
    /// The delay before each round after the first, in order.
    pub fn gaps(&self) -> impl Iterator<Item = Duration> + '_ {
        (0..self.rounds.saturating_sub(1)).map(|i| self.initial + self.step * i)
    }
}

/// Sends the announcements of `macs` through `send` on `schedule`, sleeping between rounds (run
/// it on a thread of its own: it never touches the vCPU). Returns the frames sent; a failed
/// send is logged and the next round tries again.
pub fn announce(
    macs: &[MacAddr],
    schedule: AnnounceSchedule,
    mut send: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> u32 {
    let frames: Vec<Vec<u8>> = macs.iter().map(|mac| rarp_announcement(*mac)).collect();
    let mut sent = 0;
    let mut round = |sent: &mut u32| {
        for (mac, frame) in macs.iter().zip(&frames) {
            match send(frame) {
                Ok(()) => *sent += 1,
                Err(error) => tracing::warn!(%mac, %error, "MAC announcement not sent"),
            }
        }
    };
    if schedule.rounds > 0 {
        round(&mut sent);
    }
    for gap in schedule.gaps() {
        std::thread::sleep(gap);
        round(&mut sent);
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_is_a_broadcast_rarp_from_the_guest_mac() {
        let mac = MacAddr([0x02, 0x46, 0x54, 0x56, 0x4d, 0x00]);
        let frame = rarp_announcement(mac);
        assert_eq!(frame.len(), 60);
        assert_eq!(&frame[0..6], &[0xff; 6], "to every station");
        assert_eq!(&frame[6..12], &mac.0, "from the guest's MAC: what a switch learns");
        assert_eq!(&frame[12..14], &[0x80, 0x35], "RARP");
        assert_eq!(&frame[20..22], &[0, 3], "request reverse");
        assert_eq!(&frame[22..28], &mac.0);
        assert_eq!(&frame[32..38], &mac.0);
        assert!(frame[42..].iter().all(|&b| b == 0), "padding");
    }

    #[test]
    fn the_gaps_grow_by_the_step() {
        let schedule = AnnounceSchedule::default();
        let gaps: Vec<u64> = schedule.gaps().map(|g| g.as_millis() as u64).collect();
        assert_eq!(gaps, vec![50, 150, 250, 350]);
        let once = AnnounceSchedule { rounds: 1, ..schedule };
        assert_eq!(once.gaps().count(), 0);
    }

    #[test]
    fn every_round_sends_one_frame_per_mac_and_a_failure_does_not_stop_the_rounds() {
        let macs = [MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2])];
        let schedule = AnnounceSchedule { rounds: 3, initial: Duration::from_millis(1), step: Duration::ZERO };
        let mut seen = Vec::new();
        let mut calls = 0;
        let sent = announce(&macs, schedule, |frame| {
            calls += 1;
            seen.push(frame[6..12].to_vec());
            if calls == 2 {
                Err(std::io::Error::other("carrier down"))
            } else {
                Ok(())
            }
        });
        assert_eq!(calls, 6);
        assert_eq!(sent, 5);
        assert_eq!(seen.iter().filter(|m| m[5] == 2).count(), 3);
    }
}
