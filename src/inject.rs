//! `gatehouse inject`: Kubernetes YAML in, the same with gatehouse added as a native
//! sidecar out, as `linkerd inject` does for its proxy. Deployments, StatefulSets,
//! DaemonSets and Pods get, in their pod spec:
//!
//! - an init container `gatehouse` with `restartPolicy: Always` (a native sidecar:
//!   started before the app, stopped after it), its ports (12018 for callers, 9901
//!   admin), startup and liveness probes on `/healthz` and readiness on `/readyz` of
//!   the admin port, resources, a locked-down security context, and its configuration
//!   (a ConfigMap) and certificates (a Secret) mounted where the image looks for them
//!   (`/etc/gatehouse/gatehouse.yaml`, `/etc/gatehouse/certs/`);
//! - a `preStop` sleep on every app container that has none, so the app keeps serving
//!   while callers learn the pod is going (gatehouse, a sidecar, stops after the app),
//!   and a termination grace period that covers it and gatehouse's drain, when the pod
//!   sets none.
//!
//! The result needs Kubernetes 1.30 or later (native sidecars, and `preStop: sleep`).
//! Everything else passes through as data: other kinds and documents unchanged, keys in
//! their order (comments are not kept). A pod spec that already has a `gatehouse`
//! container is left as it is, so running inject on its own output changes nothing.

pub mod yaml;

use crate::cli::InjectArgs;
use yaml::Node;

/// The container's name, and the mark of a pod spec already injected.
pub const CONTAINER: &str = "gatehouse";
/// Where the image reads its configuration (the Dockerfile's `CMD`).
pub const CONFIG_DIR: &str = "/etc/gatehouse";
/// Callers' port and the admin port, as the shipped configuration listens.
const PORTS: [(&str, u64); 2] = [("grpc-mtls", 12018), ("admin", 9901)];
/// How long an app container keeps serving after the pod starts terminating: the time
/// callers take to learn the endpoint is gone.
pub const APP_PRE_STOP_SECONDS: u64 = 15;
/// The termination grace period set when the pod has none: the app's pre-stop sleep,
/// gatehouse's default `drain_timeout` (30 s), and room.
pub const GRACE_SECONDS: u64 = 50;

/// Why inject could not do its work; each names the document (counted from 1).
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("standard input is not YAML: {0}")]
    NotYaml(String),
    #[error("document {document} ({kind}): {problem}")]
    Document {
        document: usize,
        kind: String,
        problem: String,
    },
    #[error("--memory {0:?}: write a Kubernetes memory quantity, like 160Mi or 1Gi")]
    Memory(String),
    #[error("cannot write YAML: {0}")]
    Write(String),
}

/// Injects gatehouse into every workload in `input` (one or more YAML documents).
pub fn inject(input: &str, args: &InjectArgs) -> Result<String, InjectError> {
    if !is_memory_quantity(&args.memory) {
        return Err(InjectError::Memory(args.memory.clone()));
    }
    let documents: Vec<Node> = serde_saphyr::from_multiple(input)
        .map_err(|error| InjectError::NotYaml(error.to_string()))?;
    let mut out = Vec::new();
    for (index, mut document) in documents.into_iter().enumerate() {
        if document == Node::Null {
            continue; // an empty document, as a trailing `---` makes
        }
        let kind = document
            .get("kind")
            .and_then(Node::as_str)
            .unwrap_or("")
            .to_owned();
        let problem = |problem: String| InjectError::Document {
            document: index + 1,
            kind: kind.clone(),
            problem,
        };
        if let Some(path) = pod_spec_path(&kind) {
            let name = document
                .get("metadata")
                .and_then(|metadata| metadata.get("name"))
                .and_then(Node::as_str)
                .map(str::to_owned);
            let spec = path
                .iter()
                .try_fold(&mut document, |node, key| node.get_mut(key))
                .ok_or_else(|| problem(format!("no {}", path.join("."))))?;
            inject_pod(spec, name.as_deref(), args).map_err(problem)?;
        }
        out.push(document);
    }
    serde_saphyr::to_string_multiple(&out).map_err(|error| InjectError::Write(error.to_string()))
}

/// Where a kind keeps its pod spec; `None` for kinds inject leaves alone.
fn pod_spec_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" => Some(&["spec", "template", "spec"]),
        "Pod" => Some(&["spec"]),
        _ => None,
    }
}

/// Adds the sidecar, its volumes and the app's pre-stop sleep to one pod spec, unless a
/// `gatehouse` container is already there.
fn inject_pod(spec: &mut Node, name: Option<&str>, args: &InjectArgs) -> Result<(), String> {
    let containers = |spec: &Node, key: &str| -> Vec<Node> {
        match spec.get(key) {
            Some(Node::Seq(items)) => items.clone(),
            _ => Vec::new(),
        }
    };
    let app = containers(spec, "containers");
    let init = containers(spec, "initContainers");
    if app.iter().chain(&init).any(|c| named(c) == Some(CONTAINER)) {
        return Ok(());
    }
    if app.is_empty() {
        return Err("the pod spec has no containers".to_owned());
    }
    for container in app.iter().chain(&init) {
        ports_free(container)?;
    }
    let volumes = volumes(name, args)?;
    let taken = containers(spec, "volumes");
    for (volume, _) in &volumes {
        if taken.iter().any(|v| named(v) == Some(volume)) {
            return Err(format!("the pod already has a volume named {volume}"));
        }
    }

    let sidecar = sidecar(args, &volumes);
    let not_a_list = |key: &str| format!("{key} is not a list");
    spec.entry_before("initContainers", Some("containers"), Node::Seq(Vec::new()))
        .and_then(Node::as_seq_mut)
        .ok_or_else(|| not_a_list("initContainers"))?
        .insert(0, sidecar);
    for container in spec
        .get_mut("containers")
        .and_then(Node::as_seq_mut)
        .ok_or_else(|| not_a_list("containers"))?
    {
        let lifecycle = container
            .entry("lifecycle", Node::Map(Vec::new()))
            .ok_or("a container is not a mapping")?;
        if lifecycle.get("preStop").is_none() {
            let sleep = Node::map([("seconds", Node::Uint(APP_PRE_STOP_SECONDS))]);
            lifecycle.entry("preStop", Node::map([("sleep", sleep)]));
        }
    }
    if spec.get("terminationGracePeriodSeconds").is_none() {
        spec.entry("terminationGracePeriodSeconds", Node::Uint(GRACE_SECONDS));
    }
    let list = spec
        .entry("volumes", Node::Seq(Vec::new()))
        .and_then(Node::as_seq_mut)
        .ok_or_else(|| not_a_list("volumes"))?;
    list.extend(volumes.into_iter().map(|(_, volume)| volume));
    Ok(())
}

/// The `name` of a container or volume.
fn named(node: &Node) -> Option<&str> {
    node.get("name").and_then(Node::as_str)
}

/// A container's ports must leave gatehouse's free, by name and by number.
fn ports_free(container: &Node) -> Result<(), String> {
    let Some(Node::Seq(ports)) = container.get("ports") else {
        return Ok(());
    };
    for port in ports {
        for (name, number) in PORTS {
            let same_name = port.get("name").and_then(Node::as_str) == Some(name);
            let same_number = matches!(
                port.get("containerPort"),
                Some(Node::Uint(n)) if *n == number
            ) || matches!(port.get("containerPort"), Some(Node::Int(n)) if *n as u64 == number);
            if same_name || same_number {
                let owner = container.get("name").and_then(Node::as_str).unwrap_or("?");
                return Err(format!(
                    "container {owner} already uses port {name} ({number}), which gatehouse needs"
                ));
            }
        }
    }
    Ok(())
}

/// The volumes gatehouse mounts, each as (name, volume) and in mount order: the
/// configuration, the certificates, and the API key file when asked for.
fn volumes(name: Option<&str>, args: &InjectArgs) -> Result<Vec<(&'static str, Node)>, String> {
    let or_named = |given: &Option<String>, suffix: &str, flag: &str| match (given, name) {
        (Some(given), _) => Ok(given.clone()),
        (None, Some(name)) => Ok(format!("{name}-{suffix}")),
        (None, None) => Err(format!(
            "no metadata.name to name the {suffix} after: pass {flag}"
        )),
    };
    let config_map = or_named(&args.config_map, "gatehouse", "--config-map")?;
    let tls_secret = or_named(&args.tls_secret, "tls", "--tls-secret")?;
    let secret = |name: String| Node::map([("secretName", Node::Str(name))]);
    let mut volumes = vec![
        (
            "gatehouse-config",
            Node::map([
                ("name", Node::str("gatehouse-config")),
                ("configMap", Node::map([("name", Node::Str(config_map))])),
            ]),
        ),
        (
            "gatehouse-tls",
            Node::map([
                ("name", Node::str("gatehouse-tls")),
                ("secret", secret(tls_secret)),
            ]),
        ),
    ];
    if let Some(api_keys) = &args.api_keys_secret {
        volumes.push((
            "gatehouse-api-keys",
            Node::map([
                ("name", Node::str("gatehouse-api-keys")),
                ("secret", secret(api_keys.clone())),
            ]),
        ));
    }
    Ok(volumes)
}

/// The sidecar container itself.
fn sidecar(args: &InjectArgs, volumes: &[(&'static str, Node)]) -> Node {
    let probe = |path: &str, more: &[(&str, u64)]| {
        let get = Node::map([("path", Node::str(path)), ("port", Node::str("admin"))]);
        let mut probe = vec![("httpGet".to_owned(), get)];
        probe.extend(more.iter().map(|(k, v)| ((*k).to_owned(), Node::Uint(*v))));
        Node::Map(probe)
    };
    let ports = PORTS
        .iter()
        .map(|(name, port)| {
            Node::map([
                ("name", Node::str(*name)),
                ("containerPort", Node::Uint(*port)),
            ])
        })
        .collect();
    let mounts = volumes
        .iter()
        .map(|(volume, _)| {
            let path = match *volume {
                "gatehouse-config" => CONFIG_DIR.to_owned(),
                "gatehouse-tls" => format!("{CONFIG_DIR}/certs"),
                _ => format!("{CONFIG_DIR}/api-keys"),
            };
            Node::map([
                ("name", Node::str(*volume)),
                ("mountPath", Node::Str(path)),
                ("readOnly", Node::Bool(true)),
            ])
        })
        .collect();
    Node::map([
        ("name", Node::str(CONTAINER)),
        ("image", Node::str(&args.image)),
        ("restartPolicy", Node::str("Always")),
        (
            "args",
            Node::Seq(
                ["run", "--config", &format!("{CONFIG_DIR}/gatehouse.yaml")]
                    .map(Node::str)
                    .to_vec(),
            ),
        ),
        ("ports", Node::Seq(ports)),
        ("env", Node::Seq(resource_env())),
        (
            "startupProbe",
            probe(
                "/healthz",
                &[("periodSeconds", 1), ("failureThreshold", 30)],
            ),
        ),
        ("livenessProbe", probe("/healthz", &[("periodSeconds", 10)])),
        ("readinessProbe", probe("/readyz", &[("periodSeconds", 5)])),
        (
            "resources",
            Node::map([
                (
                    "requests",
                    Node::map([("cpu", Node::str("50m")), ("memory", Node::str("16Mi"))]),
                ),
                ("limits", Node::map([("memory", Node::str(&args.memory))])),
            ]),
        ),
        (
            "securityContext",
            Node::map([
                ("allowPrivilegeEscalation", Node::Bool(false)),
                ("readOnlyRootFilesystem", Node::Bool(true)),
                ("runAsNonRoot", Node::Bool(true)),
                (
                    "capabilities",
                    Node::map([("drop", Node::Seq(vec![Node::str("ALL")]))]),
                ),
            ]),
        ),
        ("volumeMounts", Node::Seq(mounts)),
    ])
}

/// The pod's name and namespace from the Downward API, as the resource of the spans
/// gatehouse exports (`OTEL_RESOURCE_ATTRIBUTES`, docs/observability.md).
fn resource_env() -> Vec<Node> {
    let from_field = |name: &str, path: &str| {
        Node::map([
            ("name", Node::str(name)),
            (
                "valueFrom",
                Node::map([("fieldRef", Node::map([("fieldPath", Node::str(path))]))]),
            ),
        ])
    };
    vec![
        from_field("POD_NAME", "metadata.name"),
        from_field("POD_NAMESPACE", "metadata.namespace"),
        Node::map([
            ("name", Node::str("OTEL_RESOURCE_ATTRIBUTES")),
            (
                "value",
                Node::str("k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(POD_NAMESPACE)"),
            ),
        ]),
    ]
}

/// Whether `text` is a memory quantity Kubernetes accepts and gatehouse reads alike
/// (`160Mi`, `1Gi`, `512M`; no fractions, no exponents).
fn is_memory_quantity(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && ["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"].contains(&unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> InjectArgs {
        InjectArgs {
            image: "registry.example.com/gatehouse:0.1.0".to_owned(),
            config_map: None,
            tls_secret: None,
            api_keys_secret: None,
            memory: "160Mi".to_owned(),
        }
    }

    const APP: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders
spec:
  selector: { matchLabels: { app: orders } }
  template:
    metadata: { labels: { app: orders } }
    spec:
      containers:
        - name: app
          image: orders:1
          env: [{ name: PORT, value: \"50051\" }]
";

    fn parse(text: &str) -> Vec<Node> {
        serde_saphyr::from_multiple(text).unwrap()
    }

    fn pod_spec(document: &Node) -> &Node {
        ["spec", "template", "spec"]
            .iter()
            .try_fold(document, |node, key| node.get(key))
            .unwrap()
    }

    #[test]
    fn adds_a_native_sidecar_its_volumes_and_the_apps_pre_stop() {
        let out = inject(APP, &args()).unwrap();
        let documents = parse(&out);
        let spec = pod_spec(&documents[0]);
        let Some(Node::Seq(init)) = spec.get("initContainers") else {
            panic!("{out}")
        };
        assert_eq!(init[0].get("name"), Some(&Node::str("gatehouse")));
        assert_eq!(init[0].get("restartPolicy"), Some(&Node::str("Always")));
        let Some(Node::Seq(app)) = spec.get("containers") else {
            panic!("{out}")
        };
        let pre_stop = app[0]
            .get("lifecycle")
            .and_then(|l| l.get("preStop"))
            .and_then(|p| p.get("sleep"))
            .and_then(|s| s.get("seconds"));
        assert_eq!(pre_stop, Some(&Node::Uint(APP_PRE_STOP_SECONDS)));
        // Quoted values stay strings.
        assert!(out.contains("value: \"50051\""), "{out}");
        assert!(out.contains("name: orders-gatehouse"), "{out}");
        assert!(out.contains("secretName: orders-tls"), "{out}");
        assert_eq!(
            spec.get("terminationGracePeriodSeconds"),
            Some(&Node::Uint(GRACE_SECONDS))
        );
    }

    #[test]
    fn running_twice_equals_running_once() {
        let once = inject(&format!("{APP}---\n{APP}"), &args()).unwrap();
        let twice = inject(&once, &args()).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn leaves_other_kinds_and_an_apps_own_settings_alone() {
        let input = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{ name: orders }}\nspec: {{ ports: [{{ port: 80 }}] }}\n---\n{}",
            APP.replace(
                "          image: orders:1\n",
                "          image: orders:1\n          lifecycle: { preStop: { exec: { command: [drain] } } }\n"
            )
            .replace("    spec:\n", "    spec:\n      terminationGracePeriodSeconds: 120\n")
        );
        let out = inject(&input, &args()).unwrap();
        let documents = parse(&out);
        assert_eq!(documents[0], parse(&input)[0], "the Service is unchanged");
        let spec = pod_spec(&documents[1]);
        assert_eq!(
            spec.get("terminationGracePeriodSeconds"),
            Some(&Node::Uint(120))
        );
        assert!(out.contains("- drain"), "{out}");
        assert!(!out.contains("sleep"), "{out}");
    }

    #[test]
    fn refuses_what_it_cannot_inject_naming_the_document() {
        let clash = APP.replace(
            "          env:",
            "          ports: [{ name: admin, containerPort: 8080 }]\n          env:",
        );
        let error = inject(&format!("kind: ConfigMap\n---\n{clash}"), &args()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "document 2 (Deployment): container app already uses port admin (9901), which gatehouse needs"
        );
        let nameless = APP.replace("  name: orders\n", "  generateName: orders-\n");
        let error = inject(&nameless, &args()).unwrap_err();
        assert!(error.to_string().contains("pass --config-map"), "{error}");
        let mut bad = args();
        bad.memory = "160MiB".to_owned();
        assert!(matches!(inject(APP, &bad), Err(InjectError::Memory(_))));
        assert!(matches!(
            inject("a: [", &args()),
            Err(InjectError::NotYaml(_))
        ));
    }
}
