//! `gatehouse inject`, the binary on Kubernetes YAML: the app's own Deployment in, the
//! shipped deploy/kubernetes/deployment.yaml out; idempotent; valid for Kubernetes.

use std::io::Write;
use std::process::{Command, Stdio};

use gatehouse::inject::yaml::Node;

use crate::support::*;

/// Runs `gatehouse inject ARGS` with `input` on stdin: (exit code, stdout, stderr).
fn inject(args: &[&str], input: &str) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("inject")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (output.status.code(), stdout(&output), stderr(&output))
}

const SHIPPED_ARGS: &[&str] = &[
    "--image",
    "registry.example.com/gatehouse:0.1.0",
    "--api-keys-secret",
    "identity-service-api-keys",
];

/// The map at `path` below `node`.
fn at<'a>(node: &'a mut Node, path: &[&str]) -> &'a mut Node {
    path.iter()
        .fold(node, |node, key| node.get_mut(key).unwrap())
}

/// `entries` without those `drop` names.
fn without(node: &mut Node, drop: impl Fn(&str, &Node) -> bool) {
    if let Node::Map(entries) = node {
        entries.retain(|(key, value)| !drop(key, value));
    }
}

/// The shipped Deployment as its app team wrote it, before inject: no gatehouse
/// container, none of its volumes, no preStop sleep, no grace period.
fn app_only() -> String {
    let shipped =
        std::fs::read_to_string(repo().join("deploy/kubernetes/deployment.yaml")).unwrap();
    let mut deployment: Node = serde_saphyr::from_str(&shipped).unwrap();
    let spec = at(&mut deployment, &["spec", "template", "spec"]);
    without(spec, |key, _| {
        ["initContainers", "volumes", "terminationGracePeriodSeconds"].contains(&key)
    });
    for container in spec.get_mut("containers").unwrap().as_seq_mut().unwrap() {
        without(container, |key, _| key == "lifecycle");
    }
    serde_saphyr::to_string(&deployment).unwrap()
}

/// `node` with every mapping's keys sorted, to compare documents whatever order the
/// keys were written in.
fn sorted(node: &Node) -> Node {
    match node {
        Node::Map(entries) => {
            let mut entries: Vec<(String, Node)> = entries
                .iter()
                .map(|(k, v)| (k.clone(), sorted(v)))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Node::Map(entries)
        }
        Node::Seq(items) => Node::Seq(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn validate_strict(yaml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("injected.yaml");
    std::fs::write(&file, yaml).unwrap();
    let tools = repo().join(".tools/kubernetes-validate");
    assert!(
        tools.exists(),
        "kubernetes-validate not found in {}: run `bash tests/run`, which installs it",
        tools.display()
    );
    Command::new("python3")
        .env("PYTHONPATH", tools)
        .args(["-m", "kubernetes_validate", "--strict", "-k", "1.30.0"])
        .arg(&file)
        .output()
        .unwrap()
}

#[test]
fn inject_turns_the_apps_deployment_into_the_shipped_one_and_twice_is_once() {
    let (code, once, errors) = inject(SHIPPED_ARGS, &app_only());
    assert_eq!(code, Some(0), "{errors}");
    let shipped =
        std::fs::read_to_string(repo().join("deploy/kubernetes/deployment.yaml")).unwrap();
    let expected: Node = serde_saphyr::from_str(&shipped).unwrap();
    let injected: Node = serde_saphyr::from_str(&once).unwrap();
    assert_eq!(sorted(&injected), sorted(&expected), "{once}");

    let (code, twice, _) = inject(SHIPPED_ARGS, &once);
    assert_eq!(code, Some(0));
    assert_eq!(twice, once, "a second run changed the output");

    let validated = validate_strict(&once);
    assert!(
        validated.status.success(),
        "{}{}",
        stdout(&validated),
        stderr(&validated)
    );
}

#[test]
fn inject_handles_every_workload_kind_in_a_stream_and_passes_the_rest_through() {
    let workloads = ["Deployment", "StatefulSet", "DaemonSet"].map(|kind| {
        let extra = if kind == "StatefulSet" {
            "  serviceName: orders\n"
        } else {
            ""
        };
        format!(
            "apiVersion: apps/v1\nkind: {kind}\nmetadata: {{ name: orders }}\nspec:\n{extra}  selector: {{ matchLabels: {{ app: orders }} }}\n  template:\n    metadata: {{ labels: {{ app: orders }} }}\n    spec:\n      containers: [{{ name: app, image: orders:1 }}]\n"
        )
    });
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: { name: orders }\nspec:\n  containers: [{ name: app, image: orders:1 }]\n";
    let service = "apiVersion: v1\nkind: Service\nmetadata: { name: orders }\nspec:\n  ports: [{ port: 12018, targetPort: grpc-mtls }]\n";
    let input = format!("{}---\n{pod}---\n{service}", workloads.join("---\n"));
    let (code, out, errors) = inject(&["--image", "gatehouse:test", "--memory", "256Mi"], &input);
    assert_eq!(code, Some(0), "{errors}");
    let documents: Vec<Node> = serde_saphyr::from_multiple(&out).unwrap();
    assert_eq!(documents.len(), 5);
    assert_eq!(out.matches("- name: gatehouse\n").count(), 4, "{out}");
    assert_eq!(out.matches("memory: 256Mi").count(), 4, "{out}");
    let expected_service: Node = serde_saphyr::from_str(service).unwrap();
    assert_eq!(documents[4], expected_service);
    let validated = validate_strict(&out);
    assert!(
        validated.status.success(),
        "{}{}",
        stdout(&validated),
        stderr(&validated)
    );
    assert_eq!(
        inject(&["--image", "gatehouse:test", "--memory", "256Mi"], &out).1,
        out
    );

    let (code, _, errors) = inject(&[], "kind: Deployment\nspec: [\n");
    assert_eq!(code, Some(64));
    assert!(
        errors.starts_with("inject: standard input is not YAML"),
        "{errors}"
    );
}
