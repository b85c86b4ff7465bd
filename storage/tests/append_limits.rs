//! The record size limit of record appends, at the chunkserver: a record of exactly
//! `MAX_RECORD` bytes is appended, a longer one is refused even when a client skips its own check.

mod common;

use common::{pattern, Cluster};
use std::time::Duration;
use storage::error::ErrorKind;
use storage::protocol::{ChunkReply, ChunkRequest, Conn, Reply};
use storage::MAX_RECORD;

#[test]
fn a_record_of_the_largest_size_appends_and_a_longer_one_is_refused_by_the_primary() {
    let c = Cluster::start("append-limit", 3, &[]);
    let client = c.client();
    client.create("/log").unwrap();
    let record = pattern(MAX_RECORD as usize, 81);
    let at = client.append("/log", &record).unwrap();
    let mut back = vec![0u8; record.len()];
    assert_eq!(client.read_at("/log", at, &mut back).unwrap(), record.len());
    assert!(back == record);

    let st = client.stat("/log").unwrap();
    let chunk = st.chunks.last().unwrap();
    let primary = chunk.primary.clone().expect("the append's lease is still held");
    let mut conn = Conn::connect(&primary, Duration::from_secs(5)).unwrap();
    conn.send(&ChunkRequest::Append {
        handle: chunk.handle,
        version: chunk.version,
        id: 0x1919,
        len: MAX_RECORD + 1,
        secondaries: vec![],
        fence: None,
    })
    .unwrap();
    let reply: Reply<ChunkReply> = conn.recv().unwrap();
    let e = reply.unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e:?}");
    assert!(e.message.contains("exceeds"), "{e:?}");
}
