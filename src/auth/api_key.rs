//! API keys: pre-provisioned secrets for service callers with no user, stored only as
//! their SHA-256.
//!
//! A presented key is hashed and looked up by its hash, so the comparison never touches
//! the secret itself and its timing reveals nothing about stored keys. Keys come from the
//! config and from `keys_file`, which is re-read when its content changes; a broken file
//! keeps the last good keys and the log says why.
//!
//! Every key carries one revocation signal, shared by all the calls it admitted: when a
//! change of the file (or a SIGHUP reload) removes the key, the signal fires once and
//! each open call of that key ends, with no per-message check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::HeaderName;
use tokio_util::sync::CancellationToken;

use crate::auth::outcome::Refusal;
use crate::clock::unix_now;
use crate::config::{self, ApiKey, Problem};
use crate::grpc::Reason;
use crate::identity::{AuthMethod, Claims, Principal};
use crate::reload::{Current, Stamps};
use crate::sha256::{Digest, parse_sha256, sha256};

#[derive(Clone)]
struct Entry {
    not_after: Option<u64>,
    principal: Arc<Principal>,
    /// Cancelled when the key stops being configured; kept across reloads that keep it.
    revoked: CancellationToken,
}

/// A key that matched: who it identifies, and what ends the calls it admits.
#[derive(Clone, Debug)]
pub struct Matched {
    pub principal: Arc<Principal>,
    /// `not_after`, in seconds since the Unix epoch.
    pub not_after: Option<u64>,
    /// Fires when the key is revoked (removed from `keys_file` or the config).
    pub revoked: CancellationToken,
}

type Keys = HashMap<Digest, Entry>;

/// The API keys in force.
pub struct ApiKeyStore {
    header: HeaderName,
    inline: Vec<ApiKey>,
    file: Option<PathBuf>,
    keys: Current<Keys>,
    /// Hash of the last `keys_file` content loaded (or refused), to notice changes.
    file_digest: RwLock<Option<Digest>>,
    /// What `stat` said about `keys_file` at the last poll: unchanged, it is not read.
    stamps: Stamps,
}

impl ApiKeyStore {
    /// Loads the inline keys and `keys_file`; problems name their fields.
    pub fn load(config: &config::ApiKeys) -> Result<ApiKeyStore, Vec<Problem>> {
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| vec![Problem::new("auth.api_keys.header", "not a header name")])?;
        let mut file_keys = Vec::new();
        let mut file_digest = None;
        if let Some(path) = &config.keys_file {
            let (keys, digest) = read_keys_file(path).map_err(|problems| {
                problems
                    .into_iter()
                    .map(|p| {
                        Problem::new(
                            format!("auth.api_keys.keys_file: {}", path.display()),
                            p.to_string(),
                        )
                    })
                    .collect::<Vec<_>>()
            })?;
            file_keys = keys;
            file_digest = Some(digest);
        }
        let all: Vec<ApiKey> = config.keys.iter().cloned().chain(file_keys).collect();
        let keys = build(&all).map_err(|message| vec![Problem::new("auth.api_keys", message)])?;
        Ok(ApiKeyStore {
            header,
            inline: config.keys.clone(),
            file: config.keys_file.clone(),
            keys: Current::new(Arc::new(keys)),
            file_digest: RwLock::new(file_digest),
            stamps: Stamps::default(),
        })
    }

    /// The header callers put their key in.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The identity of the key presented, or why it is refused.
    pub fn authenticate(&self, presented: &[u8]) -> Result<Matched, Refusal> {
        let digest = sha256(presented);
        let keys = self.keys.get();
        let Some(entry) = keys.get(&digest) else {
            return Err(Refusal::unauthenticated(
                Reason::UnknownApiKey,
                "unknown API key",
            ));
        };
        if entry
            .not_after
            .is_some_and(|not_after| unix_now() >= not_after)
        {
            return Err(Refusal::unauthenticated(
                Reason::ApiKeyExpired,
                "API key expired",
            ));
        }
        Ok(Matched {
            principal: entry.principal.clone(),
            not_after: entry.not_after,
            revoked: entry.revoked.clone(),
        })
    }

    /// Puts `keys` in force. A key that stays keeps its revocation signal, so calls it
    /// admitted before stay watched; a key that goes revokes the calls it admitted.
    fn replace(&self, mut keys: Keys) {
        let (previous, current) = self.keys.update(move |current| {
            adopt_signals(&mut keys, current);
            Arc::new(keys)
        });
        revoke_missing(&previous, &current);
    }

    /// Takes over the revocation signals of `running`, the store a configuration reload
    /// replaces, and revokes the calls of every key this store no longer has. Call it
    /// before this store is put in force.
    pub fn take_over(&self, running: &ApiKeyStore) {
        let previous = running.keys.get();
        let (_, current) = self.keys.update(|current| {
            let mut keys = Keys::clone(current);
            adopt_signals(&mut keys, &previous);
            Arc::new(keys)
        });
        revoke_missing(&previous, &current);
    }

    /// Revokes the calls of every key: the reload that replaces this store has none.
    pub fn revoke_all(&self) {
        revoke_missing(&self.keys.get(), &Keys::new());
    }

    /// Re-reads `keys_file` every `interval` and swaps the keys in when the content
    /// changed and is valid.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) {
        let Some(path) = self.file.clone() else {
            return;
        };
        crate::reload::poll(self, interval, move |store| store.reload_if_changed(&path));
    }

    fn reload_if_changed(&self, path: &Path) {
        if self.stamps.unchanged([path]) {
            return;
        }
        let content = match std::fs::read(path) {
            Ok(content) => content,
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "cannot read auth.api_keys.keys_file; keeping the last good keys");
                return;
            }
        };
        let digest = sha256(&content);
        if *self.file_digest.read().unwrap_or_else(|p| p.into_inner()) == Some(digest) {
            return;
        }
        *self.file_digest.write().unwrap_or_else(|p| p.into_inner()) = Some(digest);
        let parsed = parse_keys_file(&content).and_then(|file_keys| {
            let all: Vec<ApiKey> = self.inline.iter().cloned().chain(file_keys).collect();
            build(&all).map_err(|message| vec![Problem::new("keys", message)])
        });
        match parsed {
            Ok(keys) => {
                let count = keys.len();
                self.replace(keys);
                tracing::info!(file = %path.display(), keys = count, "API keys reloaded");
            }
            Err(problems) => {
                for problem in problems {
                    tracing::warn!(file = %path.display(), %problem, "API keys file refused; keeping the last good keys");
                }
            }
        }
    }
}

/// Gives each key of `keys` that `previous` also has the signal it had there.
fn adopt_signals(keys: &mut Keys, previous: &Keys) {
    for (digest, entry) in keys.iter_mut() {
        if let Some(old) = previous.get(digest) {
            entry.revoked = old.revoked.clone();
        }
    }
}

/// Fires the signal of every key of `previous` that `current` does not have.
fn revoke_missing(previous: &Keys, current: &Keys) {
    let mut revoked = 0usize;
    for (digest, entry) in previous {
        if !current.contains_key(digest) && !entry.revoked.is_cancelled() {
            entry.revoked.cancel();
            revoked += 1;
        }
    }
    if revoked > 0 {
        tracing::info!(keys = revoked, "API keys revoked; their open calls end");
    }
}

fn read_keys_file(path: &Path) -> Result<(Vec<ApiKey>, Digest), Vec<Problem>> {
    let content = std::fs::read(path).map_err(|error| {
        let message = match error.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            _ => format!("cannot read: {error}"),
        };
        vec![Problem::new("keys_file", message)]
    })?;
    Ok((parse_keys_file(&content)?, sha256(&content)))
}

fn parse_keys_file(content: &[u8]) -> Result<Vec<ApiKey>, Vec<Problem>> {
    let text =
        std::str::from_utf8(content).map_err(|_| vec![Problem::new("(root)", "not UTF-8")])?;
    let file: config::ApiKeysFile = serde_saphyr::from_str(text)
        .map_err(|error| vec![Problem::new("(root)", error.to_string())])?;
    let problems = config::validate_api_keys(&file.keys, "keys");
    if problems.is_empty() {
        Ok(file.keys)
    } else {
        Err(problems)
    }
}

fn build(keys: &[ApiKey]) -> Result<Keys, String> {
    let mut built = Keys::with_capacity(keys.len());
    for key in keys {
        let digest = parse_sha256(&key.sha256)
            .ok_or_else(|| format!("key {:?}: sha256 is not 64 hex characters", key.name))?;
        let principal = Principal::new(
            AuthMethod::ApiKey,
            Claims {
                user_id: key.user_id.clone(),
                tenant_id: key.tenant_id.clone(),
                roles: key.roles.clone(),
                api_key_name: Some(key.name.clone()),
                provider: None,
            },
        )
        .map_err(|_| format!("key {:?}: a value cannot be sent as metadata", key.name))?;
        let not_after = key.not_after.as_deref().and_then(config::parse_timestamp);
        let entry = Entry {
            not_after,
            principal: Arc::new(principal),
            revoked: CancellationToken::new(),
        };
        if built.insert(digest, entry).is_some() {
            return Err(format!(
                "key {:?}: the same key hash is configured twice",
                key.name
            ));
        }
    }
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256::to_hex;

    fn store(keys_yaml: &str) -> ApiKeyStore {
        let config: config::ApiKeys = serde_saphyr::from_str(keys_yaml).unwrap();
        ApiKeyStore::load(&config).unwrap()
    }

    #[test]
    fn finds_keys_by_hash_with_their_identity() {
        let hash = to_hex(&sha256(b"s3cret"));
        let store = store(&format!(
            "keys: [{{ name: scanner, sha256: \"{hash}\", tenant_id: acme, roles: [scanner] }}]"
        ));
        let principal = store.authenticate(b"s3cret").unwrap().principal;
        assert_eq!(principal.api_key_name.as_deref(), Some("scanner"));
        assert_eq!(principal.tenant_id.as_deref(), Some("acme"));
        assert_eq!(principal.method, AuthMethod::ApiKey);
        assert_eq!(
            store.authenticate(b"s3cret!").unwrap_err().reason.label(),
            "unknown_api_key"
        );
        assert_eq!(store.header(), "x-api-key");
    }

    #[test]
    fn refuses_keys_past_not_after() {
        let hash = to_hex(&sha256(b"old"));
        let store = store(&format!(
            "keys: [{{ name: old, sha256: \"{hash}\", not_after: \"2020-01-01\" }}]"
        ));
        assert_eq!(
            store.authenticate(b"old").unwrap_err().reason.label(),
            "expired_api_key"
        );
    }

    #[test]
    fn a_broken_keys_file_keeps_the_last_good_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let hash = to_hex(&sha256(b"first"));
        std::fs::write(
            &path,
            format!("keys: [{{ name: first, sha256: \"{hash}\" }}]"),
        )
        .unwrap();
        let store = store(&format!("keys_file: {}", path.display()));
        assert!(store.authenticate(b"first").is_ok());

        std::fs::write(&path, "keys: [{ name: broken, sha256: nope }]").unwrap();
        store.reload_if_changed(&path);
        assert!(store.authenticate(b"first").is_ok(), "last good keys kept");

        let hash = to_hex(&sha256(b"second"));
        std::fs::write(
            &path,
            format!("keys: [{{ name: second, sha256: \"{hash}\" }}]"),
        )
        .unwrap();
        store.reload_if_changed(&path);
        assert!(store.authenticate(b"second").is_ok());
        assert_eq!(
            store.authenticate(b"first").unwrap_err().reason.label(),
            "unknown_api_key",
            "revoked by the file change"
        );
    }

    #[test]
    fn removing_a_key_fires_its_signal_and_a_kept_key_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.yaml");
        let entry = |name: &str, key: &[u8]| {
            format!("{{ name: {name}, sha256: \"{}\" }}", to_hex(&sha256(key)))
        };
        let write = |entries: &[String]| {
            std::fs::write(&path, format!("keys: [{}]", entries.join(", "))).unwrap();
        };
        write(&[entry("kept", b"kept"), entry("gone", b"gone")]);
        let store = store(&format!("keys_file: {}", path.display()));
        let kept = store.authenticate(b"kept").unwrap().revoked;
        let gone = store.authenticate(b"gone").unwrap().revoked;

        // The kept key changes its name: still the same key, still the same signal.
        write(&[entry("kept-renamed", b"kept")]);
        store.reload_if_changed(&path);
        assert!(
            gone.is_cancelled(),
            "the removed key's calls were not ended"
        );
        assert!(!kept.is_cancelled(), "a kept key's calls were ended");
        let again = store.authenticate(b"kept").unwrap();
        assert_eq!(
            again.principal.api_key_name.as_deref(),
            Some("kept-renamed")
        );
        again.revoked.cancel();
        assert!(
            kept.is_cancelled(),
            "the reloaded key lost the signal of its open calls"
        );
    }

    #[test]
    fn a_reload_that_drops_a_key_revokes_it_and_hands_over_the_others() {
        let hash = |key: &[u8]| to_hex(&sha256(key));
        let running = store(&format!(
            "keys: [{{ name: a, sha256: \"{}\" }}, {{ name: b, sha256: \"{}\" }}]",
            hash(b"a"),
            hash(b"b")
        ));
        let a = running.authenticate(b"a").unwrap().revoked;
        let b = running.authenticate(b"b").unwrap().revoked;
        let reloaded = store(&format!(
            "keys: [{{ name: a, sha256: \"{}\" }}]",
            hash(b"a")
        ));
        reloaded.take_over(&running);
        assert!(b.is_cancelled(), "the dropped key's calls were not ended");
        assert!(!a.is_cancelled());
        // Removing `a` later, from the new store, ends the calls the old one admitted.
        reloaded.revoke_all();
        assert!(a.is_cancelled());
    }
}
