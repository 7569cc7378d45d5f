# gatehouse: a small, non-root image with only the binary, running
# `gatehouse run --config /etc/gatehouse/gatehouse.yaml`.
#
#   docker build --build-arg GATEHOUSE_COMMIT="$(git rev-parse --short=12 HEAD)" -t gatehouse .
#   docker run --rm --network host \
#     -v "$PWD/deploy/gatehouse.yaml:/etc/gatehouse/gatehouse.yaml:ro" \
#     -v "$PWD/certs-dev/server.crt:/etc/gatehouse/certs/tls.crt:ro" \
#     -v "$PWD/certs-dev/server.key:/etc/gatehouse/certs/tls.key:ro" \
#     -v "$PWD/certs-dev/ca.crt:/etc/gatehouse/certs/ca.crt:ro" \
#     gatehouse
#
# deploy/gatehouse.yaml is the container configuration, with the paths of the pod in
# deploy/kubernetes/ (there a ConfigMap and a Secret are mounted at the same places).
# It forwards to the app on 127.0.0.1:50051, so next to a process on the host the
# container shares the host's network (`cargo run --example demo-app` is such an app);
# in a pod, gatehouse and the app share the pod's. The configuration and certificates
# are mounted, never baked in; certificates that are not there yet are waited for.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: a change to gatehouse's code does not rebuild
# them. Building `--bin gatehouse` needs only the binary's and the library's sources
# (cargo does not open the examples and benchmarks the manifest declares), so those
# two get empty stand-ins here.
COPY Cargo.toml Cargo.lock build.rs ./
# h2 with an HPACK encoder option, substituted by [patch.crates-io] (vendor/README.md).
COPY vendor ./vendor
# The source is copied without .git, so build.rs takes the commit from here for
# `gatehouse --version` and gatehouse_build_info (`unknown` when not passed).
ARG GATEHOUSE_COMMIT=""
ENV GATEHOUSE_COMMIT=${GATEHOUSE_COMMIT}
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin gatehouse \
 && rm -rf src

COPY src ./src
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin gatehouse \
 && cp target/release/gatehouse /gatehouse

# Distroless: no shell, no package manager; the nonroot variant runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /gatehouse /usr/local/bin/gatehouse
USER 65532:65532
# 12018: callers (mTLS, HTTP/2). 9901: /metrics, /healthz, /readyz.
EXPOSE 12018 9901
ENTRYPOINT ["/usr/local/bin/gatehouse"]
CMD ["run", "--config", "/etc/gatehouse/gatehouse.yaml"]
