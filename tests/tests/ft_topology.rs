//! The FT pair's test topology (`ftvm_tests::ft::FtNet`) without FT: a client on the far side of
//! the switch reaches the kv guest on host-a, the register is reachable from both hosts, a cut
//! between the hosts leaves everything else reachable, and a guest that moves to host-b moves its
//! MAC to host-b's switch port.

use anyhow::{ensure, Context, Result};
use ftvm_tests::ft::pair::*;
use ftvm_tests::ft::{FtNet, Host, FT_PORT, GUEST_MAC};
use ftvm_tests::require_namespaces;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

#[test]
fn the_topology_carries_a_client_to_a_guest_on_host_a() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("fttopo")?;
    net.explain(topology(&net))
}

fn topology(net: &FtNet) -> Result<()> {
    let mut vm = net.plain_vm(Host::A)?;
    let mut load = net.kv_load()?;
    load.wait_for_replies(ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;
    ensure_running(&mut vm, "VM")?;
    let report = load.finish()?;
    println!("{}", report.summary());

    // The register is reachable from both hosts, as the pair will use it.
    let register = format!("ft.{NAME}");
    let holder_a = format!("host-a@{}", Host::A.ft_listen());
    let holder_b = format!("host-b@{}", Host::B.ft_listen());
    let first = net.gfs_client(Host::A, &["lock", &register, "--expect", "0", "--holder", &holder_a])?;
    ensure!(first == "1", "compare_and_set from host-a answered {first:?}");
    let second = net.gfs_client(Host::B, &["lock", &register, "--expect", "1", "--holder", &holder_b])?;
    ensure!(second == "2", "compare_and_set from host-b answered {second:?}");
    register_names(net, Host::B, FT_PORT, 2)?;

    // A cut between the hosts stops their channel, not their way to gfs or the guest.
    let listener = net.host(Host::B).within(|| Ok(TcpListener::bind(Host::B.ft_listen())?))?;
    let peer: std::net::SocketAddr = Host::B.ft_listen().parse()?;
    let connect = move || TcpStream::connect_timeout(&peer, Duration::from_millis(500));
    net.host(Host::A).within(move || Ok(connect()?)).context("host-a reaches host-b before the cut")?;
    net.cut_link_between_hosts()?;
    let cut = net.host(Host::A).within(move || Ok(connect()?));
    ensure!(cut.is_err(), "host-a still reaches host-b after the cut");
    net.gfs_client(Host::A, &["status"]).context("host-a reaches gfs during the cut")?;
    net.gfs_client(Host::B, &["status"]).context("host-b reaches gfs during the cut")?;
    let mut load = net.kv_load()?;
    load.wait_for_replies(ANSWERS, ANSWERS_TIMEOUT).context("the client reaches the guest during the cut")?;
    load.finish()?;
    net.restore_link_between_hosts()?;
    net.host(Host::A).within(move || Ok(connect()?)).context("host-a reaches host-b after the cut")?;
    drop(listener);
    Ok(())
}

/// The guest stopped on host-a and booted again from the shared disk on host-b: the client
/// (after forgetting the guest's MAC, as nothing here announces it) reaches it through host-b's
/// port, and the switch moves the MAC there. This is the path a takeover uses, without FT.
#[test]
fn the_topology_carries_the_client_to_host_b_when_the_guest_moves_there() -> Result<()> {
    require_namespaces!();
    let net = FtNet::new("ftmove")?;
    net.explain(guest_moves(&net))
}

fn guest_moves(net: &FtNet) -> Result<()> {
    let mut on_a = net.plain_vm(Host::A)?;
    let mut load = net.kv_load()?;
    load.wait_for_replies(ANSWERS, ANSWERS_TIMEOUT)?;
    let first = load.finish()?;
    net.wait_for_mac_on(GUEST_MAC, Host::A, Duration::from_secs(5))?;
    on_a.kill();

    let on_b = net.plain_vm(Host::B)?;
    let loaded = format!("kv: listening on 10.0.0.2:7000, {} keys loaded", first.read_back);
    ensure!(
        on_b.output().contains(&loaded),
        "host-b's guest did not load the {} keys host-a's acknowledged",
        first.read_back
    );
    net.client.ip(&["neigh", "flush", "all"])?;
    let mut load = net.kv_load()?;
    load.wait_for_replies(ANSWERS, ANSWERS_TIMEOUT)?;
    net.wait_for_mac_on(GUEST_MAC, Host::B, Duration::from_secs(5))?;
    println!("{}", load.finish()?.summary());
    Ok(())
}
