//! The store in a gatehouse built without the `global-limits` feature (no Redis client
//! linked in): a configuration that names `limits.global` is refused when it is loaded,
//! by `gatehouse check` and `gatehouse run` alike, so no limiter is ever made with it.

use std::time::Duration;

use super::buckets::Grant;
use super::rules::Rule;
use crate::config::{GlobalLimits, Problem};

/// Why the store did not answer; a store is never made in this build.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not connected")]
    NotConnected,
}

impl StoreError {
    pub fn kind(&self) -> &'static str {
        "not_connected"
    }
}

/// No store: see the module documentation.
pub struct Store(());

impl Store {
    /// Always refused, naming the section.
    pub fn new(_: &GlobalLimits) -> Result<Store, Vec<Problem>> {
        Err(vec![Problem::new(
            "limits.global",
            "this gatehouse was built without the global-limits feature \
             (cargo build --features global-limits)",
        )])
    }

    pub async fn connect(&self) -> Result<(), StoreError> {
        Err(StoreError::NotConnected)
    }

    pub async fn lease(&self, _: &str, _: &Rule, _: u32) -> Result<Grant, StoreError> {
        Err(StoreError::NotConnected)
    }

    pub async fn announce(&self, _: &str, _: &str, _: Duration) -> Result<u32, StoreError> {
        Err(StoreError::NotConnected)
    }
}
