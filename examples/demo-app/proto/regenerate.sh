#!/usr/bin/env bash
# Regenerates examples/demo-app/generated/ from demo.proto and orders.proto with a pure-Rust protobuf
# compiler (protox), so nobody needs a system protoc. The output is committed: building
# the demo app and the tests never runs a code generator.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$here/../generated"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$out"
cat >"$work/Cargo.toml" <<'TOML'
[package]
name = "gatehouse-demo-protogen"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
protox = "0.10"
prost = "0.14"
prost-types = "0.14"
tonic-prost-build = "0.14"
TOML
cat >"$work/src/main.rs" <<'RS'
use prost::Message;
fn main() {
    let mut args = std::env::args().skip(1);
    let proto_dir = args.next().expect("proto dir");
    let out_dir = args.next().expect("out dir");
    // One descriptor set per file: the demo app registers orders.proto with its
    // reflection only when it serves Orders.
    let mut all = prost_types::FileDescriptorSet::default();
    for (proto, out) in [("demo.proto", "demo_descriptor.bin"), ("orders.proto", "orders_descriptor.bin")] {
        let fds = protox::compile([proto], [&proto_dir]).expect("the proto compiles");
        std::fs::write(format!("{out_dir}/{out}"), fds.encode_to_vec()).expect("write descriptor");
        all.file.extend(fds.file);
    }
    tonic_prost_build::configure()
        .build_transport(false)
        .out_dir(&out_dir)
        .compile_fds(all)
        .expect("generate code");
}
RS
cargo run --quiet --manifest-path "$work/Cargo.toml" -- "$here" "$out"
echo "regenerated $out"
