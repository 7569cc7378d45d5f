"""Kubernetes YAML work for tests/pods/run, on the manifests in deploy/kubernetes/.

    kube.py app-only < deployment.yaml          the app team's Deployment, before inject
    kube.py same A B                            A and B are the same documents (else a diff)
    kube.py value FILE KIND KEY                 data[KEY] (or stringData[KEY]) of the KIND
    kube.py for-podman VOLUMES < injected.yaml  what podman 4.3 can play (see below)

PyYAML comes with kubernetes-validate, which tests/tools.sh installs.
"""

import difflib
import sys

import yaml


def pod_spec(document):
    if document.get("kind") == "Pod":
        return document["spec"]
    return document["spec"]["template"]["spec"]


def app_only(text):
    """Removes what `gatehouse inject` adds: the sidecar, its volumes, the app's preStop
    sleep and the grace period. The rest is the app team's own."""
    documents = list(yaml.safe_load_all(text))
    for document in documents:
        spec = pod_spec(document)
        spec.pop("initContainers", None)
        spec.pop("volumes", None)
        spec.pop("terminationGracePeriodSeconds", None)
        for container in spec["containers"]:
            container.pop("lifecycle", None)
    return yaml.safe_dump_all(documents, sort_keys=False)


def for_podman(text, volumes):
    """The podman-only rewrites, and nothing else:

    - native sidecars (init containers with restartPolicy: Always) become ordinary
      containers, listed first: podman 4.3 predates them;
    - ConfigMap and Secret volumes become hostPath directories under VOLUMES, which the
      test lays out as the kubelet does (files behind a `..data` symlink it swaps), so a
      rotation and a ConfigMap edit reach the pod the way the kubelet delivers them;
    - probes are dropped: podman turns an httpGet probe into a `curl` run inside the
      container, and the images hold nothing but their binary (the test calls /readyz
      from outside instead);
    - container ports are dropped: podman 4.3 also publishes each one on the host's
      port of the same number (Kubernetes does not), which would take fixed host ports;
      the test reaches the pod at its own IP;
    - an environment variable from the Downward API's `metadata.namespace` becomes the
      namespace written as a value: podman 4.3 refuses the whole pod for that field
      (it knows `metadata.name`, which stays).
    """
    documents = list(yaml.safe_load_all(text))
    for document in documents:
        spec = pod_spec(document)
        sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        spec["initContainers"] = [c for c in spec.get("initContainers", []) if c not in sidecars]
        if not spec["initContainers"]:
            del spec["initContainers"]
        for sidecar in sidecars:
            del sidecar["restartPolicy"]
        spec["containers"] = sidecars + spec["containers"]
        namespace = document.get("metadata", {}).get("namespace", "default")
        for container in spec["containers"]:
            for key in ("startupProbe", "livenessProbe", "readinessProbe", "ports"):
                container.pop(key, None)
            for variable in container.get("env", []):
                field = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                if field == "metadata.namespace":
                    del variable["valueFrom"]
                    variable["value"] = namespace
        for volume in spec.get("volumes", []):
            if "configMap" in volume or "secret" in volume:
                volume.pop("configMap", None)
                volume.pop("secret", None)
                volume["hostPath"] = {"path": f"{volumes}/{volume['name']}", "type": "Directory"}
    return yaml.safe_dump_all(documents, sort_keys=False)


def same(a, b):
    with open(a) as first, open(b) as second:
        left = list(yaml.safe_load_all(first))
        right = list(yaml.safe_load_all(second))
    if left == right:
        return 0
    render = lambda docs: yaml.safe_dump_all(docs, sort_keys=True).splitlines()
    sys.stdout.writelines(line + "\n" for line in difflib.unified_diff(render(left), render(right), a, b, lineterm=""))
    return 1


def value(path, kind, key):
    with open(path) as file:
        for document in yaml.safe_load_all(file):
            if document.get("kind") == kind:
                data = document.get("data") or document.get("stringData") or {}
                sys.stdout.write(data[key])
                return 0
    print(f"no {kind} in {path}", file=sys.stderr)
    return 1


def main(args):
    if args[:1] == ["app-only"]:
        sys.stdout.write(app_only(sys.stdin.read()))
    elif args[:1] == ["for-podman"] and len(args) == 2:
        sys.stdout.write(for_podman(sys.stdin.read(), args[1]))
    elif args[:1] == ["same"] and len(args) == 3:
        return same(args[1], args[2])
    elif args[:1] == ["value"] and len(args) == 4:
        return value(*args[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 64
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
