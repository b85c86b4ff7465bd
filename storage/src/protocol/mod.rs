//! Wire protocol: checksummed length-delimited frames ([`frame`]) carrying postcard-encoded
//! messages ([`messages`]) or raw data, over blocking TCP connections ([`conn`]).

pub mod conn;
pub mod frame;
pub mod messages;
pub mod pool;

pub use conn::{Conn, Incoming, Received};
pub use messages::*;
pub use pool::Pool;
