//! The `kv` server loop: smoltcp over virtio-net, [`SOCKETS`] listening TCP sockets on the line
//! protocol's port (and [`RESP_SOCKETS`] on the Redis protocol's, when asked for), group commit
//! to the disk log, and waiting for interrupts when idle.
//!
//! Exits are the cost (~84 µs each on PVM hosts), so one loop iteration does, at most: one
//! clock read (after a wait, or every few busy iterations), one disk notification for all the
//! SET/DEL of the iteration (write + FLUSH), one transmit notification for all the frames and
//! one receive notification (only when the device ran out of buffers and asked for it). When
//! there is nothing to do it writes InterruptACK only if the net line was raised since the
//! last time, arms a receive interrupt in the ring (no exit), programs the PIT (one exit, MSB
//! only, mode 0) only if smoltcp needs a timer earlier than the one already armed, and halts.

use super::disk::DiskLog;
use super::resp;
use super::store::{Store, MAX_LINE};
use crate::interrupts;
use crate::port::outb;
use crate::virtio::net::Net;
use crate::{clock, pic};
use alloc::vec;
use alloc::vec::Vec;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address};

pub const SOCKETS: usize = 16;
/// Redis clients open many connections (`redis-benchmark -c 50`), and a listening socket takes
/// one. There is no accept backlog: a SYN that finds no socket listening is reset, and a
/// client's next connections often arrive while its last ones are still closing (redis-benchmark
/// opens 50 new ones for each test as it closes the previous 50), hence twice that and more.
pub const RESP_SOCKETS: usize = 128;
/// Socket buffers: the receive buffer is the window offered (128 KiB: window scaling), the
/// transmit buffer what one iteration can put in flight. Every frame out or in costs no exit
/// by itself, but each round trip through the loop costs a few, so the more a round carries
/// the better (a pipelined window of 32 4-KiB values is 128 KiB).
const RX_BUF: usize = 64 << 10;
const TX_BUF: usize = 256 << 10;
/// Smaller for the many RESP sockets (requests and replies are small; 12 MiB for all of them).
const RESP_RX_BUF: usize = 32 << 10;
const RESP_TX_BUF: usize = 64 << 10;
/// Stop reading a connection's requests while this much of its output is unsent.
const OUT_HIGH: usize = 128 << 10;
/// Re-read the clock after this many iterations without a wait.
const CLOCK_EVERY: u32 = 8;

/// PIT channel 0, MSB-only access, mode 0 (one interrupt at terminal count): each arm is
/// one byte (count = byte << 8, 214.5 µs granularity, at most 54.7 ms).
const PIT_CMD_MSB_MODE0: u8 = 0x20;
const PIT_NS_PER_UNIT: u64 = 256 * 1_000_000_000 / crate::pit::INPUT_HZ as u64;

struct Conn {
    handle: SocketHandle,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    discarding: bool,
    /// The port it listens on; RESP when it is the Redis protocol's.
    port: u16,
    resp: bool,
    /// Close once the output is sent (RESP QUIT or broken framing); read nothing more.
    closing: bool,
}

pub struct Server<'a> {
    iface: Interface,
    sockets: SocketSet<'a>,
    conns: Vec<Conn>,
    net: Net,
    log: DiskLog,
    store: Store,
    net_irqs_seen: u64,
    pit_irqs_seen: u64,
    pit_deadline: Option<u64>,
    waits: u64,
    clock_reads: u64,
    pit_arms: u64,
}

fn now(clock_reads: &mut u64) -> u64 {
    *clock_reads += 1;
    clock::monotonic_ns()
}

fn instant(ns: u64) -> Instant {
    Instant::from_micros((ns / 1000) as i64)
}

impl Conn {
    /// Whether a request waits in the input buffer, complete.
    fn has_request(&self) -> bool {
        if self.resp {
            resp::has_request(&self.inbuf)
        } else {
            self.inbuf.contains(&b'\n')
        }
    }
}

impl Server<'static> {
    pub fn new(
        mut net: Net,
        log: DiskLog,
        store: Store,
        cidr: IpCidr,
        gateway: Option<Ipv4Address>,
        port: u16,
        resp_port: Option<u16>,
    ) -> Self {
        let mut clock_reads = 0;
        let start = now(&mut clock_reads);
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(net.mac())));
        // Determinism: the only randomness (ISNs, ports) comes from the clock device.
        config.random_seed = start ^ 0x6b76_2d66_7476_6d00;
        let mut iface = Interface::new(config, &mut net, instant(start));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(cidr);
        });
        if let Some(gw) = gateway {
            let _ = iface.routes_mut().add_default_ipv4_route(gw);
        }
        let lines = (port, false, SOCKETS, RX_BUF, TX_BUF);
        let redis = resp_port.map(|p| (p, true, RESP_SOCKETS, RESP_RX_BUF, RESP_TX_BUF));
        let total = SOCKETS + redis.map_or(0, |r| r.2);
        let mut sockets = SocketSet::new(Vec::<SocketStorage<'static>>::with_capacity(total));
        let mut conns = Vec::with_capacity(total);
        for (port, resp, count, rx_buf, tx_buf) in core::iter::once(lines).chain(redis) {
            for _ in 0..count {
                let rx = tcp::SocketBuffer::new(vec![0u8; rx_buf]);
                let tx = tcp::SocketBuffer::new(vec![0u8; tx_buf]);
                let mut socket = tcp::Socket::new(rx, tx);
                socket.set_nagle_enabled(false);
                let _ = socket.listen(port);
                conns.push(Conn {
                    handle: sockets.add(socket),
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    sent: 0,
                    discarding: false,
                    port,
                    resp,
                    closing: false,
                });
            }
        }
        outb(0x43, PIT_CMD_MSB_MODE0);
        for irq in [0, net.irq] {
            pic::unmask(irq);
        }
        Server {
            iface,
            sockets,
            conns,
            net_irqs_seen: interrupts::count(net.irq),
            pit_irqs_seen: interrupts::count(0),
            net,
            log,
            store,
            pit_deadline: None,
            waits: 0,
            clock_reads,
            pit_arms: 0,
        }
    }

    pub fn run(&mut self) -> ! {
        let mut now_ns = now(&mut self.clock_reads);
        let mut busy = 0u32;
        loop {
            let ts = instant(now_ns);
            self.iface.poll(ts, &mut self.net, &mut self.sockets);
            let (replied, more) = self.serve();
            if replied {
                self.iface.poll(ts, &mut self.net, &mut self.sockets);
            }
            self.net.flush();
            self.housekeeping();

            let delay = self.iface.poll_delay(ts, &self.sockets);
            if more || self.net.rx_pending() || delay == Some(Duration::ZERO) {
                // More to do at once: the same timestamp serves a few iterations of received
                // frames; a timer that is due needs the time to move on.
                busy += 1;
                if busy >= CLOCK_EVERY || delay == Some(Duration::ZERO) {
                    busy = 0;
                    now_ns = now(&mut self.clock_reads);
                }
                continue;
            }
            busy = 0;
            self.wait(now_ns, delay);
            now_ns = now(&mut self.clock_reads);
        }
    }

    /// Halts until a frame or the timer smoltcp needs (IF is 0 here: no lost wake-up).
    fn wait(&mut self, now_ns: u64, delay: Option<Duration>) {
        let pit = interrupts::count(0);
        if pit != self.pit_irqs_seen {
            self.pit_irqs_seen = pit;
            self.pit_deadline = None;
        }
        if let Some(d) = delay {
            let want = now_ns + d.total_micros() * 1000;
            if self.pit_deadline.is_none_or(|t| t > want || t < now_ns) {
                let units = (d.total_micros() * 1000).div_ceil(PIT_NS_PER_UNIT).clamp(1, 255);
                outb(0x40, units as u8);
                self.pit_arms += 1;
                self.pit_deadline = Some(now_ns + units * PIT_NS_PER_UNIT);
            }
        }
        let seen = interrupts::count(self.net.irq);
        if seen != self.net_irqs_seen {
            self.net_irqs_seen = seen;
            self.net.ack();
        }
        if !self.net.arm() {
            self.waits += 1;
            interrupts::wait();
        }
        self.net.disarm();
    }

    /// Reads and answers requests. Returns whether any reply was queued, and whether complete
    /// requests still wait in a connection's buffer (its output was too large to take more).
    fn serve(&mut self) -> (bool, bool) {
        let extra = self.extra_stats();
        let mut any = false;
        for conn in &mut self.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            loop {
                any |= Self::requests(conn, &mut self.store, &mut self.log, &extra);
                if conn.closing {
                    // Nothing after a QUIT or a protocol error is answered: drop it, so that the
                    // peer is never stuck on a closed window.
                    let _ = socket.recv(|data| (data.len(), ()));
                    break;
                }
                // At least resp::MAX_FRAME: a RESP request that does not fit is refused.
                let room = (2 * MAX_LINE).saturating_sub(conn.inbuf.len());
                if conn.out.len() - conn.sent >= OUT_HIGH || room == 0 || !socket.can_recv() {
                    break;
                }
                let inbuf = &mut conn.inbuf;
                let _ = socket.recv(|data| {
                    let n = data.len().min(room);
                    inbuf.extend_from_slice(&data[..n]);
                    (n, ())
                });
            }
        }
        // Every SET/DEL of this iteration reaches the disk before any reply leaves.
        self.log.commit(&self.store);
        // A compaction goes on while there is nothing else to do.
        let mut more = self.log.compacting();
        for conn in &mut self.conns {
            if conn.sent < conn.out.len() {
                let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
                if let Ok(n) = socket.send_slice(&conn.out[conn.sent..]) {
                    conn.sent += n;
                }
                if conn.sent == conn.out.len() {
                    conn.out.clear();
                    conn.sent = 0;
                }
            }
            more |= conn.out.len() - conn.sent < OUT_HIGH && !conn.closing && conn.has_request();
        }
        (any, more)
    }

    fn requests(conn: &mut Conn, store: &mut Store, log: &mut DiskLog, extra: &str) -> bool {
        if !conn.resp {
            return Self::lines(conn, store, log, extra);
        }
        if conn.closing {
            return false;
        }
        let served = resp::serve(&mut conn.inbuf, &mut conn.out, conn.sent + OUT_HIGH, store, log, extra);
        conn.closing = served.close;
        served.answered
    }

    /// Answers the complete lines in `conn.inbuf` (while its output is not too large).
    fn lines(conn: &mut Conn, store: &mut Store, log: &mut DiskLog, extra: &str) -> bool {
        let mut start = 0;
        let mut any = false;
        while conn.out.len() - conn.sent < OUT_HIGH {
            let Some(nl) = conn.inbuf[start..].iter().position(|&b| b == b'\n') else {
                break;
            };
            let line = &conn.inbuf[start..start + nl];
            if conn.discarding {
                conn.discarding = false;
            } else {
                store.execute(line, log, extra, &mut conn.out);
                any = true;
            }
            start += nl + 1;
        }
        conn.inbuf.drain(..start);
        if conn.inbuf.len() > MAX_LINE && !conn.inbuf.contains(&b'\n') {
            if !conn.discarding {
                store.errors += 1;
                conn.out.extend_from_slice(b"ERR line too long\n");
                any = true;
            }
            conn.discarding = true;
            conn.inbuf.clear();
        }
        any
    }

    /// Closes connections the peer closed, listens again on closed sockets.
    fn housekeeping(&mut self) {
        for conn in &mut self.conns {
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            match socket.state() {
                tcp::State::Established | tcp::State::CloseWait if conn.closing && conn.sent == conn.out.len() => {
                    socket.close()
                }
                tcp::State::CloseWait if conn.sent == conn.out.len() && !socket.can_recv() => socket.close(),
                tcp::State::Closed => {
                    conn.inbuf.clear();
                    conn.out.clear();
                    conn.sent = 0;
                    conn.discarding = false;
                    conn.closing = false;
                    let _ = socket.listen(conn.port);
                }
                _ => {}
            }
        }
    }

    /// Exits the serving loop caused since the start (serial output and initialisation not
    /// counted): halts, clock reads, notifications, interrupt acknowledgements, PIT writes.
    fn exits(&self) -> u64 {
        self.waits + self.clock_reads + self.net.kicks + self.net.acks + self.pit_arms + self.log.device().exits()
    }

    fn extra_stats(&self) -> alloc::string::String {
        use core::fmt::Write;
        let (used, cap) = self.log.usage();
        let (heap_used, heap_free) = crate::heap::usage();
        let open = self.conns.iter().filter(|c| self.sockets.get::<tcp::Socket>(c.handle).is_active()).count();
        let mut s = alloc::string::String::new();
        let _ = write!(
            s,
            "connections={} log_records={} log_sectors={}/{} commits={} disk_requests={} frames_in={} frames_out={} net_notifies={} net_acks={} waits={} clock_reads={} pit_arms={} exits={} heap_used={} heap_free={} compactions={} compacting={} live_bytes={} log_bytes={} disk_writes={}",
            open,
            self.log.records(),
            used,
            cap,
            self.log.commits,
            self.log.device().requests(),
            self.net.frames_in,
            self.net.frames_out,
            self.net.kicks,
            self.net.acks,
            self.waits,
            self.clock_reads,
            self.pit_arms,
            self.exits(),
            heap_used,
            heap_free,
            self.log.compactions(),
            u8::from(self.log.compacting()),
            self.store.live_bytes(),
            self.log.log_bytes(),
            self.log.writes
        );
        s
    }
}
