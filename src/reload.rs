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

    /// Replaces the value with one made from it, holding the write lock meanwhile so two
    /// updates cannot lose each other's change. Returns the previous value and the new one.
    pub fn update(&self, make: impl FnOnce(&Arc<T>) -> Arc<T>) -> (Arc<T>, Arc<T>) {
        let mut current = self.value.write().unwrap_or_else(|p| p.into_inner());
        let new = make(&current);
        let previous = std::mem::replace(&mut *current, new.clone());
        (previous, new)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_builds_from_the_current_value_and_returns_both() {
        let current = Current::new(Arc::new(vec![1]));
        let (previous, new) = current.update(|value| {
            let mut next = Vec::clone(value);
            next.push(2);
            Arc::new(next)
        });
        assert_eq!(
            (previous.as_slice(), new.as_slice()),
            (&[1][..], &[1, 2][..])
        );
        assert_eq!(*current.get(), vec![1, 2]);
    }
}
