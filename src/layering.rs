//! Keeps the tiers of DESIGN §6: a module names only modules of its own tier or lower,
//! and no two modules import each other, directly or around a loop. It reads the crate's
//! own sources, so a new upward `crate::…` or `super::…` path fails here, listed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The modules of each tier, lowest first; `name::*` places everything below `name` too.
const TIERS: [&str; 7] = [
    "grpc grpc::* trace_context sha256 reload clock version test_util",
    "config config::* metrics identity call_context schema schema::*",
    "tls tls::* body body::* telemetry telemetry::* cli inject inject::*",
    "serve serve::* pool pool::* upstream learn learn::* limits limits::* auth auth::jwks auth::jwks::* \
     auth::api_key auth::jwt auth::policy auth::token auth::binding auth::outcome",
    "layers layers::*",
    "inbound inbound::* outbound outbound::*",
    "admin app app::* main lib layering",
];

/// A module's tier: its own entry, else the nearest `ancestor::*` above it.
fn tier(module: &str) -> Option<usize> {
    let placed = |name: &str| {
        TIERS
            .iter()
            .position(|t| t.split_whitespace().any(|m| m == name))
    };
    let mut ancestor = module;
    placed(module).or_else(|| {
        loop {
            ancestor = ancestor.rsplit_once("::")?.0;
            if let Some(tier) = placed(&format!("{ancestor}::*")) {
                return Some(tier);
            }
        }
    })
}

/// The source with comments, strings and character literals blanked out, so only code
/// is searched and braces can be counted.
fn code_only(source: &str) -> String {
    let (s, mut out, mut i) = (source.as_bytes(), String::new(), 0);
    while i < s.len() {
        let rest = &source[i..];
        let ident_before = i > 0 && (s[i - 1].is_ascii_alphanumeric() || s[i - 1] == b'_');
        let raw = rest
            .strip_prefix('r')
            .filter(|_| !ident_before)
            .map(|r| r.trim_start_matches('#'));
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |end| end + 2);
        } else if let Some(body) = raw.filter(|r| r.starts_with('"')) {
            let close = format!("\"{}", "#".repeat(rest.len() - body.len() - 1));
            i += rest.len() - body.len()
                + 1
                + body[1..]
                    .find(&close)
                    .map_or(body.len(), |e| e + close.len());
            out.push_str("\"\"");
        } else if s[i] == b'"'
            || (s[i] == b'\'' && (rest[1..].starts_with('\\') || rest.chars().nth(2) == Some('\'')))
        {
            let mut j = i + 1;
            while j < s.len() && s[j] != s[i] {
                j += if s[j] == b'\\' { 2 } else { 1 };
            }
            (i, out) = (j + 1, out + "\"\"");
        } else {
            let c = rest.chars().next().expect("i < len");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Removes every item under `#[cfg(test)]`: up to its `;`, or its whole `{ … }` block.
fn without_tests(code: &str) -> String {
    let mut code = code.to_owned();
    while let Some(start) = code.find("#[cfg(test)]") {
        let (mut depth, mut end) = (0, code.len());
        for (at, c) in code[start..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => (end, depth) = (start + at + 1, 0),
                '}' => depth -= 1,
                ';' if depth == 0 => end = start + at + 1,
                _ => continue,
            }
            if depth == 0 && end != code.len() {
                break;
            }
        }
        code.replace_range(start..end, "");
    }
    code
}

/// The paths that start at `crate::` or leave `module` through `super::`, relative to
/// the crate root, with `{ a, b::c }` groups expanded.
fn paths(code: &str, module: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (at, word) in code
        .match_indices("crate::")
        .chain(code.match_indices("super::"))
    {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `$crate::`, `a::super::`, or a longer name
        }
        let mut base = if word == "crate::" { "" } else { module };
        let mut rest = &code[at..];
        rest = rest.strip_prefix("crate::").unwrap_or(rest);
        while let Some(after) = rest.strip_prefix("super::") {
            (base, rest) = (
                base.rsplit_once("::").map_or("", |up| up.0),
                after.trim_start(),
            );
        }
        tree(rest.as_bytes(), &mut 0, base.to_owned(), &mut found);
    }
    found
}

/// Reads one use-tree at `at`: `a::b::c`, `a::{b, c::{d, e}}`, `a::*`.
fn tree(s: &[u8], at: &mut usize, mut path: String, found: &mut Vec<String>) {
    let skip_ws = |at: &mut usize| {
        while s.get(*at).is_some_and(u8::is_ascii_whitespace) {
            *at += 1;
        }
    };
    loop {
        skip_ws(at);
        if s.get(*at) == Some(&b'{') {
            *at += 1;
            while s.get(*at).is_some_and(|&c| c != b'}') {
                tree(s, at, path.clone(), found);
                // `as name`, then the separating comma
                while s.get(*at).is_some_and(|&c| c != b',' && c != b'}') {
                    *at += 1;
                }
                *at += usize::from(s.get(*at) == Some(&b','));
                skip_ws(at);
            }
            *at += 1;
            return;
        }
        let start = *at;
        while s
            .get(*at)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_')
        {
            *at += 1;
        }
        let segment = std::str::from_utf8(&s[start..*at]).expect("ASCII");
        if !segment.is_empty() {
            path = if path.is_empty() {
                segment.to_owned()
            } else {
                format!("{path}::{segment}")
            };
        }
        skip_ws(at);
        if !s[*at..].starts_with(b"::") {
            return found.push(path);
        }
        *at += 2;
    }
}

/// `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; `src/lib.rs` is `lib`.
fn modules(dir: &Path, prefix: &str, into: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("src is readable").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("UTF-8 names")
            .to_owned();
        let module = match (prefix, name.as_str()) {
            (_, "mod") => prefix.to_owned(),
            ("", _) => name.clone(),
            _ => format!("{prefix}::{name}"),
        };
        if path.is_dir() {
            modules(&path, &module, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let source = std::fs::read_to_string(&path).expect("sources are UTF-8");
            into.insert(module, without_tests(&code_only(&source)));
        }
    }
}

#[test]
fn imports_point_down_the_tiers_and_never_around_a_loop() {
    let mut sources = BTreeMap::new();
    modules(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut sources,
    );
    let mut problems = Vec::new();
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (module, code) in &sources {
        let Some(from) = tier(module) else {
            problems.push(format!("{module}: not in the tier table (DESIGN §6)"));
            continue;
        };
        for path in paths(code, module) {
            let to = sources
                .keys()
                .filter(|m| path == **m || path.starts_with(&format!("{m}::")));
            let to = to.max_by_key(|m| m.len()).map_or("lib", String::as_str);
            match tier(to) {
                Some(tier) if tier > from => {
                    let edge =
                        format!("{module} (tier {from}) imports {to} (tier {tier}): crate::{path}");
                    if !problems.contains(&edge) {
                        problems.push(edge);
                    }
                }
                _ if to != module && !module.starts_with(&format!("{to}::")) => {
                    edges.entry(module).or_default().insert(to);
                }
                _ => {}
            }
        }
    }
    // A module on a loop reaches itself.
    for &start in edges.keys() {
        let (mut seen, mut next) = (BTreeSet::new(), vec![start]);
        while let Some(module) = next.pop() {
            for &to in edges.get(module).into_iter().flatten() {
                if to == start {
                    problems.push(format!("{start} is on an import cycle (through {module})"));
                } else if seen.insert(to) {
                    next.push(to);
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn reads_use_groups_super_paths_and_skips_tests_comments_and_strings() {
    let source = r#"
        use crate::{config::{self, Problem}, grpc::*, tls::Peer as P};
        use super::context::Table; // crate::in_a_comment
        fn f() -> u64 { let _ = "crate::in_a_string {"; let _ = '{'; crate::clock::unix_now() }
        #[cfg(test)]
        mod tests { use crate::app::load; fn g() { let _ = '}'; } }
        pub(super) fn h() {}
    "#;
    let code = without_tests(&code_only(source));
    let found = paths(&code, "outbound::credentials");
    let expected = [
        "config::self",
        "config::Problem",
        "grpc",
        "tls::Peer",
        "clock::unix_now",
        "outbound::context::Table",
    ];
    assert_eq!(found, expected, "in {code}");
}
