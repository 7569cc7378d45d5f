//! The app's schema in the process: kept current while gatehouse runs ([`start`]),
//! printed by `gatehouse schema` ([`print`]), and checked by `gatehouse check`, which
//! resolves every field rule's path against it when it can be had ([`check_fields`]).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use super::{EXIT_FAILURE, EXIT_USAGE, load};
use crate::admin::Readiness;
use crate::config::{Config, Problem};
use crate::learn::{self, AppSchema, LearnError};
use crate::schema::{Schema, Table};

/// How long the commands wait for the app's reflection.
const ASK_TIME: Duration = Duration::from_secs(10);

/// Starts keeping the app's schema current, and makes `/readyz` say while it is not
/// known; `None` with `schema.source: none`, which costs nothing.
pub(super) fn start(config: &Config, readiness: &Readiness) -> Option<Arc<AppSchema>> {
    let schema = AppSchema::new(&config.schema, config.authorization.as_ref())?;
    schema.spawn(&config.upstream);
    readiness.set_schema(schema.clone());
    Some(schema)
}

/// The schema as the running sidecar would learn it, once.
fn fetch(config: &Config) -> Result<Schema, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| format!("cannot start the async runtime: {error}"))?;
    runtime.block_on(async {
        tokio::time::timeout(
            ASK_TIME,
            learn::fetch_once(&config.schema, &config.upstream),
        )
        .await
        .unwrap_or_else(|_| {
            Err(LearnError::Reflection(
                learn::reflection::ReflectionError::Timeout,
            ))
        })
        .map_err(|error| error.to_string())
    })
}

/// `gatehouse schema`: every service's methods with their stream kinds and request
/// messages, as gatehouse learns them.
pub fn print(path: &Path) -> ExitCode {
    let loaded = match load(path) {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !loaded.config.schema.is_on() {
        eprintln!(
            "{}: schema.source: set it to reflection or descriptor_set to learn the app's schema",
            path.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let schema = match fetch(&loaded.config) {
        Ok(schema) => schema,
        Err(error) => {
            eprintln!("schema: {error}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut service = "";
    for (method_path, method) in schema.methods() {
        let (name, method_name) = method_path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((method_path, ""));
        if name != service {
            println!("{name}");
            service = name;
        }
        println!(
            "  {method_name:<24} {:<14} {}",
            method.kind.label(),
            method.input
        );
    }
    ExitCode::SUCCESS
}

/// For `gatehouse check`: prints every field rule whose path does not resolve in the
/// schema (naming the file and the field) and returns the exit code; otherwise a note
/// for after `ok` when the schema could not be had, which is not a problem of the file.
pub(super) fn check_fields(path: &Path, config: &Config) -> Result<Option<String>, ExitCode> {
    match field_problems(config) {
        Ok(problems) if problems.is_empty() => Ok(None),
        Ok(problems) => {
            for problem in problems {
                eprintln!("{}: {problem}", path.display());
            }
            Err(ExitCode::from(EXIT_USAGE))
        }
        Err(why) => Ok(Some(format!(
            "field rules not checked against the app's schema: {why}"
        ))),
    }
}

/// The field rules whose paths do not resolve in the schema, one problem each; `Err`
/// says why the schema could not be had.
fn field_problems(config: &Config) -> Result<Vec<Problem>, String> {
    let with_fields = config
        .authorization
        .as_ref()
        .is_some_and(|a| a.rules.iter().any(|rule| !rule.fields.is_empty()));
    if !config.schema.is_on() || !with_fields {
        return Ok(Vec::new());
    }
    let schema = fetch(config)?;
    let table = Table::new(Arc::new(schema), config.authorization.as_ref());
    let mut problems: Vec<Problem> = Vec::new();
    for (method, rule, field, why) in table.unresolved() {
        let name = format!("authorization.rules[{rule}].fields.{field}");
        if !problems.iter().any(|known| known.field == name) {
            problems.push(Problem::new(name, format!("in {method}: {why}")));
        }
    }
    Ok(problems)
}
