//! Patterns for certificate names: `tls.allowed_peers`, a rule's `allow_peers` and a
//! destination's `identity`.

/// The names a verified certificate carries, as the patterns see them.
#[derive(Clone, Copy, Debug, Default)]
pub struct PeerNames<'a> {
    /// URI SANs, such as `spiffe://cluster.local/ns/prod/sa/gateway`.
    pub uris: &'a [String],
    /// DNS SANs.
    pub dns_names: &'a [String],
    /// The subject's common name, when it has one.
    pub common_name: Option<&'a str>,
}

/// A pattern for client certificate names, from `tls.allowed_peers` or a rule's
/// `allow_peers`.
///
/// Each pattern names the kind of name it matches, so that no name can stand in for
/// another (a CN that spells a SPIFFE ID is not a SPIFFE ID): a URI (`spiffe://…`, any
/// `scheme://…`) matches URI SANs only, `dns:NAME` DNS SANs only (case-insensitively),
/// `cn:NAME` the subject CN only. `*` matches one or more characters of one segment: it
/// never crosses `/` in a URI or CN, nor `.` in a DNS name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerPattern {
    Uri(String),
    /// Held in lowercase.
    Dns(String),
    CommonName(String),
}

impl PeerPattern {
    /// Parses a pattern; the error says what is wrong and how to write it.
    pub fn parse(text: &str) -> Result<PeerPattern, PatternError> {
        let owned = || text.to_owned();
        if text.is_empty() {
            return Err(PatternError::Empty);
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PatternError::Whitespace(owned()));
        }
        if text.contains("**") {
            return Err(PatternError::DoubleStar(owned()));
        }
        if let Some(name) = text.strip_prefix("dns:") {
            let valid = name.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
            });
            return if valid {
                Ok(PeerPattern::Dns(name.to_ascii_lowercase()))
            } else {
                Err(PatternError::NotDnsName(owned()))
            };
        }
        if let Some(name) = text.strip_prefix("cn:") {
            return if name.is_empty() {
                Err(PatternError::EmptyCommonName(owned()))
            } else {
                Ok(PeerPattern::CommonName(name.to_owned()))
            };
        }
        let uri = text.split_once("://").filter(|(scheme, rest)| {
            let mut chars = scheme.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                && !rest.is_empty()
        });
        match uri {
            Some(_) => Ok(PeerPattern::Uri(text.to_owned())),
            None => Err(PatternError::NoKind(owned())),
        }
    }

    /// Whether the peer has a name of this pattern's kind that matches it.
    pub fn matches(&self, peer: &PeerNames<'_>) -> bool {
        match self {
            PeerPattern::Uri(pattern) => peer
                .uris
                .iter()
                .any(|uri| segment_glob(pattern.as_bytes(), uri.as_bytes(), b'/', false)),
            PeerPattern::Dns(pattern) => peer
                .dns_names
                .iter()
                .any(|dns| segment_glob(pattern.as_bytes(), dns.as_bytes(), b'.', true)),
            PeerPattern::CommonName(pattern) => peer
                .common_name
                .into_iter()
                .any(|cn| segment_glob(pattern.as_bytes(), cn.as_bytes(), b'/', false)),
        }
    }
}

/// `*` matches one or more bytes other than `separator`; every other byte itself
/// (ASCII case-insensitively with `fold`).
fn segment_glob(pattern: &[u8], name: &[u8], separator: u8, fold: bool) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => name
            .iter()
            .take_while(|&&byte| byte != separator)
            .enumerate()
            .any(|(at, _)| segment_glob(rest, &name[at + 1..], separator, fold)),
        Some((&expected, rest)) => name.split_first().is_some_and(|(&byte, tail)| {
            (byte == expected || (fold && byte.eq_ignore_ascii_case(&expected)))
                && segment_glob(rest, tail, separator, fold)
        }),
    }
}

/// A destination `identity` entry: a URI pattern (`spiffe://…`) for URI SANs or `dns:NAME`
/// for DNS SANs. `cn:` is refused: a subject CN is free text any CA will sign, so it
/// cannot name the service a call is meant for.
pub fn identity_pattern(text: &str) -> Result<PeerPattern, PatternError> {
    match PeerPattern::parse(text)? {
        PeerPattern::CommonName(_) => Err(PatternError::CommonNameDestination(text.to_owned())),
        pattern => Ok(pattern),
    }
}

/// Why a peer or identity pattern is refused; each message quotes the pattern and says
/// how to write it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty pattern")]
    Empty,
    #[error("{0:?}: no whitespace or control characters")]
    Whitespace(String),
    #[error("{0:?}: write one * per segment")]
    DoubleStar(String),
    /// `dns:` followed by something that is not a DNS name.
    #[error("{0:?}: dns: takes a DNS name (letters, digits, -, _, * per label)")]
    NotDnsName(String),
    #[error("{0:?}: cn: takes the subject common name")]
    EmptyCommonName(String),
    /// Neither a URI, `dns:` nor `cn:`.
    #[error("{0:?}: write a URI (spiffe://trust.domain/ns/NS/sa/SA), dns:NAME or cn:NAME")]
    NoKind(String),
    /// `cn:` as a destination identity.
    #[error("{0:?}: cn: cannot name a destination; write its URI SAN (spiffe://…) or dns:NAME")]
    CommonNameDestination(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Peer {
        uris: Vec<String>,
        dns_names: Vec<String>,
        common_name: Option<String>,
    }

    impl Peer {
        fn names(&self) -> PeerNames<'_> {
            PeerNames {
                uris: &self.uris,
                dns_names: &self.dns_names,
                common_name: self.common_name.as_deref(),
            }
        }
    }

    fn peer(uris: &[&str], dns_names: &[&str], common_name: Option<&str>) -> Peer {
        Peer {
            uris: uris.iter().map(|s| s.to_string()).collect(),
            dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
            common_name: common_name.map(str::to_owned),
        }
    }

    #[test]
    fn peer_patterns_match_only_names_of_their_own_kind() {
        let gateway = "spiffe://td/ns/prod/sa/gateway";
        // The CN spells the SPIFFE ID and the only SAN is a DNS name.
        let spoof = peer(&[], &["intruder.test"], Some(gateway));
        let genuine = peer(&[gateway], &["gw.prod.svc"], Some("gateway"));
        let table = [
            ("spiffe://td/ns/prod/sa/gateway", &genuine, true),
            ("spiffe://td/ns/prod/sa/gateway", &spoof, false),
            ("spiffe://td/ns/*/sa/gateway", &genuine, true),
            ("spiffe://td/ns/prod/sa/*", &genuine, true),
            ("spiffe://td/ns/prod/sa/gate*", &genuine, true),
            ("spiffe://td/*/sa/gateway", &genuine, false),
            ("spiffe://td/ns/*", &genuine, false),
            ("spiffe://td/ns/prod/sa/gateway*", &genuine, false),
            ("dns:gw.prod.svc", &genuine, true),
            ("dns:GW.prod.svc", &genuine, true),
            ("dns:*.prod.svc", &genuine, true),
            ("dns:*.svc", &genuine, false),
            ("dns:gateway", &genuine, false),
            ("dns:intruder.test", &spoof, true),
            ("cn:gateway", &genuine, true),
            ("cn:gateway", &peer(&[], &["gateway"], None), false),
            ("cn:spiffe://td/ns/prod/sa/gateway", &spoof, true),
        ];
        for (pattern, peer, expected) in table {
            let parsed = PeerPattern::parse(pattern).unwrap();
            assert_eq!(
                parsed.matches(&peer.names()),
                expected,
                "{pattern} against {:?}",
                peer.names()
            );
        }
    }

    #[test]
    fn refuses_peer_patterns_that_name_no_kind_of_name() {
        for pattern in [
            "",
            "gateway",
            "*.svc.cluster.local",
            "spiffe:/td/sa/x",
            "://td/sa/x",
            "spiffe://",
            "spiffe://td/**",
            "spiffe://td/sa/a b",
            "dns:",
            "dns:a..b",
            "dns:a/b",
            "cn:",
            "DNS:gw.svc",
        ] {
            assert!(PeerPattern::parse(pattern).is_err(), "{pattern:?}");
        }
    }

    #[test]
    fn destination_identities_refuse_common_names() {
        assert!(identity_pattern("cn:identity").is_err());
        assert!(identity_pattern("dns:identity.prod.svc").is_ok());
        assert!(identity_pattern("identity").is_err());
    }
}
