//! Method patterns: `auth.public_methods` and a rule's `methods`.

use crate::grpc;

/// A method pattern from the config: `*`, `/pkg.Service/*` or an exact path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MethodPattern {
    Any,
    /// Holds `/pkg.Service/`.
    Service(String),
    Exact(String),
}

impl MethodPattern {
    /// Parses `*`, `/pkg.Service/*` or `/pkg.Service/Method`, with service and method
    /// in gRPC's grammar ([`grpc::is_method_path`]). Anything else is refused: such a
    /// pattern could never match a path gatehouse lets through, so a rule written with
    /// it would silently do nothing.
    pub fn parse(pattern: &str) -> Result<MethodPattern, InvalidMethodPattern> {
        if pattern == "*" {
            return Ok(MethodPattern::Any);
        }
        if let Some(service) = pattern
            .strip_prefix('/')
            .and_then(|rest| rest.strip_suffix("/*"))
            && grpc::is_service_name(service)
        {
            return Ok(MethodPattern::Service(
                pattern[..pattern.len() - 1].to_owned(),
            ));
        }
        if grpc::is_method_path(pattern) {
            return Ok(MethodPattern::Exact(pattern.to_owned()));
        }
        Err(InvalidMethodPattern(pattern.to_owned()))
    }

    /// Whether the pattern matches `path`, a path already in gRPC's grammar, exactly.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            MethodPattern::Any => true,
            MethodPattern::Service(prefix) => {
                path.starts_with(prefix.as_str()) && !path[prefix.len()..].contains('/')
            }
            MethodPattern::Exact(exact) => path == exact,
        }
    }

    /// Whether the pattern matches `path` in any ASCII case: how authorization rules
    /// match, because some app servers look methods up case-insensitively and would run
    /// `/demo.Svc/Admin` for `/demo.svc/admin`; a rule must decide both.
    pub fn matches_any_case(&self, path: &str) -> bool {
        match self {
            MethodPattern::Any => true,
            MethodPattern::Service(prefix) => {
                path.get(..prefix.len())
                    .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
                    && !path[prefix.len()..].contains('/')
            }
            MethodPattern::Exact(exact) => path.eq_ignore_ascii_case(exact),
        }
    }
}

/// A method pattern that names no gRPC method path; the message quotes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?}: write /pkg.Service/Method, /pkg.Service/* or * (names of letters, digits and _; no other wildcards)"
)]
pub struct InvalidMethodPattern(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_patterns_match_exact_service_and_any() {
        let service = MethodPattern::parse("/pkg.Svc/*").unwrap();
        assert!(service.matches("/pkg.Svc/Get"));
        assert!(!service.matches("/pkg.SvcOther/Get"));
        assert!(!service.matches("/pkg.Svc/Get/extra"));
        let exact = MethodPattern::parse("/pkg.Svc/Get").unwrap();
        assert!(exact.matches("/pkg.Svc/Get"));
        assert!(!exact.matches("/pkg.Svc/GetAll"));
        assert!(MethodPattern::parse("*").unwrap().matches("/anything/At"));
    }

    #[test]
    fn rules_match_paths_that_differ_only_by_case() {
        let service = MethodPattern::parse("/demo.Svc/*").unwrap();
        assert!(!service.matches("/demo.svc/Admin"));
        assert!(service.matches_any_case("/demo.svc/Admin"));
        assert!(service.matches_any_case("/DEMO.SVC/admin"));
        assert!(!service.matches_any_case("/demo.svcx/Admin"));
        assert!(!service.matches_any_case("/demo"));
        let exact = MethodPattern::parse("/demo.Svc/Admin").unwrap();
        assert!(!exact.matches("/demo.svc/admin"));
        assert!(exact.matches_any_case("/demo.svc/admin"));
        assert!(!exact.matches_any_case("/demo.svc/admins"));
    }

    #[test]
    fn refuses_method_patterns_that_could_never_match() {
        for pattern in [
            "/pkg.*/Get",
            "/*/Get",
            "/pkg.Svc/Get*",
            "/pkg.Svc/*/x",
            "/pkg.Svc/",
            "/pkg.Svc",
            "pkg.Svc/Get",
            "/pkg.Svc//Get",
            "/pkg.Svc/%47et",
            "/pkg..Svc/Get",
            "**",
            "",
        ] {
            assert!(MethodPattern::parse(pattern).is_err(), "{pattern:?}");
        }
    }
}
