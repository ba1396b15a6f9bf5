//! `scripts/test`, the README's test command: what it decides to install,
//! or the one command it asks for when it cannot, run with `--dry-run` on a
//! made-up machine: a `PATH` holding only stand-in programs, stand-in `id`
//! and `sudo`, and a cache folder that holds axe-core or not. Nothing is
//! installed, and the real machine's packages do not matter.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every program the script looks for, with `apt-get` and `cargo`.
const EVERYTHING: [&str; 7] = [
    "cargo",
    "apt-get",
    "redis-server",
    "redis-cli",
    "chromium",
    "chromedriver",
    "npm",
];

/// A made-up machine: the programs on its `PATH`, its user and its caches.
struct Machine {
    root: tempfile::TempDir,
}

impl Machine {
    /// A machine whose user is `uid` and whose `PATH` holds `programs` only.
    fn new(uid: u32, programs: &[&str]) -> Self {
        let machine = Self {
            root: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(machine.bin()).unwrap();
        std::fs::create_dir_all(machine.cache()).unwrap();
        machine.program("id", &format!("echo {uid}"));
        for name in programs {
            machine.program(name, "exit 0");
        }
        machine
    }

    /// Everything present, axe-core included, for `uid`.
    fn complete(uid: u32) -> Self {
        let machine = Self::new(uid, &EVERYTHING);
        machine.with_axe_core();
        machine
    }

    /// Every program but `absent`.
    fn without(uid: u32, absent: &[&str]) -> Self {
        let present: Vec<&str> = EVERYTHING
            .into_iter()
            .filter(|name| !absent.contains(name))
            .collect();
        Self::new(uid, &present)
    }

    fn bin(&self) -> PathBuf {
        self.root.path().join("bin")
    }

    fn cache(&self) -> PathBuf {
        self.root.path().join("cache")
    }

    /// Where the script keeps axe-core.
    fn axe_dir(&self) -> String {
        format!(
            "{}/mpc-action-gateway/axe-core-4.14.1",
            self.cache().display()
        )
    }

    fn axe_js(&self) -> String {
        format!("{}/node_modules/axe-core/axe.min.js", self.axe_dir())
    }

    /// A stand-in program: a shell script running `body`.
    fn program(&self, name: &str, body: &str) {
        let path = self.bin().join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// A `sudo` that works without a password, or asks for one (and fails).
    fn with_sudo(self, passwordless: bool) -> Self {
        self.program("sudo", if passwordless { "exit 0" } else { "exit 1" });
        self
    }

    fn with_axe_core(&self) {
        let js = PathBuf::from(self.axe_js());
        std::fs::create_dir_all(js.parent().unwrap()).unwrap();
        std::fs::write(js, "/* axe */").unwrap();
    }

    /// `bash scripts/test --dry-run args...` on this machine.
    fn dry_run(&self, args: &[&str]) -> Run {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/test");
        let output = Command::new(bash())
            .arg(script)
            .arg("--dry-run")
            .args(args)
            .env_clear()
            .env("PATH", self.bin())
            .env("HOME", self.root.path())
            .env("XDG_CACHE_HOME", self.cache())
            .output()
            .unwrap();
        Run(output)
    }
}

/// bash itself, found on the test's own `PATH` (the machine's has no bash).
fn bash() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("bash"))
                .find(|path| path.is_file())
        })
        .expect("bash on the PATH")
}

/// What a dry run printed and how it ended.
struct Run(Output);

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8(self.0.stdout.clone()).unwrap()
    }

    fn code(&self) -> Option<i32> {
        self.0.status.code()
    }

    /// Exits 0, having printed exactly `lines`, stderr empty.
    fn prints(&self, lines: &[String]) {
        let stderr = String::from_utf8_lossy(&self.0.stderr);
        assert_eq!(self.code(), Some(0), "{}{stderr}", self.stdout());
        assert_eq!(self.stdout(), lines.join("\n") + "\n", "stderr: {stderr}");
    }
}

const NOTHING_FROM_APT: &str = "scripts/test: redis-server, redis-cli, chromium and chromedriver \
                                are installed: nothing to install with apt-get";

fn install(packages: &str) -> String {
    format!("apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {packages}")
}

#[test]
fn everything_present_installs_nothing_and_runs_the_tests() {
    let machine = Machine::complete(1000);

    machine.dry_run(&[]).prints(&[
        NOTHING_FROM_APT.to_owned(),
        format!(
            "scripts/test: axe-core 4.14.1 is in {}: nothing to install with npm",
            machine.axe_dir()
        ),
        format!(
            "scripts/test: would run: AXE_CORE_JS={} cargo test",
            machine.axe_js()
        ),
    ]);
}

#[test]
fn arguments_go_to_cargo_test() {
    let machine = Machine::complete(0);

    let run = machine.dry_run(&["--test", "browser", "--", "--nocapture"]);

    assert!(
        run.stdout().ends_with(&format!(
            "would run: AXE_CORE_JS={} cargo test --test browser -- --nocapture\n",
            machine.axe_js()
        )),
        "{}",
        run.stdout()
    );
}

#[test]
fn as_root_missing_redis_and_chromium_are_installed_with_apt_get() {
    let machine = Machine::without(0, &["redis-server", "chromium"]);
    machine.with_axe_core();

    machine.dry_run(&[]).prints(&[
        format!(
            "scripts/test: missing: redis-server chromium; would run: sh -c '{}'",
            install("redis-server chromium")
        ),
        format!(
            "scripts/test: axe-core 4.14.1 is in {}: nothing to install with npm",
            machine.axe_dir()
        ),
        format!(
            "scripts/test: would run: AXE_CORE_JS={} cargo test",
            machine.axe_js()
        ),
    ]);
}

#[test]
fn each_missing_program_names_its_debian_package() {
    for (absent, package) in [
        ("redis-cli", "redis-server"),
        ("chromedriver", "chromium-driver"),
        ("chromium", "chromium"),
    ] {
        let machine = Machine::without(0, &[absent]);
        machine.with_axe_core();

        let run = machine.dry_run(&[]);

        assert_eq!(run.code(), Some(0));
        assert!(
            run.stdout().starts_with(&format!(
                "scripts/test: missing: {package}; would run: sh -c '{}'\n",
                install(package)
            )),
            "without {absent}: {}",
            run.stdout()
        );
    }
}

#[test]
fn chromium_browser_stands_for_chromium() {
    let machine = Machine::without(0, &["chromium"]);
    machine.program("chromium-browser", "exit 0");
    machine.with_axe_core();

    let run = machine.dry_run(&[]);

    assert!(
        run.stdout().starts_with(NOTHING_FROM_APT),
        "{}",
        run.stdout()
    );
}

#[test]
fn with_passwordless_sudo_a_user_installs_through_it() {
    let machine = Machine::without(1000, &["redis-server", "chromium"]).with_sudo(true);
    machine.with_axe_core();

    let run = machine.dry_run(&[]);

    assert_eq!(run.code(), Some(0));
    assert!(
        run.stdout().starts_with(&format!(
            "scripts/test: missing: redis-server chromium; would run: sudo -n sh -c '{}'\n",
            install("redis-server chromium")
        )),
        "{}",
        run.stdout()
    );
}

#[test]
fn without_root_or_passwordless_sudo_it_stops_with_the_command_to_run() {
    let machine = Machine::without(1000, &["redis-server", "chromium"]).with_sudo(false);
    machine.with_axe_core();

    let run = machine.dry_run(&[]);

    assert_eq!(run.code(), Some(1));
    assert_eq!(
        run.stdout(),
        format!(
            "scripts/test: missing: redis-server chromium; installing them needs root. \
             Run this, then scripts/test again:\n  sudo sh -c '{}'\n",
            install("redis-server chromium")
        )
    );
}

#[test]
fn without_root_or_sudo_it_asks_for_su() {
    let machine = Machine::without(1000, &["chromedriver"]);
    machine.with_axe_core();

    let run = machine.dry_run(&[]);

    assert_eq!(run.code(), Some(1));
    assert!(
        run.stdout()
            .ends_with(&format!("\n  su -c '{}'\n", install("chromium-driver"))),
        "{}",
        run.stdout()
    );
}

#[test]
fn without_npm_axe_core_brings_npm_along() {
    let machine = Machine::without(0, &["npm"]);

    machine.dry_run(&[]).prints(&[
        format!(
            "scripts/test: missing: npm; would run: sh -c '{}'",
            install("npm")
        ),
        format!(
            "scripts/test: would run: npm install --no-save --no-audit --no-fund --prefix {} \
             axe-core@4.14.1",
            machine.axe_dir()
        ),
        format!(
            "scripts/test: would run: AXE_CORE_JS={} cargo test",
            machine.axe_js()
        ),
    ]);
}

#[test]
fn npm_is_not_needed_once_axe_core_is_there() {
    let machine = Machine::without(0, &["npm"]);
    machine.with_axe_core();

    let run = machine.dry_run(&[]);

    assert!(
        run.stdout().starts_with(NOTHING_FROM_APT),
        "{}",
        run.stdout()
    );
}

#[test]
fn without_cargo_it_points_to_rustup() {
    let machine = Machine::without(0, &["cargo"]);

    let run = machine.dry_run(&[]);

    assert_eq!(run.code(), Some(1));
    assert!(
        run.stdout().contains("https://rustup.rs"),
        "{}",
        run.stdout()
    );
}

#[test]
fn without_apt_get_it_names_the_packages_and_stops() {
    let machine = Machine::without(0, &["apt-get", "redis-server"]);
    machine.with_axe_core();

    let run = machine.dry_run(&[]);

    assert_eq!(run.code(), Some(1));
    assert!(
        run.stdout()
            .starts_with("scripts/test: missing: redis-server "),
        "{}",
        run.stdout()
    );
}
