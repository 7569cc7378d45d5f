//! TLS on both sides of the sidecar: the rustls server configuration built from `tls:`,
//! the client configuration outbound calls present to destinations, and the verified
//! identity of each peer.
//!
//! Only HTTP/2 is offered (ALPN `h2`), over TLS 1.3 or 1.2. With `client_auth: require`
//! every caller must present a certificate that chains to `ca_file` and is valid for
//! client authentication; the handshake fails otherwise, before any HTTP/2 byte is read.
//! The certificate's identities (URI SANs such as a SPIFFE ID, DNS SANs, subject CN and a
//! SHA-256 fingerprint) are extracted once per connection for the layers that decide who
//! is calling.
//!
//! - `server`: the serving configuration, rebuilt when its files change.
//! - `client`: the outbound client configuration and the destination identity check.
//! - `peer`: who is on the other end of a connection, as its certificate says.
//! - `files`: reading certificates and keys, shared by both sides.

mod client;
mod files;
mod peer;
mod server;

pub use client::{ClientTls, IdentityMismatch, IdentityVerifier};
pub use files::{load_certs, load_key, missing_files};
pub use peer::{ConnectionInfo, PeerIdentity, forwarded_client_cert};
pub use server::{ReloadableTls, server_config};

/// How often certificate files are checked for changes.
pub const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(1);
