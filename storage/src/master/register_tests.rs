//! Registers on a real master (its operation log in a temporary directory), announced to a
//! real chunkserver in this process.

use super::*;
use crate::master::MasterConfig;
use crate::test_support::{start_chunkserver, temp_dir};

fn open_master(name: &str) -> Arc<Master> {
    let mut cfg = MasterConfig::new(temp_dir(&format!("register-{name}")), "127.0.0.1:0");
    cfg.repair_interval = None;
    cfg.rebalance_interval = None;
    Master::open(cfg).expect("open a master")
}

fn kind<T: std::fmt::Debug>(r: Result<T>) -> ErrorKind {
    match r {
        Err(e) => e.kind().unwrap_or_else(|| panic!("an error without a kind: {e}")),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

#[test]
fn compare_and_set_moves_the_register_on_from_the_expected_generation_only() {
    let m = open_master("cas");
    assert_eq!(m.register("vm").expect("never set").generation, 0);
    assert_eq!(m.compare_and_set("vm", 0, "a").expect("first taker"), (1, "a".to_string()));
    let r = m.register("vm").expect("register");
    assert_eq!((r.generation, r.holder.as_str()), (1, "a"));
    assert_eq!(kind(m.compare_and_set("vm", 0, "b")), ErrorKind::Conflict);
    assert_eq!(m.compare_and_set("vm", 1, "b").expect("takeover"), (2, "b".to_string()));
}

#[test]
fn a_register_holder_is_at_most_max_holder_bytes_without_control_characters() {
    let m = open_master("holder");
    let longest = "h".repeat(MAX_HOLDER);
    assert_eq!(m.compare_and_set("vm", 0, &longest).expect("the longest holder"), (1, longest));
    assert_eq!(kind(m.compare_and_set("vm", 1, &"h".repeat(MAX_HOLDER + 1))), ErrorKind::InvalidArgument);
    assert_eq!(kind(m.compare_and_set("vm", 1, "a\nb")), ErrorKind::InvalidArgument);
    assert_eq!(m.register("vm").expect("register").generation, 1);
}

#[test]
fn release_moves_the_register_on_with_no_holder() {
    let m = open_master("release");
    m.compare_and_set("vm", 0, "a").expect("first taker");
    assert_eq!(m.release_register("vm", 1, "a").expect("release"), 2);
    let r = m.register("vm").expect("register");
    assert_eq!((r.generation, r.holder.as_str()), (2, ""));
}

#[test]
fn every_live_chunkserver_hears_a_new_generation_before_the_change_returns() {
    let m = open_master("announce");
    let cs = start_chunkserver("register-announce-cs");
    // The table a first heartbeat reply brings: no generations yet.
    cs.sync_fences(&[]);
    m.meta().servers.upsert(&cs.addr, "rack").expect("room for a server");
    let fence = |generation| crate::protocol::Fence { name: "vm".into(), generation };
    m.compare_and_set("vm", 0, "a").expect("first taker");
    cs.check_fence(Some("vm"), Some(&fence(1))).expect("generation 1 is known at once");
    m.release_register("vm", 1, "a").expect("release");
    assert_eq!(kind(cs.check_fence(Some("vm"), Some(&fence(1)))), ErrorKind::Fenced);
    cs.check_fence(Some("vm"), Some(&fence(2))).expect("generation 2 is known at once");
}

#[test]
fn a_register_can_be_bound_only_to_a_file_without_chunks() {
    let m = open_master("bind");
    for path in ["/empty", "/written"] {
        m.commit(Record::CreateFile { path: path.into() }).expect("create");
    }
    let handle = m.meta().state.chunks.reserve();
    m.commit(Record::AddChunk { path: "/written".into(), index: 0, handle }).expect("add a chunk");
    m.bind("/empty", "vm").expect("bind an empty file");
    assert_eq!(m.stat("/empty").expect("stat").register.as_deref(), Some("vm"));
    assert_eq!(kind(m.bind("/written", "vm")), ErrorKind::InvalidArgument);
    assert_eq!(m.stat("/written").expect("stat").register, None);
}
