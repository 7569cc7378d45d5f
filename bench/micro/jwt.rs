//! JWT checks per algorithm family, with and without the verified-token cache.
//!
//!     cargo bench --bench jwt
//!
//! "uncached" is a full check (header, issuer, key lookup, signature, claims, identity);
//! "cached" is what every call after the first pays for the same token; "cache_key" is
//! the part of it that keys the cache. "cached_threads/N" is a cached check made by N
//! threads at once on one verifier, timed by each thread's own time on a CPU (Linux's
//! /proc/thread-self/schedstat), so the figure is CPU time per check whatever else the
//! machine runs: contention on the cache's lock or on shared reference counts shows as
//! more time per check with more threads.

use std::hint::black_box;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use gatehouse::auth::jwks::{KeySet, KeySource};
use gatehouse::auth::jwt::{JwtVerifier, Provider};
use gatehouse::config::Family;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const ISSUER: &str = "https://issuer.bench";

struct Case {
    name: &'static str,
    token: String,
    keys: KeySet,
}

fn case(name: &'static str, alg: Algorithm) -> Case {
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"iss": ISSUER, "aud": "bench", "sub": "user-1", "exp": now + 3600,
                        "tenant_id": "acme", "roles": ["reader", "writer"]});
    let mut header = Header::new(alg);
    header.kid = Some("k1".into());
    let (encoding, jwk): (EncodingKey, Option<Jwk>) = match alg {
        Algorithm::HS256 => (
            EncodingKey::from_secret(b"a benchmark secret of at least 32 bytes"),
            None,
        ),
        _ => {
            let rcgen_alg = match alg {
                Algorithm::RS256 | Algorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
                Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                _ => &rcgen::PKCS_ED25519,
            };
            let pair = rcgen::KeyPair::generate_for(rcgen_alg).expect("key generation");
            let pem = pair.serialize_pem();
            let encoding = match alg {
                Algorithm::RS256 | Algorithm::PS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
                Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
                _ => EncodingKey::from_ed_pem(pem.as_bytes()),
            }
            .expect("PEM key");
            let mut jwk: Jwk = if alg == Algorithm::EdDSA {
                let x = URL_SAFE_NO_PAD.encode(pair.public_key_raw());
                serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": x}))
                    .expect("JWK")
            } else {
                Jwk::from_encoding_key(&encoding, alg).expect("JWK")
            };
            jwk.common.key_id = Some("k1".into());
            (encoding, Some(jwk))
        }
    };
    let token = jsonwebtoken::encode(&header, &claims, &encoding).expect("signing");
    let family = Family::of(&[format!("{alg:?}")]).expect("family");
    let keys = match jwk {
        None => KeySet::secret(b"a benchmark secret of at least 32 bytes"),
        Some(jwk) => {
            let document = serde_json::to_vec(&JwkSet { keys: vec![jwk] }).expect("JWKS");
            KeySet::from_jwks(&document, family, &[alg], &mut Vec::new()).expect("key set")
        }
    };
    Case { name, token, keys }
}

fn verifier(alg: &str, keys: KeySet, cache_size: usize) -> JwtVerifier {
    let yaml = format!(
        "{{ name: b, issuer: \"{ISSUER}\", audiences: [bench], algorithms: [{alg}], jwks_file: /unused }}"
    );
    let config: gatehouse::config::JwtProvider =
        serde_saphyr::from_str(&yaml).expect("provider config");
    let provider = Provider::new(&config, KeySource::Static(Arc::new(keys))).expect("provider");
    JwtVerifier::new(vec![provider], cache_size)
}

fn checks(c: &mut Criterion) {
    let algorithms = [
        ("RS256", Algorithm::RS256),
        ("PS256", Algorithm::PS256),
        ("ES256", Algorithm::ES256),
        ("EdDSA", Algorithm::EdDSA),
        ("HS256", Algorithm::HS256),
    ];
    for (name, alg) in algorithms {
        let case = case(name, alg);
        let uncached = verifier(name, case.keys.clone(), 0);
        let cached = verifier(name, case.keys.clone(), 1024);
        // The key sets are static, so the check never waits: poll it once.
        let check = |verifier: &JwtVerifier| {
            verifier
                .verify(black_box(&case.token))
                .now_or_never()
                .expect("static keys never wait")
                .expect("valid token")
        };
        check(&cached);
        let mut group = c.benchmark_group(format!("jwt/{}", case.name));
        group.bench_function("uncached", |b| b.iter(|| check(&uncached)));
        group.bench_function("cached", |b| b.iter(|| check(&cached)));
        group.finish();
    }
}

/// The verified-token cache's key for an RS256 token: one `std` SipHash-1-3 hash plus a
/// constant-time comparison with the stored token, used now, and the HMAC-SHA-256 under
/// a random key used before.
fn cache_keys(c: &mut Criterion) {
    use std::hash::{BuildHasher, RandomState};
    let token = case("RS256", Algorithm::RS256).token;
    let hasher = RandomState::new();
    let stored: Box<[u8]> = token.as_bytes().into();
    let key = aws_lc_rs::hmac::Key::generate(
        aws_lc_rs::hmac::HMAC_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .expect("system randomness");
    let mut group = c.benchmark_group(format!("jwt/cache_key/{}_bytes", token.len()));
    group.bench_function("siphash13_and_compare", |b| {
        b.iter(|| {
            let token = black_box(token.as_bytes());
            let hash = hasher.hash_one(token);
            let same = aws_lc_rs::constant_time::verify_slices_are_equal(&stored, token);
            (hash, same.is_ok())
        })
    });
    group.bench_function("hmac_sha256", |b| {
        b.iter(|| aws_lc_rs::hmac::sign(&key, black_box(token.as_bytes())))
    });
    group.finish();
}

/// A cached RS256 check made by 1, 2 and 4 threads at once on the same verifier.
fn contended(c: &mut Criterion) {
    let case = case("RS256", Algorithm::RS256);
    let verifier = verifier("RS256", case.keys.clone(), 1024);
    let check = |verifier: &JwtVerifier| {
        verifier
            .verify(black_box(&case.token))
            .now_or_never()
            .expect("static keys never wait")
            .expect("valid token")
    };
    check(&verifier);
    let minimum = if std::env::args().any(|arg| arg == "--bench") {
        1_000_000
    } else {
        1
    };
    let mut group = c.benchmark_group("jwt/RS256/cached_threads");
    group.sample_size(10);
    for threads in [1, 2, 4] {
        group.bench_function(threads.to_string(), |b| {
            b.iter_custom(|iters| {
                // The kernel brings a thread's CPU time up to date at scheduler ticks, so
                // each thread runs long enough (a million checks, about 0.1 s) that a
                // tick's worth is noise; the time is scaled back to `iters`. Run as a
                // test (`cargo test --bench jwt`, no `--bench`) it only has to work.
                let rounds = iters.max(minimum);
                let start = std::sync::Barrier::new(threads);
                let on_cpu: u64 = std::thread::scope(|scope| {
                    let workers: Vec<_> = (0..threads)
                        .map(|_| {
                            scope.spawn(|| {
                                start.wait();
                                let before = thread_on_cpu_ns();
                                for _ in 0..rounds {
                                    black_box(check(&verifier));
                                }
                                thread_on_cpu_ns() - before
                            })
                        })
                        .collect();
                    workers.into_iter().map(|w| w.join().expect("worker")).sum()
                });
                // CPU time per check = on_cpu / (threads * rounds); criterion divides by iters.
                let per_check = on_cpu as f64 / (threads as u64 * rounds) as f64;
                std::time::Duration::from_nanos((per_check * iters as f64) as u64)
            })
        });
    }
    group.finish();
}

/// Nanoseconds the calling thread has spent on a CPU.
fn thread_on_cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    stat.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .expect("schedstat's first field")
}

criterion_group!(benches, checks, cache_keys, contended);
criterion_main!(benches);
