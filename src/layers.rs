//! The layers both chains share: [`recovery`] turns any panic into INTERNAL, [`watch`]
//! reads a call's status where gRPC puts it (at the end of the response), [`deadline`]
//! ends a call when its deadline passes or a drain runs out of time, and [`observe`]
//! is what logging, metrics and the outbound record have in common.

pub mod deadline;
pub mod observe;
pub mod recovery;
pub mod watch;
