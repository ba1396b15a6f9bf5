//! `mpc-action-gateway demo`: the gateway as configured, in front of a
//! simulated MPC that never sends an email. It knows the example labels of
//! the MPC's documentation, refuses others, and fails on request:
//! a label starting with `FAIL` gets a 503, one starting with `SLOW` an
//! answer that arrives after the gateway's timeout, one starting with
//! `BUSY` a 429 asking the gateway to wait [`BUSY_FOR`]. Anonymous callers are
//! served, the state file is ignored, a `default` tier left at its shipped
//! limits gets room for the README's walkthrough, and audit lines say
//! `"simulated": true`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use actix_web::dev::Server;
use serde_json::json;

use crate::config::{DEFAULT_TIER, OptionalPath, Settings, StoreBackend, TierSettings};
use crate::fake_mpc::{self, Answer, FakeMpc};

/// Labels the simulated MPC knows as real submissions.
pub const KNOWN_LABELS: [&str; 6] = [
    "A10cnQO",
    "ABC12345",
    "00000DwbEz",
    "2024-05-02T21:03:35.001_0000FzZw",
    "2024-05-02T21:03:35.001_0000FzZw_01",
    "2024-01-15T10:30:00.123_ABCD1234",
];

/// What the simulated MPC says when it accepts a label.
fn accepted(_label: &str) -> serde_json::Value {
    json!({
        "message": "The action code has been sent to the original submitter (simulated: no email was sent)."
    })
}

/// How long the simulated MPC asks the gateway to wait for a `BUSY` label
/// (its `Retry-After`).
pub const BUSY_FOR: Duration = Duration::from_secs(5);

/// Starts the simulated MPC on a free loopback port.
pub fn simulated_mpc(slow_for: Duration) -> std::io::Result<(SocketAddr, Server)> {
    let unknown = |label: &str| {
        json!({
            "error": format!("No submission found for label {label} (simulated)."),
            "known_labels": KNOWN_LABELS,
        })
    };
    let failure = |_: &str| json!({"error": "simulated failure (label starts with FAIL)"});
    let busy = |_: &str| json!({"error": "simulated: too many requests, retry in 5 seconds (label starts with BUSY)"});
    FakeMpc::answering(Answer::json(404, unknown).logged("no such submission"))
        .when(
            |label| label.starts_with("FAIL"),
            Answer::json(503, failure).warned("failing with 503 as asked"),
        )
        .when(
            |label| label.starts_with("BUSY"),
            Answer::json(429, busy)
                .with_headers(&[("retry-after", "5")])
                .warned("asking the gateway to slow down (429, Retry-After: 5), as asked"),
        )
        .when(
            |label| label.starts_with("SLOW"),
            Answer::json(200, accepted)
                .after(slow_for)
                .warned("answering too late, as asked (no email sent)"),
        )
        .when(
            |label| KNOWN_LABELS.contains(&label),
            Answer::json(200, accepted)
                .logged("would email the action code to the submitter (no email sent)"),
        )
        .start()
}

/// MPC calls per hour of the `default` tier in the demo, unless configured.
const DEMO_UPSTREAM_PER_HOUR: NonZeroU32 = NonZeroU32::new(120).unwrap();

/// MPC calls at once of the `default` tier in the demo, unless configured:
/// enough for the README's walkthrough, which forwards six labels.
const DEMO_UPSTREAM_BURST: NonZeroU32 = NonZeroU32::new(30).unwrap();

/// How long after the gateway's `upstream.timeout` a `SLOW` label is answered.
const SLOW_BY: Duration = Duration::from_secs(1);

/// When the simulated MPC answers a `SLOW` label: too late for the gateway.
pub fn slow_answer_after(settings: &Settings) -> Duration {
    settings.upstream.timeout + SLOW_BY
}

/// The gateway's settings for the demo, and what the demo changed in them.
#[derive(Debug)]
pub struct Demo {
    /// The settings as configured, pointed at the simulated MPC.
    pub settings: Settings,
    /// The shipped limits of the `default` tier, when the demo raised them.
    raised_from: Option<TierSettings>,
    /// The configured `dedup.state_file`, which the demo neither reads nor writes.
    ignored_state_file: Option<PathBuf>,
    /// Whether `store.backend = "redis"` was configured: the demo never
    /// writes simulated outcomes into a store that real gateways share.
    ignored_redis: bool,
    /// When the simulated MPC answers a `SLOW` label.
    slow_for: Duration,
}

impl Demo {
    /// The settings as configured, pointed at the simulated MPC at `mpc`, with
    /// anonymous access, nothing written to disk but the audit trail, and
    /// the `default` tier raised when it still has the shipped limits.
    pub fn new(mut settings: Settings, mpc: SocketAddr) -> Self {
        let slow_for = slow_answer_after(&settings);
        let base = format!("http://{mpc}");
        settings.upstream.base_url = base.parse().expect("a socket address makes a valid URL");
        settings.upstream.path = fake_mpc::PATH.to_owned();
        settings.upstream.simulated = true;
        settings.auth.allow_anonymous = true;
        let ignored_state_file = settings.dedup.state_file.get().map(ToOwned::to_owned);
        settings.dedup.state_file = OptionalPath::default();
        let ignored_redis = settings.store.backend == StoreBackend::Redis;
        settings.store.backend = StoreBackend::Memory;
        // The shipped 3-call burst would refuse the walkthrough's fourth forwarded label.
        let raised_from = match settings.quota.tiers.get_mut(DEFAULT_TIER) {
            Some(tier) if is_shipped_default(tier) => {
                let shipped = *tier;
                tier.upstream_per_hour = DEMO_UPSTREAM_PER_HOUR;
                tier.upstream_burst = DEMO_UPSTREAM_BURST;
                Some(shipped)
            }
            _ => None,
        };
        Self {
            settings,
            raised_from,
            ignored_state_file,
            ignored_redis,
            slow_for,
        }
    }

    /// What a newcomer reads at start: what is simulated, which quotas apply,
    /// what is not written, and where to send requests.
    pub fn banner(&self, public: SocketAddr, admin: SocketAddr) -> String {
        let settings = &self.settings;
        let mut text = String::new();
        let mut line = |l: String| {
            text.push_str(&l);
            text.push('\n');
        };
        line(
            "mpc-action-gateway demo: the gateway as configured, in front of a simulated MPC."
                .into(),
        );
        line("No email is ever sent, whatever the answers below say.".into());
        line(format!(
            "  public API  http://{public}   e.g. curl -s http://{public}/api/action-codes/labels/A10cnQO"
        ));
        line(format!(
            "  page        http://{public}/   the observer page, in a browser"
        ));
        line(format!(
            "  admin       http://{admin}   /metrics, /readyz, /admin/labels/{{label}}"
        ));
        line("The simulated MPC:".into());
        line(format!(
            "  accepts  {} (200; the gateway says \"sent\")",
            KNOWN_LABELS.join(", ")
        ));
        line(
            "  fails    labels starting with FAIL, e.g. FAIL001 (503; the gateway answers 502)"
                .into(),
        );
        line(format!(
            "  is busy  labels starting with BUSY, e.g. BUSY001 (429 with Retry-After: {}; the gateway answers 503 upstream-throttled and forwards nothing to the MPC for that long)",
            BUSY_FOR.as_secs()
        ));
        line(format!(
            "  is slow  labels starting with SLOW, e.g. SLOW001 (answers after {}, past upstream.timeout = {}; the gateway answers 504)",
            humantime::format_duration(self.slow_for),
            humantime::format_duration(settings.upstream.timeout),
        ));
        line(
            "  refuses  every other valid label (404; the gateway answers 404 upstream-rejected)"
                .into(),
        );
        line("Quotas (each request forwarded to the MPC costs one MPC call, whatever it answers; remembered answers and local refusals cost none):".into());
        for (name, tier) in &settings.quota.tiers {
            let mut description = format!(
                "  tier {name:?}: {} requests/minute, {} MPC calls/hour, {} at once",
                tier.requests_per_minute, tier.upstream_per_hour, tier.upstream_burst
            );
            if let Some(shipped) = self.raised_from.filter(|_| name == DEFAULT_TIER) {
                let _ = write!(
                    description,
                    " (raised for the demo from the shipped {} per hour, {} at once, so the README's walkthrough runs to the end; configure [quota.tiers.default] to use your own)",
                    shipped.upstream_per_hour, shipped.upstream_burst,
                );
            } else {
                description.push_str(" (as configured)");
            }
            line(description);
        }
        line(format!(
            "  courtesy budget: {} MPC calls/minute for the whole gateway (upstream.max_per_minute)",
            settings.upstream.max_per_minute
        ));
        line(
            "Anonymous access is allowed: a caller without a key is anonymous:<its address>."
                .into(),
        );
        line(match &self.ignored_state_file {
            Some(path) => format!(
                "dedup.state_file ({}) is ignored: remembered outcomes live in memory only; the file is neither read nor written.",
                path.display()
            ),
            None => "dedup.state_file is ignored: remembered outcomes live in memory only.".into(),
        });
        if self.ignored_redis {
            line(
                "store.backend = \"redis\" is ignored: simulated outcomes never enter a store \
                 that real gateways share."
                    .into(),
            );
        }
        line(match settings.log.audit_file.get() {
            Some(path) => format!(
                "Audit trail: {}, each line with \"simulated\": true.",
                path.display()
            ),
            None => "Audit trail: off (set log.audit_file to see one; its lines then say \"simulated\": true).".into(),
        });
        line("Walkthrough: README.md, \"Try it offline\".".into());
        text
    }
}

/// The limits of the `default` tier in the embedded configuration.
fn shipped_default_tier() -> TierSettings {
    let shipped =
        Settings::load_from(None, Some(HashMap::new())).expect("the embedded configuration loads");
    shipped.quota.tiers[DEFAULT_TIER]
}

/// Whether `tier` has exactly the shipped limits of the `default` tier.
fn is_shipped_default(tier: &TierSettings) -> bool {
    let shipped = shipped_default_tier();
    (
        tier.requests_per_minute,
        tier.upstream_per_hour,
        tier.upstream_burst,
    ) == (
        shipped.requests_per_minute,
        shipped.upstream_per_hour,
        shipped.upstream_burst,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configured(env: &[(&str, &str)]) -> Settings {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_from(None, Some(env)).unwrap()
    }

    fn demo(env: &[(&str, &str)]) -> Demo {
        Demo::new(configured(env), "127.0.0.1:9".parse().unwrap())
    }

    fn banner(demo: &Demo) -> String {
        demo.banner(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:8081".parse().unwrap(),
        )
    }

    #[test]
    fn the_shipped_default_tier_is_raised_for_the_walkthrough() {
        let demo = demo(&[]);
        let tier = demo.settings.quota.tiers[DEFAULT_TIER];
        assert_eq!(tier.upstream_burst, DEMO_UPSTREAM_BURST);
        assert_eq!(tier.upstream_per_hour, DEMO_UPSTREAM_PER_HOUR);
        assert_eq!(tier.requests_per_minute.get(), 60, "anti-flood as shipped");
        let banner = banner(&demo);
        assert!(
            banner.contains(
                "tier \"default\": 60 requests/minute, 120 MPC calls/hour, 30 at once (raised \
                 for the demo from the shipped 10 per hour, 3 at once"
            ),
            "{banner}"
        );
    }

    #[test]
    fn a_configured_default_tier_is_used_as_it_is() {
        let demo = demo(&[("MPC_GATEWAY__QUOTA__TIERS__DEFAULT__UPSTREAM_BURST", "2")]);
        let tier = demo.settings.quota.tiers[DEFAULT_TIER];
        assert_eq!(tier.upstream_burst.get(), 2);
        assert_eq!(tier.upstream_per_hour.get(), 10);
        let banner = banner(&demo);
        assert!(
            banner.contains(
                "tier \"default\": 60 requests/minute, 10 MPC calls/hour, 2 at once (as configured)"
            ),
            "{banner}"
        );
    }

    #[test]
    fn the_banner_says_what_is_simulated_and_what_is_not_written() {
        let demo = demo(&[
            ("MPC_GATEWAY__DEDUP__STATE_FILE", "/var/lib/gw/state.json"),
            ("MPC_GATEWAY__LOG__AUDIT_FILE", "/var/log/gw/audit.jsonl"),
        ]);
        assert!(demo.settings.dedup.state_file.get().is_none());
        assert!(demo.settings.upstream.simulated);
        assert!(demo.settings.auth.allow_anonymous);
        let banner = banner(&demo);
        for expected in [
            "No email is ever sent",
            "curl -s http://127.0.0.1:8080/api/action-codes/labels/A10cnQO",
            "accepts  A10cnQO, ABC12345",
            "labels starting with FAIL",
            "labels starting with BUSY, e.g. BUSY001 (429 with Retry-After: 5;",
            "labels starting with SLOW, e.g. SLOW001 (answers after 16s, past upstream.timeout = 15s",
            "refuses  every other valid label",
            "courtesy budget: 30 MPC calls/minute",
            "dedup.state_file (/var/lib/gw/state.json) is ignored",
            "Audit trail: /var/log/gw/audit.jsonl, each line with \"simulated\": true",
        ] {
            assert!(banner.contains(expected), "{expected:?} in\n{banner}");
        }
    }

    #[test]
    fn a_configured_redis_is_left_alone() {
        let configured = demo(&[("MPC_GATEWAY__STORE__BACKEND", "redis")]);
        assert_eq!(configured.settings.store.backend, StoreBackend::Memory);
        assert!(banner(&configured).contains("store.backend = \"redis\" is ignored"));
        let plain = demo(&[]);
        assert!(!banner(&plain).contains("store.backend"));
    }
}
