//! The guests ftvm boots. STUB until the guest is built by build.rs.

/// The ELF image of our own guest (see `guest/`).
pub fn ftvm_guest_elf() -> &'static [u8] {
    &[]
}
