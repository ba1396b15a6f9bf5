//! The per-request admission cost: identity, the anti-flood limit and the
//! RateLimit peek, with 10 000 users already tracked.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use mpc_action_gateway::auth::{Authenticator, key_digest};
use mpc_action_gateway::clock::SystemClock;
use mpc_action_gateway::config::Settings;
use mpc_action_gateway::quota::Quotas;

const TRACKED_USERS: u32 = 10_000;
const KEYS: usize = 20;

fn settings() -> Settings {
    let mut contents = String::from(
        "[auth]\nallow_anonymous = true\ntrusted_user_header = \"X-Forwarded-User\"\n\
         trusted_proxies = [\"127.0.0.0/8\"]\n\
         [quota.tiers.default]\nrequests_per_minute = 4000000000\nupstream_per_hour = 10\nupstream_burst = 3\n",
    );
    for i in 0..KEYS {
        contents.push_str(&format!(
            "[[auth.keys]]\nuser = \"user{i}\"\nsha256 = \"{}\"\n",
            key_digest(&format!("mpcgw_bench_key_{i:02}"))
        ));
    }
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(contents.as_bytes()).unwrap();
    Settings::load_from(Some(file.path()), Some(HashMap::new())).unwrap()
}

fn admission(c: &mut Criterion) {
    let settings = settings();
    let authenticator = Authenticator::new(&settings.auth, &settings.quota);
    let quotas = Quotas::new(Arc::new(SystemClock), 30.try_into().unwrap());
    let peer = Some(IpAddr::V4(Ipv4Addr::LOCALHOST));
    for i in 0..TRACKED_USERS {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-forwarded-user"),
            HeaderValue::from_str(&format!("sso-user-{i}")).unwrap(),
        );
        let identity = authenticator.identify(&headers, peer).unwrap();
        quotas
            .admit_request(identity.user(), identity.tier())
            .unwrap();
    }

    let cases = [
        ("api_key", ("authorization", "Bearer mpcgw_bench_key_17")),
        ("trusted_header", ("x-forwarded-user", "sso-user-4242")),
        ("anonymous", ("accept", "application/json")),
    ];
    let mut group = c.benchmark_group("identity_and_quota");
    for (name, (header, value)) in cases {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(header),
            HeaderValue::from_static(value),
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                let identity = authenticator.identify(black_box(&headers), peer).unwrap();
                quotas
                    .admit_request(identity.user(), identity.tier())
                    .unwrap();
                // The memory store answers at once: no runtime is needed.
                black_box(
                    quotas
                        .upstream_status(identity.user(), identity.tier())
                        .now_or_never(),
                );
            })
        });
    }
    group.finish();
    assert!(quotas.tracked_users() >= TRACKED_USERS as usize);
}

criterion_group!(benches, admission);
criterion_main!(benches);
