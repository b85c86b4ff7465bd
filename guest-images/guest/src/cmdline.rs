//! The command line: `<workload> [args...]`, possibly mixed with `key=value` parameters that
//! the VMM adds (e.g. `virtio_mmio.device=4K@0xd0001000:5`). Words containing `=` are
//! parameters; the others are the workload and its arguments, in order.

#[derive(Clone, Copy)]
pub struct CmdLine(&'static [u8]);

impl CmdLine {
    pub fn new(bytes: &'static [u8]) -> Self {
        CmdLine(bytes)
    }

    pub fn as_str(&self) -> &'static str {
        core::str::from_utf8(self.0).unwrap_or("<not utf-8>")
    }

    fn all_words(&self) -> impl Iterator<Item = &'static str> {
        let bytes: &'static [u8] = self.0;
        bytes
            .split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(|w| core::str::from_utf8(w).unwrap_or("?"))
    }

    /// The workload name and its arguments.
    pub fn words(&self) -> impl Iterator<Item = &'static str> {
        self.all_words().filter(|w| !w.contains('='))
    }

    /// Values of parameter `key` (`key=value` words), in order.
    #[allow(dead_code)] // for the virtio drivers (issue 4)
    pub fn params(&self, key: &'static str) -> impl Iterator<Item = &'static str> {
        self.all_words().filter_map(move |w| w.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v))
    }
}

/// Parses a decimal (or 0x-prefixed hexadecimal) unsigned number.
pub fn parse_u64(word: &str) -> Option<u64> {
    let (digits, radix) = match word.strip_prefix("0x") {
        Some(hex) => (hex, 16),
        None => (word, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for c in digits.chars() {
        value = value.checked_mul(radix)?.checked_add(c.to_digit(radix as u32)? as u64)?;
    }
    Some(value)
}
