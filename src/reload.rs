//! Values that change while gatehouse runs: [`Current<T>`], the one way a reloadable
//! value is held and swapped, and [`poll`], the one way a file is watched for change.
//! Nothing here knows what is reloaded: the wiring (`app::reload`) and the owners of
//! each file decide.

use std::sync::{Arc, RwLock};
use std::time::Duration;

/// A value that is replaced as a whole on reload; readers take the current one.
pub struct Current<T> {
    value: RwLock<Arc<T>>,
}

impl<T> Current<T> {
    pub fn new(value: Arc<T>) -> Self {
        Current {
            value: RwLock::new(value),
        }
    }

    pub fn get(&self) -> Arc<T> {
        self.value.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, value: Arc<T>) {
        *self.value.write().unwrap_or_else(|p| p.into_inner()) = value;
    }
}

/// Runs `check` on `owner` every `interval` for as long as `owner` is in use elsewhere:
/// the file polling behind `keys_file` and `jwks_file`. Polling content (rather than
/// watching the file) notices every way a file is replaced, Kubernetes' `..data`
/// symlink swap included.
pub fn poll<T, F>(owner: &Arc<T>, interval: Duration, check: F)
where
    T: Send + Sync + 'static,
    F: Fn(&T) + Send + 'static,
{
    let owner = Arc::downgrade(owner);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(owner) = owner.upgrade() else {
                return;
            };
            check(&owner);
        }
    });
}
