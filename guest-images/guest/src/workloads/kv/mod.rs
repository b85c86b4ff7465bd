//! `kv ip=A.B.C.D/N [port=P] [resp=Q] [gw=A.B.C.D]`: a key-value server on TCP over virtio-net,
//! every SET and DEL logged to the virtio disk before the reply, the log replayed at boot and
//! compacted while serving (`log`); with `resp=Q` it also speaks the Redis protocol on port Q
//! (`resp.rs`), over the same store.
//! Prints `kv: redis protocol on A.B.C.D:Q` (with `resp=Q`), then
//! `kv: listening on A.B.C.D:P, N keys loaded` once it serves; never returns.

pub mod disk;
pub mod disklog;
pub mod layout;
pub mod log;
pub mod replay;
pub mod resp;
pub mod server;
pub mod store;

use crate::bootinfo::BootInfo;
use crate::cmdline::{parse_u64, CmdLine};
use crate::virtio::{self, blk::Blk, net::Net, ID_BLOCK, ID_NET};
use crate::{interrupts, pic};
use smoltcp::wire::{IpCidr, Ipv4Address};

pub const DEFAULT_PORT: u16 = 7000;

fn parse_ipv4(s: &str) -> Option<Ipv4Address> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for o in &mut octets {
        let v = parse_u64(parts.next()?)?;
        *o = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Address::from_octets(octets))
}

fn parse_cidr(s: &str) -> Option<IpCidr> {
    let (ip, prefix) = s.split_once('/')?;
    let prefix = parse_u64(prefix).filter(|p| (1..=32).contains(p))?;
    Some(IpCidr::new(parse_ipv4(ip)?.into(), prefix as u8))
}

pub fn run(boot: &BootInfo, cmdline: CmdLine) -> Result<(), &'static str> {
    let cidr = cmdline
        .params("ip")
        .next()
        .ok_or("ip=A.B.C.D/N is required")
        .and_then(|s| parse_cidr(s).ok_or("bad ip=A.B.C.D/N"))?;
    let port = match cmdline.params("port").next() {
        None => DEFAULT_PORT,
        Some(p) => parse_u64(p).filter(|p| (1..=65535).contains(p)).ok_or("bad port=P")? as u16,
    };
    let resp_port = match cmdline.params("resp").next() {
        None => None,
        Some(p) => Some(parse_u64(p).filter(|p| (1..=65535).contains(p)).ok_or("bad resp=Q")? as u16),
    };
    if resp_port == Some(port) {
        return Err("resp=Q must differ from port=P");
    }
    let gateway = match cmdline.params("gw").next() {
        None => None,
        Some(g) => Some(parse_ipv4(g).ok_or("bad gw=A.B.C.D")?),
    };
    let heap = crate::heap::init_after_image(boot)?;
    println!("kv: {} MiB heap", heap >> 20);

    // The loop runs with IF=0 and halts through the gate, so no wake-up is lost.
    interrupts::disable();
    let (mut net, mut blk) = (None, None);
    for (announced, mmio, id) in virtio::discover(&cmdline) {
        match id {
            ID_NET if net.is_none() => net = Some(Net::new(mmio, announced.irq)?),
            ID_BLOCK if blk.is_none() => blk = Some(Blk::new(mmio, announced.irq)?),
            _ => {}
        }
    }
    let net = net.ok_or("no virtio-net device (ftvm run --net tap=NAME)")?;
    let blk = blk.ok_or("no virtio-blk device (ftvm run --disk PATH)")?;
    // Disk completions are polled; the line is unmasked only so that a wait can end.
    pic::unmask(blk.irq());

    let mut store = store::Store::new();
    let (log, found) = disk::open(blk, &mut store)?;
    if found.blank {
        println!("kv: blank disk, new log written");
    }
    println!("kv: replayed {} record(s), log ends at sector {}", found.records(), found.next().0);
    if let Some(c) = &found.compaction {
        println!(
            "kv: resuming an interrupted compaction ({} record(s) in region {})",
            c.records,
            1 - found.superblock.active
        );
    }
    if found.skipped() > 0 {
        println!("kv: skipped {} corrupt record(s) inside the log", found.skipped());
    }
    if found.dropped_tail() > 0 {
        println!("kv: dropped {} corrupt record(s) at the log tail", found.dropped_tail());
    }
    let keys = store.len();
    let mac = net.mac();
    println!("kv: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
    let mut server = server::Server::new(net, log, store, cidr, gateway, port, resp_port);
    if let Some(q) = resp_port {
        println!("kv: redis protocol on {}:{}", cidr.address(), q);
    }
    println!("kv: listening on {}:{}, {} keys loaded", cidr.address(), port, keys);
    server.run()
}
