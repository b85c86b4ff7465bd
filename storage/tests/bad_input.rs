//! Malformed and truncated requests, unknown handles, reads past the end, clients that vanish
//! mid-write, CLI errors: clear errors, no crash, nothing acknowledged lost.

mod common;

use common::{pattern, Cluster};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;
use storage::error::ErrorKind;
use storage::protocol::{ChunkReply, ChunkRequest, Conn, Reply};

fn garbage(addr: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(bytes);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut sink);
}

#[test]
fn servers_survive_malformed_and_truncated_requests() {
    let c = Cluster::start("bad", 3, &[]);
    let client = c.client();
    client.create("/f").unwrap();
    let data = pattern(300_000, 9);
    client.write_at("/f", 0, &data).unwrap();
    let targets: Vec<String> =
        std::iter::once(c.master_addr.clone()).chain(c.cs.iter().map(|p| p.addr.clone())).collect();
    for addr in &targets {
        garbage(addr, b"GET / HTTP/1.1\r\n\r\n");
        garbage(addr, &[0xff; 64]);
        garbage(addr, &[10, 0, 0, 0, 1, 2]); // truncated header and body
        garbage(addr, &[0, 0, 0x80, 0]); // absurd length, truncated
        let mut framed = Vec::new();
        storage::protocol::frame::encode(storage::protocol::frame::Kind::Msg, &[200, 1, 2, 3], &mut framed).unwrap();
        garbage(addr, &framed); // valid frame, undecodable message
    }
    // Everyone still serves, and the data is intact: each chunkserver asked on its own (a read
    // through the client would succeed with one of three alive), and the master.
    let st = client.stat("/f").unwrap();
    let (handle, version) = (st.chunks[0].handle, st.chunks[0].version);
    for p in &c.cs {
        let copy = common::fetch_replica(&p.addr, handle, version, data.len() as u64)
            .unwrap_or_else(|e| panic!("{} after bad input: {e:?}", p.addr));
        assert!(copy == data, "{} serves other bytes after bad input", p.addr);
    }
    client.create("/g").unwrap();
    assert!(client.stat("/g").is_ok());
}

#[test]
fn unknown_handles_reads_past_end_and_vanishing_writers() {
    let c = Cluster::start("bad2", 3, &[]);
    let client = c.client();
    client.create("/f").unwrap();
    let data = pattern(1_000_000, 10);
    client.write_at("/f", 0, &data).unwrap();
    let st = client.stat("/f").unwrap();
    let (handle, version) = (st.chunks[0].handle, st.chunks[0].version);
    let cs = &c.cs[0].addr;

    let ask = |req: ChunkRequest| -> Reply<ChunkReply> {
        let mut conn = Conn::connect(cs, Duration::from_secs(5)).unwrap();
        conn.send(&req).unwrap();
        conn.recv().unwrap()
    };
    let e = ask(ChunkRequest::Read { handle: 999_999, version: 1, offset: 0, len: 10 }).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownChunk);
    let e = ask(ChunkRequest::Read { handle, version, offset: 64 * 1024 * 1024 - 5, len: 10 }).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ReadPastEnd);
    let e = ask(ChunkRequest::Read { handle, version, offset: u64::MAX, len: u64::MAX }).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ReadPastEnd);
    let e = ask(ChunkRequest::Write { handle, version, offset: 0, id: 12345, secondaries: vec![], fence: None })
        .unwrap_err();
    assert!(matches!(e.kind, ErrorKind::NoLease | ErrorKind::NotFound), "{e:?}");
    let e = ask(ChunkRequest::Push { id: 1, len: u64::MAX, chain: vec![] }).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    let inline = |len| ChunkRequest::WriteInline {
        handle,
        version,
        offset: 0,
        len,
        secondaries: vec![],
        fence: None,
        durable: true,
    };
    let e = ask(inline(u64::MAX)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    // More data than announced, or a message where data belongs: refused, nothing written.
    for extra in [Some(vec![9u8; 20]), None] {
        let mut conn = Conn::connect(cs, Duration::from_secs(5)).unwrap();
        conn.queue(&inline(10)).unwrap();
        match extra {
            Some(bytes) => conn.queue_data(&bytes).unwrap(),
            None => conn.queue(&ChunkRequest::Info { handle }).unwrap(),
        }
        conn.flush().unwrap();
        let e = conn.recv::<Reply<ChunkReply>>().unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Protocol, "{e:?}");
    }
    // A writer that disconnects mid inline write: nothing is applied.
    {
        let mut conn = Conn::connect(cs, Duration::from_secs(5)).unwrap();
        conn.queue(&inline(100_000)).unwrap();
        conn.queue_data(&[7u8; 50_000]).unwrap();
        conn.flush().unwrap();
    }

    // A client that disconnects mid-push: nothing is applied, the servers carry on.
    {
        let mut conn = Conn::connect(cs, Duration::from_secs(5)).unwrap();
        let rest: Vec<String> = c.cs[1..].iter().map(|p| p.addr.clone()).collect();
        conn.send(&ChunkRequest::Push { id: 77, len: 1024 * 1024, chain: rest }).unwrap();
        conn.queue_data(&[1u8; 100_000]).unwrap();
        conn.flush().unwrap();
    }
    let mut back = vec![0u8; data.len()];
    client.read_at("/f", 0, &mut back).unwrap();
    assert!(back == data);
    // A later write works normally.
    client.write_at("/f", 10, b"still fine").unwrap();
    client.read_at("/f", 0, &mut back).unwrap();
    assert_eq!(&back[10..20], b"still fine");

    // The master refuses absurd chunk indexes and sizes instead of allocating for them.
    let ask_master = |req: storage::protocol::MasterRequest| -> Reply<storage::protocol::MasterReply> {
        let mut conn = Conn::connect(&c.master_addr, Duration::from_secs(5)).unwrap();
        conn.send(&req).unwrap();
        conn.recv().unwrap()
    };
    let e =
        ask_master(storage::protocol::MasterRequest::GetChunk { path: "/f".into(), index: 1 << 40, for_write: true })
            .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    let e = ask_master(storage::protocol::MasterRequest::ExtendSize { path: "/f".into(), size: u64::MAX }).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(client.write_at("/f", u64::MAX - 3, b"overflow").is_err());

    // Library: reads past the end of a file are short.
    let mut buf = [0u8; 16];
    assert_eq!(client.read_at("/f", 5_000_000, &mut buf).unwrap(), 0);
    assert_eq!(client.read_at("/nope", 0, &mut buf).unwrap_err().kind(), Some(ErrorKind::NotFound));
}

#[test]
fn cli_errors_are_one_line_and_non_zero() {
    let c = Cluster::start("cli", 1, &[]);
    c.gfs_ok(&["mkdir", "/a"]);
    for args in [
        vec!["get", "/nope", "/tmp/gfs-should-not-exist"],
        vec!["cat", "/nope"],
        vec!["mkdir", "/a"],
        vec!["mkdir", "relative"],
        vec!["rm", "/"],
        vec!["mv", "/a", "/a/b"],
        vec!["ls", "/missing"],
        vec!["stat", "/missing"],
        vec!["rm", "/x/y"],
    ] {
        let out = c.gfs(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("gfs: "), "{err}");
    }
    // No master given at all.
    let out = common::gfs_command().args(["ls", "/"]).env_remove("GFS_MASTER").output().unwrap();
    assert!(!out.status.success());
    // GFS_MASTER in the environment works.
    let out = common::gfs_command().args(["ls", "/"]).env("GFS_MASTER", &c.master_addr).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("a/"));
    // Namespace operations through the CLI.
    c.gfs_ok(&["mkdir", "/a/b"]);
    c.gfs_ok(&["mv", "/a/b", "/a/c"]);
    assert!(c.gfs_ok(&["ls", "/a"]).contains("c/"));
    c.gfs_ok(&["rm", "/a/c"]);
    assert!(!c.gfs_ok(&["ls", "/a"]).contains("c/"));
    assert!(c.gfs_ok(&["stat", "/a"]).contains("type: directory"));
}
