//! `gfs master --metrics ADDR`: a real cluster's figures over HTTP in the Prometheus text format.

mod common;

use common::{free_addr, pattern, Cluster};
use std::io::{Read, Write};

fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: gfs\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_masters_metrics_count_requests_and_see_a_missing_chunk() {
    let metrics = free_addr();
    let mut c = Cluster::start("metrics", 3, &["--metrics", &metrics, "--repair-interval-secs", "0"]);
    let client = c.client();
    client.create("/f").unwrap();
    client.write_at("/f", 0, &pattern(200_000, 3)).unwrap();
    let text = scrape(&metrics);
    assert!(text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(value(&text, "gfs_requests_total{op=\"create\",outcome=\"ok\"}"), Some(1.0), "{text}");
    assert!(value(&text, "gfs_request_seconds_count{op=\"get_chunk\"}").is_some_and(|n| n >= 1.0), "{text}");
    assert_eq!(value(&text, "gfs_chunkservers_live"), Some(3.0), "{text}");
    assert_eq!(value(&text, "gfs_chunks_missing"), Some(0.0), "{text}");

    // Every replica gone: the chunk is missing once the master declares them dead.
    for i in 0..3 {
        c.kill_cs(i);
    }
    Cluster::wait_until("the chunk counted missing", std::time::Duration::from_secs(30), || {
        value(&scrape(&metrics), "gfs_chunks_missing") == Some(1.0)
    });
    assert_eq!(value(&scrape(&metrics), "gfs_chunkservers_dead"), Some(3.0));
}
