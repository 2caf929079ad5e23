//! `cargo xtask run | test | build`: every set-up step a fresh machine with only the Rust
//! toolchain needs, then the job. Measured here, building the browser bundle with plain cargo and
//! wasm-bindgen avoids installing cargo-leptos (~12 minutes cold); `cargo leptos watch` still
//! works for the edit loop (see README).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

const WASM_BINDGEN_VERSION: &str = "0.2.130";
const WASM_TARGET: &str = "wasm32-unknown-unknown";
const TANSU_VERSION: &str = "0.6.0";

fn main() -> Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("build") => build(&root, args.iter().any(|a| a == "--release")),
        Some("run") => run(&root),
        Some("test") => test(&root),
        _ => bail!("usage: cargo xtask <run | test | build [--release]>"),
    }
}

/// The workspace this run was invoked in. `cargo run` sets CARGO_MANIFEST_DIR at run time too;
/// it wins over the compile-time path because a shared target directory can hand a binary built
/// from another clone to this one (cargo sees the same sources there and does not rebuild).
fn workspace_root() -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Where cargo puts build output (`CARGO_TARGET_DIR` moves it, as CI does). The site itself
/// always lives in `<workspace>/target/site`, where the server looks by default.
fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).map_or_else(|| root.join("target"), |d| root.join(d))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin")
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("could not start {shown}"))?;
    if !st.success() {
        bail!("{shown} failed with {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    cmd.output().ok().filter(|o| o.status.success()).map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

fn step(msg: &str) {
    println!("\n==> {msg}");
}

/// Installs what the build needs, skipping whatever is already there.
fn ensure_tools() -> Result<()> {
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"])).unwrap_or_default();
    if !targets.lines().any(|t| t.trim() == WASM_TARGET) {
        step("Installing the wasm32 target");
        status(Command::new("rustup").args(["target", "add", WASM_TARGET]))?;
    }
    let bindgen = cargo_bin().join("wasm-bindgen");
    let have = output(Command::new(&bindgen).arg("--version")).unwrap_or_default();
    if !have.contains(WASM_BINDGEN_VERSION) {
        step("Installing wasm-bindgen-cli (about 2 minutes, once)");
        // Not --locked: its lockfile pins a crate version the registry mirror lacks.
        status(cargo().args(["install", "wasm-bindgen-cli", "--version", WASM_BINDGEN_VERSION]))?;
    }
    Ok(())
}

/// A real Kafka-protocol broker for the tests that need one: tansu with its SQLite storage,
/// installed once into a fixed folder outside the clone (about 9 minutes cold).
fn ensure_tansu() -> Result<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME").unwrap_or_default());
    let root = home.join(".cache/keystone-tools/tansu");
    let bin = root.join("bin/tansu");
    if !bin.exists() {
        step("Installing the tansu broker for the Kafka tests (about 9 minutes, once)");
        // Its own build folder: the workspace's stays free of its dependencies.
        status(
            cargo()
                .args(["install", "tansu", "--version", TANSU_VERSION, "--locked", "--features", "libsql", "--root"])
                .arg(&root)
                .env_remove("CARGO_TARGET_DIR"),
        )?;
    }
    Ok(bin)
}

/// Builds the browser bundle into target/site/pkg and the server binary.
fn build(root: &Path, release: bool) -> Result<()> {
    let started = Instant::now();
    build_bundle(root)?;
    step(if release { "Building the server (release)" } else { "Building the server" });
    let mut cmd = cargo();
    cmd.args(["build", "--package", "keystone", "--bin", "keystone"]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)?;
    println!("    Built in {:.0?}", started.elapsed());
    Ok(())
}

/// Builds the browser bundle (WASM + JS glue) and copies the public assets into target/site.
fn build_bundle(root: &Path) -> Result<()> {
    ensure_tools()?;
    step("Building the browser bundle (WASM, size-optimised profile)");
    status(cargo().args([
        "build",
        "--package",
        "app",
        "--lib",
        "--target",
        WASM_TARGET,
        "--features",
        "hydrate",
        "--profile",
        "wasm-release",
    ]))?;
    let wasm = target_dir(root).join(WASM_TARGET).join("wasm-release").join("app.wasm");
    let pkg = root.join("target/site/pkg");
    status(
        Command::new(cargo_bin().join("wasm-bindgen"))
            .args(["--target", "web", "--no-typescript", "--out-name", "keystone", "--out-dir"])
            .arg(&pkg)
            .arg(&wasm),
    )?;
    for entry in std::fs::read_dir(root.join("public"))? {
        let entry = entry?;
        std::fs::copy(entry.path(), root.join("target/site").join(entry.file_name()))?;
    }
    let bundle = pkg.join("keystone_bg.wasm");
    println!("    WASM bundle: {} bytes", std::fs::metadata(&bundle)?.len());
    Ok(())
}

fn run(root: &Path) -> Result<()> {
    build(root, true)?;
    let bin = target_dir(root).join("release/keystone");
    let data_dir = std::env::var("KEYSTONE_DATA_DIR").unwrap_or_else(|_| "data".into());
    let password_file = Path::new(&data_dir).join("admin-password.txt");
    step("Preparing the first admin");
    status(Command::new(&bin).args(["admin", "bootstrap", "--password-file"]).arg(&password_file))?;
    let listen = std::env::var("KEYSTONE_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    println!("\nKeystone is starting on http://{listen}/");
    println!("Sign in as `admin` with the password in {} (shown nowhere else).\n", password_file.display());
    status(Command::new(&bin).arg("serve"))
}

/// Counts from the closing lines of cargo test and Playwright.
#[derive(Default, Debug)]
struct Tally {
    passed: u64,
    failed: u64,
}

impl Tally {
    fn read_cargo_line(&mut self, line: &str) {
        // "test result: ok. 12 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let mut words = part.split_whitespace();
                if let (Some(n), Some(what)) = (words.next(), words.next()) {
                    match (n.parse::<u64>(), what) {
                        (Ok(n), "passed") => self.passed += n,
                        (Ok(n), "failed") => self.failed += n,
                        _ => {}
                    }
                }
            }
        }
    }

    fn read_playwright_line(&mut self, line: &str) {
        // "  3 passed (12.1s)" / "  1 failed"
        let mut words = line.split_whitespace();
        if let (Some(n), Some(what)) = (words.next(), words.next()) {
            match (n.parse::<u64>(), what) {
                (Ok(n), "passed") => self.passed += n,
                (Ok(n), "failed") | (Ok(n), "flaky") => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Runs a command, echoing its output while feeding each line to `read`.
fn run_counting(cmd: &mut Command, mut read: impl FnMut(&str)) -> Result<bool> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().with_context(|| format!("could not start {cmd:?}"))?;
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        read(&line);
    }
    Ok(child.wait()?.success())
}

fn test(root: &Path) -> Result<()> {
    let started = Instant::now();
    build_bundle(root)?;
    let mut tally = Tally::default();

    // `cargo test` also builds the keystone binary the browser tests run, with the same features,
    // so the server is compiled once.
    let tansu = ensure_tansu()?;
    step("Unit and integration tests (SQLite and PostgreSQL)");
    let unit_ok =
        run_counting(cargo().args(["test", "--workspace", "--no-fail-fast"]).env("KEYSTONE_TANSU", &tansu), |l| {
            tally.read_cargo_line(l)
        })?;

    step("Browser tests (headless Chromium)");
    ensure_browser()?;
    let e2e = root.join("end2end");
    if !e2e.join("node_modules/@playwright/test").exists() {
        status(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&e2e))?;
    }
    let e2e_ok = run_counting(
        Command::new("npx")
            .args(["playwright", "test", "--reporter=list"])
            .env("KEYSTONE_BIN", target_dir(root).join("debug/keystone"))
            .env("KEYSTONE_SITE_ROOT", root.join("target/site"))
            .current_dir(&e2e),
        |l| tally.read_playwright_line(l),
    )?;

    println!("\nAll tests finished in {:.0?}", started.elapsed());
    println!("total: {} passed, {} failed", tally.passed, tally.failed);
    if !unit_ok || !e2e_ok || tally.failed > 0 {
        bail!("some tests failed");
    }
    if tally.passed == 0 {
        bail!("no tests ran");
    }
    Ok(())
}

/// Debian's Chromium for the browser tests (Playwright's own browser download cannot work offline).
fn ensure_browser() -> Result<()> {
    if Path::new("/usr/bin/chromium").exists() {
        return Ok(());
    }
    step("Installing Chromium from Debian's packages");
    let sudo = output(Command::new("id").arg("-u")).is_some_and(|u| u.trim() != "0");
    let apt = |args: &[&str]| {
        let mut cmd = if sudo { Command::new("sudo") } else { Command::new("apt-get") };
        if sudo {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        status(&mut cmd)
    };
    apt(&["update", "-qq"])?;
    apt(&["install", "-y", "-qq", "chromium"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_reads_both_runners_closing_lines() {
        let mut t = Tally::default();
        t.read_cargo_line(
            "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.1s",
        );
        t.read_cargo_line("test result: FAILED. 3 passed; 2 failed; 0 ignored");
        t.read_playwright_line("  4 passed (12.3s)");
        t.read_playwright_line("  1 failed");
        t.read_playwright_line("running 4 tests");
        assert_eq!((t.passed, t.failed), (19, 3));
    }
}
