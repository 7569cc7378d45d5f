# gatehouse: a small, non-root image with only the binary.
#
#   docker build -t gatehouse .
#   docker run -v "$PWD/config:/etc/gatehouse" -v "$PWD/certs-dev:/etc/gatehouse/certs" \
#     -p 12018:12018 -p 9901:9901 gatehouse
#
# The configuration (/etc/gatehouse/gatehouse.yaml) and certificates are mounted, never
# baked in.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: a change to gatehouse's code does not rebuild
# them. Every target the manifest names gets a stub so cargo can read it.
COPY Cargo.toml Cargo.lock ./
# h2 with an HPACK encoder option, substituted by [patch.crates-io] (vendor/README.md).
COPY vendor ./vendor
RUN mkdir -p src examples/demo-app bench/micro \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > examples/demo-app/main.rs \
 && echo 'fn main() {}' > bench/micro/jwt.rs \
 && echo 'fn main() {}' > bench/micro/chain.rs \
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
