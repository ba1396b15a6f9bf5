//! The command line: serve by default, plus the operators' subcommands.

use std::io::{BufRead, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::auth::{generate_key, key_digest};
use crate::config::Settings;
use crate::demo;
use crate::domain::label::Label;
use crate::observe::logging;
use crate::startup::Application;

/// How long `healthcheck` waits for an answer.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Intranet gateway in front of the Minor Planet Center's Action Codes API.
#[derive(Debug, Parser)]
#[command(name = "mpc-action-gateway", version, about)]
pub struct Cli {
    /// Configuration file layered over the built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do; serves when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the public and admin APIs (the default).
    Serve,
    /// Validate the configuration and print the effective settings as TOML.
    CheckConfig,
    /// Read an API key on stdin and print its SHA-256 digest for `[[auth.keys]]`.
    HashKey,
    /// Print a new random API key (on stderr) and the config lines that admit it (on stdout).
    GenKey {
        /// The user the key identifies.
        #[arg(long)]
        user: String,
        /// The quota tier of that user; must be one of `quota.tiers`.
        #[arg(long, default_value = "default")]
        tier: String,
        /// A scope the key holds (`status`: check labels; `retrieve`: request
        /// action codes); repeat for both, which is the default.
        #[arg(long = "scope", value_name = "SCOPE", value_parser = ["status", "retrieve"])]
        scopes: Vec<String>,
    },
    /// Print each label's kind, or why it is invalid, then a summary line;
    /// exit 1 if any is invalid.
    Validate {
        /// Labels to check; `-` reads more from stdin, one per line (blank lines skipped).
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Serve as configured in front of a simulated MPC that never sends email.
    Demo,
    /// Exit 0 when the gateway's health endpoint answers 200 within 2 s, else 1.
    Healthcheck {
        /// Full URL to probe; defaults to http://<admin.listen>/healthz.
        #[arg(long)]
        url: Option<String>,
    },
}

/// Parses the command line and runs it.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::Demo => demo(cli.config),
        Command::CheckConfig => check_config(cli.config),
        Command::HashKey => hash_key(),
        Command::GenKey { user, tier, scopes } => gen_key(cli.config, &user, &tier, &scopes),
        Command::Validate { labels } => return validate(&labels),
        Command::Healthcheck { url } => return healthcheck(cli.config, url),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("mpc-action-gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(config: Option<PathBuf>) -> Result<Settings, String> {
    Settings::load(config.as_deref()).map_err(|e| e.to_string())
}

fn serve(config: Option<PathBuf>) -> Result<(), String> {
    let settings = load(config.clone())?;
    let level = logging::init(&settings.log);
    actix_web::rt::System::new().block_on(async move {
        let application = Application::build(settings.clone()).map_err(|e| {
            tracing::error!(error = %e, "cannot start");
            e.to_string()
        })?;
        // On stderr: stdout carries the logs, which collectors may parse.
        eprintln!("{}", serve_banner(&settings));
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            public = %application.public_addr(),
            admin = %application.admin_addr(),
            upstream = %settings.upstream.retrieve_url(),
            "mpc-action-gateway serving"
        );
        let reloader = application.reloader(
            settings,
            Box::new(move || Settings::load(config.as_deref())),
            level,
        );
        application
            .reload_on_sighup(reloader)
            .run_until_stopped()
            .await
            .map_err(|e| e.to_string())
    })
}

/// The line a newcomer reads on start: where labels go, that the emails are
/// real, and how to try the gateway without them.
fn serve_banner(settings: &Settings) -> String {
    format!(
        "mpc-action-gateway forwards to the MPC at {}: valid labels of real submissions \
         trigger real emails. To try it without email, run the demo instead: \
         mpc-action-gateway demo (from the source: cargo run --release -- demo).",
        settings.upstream.retrieve_url()
    )
}

fn demo(config: Option<PathBuf>) -> Result<(), String> {
    let settings = load(config.clone())?;
    let level = logging::init(&settings.log);
    actix_web::rt::System::new().block_on(async move {
        let (mpc_addr, mpc) = demo::simulated_mpc(demo::slow_answer_after(&settings))
            .map_err(|e| format!("cannot start the simulated MPC: {e}"))?;
        let mpc_handle = mpc.handle();
        tokio::spawn(mpc);
        let demo = demo::Demo::new(settings, mpc_addr);
        let application = Application::build(demo.settings.clone()).map_err(|e| e.to_string())?;
        let (public, admin) = (application.public_addr(), application.admin_addr());
        print!("{}", demo.banner(connectable(public), connectable(admin)));
        // A reload is read the way the demo was: pointed at the simulated MPC.
        let reload = move || {
            Settings::load(config.as_deref()).map(|new| demo::Demo::new(new, mpc_addr).settings)
        };
        let reloader = application.reloader(demo.settings, Box::new(reload), level);
        let application = application.reload_on_sighup(reloader);
        tracing::info!(
            public = %public,
            admin = %admin,
            "demo: serving in front of a simulated MPC; no email is ever sent"
        );
        let result = application.run_until_stopped().await;
        mpc_handle.stop(true).await;
        result.map_err(|e| e.to_string())
    })
}

fn check_config(config: Option<PathBuf>) -> Result<(), String> {
    let settings = load(config)?;
    print!("{}", settings.to_toml());
    Ok(())
}

fn hash_key() -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the key from stdin: {e}"))?;
    println!("{}", key_digest(read_one_key(&input)?));
    Ok(())
}

/// The key in `input`, without the surrounding whitespace the gateway also
/// ignores when it compares a presented key.
fn read_one_key(input: &str) -> Result<&str, String> {
    let key = input.trim();
    if key.is_empty() {
        return Err("no key on stdin".to_owned());
    }
    if key.lines().count() > 1 {
        return Err(format!(
            "stdin holds {} lines; hash-key reads exactly one key",
            key.lines().count()
        ));
    }
    Ok(key)
}

#[derive(Serialize)]
struct KeyEntry<'a> {
    user: &'a str,
    sha256: String,
    tier: &'a str,
    // Left out when none is given: a key holds both scopes by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scopes: Vec<&'a str>,
}

#[derive(Serialize)]
struct AuthSection<'a> {
    keys: [KeyEntry<'a>; 1],
}

#[derive(Serialize)]
struct KeySnippet<'a> {
    auth: AuthSection<'a>,
}

fn gen_key(
    config: Option<PathBuf>,
    user: &str,
    tier: &str,
    scopes: &[String],
) -> Result<(), String> {
    if user.trim().is_empty() || user.chars().any(char::is_control) {
        return Err("--user must be a non-empty name without control characters".to_owned());
    }
    let settings = load(config)?;
    if !settings.quota.tiers.contains_key(tier) {
        let known: Vec<&str> = settings.quota.tiers.keys().map(String::as_str).collect();
        return Err(format!(
            "--tier {tier:?} is not a tier in quota.tiers (configured: {}); define \
             [quota.tiers.{tier}] in the file given with --config first",
            known.join(", ")
        ));
    }
    let mut scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    scopes.sort_unstable();
    scopes.dedup();
    let held = if scopes.is_empty() {
        "status, retrieve".to_owned()
    } else {
        scopes.join(", ")
    };
    let key = generate_key();
    let snippet = KeySnippet {
        auth: AuthSection {
            keys: [KeyEntry {
                user,
                sha256: key_digest(&key),
                tier,
                scopes,
            }],
        },
    };
    let lines = toml::to_string(&snippet).map_err(|e| e.to_string())?;
    // The key goes to the terminal, the config lines to stdout, so that
    // `gen-key ... >> gateway.toml` appends valid TOML and never the key.
    eprintln!("{key}\n\nGive the key above to {user}; it is not stored anywhere.");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "# API key for {user} (tier {tier}, scopes {held}), made by gen-key\n{lines}"
    )
    .map_err(|e| e.to_string())
}

fn validate(labels: &[String]) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let (mut valid, mut invalid) = (0_usize, 0_usize);
    let mut judge = |raw: &str| {
        let line = match Label::parse(raw) {
            Ok(label) => {
                valid += 1;
                format!("{label}\t{}", label.kind())
            }
            Err(error) => {
                invalid += 1;
                format!("{}\tinvalid: {error}", raw.escape_debug())
            }
        };
        writeln!(out, "{line}")
    };
    let judged = labels.iter().try_for_each(|raw| {
        if raw != "-" {
            return judge(raw);
        }
        std::io::stdin().lock().split(b'\n').try_for_each(|line| {
            // Not UTF-8: judged (and refused) like any other text.
            let line = String::from_utf8_lossy(&line?).into_owned();
            if line.trim().is_empty() {
                return Ok(());
            }
            judge(&line)
        })
    });
    let summary = judged.and_then(|()| writeln!(out, "{valid} valid, {invalid} invalid"));
    if let Err(error) = summary {
        eprintln!("mpc-action-gateway: {error}");
        return ExitCode::FAILURE;
    }
    if invalid == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn healthcheck(config: Option<PathBuf>, url: Option<String>) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match load(config) {
            Ok(settings) => format!("http://{}/healthz", connectable(settings.admin.listen)),
            Err(message) => {
                eprintln!("mpc-action-gateway: {message}");
                return ExitCode::FAILURE;
            }
        },
    };
    let healthy = actix_web::rt::System::new().block_on(async {
        let client = awc::Client::builder().timeout(HEALTHCHECK_TIMEOUT).finish();
        match client.get(&url).send().await {
            Ok(response) if response.status().as_u16() == 200 => true,
            Ok(response) => {
                eprintln!("{url} answered {}", response.status());
                false
            }
            Err(error) => {
                eprintln!("{url}: {error}");
                false
            }
        }
    });
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A wildcard listen address is reached through loopback.
fn connectable(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
            SocketAddr::from(([127, 0, 0, 1], v4.port()))
        }
        SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, v6.port()))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_key_is_read_as_the_gateway_compares_it() {
        for input in ["abc", "abc\n", "abc\r\n", "  abc \t\n", "\nabc\n\n"] {
            assert_eq!(read_one_key(input), Ok("abc"), "{input:?}");
        }
        assert_eq!(
            read_one_key("a b"),
            Ok("a b"),
            "inner spaces are part of it"
        );
    }

    #[test]
    fn empty_or_several_lines_are_refused() {
        for input in ["", "\n", " \t\r\n"] {
            assert!(
                read_one_key(input).unwrap_err().contains("no key"),
                "{input:?}"
            );
        }
        for input in ["abc\ndef", "abc\r\ndef\n", "abc\n\ndef"] {
            let error = read_one_key(input).unwrap_err();
            assert!(error.contains("exactly one key"), "{input:?}: {error}");
        }
    }

    #[test]
    fn wildcard_addresses_become_loopback() {
        assert_eq!(
            connectable("0.0.0.0:8081".parse().unwrap()),
            "127.0.0.1:8081".parse().unwrap()
        );
        assert_eq!(
            connectable("[::]:8081".parse().unwrap()),
            "[::1]:8081".parse().unwrap()
        );
        assert_eq!(
            connectable("10.1.2.3:8081".parse().unwrap()),
            "10.1.2.3:8081".parse().unwrap()
        );
    }
}
