//! What one caller may take of the app: the per-pod table of open calls and call rates
//! per identity ([`local`]).

pub mod local;
