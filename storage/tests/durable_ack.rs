//! A chunkserver acknowledges a mutation only after its data and checksums are on disk. The
//! evidence comes from outside the processes: strace of every chunkserver shows, on each thread,
//! an fdatasync of every chunk file it wrote before that thread writes to a socket again (the
//! reply to the primary or the client). A process kill cannot show this: the page cache survives
//! it.

mod common;

use common::{pattern, Cluster};
use ftvm_tests::strace::{Call, Strace};
use std::collections::{BTreeMap, HashMap};

/// Whether `target` (strace `-yy`) is a chunk's data or checksum file.
fn is_chunk_file(target: &str) -> bool {
    target.ends_with(".dat") || target.ends_with(".crc")
}

fn is_socket(target: &str) -> bool {
    target.starts_with("TCP") || target.starts_with("socket:")
}

/// Per thread: after a write to a chunk file, the thread sends nothing before an fdatasync (or
/// fsync) of that file, on any thread of the process, started after the write returned and
/// returned before the send began (the store syncs a replica's data and checksum files side by
/// side). Returns the (chunk file writes, socket writes after one).
fn no_send_before_sync(calls: &[Call]) -> Result<(usize, usize), String> {
    let syncs: Vec<&Call> =
        calls.iter().filter(|call| matches!(call.name.as_str(), "fdatasync" | "fsync") && call.succeeded()).collect();
    let synced_between = |file: &str, after: usize, before: usize| {
        syncs
            .iter()
            .any(|sync| sync.target == file && sync.started > after && sync.finished.is_some_and(|done| done < before))
    };
    // Per thread: the chunk files written and not yet synced, with where each write returned.
    let mut dirty: HashMap<u32, BTreeMap<&str, usize>> = HashMap::new();
    let (mut chunk_writes, mut replies) = (0, 0);
    let mut ordered: Vec<&Call> = calls.iter().collect();
    ordered.sort_by_key(|call| call.started);
    for call in ordered {
        let files = dirty.entry(call.tid).or_default();
        match call.name.as_str() {
            "pwrite64" | "pwritev" | "pwritev2" | "write" | "writev" if is_chunk_file(&call.target) => {
                chunk_writes += 1;
                files.insert(&call.target, call.finished.unwrap_or(usize::MAX));
            }
            "write" | "writev" | "sendto" | "sendmsg" if is_socket(&call.target) => {
                files.retain(|file, written| !synced_between(file, *written, call.started));
                if let Some(file) = files.keys().next() {
                    return Err(format!(
                        "thread {} wrote to {} (strace line {}) before {file} was synced",
                        call.tid, call.target, call.started
                    ));
                }
                if chunk_writes > 0 {
                    replies += 1;
                }
            }
            _ => {}
        }
    }
    Ok((chunk_writes, replies))
}

#[test]
fn no_mutation_is_acknowledged_before_its_fdatasync() {
    if let Err(e) = std::process::Command::new("strace").arg("-V").output() {
        ftvm_tests::cannot_run(&format!("strace does not run: {e}"));
        return;
    }
    let c = Cluster::start("durable-ack", 3, &["--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    let traces: Vec<Strace> = (0..3)
        .map(|i| {
            let log = c.dir.join(format!("strace-cs{i}.log"));
            Strace::attach(c.cs_pid(i), "pwrite64,pwritev,pwritev2,write,writev,sendto,sendmsg,fdatasync,fsync", &log)
                .unwrap()
        })
        .collect();
    let mut model = vec![0u8; 3_000_000];
    for i in 0..20u64 {
        let off = (i * 137_001) % 2_000_000;
        let data = pattern(200_000 + i as usize * 1000, 70 + i);
        client.write_at("/f", off, &data).unwrap();
        model[off as usize..off as usize + data.len()].copy_from_slice(&data);
    }
    let mut total_writes = 0;
    for (i, trace) in traces.into_iter().enumerate() {
        let calls = trace.finish().unwrap();
        let (writes, replies) = no_send_before_sync(&calls).unwrap_or_else(|e| panic!("chunkserver {i}: {e}"));
        assert!(writes >= 20 && replies >= 20, "chunkserver {i}: {writes} chunk writes, {replies} sends after them");
        total_writes += writes;
    }
    assert!(total_writes >= 60);
    let mut back = vec![0u8; model.len()];
    let n = client.read_at("/f", 0, &mut back).unwrap();
    assert!(n > 2_000_000 && back[..n] == model[..n]);
}
