//! Sealed channels on real loopback sockets: data round trips, peers without the key are refused
//! on both sides, and a record altered or replayed on the wire is refused.

use seal::{open, Security, Side};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes each way in the round trip: many records, and writes that span several.
const LEN: usize = 1024 * 1024 + 17;

fn key() -> (tempfile::TempDir, Security) {
    let dir = tempfile::tempdir().unwrap();
    seal::generate(dir.path(), false).unwrap();
    let security = Security::from_dir(dir.path()).unwrap();
    (dir, security)
}

/// Connects `client` to a listener served by `server`; returns both sides' results.
fn pair<C, S, A, B>(client: C, server: S) -> (A, B)
where
    C: FnOnce(TcpStream) -> A + Send + 'static,
    S: FnOnce(TcpStream) -> B + Send + 'static,
    A: Send + 'static,
    B: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = thread::spawn(move || server(listener.accept().unwrap().0));
    let a = client(TcpStream::connect(addr).unwrap());
    (a, served.join().unwrap())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn sealed_bytes_round_trip_both_ways_across_many_records() {
    let (_dir, security) = key();
    let big = pattern(LEN, 7);
    let (s1, s2) = (security.clone(), security);
    let expect = big.clone();
    let ((), echoed) = pair(
        move |stream| {
            let (mut r, mut w) = open(stream, &s1, "test", Side::Initiator, "server", TIMEOUT).unwrap();
            assert!(r.is_sealed() && w.is_sealed());
            let sender = thread::spawn(move || w.write_all(&big).unwrap());
            let mut back = vec![0u8; expect.len()];
            r.read_exact(&mut back).unwrap();
            sender.join().unwrap();
            assert!(back == expect, "the echo differs");
        },
        move |stream| {
            let (mut r, mut w) = open(stream, &s2, "test", Side::Responder, "client", TIMEOUT).unwrap();
            let mut buf = vec![0u8; 100_000];
            let mut total = 0;
            while total < LEN {
                let n = r.read(&mut buf).unwrap();
                assert!(n > 0);
                w.write_all(&buf[..n]).unwrap();
                total += n;
            }
            total
        },
    );
    assert_eq!(echoed, LEN);
}

#[test]
fn a_peer_with_another_key_is_refused_on_both_sides() {
    let (_a, ours) = key();
    let (_b, theirs) = key();
    let (client, server) = pair(
        move |s| open(s, &theirs, "test", Side::Initiator, "server", TIMEOUT).err().expect("refused").to_string(),
        move |s| open(s, &ours, "test", Side::Responder, "client", TIMEOUT).err().expect("refused").to_string(),
    );
    assert!(server.contains("refused") && server.contains("does not hold this cluster's key"), "{server}");
    assert!(client.contains("refused") && client.contains("keys differ"), "{client}");
}

#[test]
fn a_peer_without_keys_is_refused_on_both_sides() {
    let (_a, ours) = key();
    let theirs = ours.clone();
    // A client without keys speaks plain bytes at once.
    let (_, server) = pair(
        |mut s| {
            s.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        },
        move |s| open(s, &ours, "test", Side::Responder, "client", TIMEOUT).err().expect("refused").to_string(),
    );
    assert!(server.contains("did not open a sealed channel"), "{server}");
    // A server without keys hangs up on what it cannot read.
    let (client, ()) = pair(
        move |s| open(s, &theirs, "test", Side::Initiator, "server", TIMEOUT).err().expect("refused").to_string(),
        |mut s| {
            let mut head = [0u8; 4];
            s.read_exact(&mut head).unwrap();
        },
    );
    assert!(client.contains("refused") && client.contains("does not seal its channels"), "{client}");
}

#[test]
fn a_handshake_for_another_protocol_fails() {
    let (_a, ours) = key();
    let theirs = ours.clone();
    let (client, server) = pair(
        move |s| open(s, &theirs, "gfs", Side::Initiator, "server", TIMEOUT).err().map(|e| e.to_string()),
        move |s| open(s, &ours, "ftvm-log", Side::Responder, "client", TIMEOUT).err().map(|e| e.to_string()),
    );
    assert!(client.is_some() && server.is_some(), "{client:?} {server:?}");
}

/// What the man in the middle does to the client's transport records.
#[derive(Clone, Copy)]
enum Meddle {
    Nothing,
    /// Flips one bit in the ciphertext of record `n`.
    Flip(usize),
    /// Sends record `n` twice.
    Replay(usize),
}

fn read_record(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 2];
    from.read_exact(&mut head).ok()?;
    let mut record = head.to_vec();
    record.resize(2 + u16::from_le_bytes(head) as usize, 0);
    from.read_exact(&mut record[2..]).ok()?;
    Some(record)
}

/// Runs a sealed client through a proxy that meddles with its records, and returns what the
/// server read: the messages before the meddled record, then the error it met.
fn through_proxy(meddle: Meddle) -> (Vec<Vec<u8>>, Option<std::io::Error>) {
    let (_dir, security) = key();
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let server_addr = server.local_addr().unwrap();
    let proxy = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    thread::spawn(move || {
        let mut client = proxy.accept().unwrap().0;
        let mut upstream = TcpStream::connect(server_addr).unwrap();
        // The handshake passes untouched: the magic and the first message one way, the reply
        // the other.
        let mut magic = [0u8; 8];
        client.read_exact(&mut magic).unwrap();
        upstream.write_all(&magic).unwrap();
        upstream.write_all(&read_record(&mut client).unwrap()).unwrap();
        client.write_all(&read_record(&mut upstream).unwrap()).unwrap();
        let mut n = 0;
        while let Some(mut record) = read_record(&mut client) {
            match meddle {
                Meddle::Flip(at) if at == n => {
                    let middle = 2 + record.len() / 3;
                    record[middle] ^= 0x10
                }
                Meddle::Replay(at) if at == n => upstream.write_all(&record).unwrap(),
                _ => {}
            }
            if upstream.write_all(&record).is_err() {
                break;
            }
            n += 1;
        }
    });
    let server_security = security.clone();
    let served = thread::spawn(move || {
        let stream = server.accept().unwrap().0;
        let (mut r, _w) = open(stream, &server_security, "test", Side::Responder, "client", TIMEOUT).unwrap();
        let mut got = Vec::new();
        loop {
            let mut message = [0u8; 64];
            match r.read_exact(&mut message) {
                Ok(()) => got.push(message.to_vec()),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return (got, None),
                Err(e) => return (got, Some(e)),
            }
        }
    });
    let stream = TcpStream::connect(proxy_addr).unwrap();
    let (_r, mut w) = open(stream, &security, "test", Side::Initiator, "proxy", TIMEOUT).unwrap();
    for i in 0..5u8 {
        // One write, one record of 64 bytes.
        w.write_all(&[i; 64]).unwrap();
    }
    w.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    served.join().unwrap()
}

#[test]
fn records_arrive_untouched_through_an_honest_proxy() {
    let (got, error) = through_proxy(Meddle::Nothing);
    assert!(error.is_none(), "{error:?}");
    assert_eq!(got, (0..5u8).map(|i| vec![i; 64]).collect::<Vec<_>>());
}

#[test]
fn an_altered_record_is_refused() {
    let (got, error) = through_proxy(Meddle::Flip(2));
    assert_eq!(got, vec![vec![0u8; 64], vec![1u8; 64]], "only the records before the altered one are read");
    let error = error.expect("the altered record is refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("does not verify"), "{error}");
}

#[test]
fn a_replayed_record_is_refused() {
    let (got, error) = through_proxy(Meddle::Replay(1));
    assert_eq!(got, vec![vec![0u8; 64], vec![1u8; 64]], "the replayed copy is not read");
    let error = error.expect("the replayed record is refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert!(error.to_string().contains("replayed"), "{error}");
}
