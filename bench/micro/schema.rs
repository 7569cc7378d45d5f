//! The cost of field rules per request message: the wire scan that reads the named
//! fields (and nothing else) and compares them with the caller, and the checked request
//! body around it (hold the message whole, check, hand it on).
//!
//!     cargo bench --bench schema
//!
//! The messages are `gatehouse.orders.v1.OrderRequest`s (examples/demo-app) with a
//! payload of the size named; the rules bind `tenant_id` (one field) or `tenant_id` and
//! `owner.user_id` (two fields, one nested).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use gatehouse::body::RequestBody;
use gatehouse::config::Config;
use gatehouse::inbound::schema::checked::{CallerIdentity, CheckedRequest, Verdict};
use gatehouse::schema::{Caller, MethodRules, Schema, Table};
use http_body_util::BodyExt as _;
use prost::encoding::{WireType, encode_key, encode_varint};

const ORDERS: &[u8] = include_bytes!("../../examples/demo-app/generated/orders_descriptor.bin");

fn text(out: &mut Vec<u8>, number: u32, value: &[u8]) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// An `OrderRequest` of tenant `acme`, owner `u1`, with `payload` bytes of payload.
fn message(payload: usize) -> Vec<u8> {
    let mut owner = Vec::new();
    text(&mut owner, 1, b"u1");
    text(&mut owner, 2, b"blue");
    let mut message = Vec::new();
    text(&mut message, 1, b"acme");
    text(&mut message, 2, &owner);
    text(&mut message, 3, b"a note about this order");
    text(&mut message, 4, &vec![b'x'; payload]);
    message
}

fn rules(fields: &str) -> Arc<MethodRules> {
    let yaml = format!(
        "listen: {{ address: 127.0.0.1:1 }}\ntls: {{ enabled: false }}\nupstream: {{ address: 127.0.0.1:2 }}\n\
         schema: {{ source: reflection }}\nauthorization:\n  rules:\n    - {{ methods: ['*'], allow_roles: [a], fields: {fields} }}\n"
    );
    let config = Config::from_yaml(&yaml).expect("the bench config parses");
    let schema = Arc::new(Schema::from_descriptor_set(ORDERS).expect("orders.proto"));
    let table = Table::new(schema, config.authorization.as_ref());
    table
        .get("/gatehouse.orders.v1.Orders/Upload")
        .and_then(|entry| entry.rules.clone())
        .expect("the rule applies")
}

fn bench(c: &mut Criterion) {
    let caller = Caller {
        tenant: Some("acme"),
        user: Some("u1"),
        key: None,
        peer: None,
    };
    let one = rules("{ tenant_id: '{tenant}' }");
    let two = rules("{ tenant_id: '{tenant}', owner.user_id: '{user}' }");
    for (name, size) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let encoded = message(size);
        c.bench_function(&format!("scan/one_field/{name}"), |b| {
            b.iter(|| one.check(black_box(&encoded), &caller).expect("it holds"))
        });
        c.bench_function(&format!("scan/two_fields/{name}"), |b| {
            b.iter(|| two.check(black_box(&encoded), &caller).expect("it holds"))
        });
    }
    // The body a call with field rules has: the message in one DATA frame, held whole,
    // checked and handed on, then the end of the stream.
    let mut framed = vec![0];
    let encoded = message(1024);
    framed.extend_from_slice(&u32::try_from(encoded.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(&encoded);
    let framed = bytes::Bytes::from(framed);
    let principal = gatehouse::identity::Principal::new(
        gatehouse::identity::AuthMethod::ApiKey,
        gatehouse::identity::Claims {
            user_id: Some("u1".into()),
            tenant_id: Some("acme".into()),
            api_key_name: Some("bench".into()),
            ..Default::default()
        },
    )
    .expect("a valid principal");
    let identity = CallerIdentity {
        principal: Some(Arc::new(principal)),
        connection: None,
    };
    c.bench_function("body/one_field/1KiB", |b| {
        b.iter(|| {
            let mut body = CheckedRequest::new(
                RequestBody::local(framed.clone()),
                one.clone(),
                identity.clone(),
                Arc::new(Verdict::default()),
                64 * 1024,
            );
            let frame = body.frame().now_or_never().flatten().expect("a frame");
            black_box(frame.expect("the message passes"));
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
