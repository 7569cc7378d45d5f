//! Keeps the app's schema current for the Schema layer: learned at start, again whenever
//! the app restarts and every `schema.refresh_interval`, from the app's own server
//! reflection ([`reflection`], over a connection of its own) or from a descriptor set
//! file; compiled with the authorization rules' `fields` into the [`Table`] calls read.
//!
//! The app restarting is seen as the reflection connection closing: the app is asked
//! again as soon as it answers, with a short back-off while it does not. Until a first
//! schema is known, [`AppSchema::unknown`] says why, for `/readyz`; a schema once learned
//! stays in force while the app is away.

pub mod reflection;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::config::{self, SchemaSource};
use crate::reload::Current;
use crate::schema::{Schema, SchemaError, Table};
use reflection::{Reflection, ReflectionError};

/// The first wait before asking an app that did not answer again; it doubles up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Field rules that do not resolve are logged one by one up to this many per schema.
const LOGGED_UNRESOLVED: usize = 8;

/// Why no schema could be had.
#[derive(Debug, thiserror::Error)]
pub enum LearnError {
    #[error(transparent)]
    Reflection(#[from] ReflectionError),
    #[error("schema.descriptor_set {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("schema from {from}: {source}")]
    Schema {
        from: String,
        #[source]
        source: SchemaError,
    },
}

/// The schema as it stands: the table once one was learned, and the last failure.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub table: Option<Arc<Table>>,
    /// Why the last attempt failed, while it is the latest news.
    pub problem: Option<String>,
}

/// The app's schema, kept current. Absent (`None` from [`AppSchema::new`]) when
/// `schema.source` is `none`.
pub struct AppSchema {
    settings: config::Schema,
    authorization: Current<Option<config::Authorization>>,
    /// The rules compiled against no schema: which paths have field rules, for the
    /// calls that arrive while no schema is known.
    rules_alone: Current<Table>,
    current: Current<Snapshot>,
}

impl AppSchema {
    pub fn new(
        settings: &config::Schema,
        authorization: Option<&config::Authorization>,
    ) -> Option<Arc<AppSchema>> {
        settings.is_on().then(|| {
            Arc::new(AppSchema {
                settings: settings.clone(),
                authorization: Current::new(Arc::new(authorization.cloned())),
                rules_alone: Current::new(Arc::new(Table::new(
                    Arc::new(Schema::default()),
                    authorization,
                ))),
                current: Current::new(Arc::new(Snapshot {
                    table: None,
                    problem: Some("not learned yet".to_owned()),
                })),
            })
        })
    }

    pub fn settings(&self) -> &config::Schema {
        &self.settings
    }

    /// What calls see now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.get()
    }

    /// Why there is no schema yet, for `/readyz`; `None` once one is known.
    pub fn unknown(&self) -> Option<String> {
        let snapshot = self.snapshot();
        match (&snapshot.table, &snapshot.problem) {
            (Some(_), _) => None,
            (None, problem) => Some(format!(
                "schema unknown: {}",
                problem.as_deref().unwrap_or("not learned yet")
            )),
        }
    }

    /// Whether the rule deciding calls to `path` has field rules: without a schema such a
    /// call is never forwarded, even with `unknown_methods: forward`.
    pub fn has_field_rules(&self, path: &str) -> bool {
        self.rules_alone.get().needs_fields(path)
    }

    /// A reload's authorization rules: compiled against the schema in force at once.
    pub fn rules_changed(&self, authorization: Option<&config::Authorization>) {
        self.authorization.set(Arc::new(authorization.cloned()));
        self.rules_alone.set(Arc::new(Table::new(
            Arc::new(Schema::default()),
            authorization,
        )));
        self.current.update(|snapshot| {
            Arc::new(Snapshot {
                table: snapshot
                    .table
                    .as_ref()
                    .map(|table| Arc::new(Table::new(table.schema().clone(), authorization))),
                problem: snapshot.problem.clone(),
            })
        });
    }

    /// Starts keeping the schema current for as long as `self` is in use.
    pub fn spawn(self: &Arc<Self>, upstream: &config::Upstream) {
        let this = Arc::downgrade(self);
        let source = match self.settings.source {
            SchemaSource::Reflection => Source::Reflection(Box::new(Reflection::new(
                upstream.target(),
                upstream.connect_timeout.get(),
            ))),
            SchemaSource::DescriptorSet => match &self.settings.descriptor_set {
                Some(path) => Source::File(path.clone()),
                None => return,
            },
            SchemaSource::None => return,
        };
        tokio::spawn(keep_current(
            this,
            source,
            self.settings.refresh_interval.get(),
        ));
    }

    /// Puts `schema` in force, compiled with the authorization rules in force.
    pub(crate) fn learned(&self, schema: Schema, from: &str) {
        let authorization = self.authorization.get();
        let table = Table::new(Arc::new(schema), authorization.as_ref().as_ref());
        tracing::info!(
            source = from,
            methods = table.schema().len(),
            "schema learned"
        );
        let unresolved = table.unresolved();
        for (method, rule, field, why) in unresolved.iter().take(LOGGED_UNRESOLVED) {
            tracing::warn!(
                method,
                rule,
                field,
                why,
                "field rule does not resolve: calls to the method are refused"
            );
        }
        if unresolved.len() > LOGGED_UNRESOLVED {
            tracing::warn!(
                more = unresolved.len() - LOGGED_UNRESOLVED,
                "more methods whose field rules do not resolve"
            );
        }
        self.current.set(Arc::new(Snapshot {
            table: Some(Arc::new(table)),
            problem: None,
        }));
    }

    fn failed(&self, error: &LearnError) {
        self.current.update(|snapshot| {
            Arc::new(Snapshot {
                table: snapshot.table.clone(),
                problem: Some(error.to_string()),
            })
        });
    }
}

/// Where the schema comes from.
enum Source {
    /// Boxed: a pool is large, and a file source needs none of it.
    Reflection(Box<Reflection>),
    File(PathBuf),
}

impl Source {
    fn name(&self) -> &'static str {
        match self {
            Source::Reflection(_) => "reflection",
            Source::File(_) => "descriptor_set",
        }
    }

    async fn fetch(&self) -> Result<Schema, LearnError> {
        match self {
            Source::Reflection(reflection) => {
                let files = reflection.files().await?;
                Schema::from_files(&files).map_err(|source| LearnError::Schema {
                    from: "reflection".to_owned(),
                    source,
                })
            }
            Source::File(path) => read_descriptor_set(path),
        }
    }

    /// Waits for the next reason to ask again: the app's connection closing, or the
    /// refresh interval.
    async fn changed(&self, refresh: Duration) {
        match self {
            Source::Reflection(reflection) => tokio::select! {
                () = reflection.closed() => {
                    tracing::debug!("the app's reflection connection closed; asking again");
                }
                () = tokio::time::sleep_until(crate::clock::instant_after(refresh)) => {}
            },
            Source::File(_) => tokio::time::sleep_until(crate::clock::instant_after(refresh)).await,
        }
    }
}

async fn keep_current(schema: Weak<AppSchema>, source: Source, refresh: Duration) {
    let mut retry = RETRY_FIRST;
    loop {
        let fetched = source.fetch().await;
        let Some(owner) = schema.upgrade() else {
            return;
        };
        match fetched {
            Ok(learned) => {
                owner.learned(learned, source.name());
                drop(owner);
                retry = RETRY_FIRST;
                source.changed(refresh).await;
            }
            Err(error) => {
                if owner.snapshot().problem.as_deref() != Some(&error.to_string()) {
                    tracing::warn!(%error, source = source.name(), "schema not learned; asking again");
                }
                owner.failed(&error);
                drop(owner);
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }
}

/// The schema in a descriptor set file.
pub fn read_descriptor_set(path: &Path) -> Result<Schema, LearnError> {
    let bytes = std::fs::read(path).map_err(|source| LearnError::File {
        path: path.to_owned(),
        source,
    })?;
    Schema::from_descriptor_set(&bytes).map_err(|source| LearnError::Schema {
        from: path.display().to_string(),
        source,
    })
}

/// The schema once, as `gatehouse check` and `gatehouse schema` ask for it.
pub async fn fetch_once(
    settings: &config::Schema,
    upstream: &config::Upstream,
) -> Result<Schema, LearnError> {
    match (settings.source, &settings.descriptor_set) {
        (SchemaSource::DescriptorSet, Some(path)) => read_descriptor_set(path),
        _ => {
            let source = Source::Reflection(Box::new(Reflection::new(
                upstream.target(),
                upstream.connect_timeout.get(),
            )));
            source.fetch().await
        }
    }
}
