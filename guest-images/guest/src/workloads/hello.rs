//! `hello`: a banner, proof that ring 3, the serial port and power-off work.

use crate::bootinfo::BootInfo;
use crate::cmdline::CmdLine;
use crate::digest::Digest;

const BANNER: &str = "ftvm guest: hello from ring 3";

pub fn run(boot: &BootInfo, cmdline: CmdLine) -> Result<(), &'static str> {
    println!("{}", BANNER);
    println!("ftvm guest: {} MiB RAM, cmdline '{}'", boot.ram_bytes() >> 20, cmdline.as_str());
    Digest::new().bytes(BANNER.as_bytes()).print();
    Ok(())
}
