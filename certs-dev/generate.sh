#!/usr/bin/env bash
# Regenerates the development PKI in this folder. DEVELOPMENT ONLY: the private keys are
# committed to the repository, so anything signed by this CA must never be trusted
# outside a developer's machine or a test run.
#
#   ca.crt / ca.key                      the development CA (10 years)
#   server.crt / server.key              gatehouse's serving certificate:
#                                        localhost, 127.0.0.1, ::1
#   client-gateway.crt / .key            a caller: spiffe://dev.gatehouse/ns/default/sa/gateway
#   client-compliance-scanner.crt / .key a caller: spiffe://dev.gatehouse/ns/default/sa/compliance-scanner
#   jwt-signing.key / jwks.json          the development token issuer's RSA key (kid dev-1)
#                                        and its public JWKS, trusted by config/dev.yaml;
#                                        `gatehouse token --key certs-dev/jwt-signing.key` mints
#   api-key-compliance-scanner.txt       a development API key; config/dev.yaml holds its SHA-256
#   chain-SERVICE.crt / .key             the four services of examples/chain (compliance, identity,
#                                        profile, audit): spiffe://dev.gatehouse/ns/default/sa/SERVICE-service,
#                                        DNS SERVICE-service; both server and client certificates,
#                                        because each one's gatehouse serves inbound and calls out
#
#   bash certs-dev/generate.sh            regenerate everything (a new CA: every file changes)
#   bash certs-dev/generate.sh --missing  keep the CA and what exists; sign only missing certificates
set -euo pipefail
cd "$(dirname "$0")"
missing_only=false
[ "${1:-}" = "--missing" ] && missing_only=true
days=3650
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if ! $missing_only; then
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -out ca.crt \
  -subj "/O=gatehouse development/CN=gatehouse development CA - DO NOT TRUST" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

# sign NAME CN EXTENSIONS
sign() {
  local name="$1" cn="$2" ext="$3"
  if $missing_only && [ -f "$name.crt" ] && [ -f "$name.key" ]; then return 0; fi
  key "$name.key"
  openssl req -new -key "$name.key" -subj "/O=gatehouse development/CN=$cn" -out "$tmp/$name.csr"
  printf '%s\n' "$ext" >"$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
    -days "$days" -sha256 -extfile "$tmp/$name.ext" -out "$name.crt" 2>/dev/null
}

sign server localhost "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"

for sa in gateway compliance-scanner; do
  sign "client-$sa" "$sa" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
subjectAltName=URI:spiffe://dev.gatehouse/ns/default/sa/$sa"
done

for service in compliance identity profile audit; do
  sign "chain-$service" "$service-service" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=URI:spiffe://dev.gatehouse/ns/default/sa/$service-service,DNS:$service-service"
done

if ! $missing_only; then
# The token issuer: an RSA key and its JWKS (n and e, base64url without padding).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jwt-signing.key 2>/dev/null
modulus="$(openssl rsa -in jwt-signing.key -noout -modulus | cut -d= -f2)"
python3 - "$modulus" >jwks.json <<'PY'
import base64, json, sys
n = bytes.fromhex(sys.argv[1])
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
key = {"kty": "RSA", "kid": "dev-1", "use": "sig", "alg": "RS256", "n": b64(n), "e": b64((65537).to_bytes(3, "big"))}
print(json.dumps({"keys": [key]}, indent=2))
PY

# A development API key (random), stored in config/dev.yaml only as its SHA-256.
printf 'dev-%s\n' "$(openssl rand -hex 16)" >api-key-compliance-scanner.txt
fi

rm -f ca.srl
chmod 600 ./*.key
echo "development PKI written to $(pwd)"
