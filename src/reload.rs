//! Values that change while gatehouse runs: [`Current<T>`], the one way a reloadable
//! value is held and swapped, [`poll`], the one way a file is watched for change, and
//! [`Stamps`], which lets a poll that finds its files as they were skip reading them.
//! Nothing here knows what is reloaded: the wiring (`app::reload`) and the owners of
//! each file decide.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// A file changed within this long ago may change again without its stamp showing it
/// (a second write in the same mtime tick, of the same size): it is read whatever
/// its stamp says until it is older.
const SETTLING: Duration = Duration::from_secs(2);

/// What `stat` says about a file, through every symlink on its path: which file it
/// resolves to (device and inode: a swapped `..data` symlink is a different one), its
/// size, and when its content (mtime) or its inode (ctime) last changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(Stamp {
            device: meta.dev(),
            inode: meta.ino(),
            size: meta.size(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        })
    }

    /// Whether the file changed so recently before `now` that a change within the same
    /// timestamp tick could still follow unseen.
    fn settling(&self, now: SystemTime) -> bool {
        let latest = self.modified.max(self.changed);
        let Ok(now) = now.duration_since(UNIX_EPOCH) else {
            return true;
        };
        let latest = Duration::new(
            latest.0.max(0) as u64,
            latest.1.clamp(0, 999_999_999) as u32,
        );
        now.saturating_sub(latest) < SETTLING
    }
}

/// The stamps of a poller's files at its last poll, so that a poll that finds them all
/// as they were reads and hashes nothing: `stat` first, content only on change. Every
/// poller still compares content when it does read, so a stamp that changed for
/// nothing (a `touch`) costs one read and changes nothing.
#[derive(Debug, Default)]
pub struct Stamps {
    last: Mutex<Option<Vec<Stamp>>>,
}

impl Stamps {
    /// Whether every file of `paths` looks as it did at the last call: the same
    /// resolved file, size, mtime and ctime, none of them changed within the last
    /// [`SETTLING`], every one there. Remembers what it saw for the next call, so call
    /// it before reading the files.
    pub fn unchanged<'a>(&self, paths: impl IntoIterator<Item = &'a Path>) -> bool {
        self.unchanged_at(paths, SystemTime::now())
    }

    fn unchanged_at<'a>(&self, paths: impl IntoIterator<Item = &'a Path>, now: SystemTime) -> bool {
        let now_seen: Option<Vec<Stamp>> = paths.into_iter().map(Stamp::of).collect();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let unchanged = match (&*last, &now_seen) {
            (Some(before), Some(now_seen)) => {
                before == now_seen && !now_seen.iter().any(|stamp| stamp.settling(now))
            }
            _ => false,
        };
        *last = now_seen;
        unchanged
    }
}

/// Runs `check` on `owner` every `interval` for as long as `owner` is in use elsewhere:
/// the file polling behind `keys_file` and `jwks_file`. Polling (rather than watching
/// the file) notices every way a file is replaced, Kubernetes' `..data` symlink swap
/// included; each poller asks its [`Stamps`] first and reads content only on a change.
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

    /// Long after every file in these tests was written: nothing is settling.
    fn later() -> SystemTime {
        SystemTime::now() + Duration::from_secs(3600)
    }

    /// The layout of a Kubernetes volume: `dir/keys` → `..data/keys`, `..data` →
    /// `version`, which holds `content` last modified at `modified`; `..data` is
    /// swapped by a rename, as the kubelet does it.
    fn publish(dir: &Path, version: &str, content: &[u8], modified: SystemTime) {
        let folder = dir.join(version);
        std::fs::create_dir(&folder).unwrap();
        let file = folder.join("keys");
        std::fs::write(&file, content).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(modified)
            .unwrap();
        let staged = dir.join("..data_tmp");
        std::os::unix::fs::symlink(version, &staged).unwrap();
        std::fs::rename(&staged, dir.join("..data")).unwrap();
        if !dir.join("keys").exists() {
            std::os::unix::fs::symlink("..data/keys", dir.join("keys")).unwrap();
        }
    }

    #[test]
    fn files_as_they_were_are_unchanged_and_the_first_look_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let at = SystemTime::now() - Duration::from_secs(60);
        publish(dir.path(), "v1", b"first", at);
        let path = dir.path().join("keys");
        let stamps = Stamps::default();
        assert!(
            !stamps.unchanged_at([path.as_path()], later()),
            "never seen"
        );
        assert!(stamps.unchanged_at([path.as_path()], later()));
        assert!(stamps.unchanged_at([path.as_path()], later()));
    }

    #[test]
    fn a_swapped_data_symlink_is_a_change_with_the_same_size_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let at = SystemTime::now() - Duration::from_secs(60);
        publish(dir.path(), "v1", b"first", at);
        let path = dir.path().join("keys");
        let stamps = Stamps::default();
        stamps.unchanged_at([path.as_path()], later());
        assert!(stamps.unchanged_at([path.as_path()], later()));
        publish(dir.path(), "v2", b"other", at);
        assert!(!stamps.unchanged_at([path.as_path()], later()));
        assert!(stamps.unchanged_at([path.as_path()], later()));
    }

    #[test]
    fn a_file_rewritten_in_place_with_the_same_size_and_mtime_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let at = SystemTime::now() - Duration::from_secs(60);
        publish(dir.path(), "v1", b"first", at);
        let path = dir.path().join("keys");
        let stamps = Stamps::default();
        stamps.unchanged_at([path.as_path()], later());
        let file = dir.path().join("v1/keys");
        std::fs::write(&file, b"other").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(at)
            .unwrap();
        // Only the inode's change time tells; where it is as coarse as the mtime, the
        // settling rule below is what catches a rewrite within one tick.
        assert!(!stamps.unchanged_at([path.as_path()], later()));
    }

    #[test]
    fn a_file_changed_within_the_settling_time_is_read_whatever_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        publish(dir.path(), "v1", b"first", SystemTime::now());
        let path = dir.path().join("keys");
        let stamps = Stamps::default();
        let now = SystemTime::now();
        stamps.unchanged_at([path.as_path()], now);
        assert!(!stamps.unchanged_at([path.as_path()], now), "just written");
        assert!(stamps.unchanged_at([path.as_path()], now + SETTLING * 2));
    }

    #[test]
    fn a_missing_file_is_never_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let stamps = Stamps::default();
        stamps.unchanged_at([path.as_path()], later());
        assert!(!stamps.unchanged_at([path.as_path()], later()));
    }

    #[test]
    fn one_changed_file_of_several_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let at = SystemTime::now() - Duration::from_secs(60);
        publish(dir.path(), "v1", b"first", at);
        let other = dir.path().join("other");
        std::fs::write(&other, b"x").unwrap();
        let keys = dir.path().join("keys");
        let paths = [keys.as_path(), other.as_path()];
        let stamps = Stamps::default();
        stamps.unchanged_at(paths, later());
        assert!(stamps.unchanged_at(paths, later()));
        publish(dir.path(), "v2", b"second", at);
        assert!(!stamps.unchanged_at(paths, later()));
    }
}
