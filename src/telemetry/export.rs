//! The OTLP/gRPC exporter behind [`super::Tracing`]: where spans go
//! (`telemetry.otlp_endpoint`, over TLS for `https://`, trusting the public web roots and
//! `telemetry.otlp_ca_file`), and the resource that says who sent them.
//!
//! `gatehouse check` and `gatehouse run` read the collector's CA through the same
//! function ([`problems`] and [`exporter`]), so a configuration that checks is one that
//! runs.

use opentelemetry::KeyValue;
use opentelemetry_otlp::tonic_types::transport::{Certificate, ClientTlsConfig};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};

use crate::config::{Problem, Telemetry};

/// `service.name` when neither the config nor the environment names one.
const DEFAULT_SERVICE_NAME: &str = "gatehouse";

/// What `gatehouse check` reports about the exporter beyond the config's own validation:
/// a collector CA file that cannot be read or holds no certificate.
pub fn problems(telemetry: &Telemetry) -> Vec<Problem> {
    client_tls(telemetry).err().into_iter().collect()
}

/// The span exporter for `telemetry.otlp_endpoint`, named by `resource`. Needs the
/// runtime (its channel connects lazily, from a task).
pub(super) fn exporter(
    endpoint: &str,
    telemetry: &Telemetry,
    resource: Vec<KeyValue>,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    use opentelemetry_sdk::trace::SpanExporter as _;
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5));
    if let Some(tls) = client_tls(telemetry).map_err(|problem| problem.to_string())? {
        builder = builder.with_tls_config(tls);
    }
    let mut exporter = builder
        .build()
        .map_err(|error| format!("telemetry.otlp_endpoint {endpoint}: {error}"))?;
    exporter.set_resource(
        &opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(resource)
            .build(),
    );
    Ok(exporter)
}

/// TLS for an `https://` endpoint: the public web roots (as for `jwks_url`) plus the
/// certificates of `otlp_ca_file`; `None` for `http://`.
fn client_tls(telemetry: &Telemetry) -> Result<Option<ClientTlsConfig>, Problem> {
    let https = telemetry
        .otlp_endpoint
        .as_deref()
        .is_some_and(|endpoint| endpoint.starts_with("https://"));
    if !https {
        return Ok(None);
    }
    let mut tls =
        ClientTlsConfig::new().trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &telemetry.otlp_ca_file {
        // Parsed here, so a file without a usable certificate is a problem on its field
        // (tonic would skip what it cannot parse and fail every handshake later).
        crate::tls::load_certs(path)
            .map_err(|message| Problem::new("telemetry.otlp_ca_file", message))?;
        let pem = std::fs::read(path).map_err(|error| {
            Problem::new(
                "telemetry.otlp_ca_file",
                format!("cannot read {}: {error}", path.display()),
            )
        })?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    Ok(Some(tls))
}

/// The resource of every exported span, from the standard OpenTelemetry variables that
/// `env` looks up, lowest precedence first:
///
/// 1. `service.name=gatehouse`;
/// 2. every `key=value` of `OTEL_RESOURCE_ATTRIBUTES` (`k8s.pod.name`,
///    `k8s.namespace.name`… from the Downward API), values percent-decoded;
/// 3. `OTEL_SERVICE_NAME` as `service.name` (it wins over the attribute, as the
///    specification says);
/// 4. `telemetry.service_name` from the config, the most explicit of all.
///
/// A malformed `OTEL_RESOURCE_ATTRIBUTES` is ignored whole (as the specification asks),
/// with the reason returned for the log.
pub(super) fn resource(
    service_name: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> (Vec<KeyValue>, Option<String>) {
    let mut attributes: Vec<(String, String)> =
        vec![("service.name".to_owned(), DEFAULT_SERVICE_NAME.to_owned())];
    let mut set = |key: &str, value: String| match attributes.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => attributes.push((key.to_owned(), value)),
    };
    let mut ignored = None;
    if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
        match parse_attributes(&text) {
            Ok(pairs) => {
                for (key, value) in pairs {
                    set(&key, value);
                }
            }
            Err(reason) => ignored = Some(format!("OTEL_RESOURCE_ATTRIBUTES ignored: {reason}")),
        }
    }
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|name| !name.is_empty()) {
        set("service.name", name);
    }
    if let Some(name) = service_name {
        set("service.name", name.to_owned());
    }
    let resource = attributes
        .into_iter()
        .map(|(key, value)| KeyValue::new(key, value))
        .collect();
    (resource, ignored)
}

/// `key1=value1,key2=value2`: keys trimmed and non-empty, values trimmed and
/// percent-decoded to UTF-8 (the W3C Baggage octet encoding the specification uses).
fn parse_attributes(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((key, value)) = entry.split_once('=') else {
            return Err(format!("{entry:?} is not key=value"));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{entry:?} has no key"));
        }
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of {key} is not UTF-8 once decoded"))?;
        pairs.push((key.to_owned(), value.into_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource_of(
        service_name: Option<&str>,
        env: &[(&str, &str)],
    ) -> (Vec<(String, String)>, Option<String>) {
        let lookup = |name: &str| {
            env.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        };
        let (resource, ignored) = resource(service_name, lookup);
        let pairs = resource
            .into_iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        (pairs, ignored)
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn names_the_pod_and_namespace_from_the_environment() {
        let env = [(
            "OTEL_RESOURCE_ATTRIBUTES",
            "k8s.pod.name=identity-7d9f-x2x, k8s.namespace.name=prod,deployment.environment=eu%2Cwest",
        )];
        assert_eq!(
            resource_of(None, &env),
            (
                pairs(&[
                    ("service.name", "gatehouse"),
                    ("k8s.pod.name", "identity-7d9f-x2x"),
                    ("k8s.namespace.name", "prod"),
                    ("deployment.environment", "eu,west"),
                ]),
                None
            )
        );
    }

    #[test]
    fn the_config_names_the_service_over_otel_service_name_over_the_attribute() {
        let attribute = ("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attributes");
        let variable = ("OTEL_SERVICE_NAME", "from-variable");
        let name = |config, env: &[(&str, &str)]| resource_of(config, env).0[0].1.clone();
        assert_eq!(name(None, &[]), "gatehouse");
        assert_eq!(name(None, &[attribute]), "from-attributes");
        assert_eq!(name(None, &[attribute, variable]), "from-variable");
        assert_eq!(
            name(Some("identity-service"), &[attribute, variable]),
            "identity-service"
        );
    }

    #[test]
    fn a_malformed_attribute_list_is_ignored_whole_and_said_why() {
        let env = [("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=p,oops")];
        let (resource, ignored) = resource_of(None, &env);
        assert_eq!(resource, pairs(&[("service.name", "gatehouse")]));
        assert_eq!(
            ignored.as_deref(),
            Some(r#"OTEL_RESOURCE_ATTRIBUTES ignored: "oops" is not key=value"#)
        );
    }

    #[test]
    fn a_collector_ca_that_cannot_be_used_is_a_problem_on_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let telemetry = |ca: &std::path::Path| Telemetry {
            otlp_endpoint: Some("https://collector:4317".to_owned()),
            otlp_ca_file: Some(ca.to_owned()),
            ..Telemetry::default()
        };
        let missing = dir.path().join("missing.pem");
        let messages: Vec<String> = [missing.as_path(), empty.as_path()]
            .into_iter()
            .flat_map(|ca| problems(&telemetry(ca)))
            .map(|problem| problem.to_string())
            .collect();
        assert_eq!(
            messages,
            [
                format!(
                    "telemetry.otlp_ca_file: no such file: {}",
                    missing.display()
                ),
                format!(
                    "telemetry.otlp_ca_file: no certificate in {}",
                    empty.display()
                ),
            ]
        );
        let dev_ca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev/ca.crt");
        assert!(problems(&telemetry(&dev_ca)).is_empty());
    }
}
