//! Re-replication: on the master's order, fetch a chunk from another chunkserver (verified
//! block by block there, checksummed again here) and install it as a local replica.

use super::ChunkServer;
use crate::error::{ErrorKind, GfsError, IoContext, Result};
use crate::protocol::{ChunkHandle, ChunkReply, ChunkRequest, Conn, Incoming, Reply, Version};
use crate::{BLOCKS_PER_CHUNK, BLOCK_SIZE, CHUNK_SIZE};
use std::io::Write;
use std::time::Duration;

fn remote(peer: &str, error: crate::error::RemoteError) -> GfsError {
    GfsError::Remote { peer: peer.to_string(), error }
}

/// Copies chunk `handle` at `version` from `source` into this server's store.
pub fn replicate(cs: &ChunkServer, handle: ChunkHandle, version: Version, source: &str) -> Result<()> {
    let mut conn = Conn::connect(source, Duration::from_secs(5))?;
    conn.send(&ChunkRequest::Info { handle })?;
    let len = match conn.recv::<Reply<ChunkReply>>()? {
        Ok(ChunkReply::Info { version: v, len }) if v == version => len.min(CHUNK_SIZE),
        Ok(ChunkReply::Info { version: v, .. }) => {
            return Err(GfsError::fs(ErrorKind::StaleVersion, format!("source has version {v}, wanted {version}")))
        }
        Ok(other) => return Err(GfsError::UnexpectedReply { peer: source.into(), what: format!("{other:?}") }),
        Err(e) => return Err(remote(source, e)),
    };
    let tmp = cs.store.temp_path(&format!("{handle:016x}.{}", crate::util::random_id()));
    let result = fetch(&mut conn, source, handle, version, len, &tmp);
    match result {
        Ok(crcs) => {
            cs.store.install(handle, version, &tmp, &crcs)?;
            tracing::info!(handle, version, %source, bytes = len, "replica copied");
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Streams `[0, len)` of the chunk into `tmp`, returning the checksum table.
fn fetch(
    conn: &mut Conn,
    source: &str,
    handle: ChunkHandle,
    version: Version,
    len: u64,
    tmp: &std::path::Path,
) -> Result<Vec<u32>> {
    let zero = crc32c::crc32c(&vec![0u8; BLOCK_SIZE as usize]);
    let mut crcs = vec![zero; BLOCKS_PER_CHUNK];
    let file = std::fs::File::create(tmp).ctx(|| format!("creating {}", tmp.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    conn.send(&ChunkRequest::Read { handle, version, offset: 0, len })?;
    match conn.recv::<Reply<ChunkReply>>()? {
        Ok(ChunkReply::Reading { len: l }) if l == len => {}
        Ok(other) => return Err(GfsError::UnexpectedReply { peer: source.into(), what: format!("{other:?}") }),
        Err(e) => return Err(remote(source, e)),
    }
    let mut block: Vec<u8> = Vec::with_capacity(BLOCK_SIZE as usize);
    let mut got = 0u64;
    let mut idx = 0usize;
    let mut frame = Vec::new();
    while got < len {
        match conn.recv_frame(&mut frame)? {
            Incoming::Data => {}
            Incoming::Msg => {
                let r: Reply<ChunkReply> = Conn::decode_msg(&frame)?;
                return Err(match r {
                    Err(e) => remote(source, e),
                    Ok(other) => GfsError::UnexpectedReply { peer: source.into(), what: format!("{other:?}") },
                });
            }
        }
        if got + frame.len() as u64 > len {
            return Err(GfsError::UnexpectedReply { peer: source.into(), what: "more data than asked for".into() });
        }
        got += frame.len() as u64;
        out.write_all(&frame).ctx(|| format!("writing {}", tmp.display()))?;
        let mut rest = &frame[..];
        while !rest.is_empty() {
            let take = rest.len().min(BLOCK_SIZE as usize - block.len());
            block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if block.len() == BLOCK_SIZE as usize {
                crcs[idx] = crc32c::crc32c(&block);
                idx += 1;
                block.clear();
            }
        }
    }
    if !block.is_empty() {
        block.resize(BLOCK_SIZE as usize, 0);
        crcs[idx] = crc32c::crc32c(&block);
    }
    let file = out.into_inner().map_err(|e| GfsError::io(format!("writing {}", tmp.display()), e.into_error()))?;
    file.sync_all().ctx(|| format!("syncing {}", tmp.display()))?;
    Ok(crcs)
}
