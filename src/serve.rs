//! Serving connections, the same for every listener: [`accept`] takes connections from
//! a socket (TCP with TLS inbound, loopback TCP or a Unix socket outbound) within their
//! limits, [`connection`] runs each one's HTTP/2 from greeting to GOAWAY, and
//! [`server`] is the HTTP/2 server with its settings, whose door lets only gRPC calls
//! into a chain and answers anything else with a conformant 415. [`budget`] is what all
//! of it can cost in memory.

pub mod accept;
pub mod budget;
pub mod connection;
pub mod server;

pub use accept::{Drain, Listener, Socket};
pub use budget::MemoryBudget;
pub use server::{ChainService, Server};
