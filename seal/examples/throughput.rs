//! One loopback connection, sealed and plain, side by side: MB/s of a bulk transfer.
//! `cargo run --release -p seal --example throughput [MIB]`

use seal::{open, Security, Side};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

fn transfer(security: &Security, mib: usize) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_security = security.clone();
    let receiver = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let (mut r, _w) =
            open(stream, &server_security, "bench", Side::Responder, "c", Duration::from_secs(5)).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                return total;
            }
            total += n;
        }
    });
    let stream = TcpStream::connect(addr).unwrap();
    let (_r, mut w) = open(stream, security, "bench", Side::Initiator, "s", Duration::from_secs(5)).unwrap();
    let chunk = vec![7u8; 256 * 1024];
    let start = Instant::now();
    for _ in 0..mib * 4 {
        w.write_all(&chunk).unwrap();
    }
    w.get_ref().shutdown(std::net::Shutdown::Write).unwrap();
    let got = receiver.join().unwrap();
    assert_eq!(got, mib << 20);
    got as f64 / start.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let dir = std::env::temp_dir().join(format!("seal-throughput-{}", std::process::id()));
    seal::generate(&dir, true).unwrap();
    let sealed = Security::from_dir(&dir).unwrap();
    for round in 1..=3 {
        let s = transfer(&sealed, mib);
        let p = transfer(&Security::Insecure, mib);
        println!("round {round}: sealed {s:.0} MB/s, plain {p:.0} MB/s, ratio {:.2}", s / p);
    }
    let _ = std::fs::remove_dir_all(dir);
}
