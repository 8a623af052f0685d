//! Headless Chromium (Debian's, installed by `make deps`) for the status pages: the DOM after
//! rendering, a screenshot, and keyboard navigation driven through playwright-core (npm,
//! installed into tests/ui by `make deps`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::leaks::CheckedOutput;

/// The flags a sandboxed, offline machine needs (see the machine notes).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

pub fn chromium() -> &'static str {
    ["chromium", "chromium-browser"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok())
        .expect("chromium is installed by `make deps`")
}

/// `name` looked up in `PATH` (playwright wants a path, not a command).
fn absolute(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The DOM of `url` after rendering.
pub fn dump_dom(url: &str) -> String {
    let profile = crate::tempdir();
    let out = Command::new(chromium())
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .checked_output()
        .expect("chromium runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A screenshot of `url` at `width`×`height` into `target/pages/{name}.png`; returns the path.
pub fn screenshot(url: &str, name: &str, (width, height): (u32, u32)) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pages");
    std::fs::create_dir_all(&dir).expect("target/pages");
    let shot = dir.join(format!("{name}.png"));
    let profile = crate::tempdir();
    let out = Command::new(chromium())
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    shot
}

/// Run tests/ui/keyboard.mjs against `url` with HTTP Basic `user:password`: it tabs through the
/// page and returns what it found (JSON).
pub fn keyboard(url: &str, user: &str, password: &str) -> serde_json::Value {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing in tests/ui: run `make deps`"
    );
    let out = Command::new("node")
        .arg(ui.join("keyboard.mjs"))
        .arg(url)
        .env("PAGE_USER", user)
        .env("PAGE_PASSWORD", password)
        .env("CHROMIUM", absolute(chromium()))
        .current_dir(&ui)
        .checked_output()
        .expect("node runs");
    assert!(
        out.status.success(),
        "keyboard.mjs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("keyboard.mjs prints JSON")
}
