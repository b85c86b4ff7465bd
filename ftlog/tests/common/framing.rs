//! The log's and the channel's framing, written out by hand from the documented layout
//! (`len u32 | lchk u8 | unit | crc32c u32`), so that tests check the library against the
//! layout rather than against itself.

/// The check byte stored after a length.
pub fn length_check(len: u32) -> u8 {
    len.to_le_bytes().iter().fold(0xA5, |acc, b| acc ^ b)
}

/// `unit` (a record's kind byte and body, or a message's type byte and body) framed with a
/// correct length, length check and CRC.
pub fn frame(unit: &[u8]) -> Vec<u8> {
    let len = unit.len() as u32;
    let mut out = len.to_le_bytes().to_vec();
    out.push(length_check(len));
    out.extend_from_slice(unit);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}
