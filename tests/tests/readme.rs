//! The README cannot rot: its configuration example must be valid, and its two set-up commands
//! must be what they claim (the demo itself runs in serve.rs; `make test` is what CI runs).

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

#[test]
fn readme_configuration_example_is_valid() {
    let readme = read("README.md");
    let start = readme.find("```toml\n").expect("a toml example") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let example = &readme[start..end];
    // Every referenced secret is "set"; an SSH key must be a real one (it is decoded).
    let keys = harness::tempdir();
    let key = harness::sshd::keygen(keys.path(), harness::sshd::KeyKind::Ed25519, None);
    let env = |name: &str| {
        Some(if name.ends_with("_KEY") {
            key.private.clone()
        } else {
            "x".into()
        })
    };
    let config = gitferry_core::config::Config::parse(example, std::path::Path::new("README.md"), &env)
        .unwrap_or_else(|e| panic!("README example does not parse:\n{e}"));
    let app = config.repo("app").expect("the example's repo");
    assert_eq!(app.targets.len(), 3);
    // And without the environment, check-config names what is missing.
    let missing =
        gitferry_core::config::Config::parse(example, std::path::Path::new("README.md"), &|_| None).unwrap_err();
    assert!(missing.to_string().contains("GITHUB_TOKEN is not set"), "{missing}");
}

#[test]
fn readme_setup_commands_exist_and_ci_runs_the_test_command() {
    let readme = read("README.md");
    assert!(readme.contains("make demo") && readme.contains("make test"));
    let makefile = read("Makefile");
    assert!(
        makefile.contains("demo:\n\t$(CARGO) run -q --profile demo -p gitferry --no-default-features -- demo"),
        "make demo runs gitferry demo"
    );
    assert!(
        makefile.contains("test: deps"),
        "make test installs its dependencies first"
    );
    let ci = read(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "make test"),
        ".ci/run calls the README's test command"
    );
}

/// The dependency names of one crate's `[dependencies]` table.
fn dependencies(manifest: &str) -> Vec<String> {
    let text = read(manifest);
    let mut in_deps = false;
    let mut names = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && !line.is_empty() && !line.starts_with('#') {
            let name = line.split(['=', '.']).next().unwrap_or_default().trim();
            names.push(name.to_string());
        }
    }
    names
}

/// The layering the README's layout section promises is the crates' dependency lists: the core
/// names no AWS crate, the engine knows neither the core nor the caller's async runtime, and only
/// gitferry-aws (with the Lambda glue) pulls the SDK.
///
/// The engine does depend on tokio, deliberately and in one file: russh (the ssh:// transport;
/// Lambda has no ssh binary) is async, so `ssh/session.rs` drives it on a private one-worker
/// runtime per connection. What "no tokio" protects still holds and is checked here: the engine's
/// API is blocking (called from `spawn_blocking`), no other engine file names tokio, and nothing
/// in it is `async` outside that file.
#[test]
fn crate_boundaries_enforce_the_layering() {
    let core = dependencies("shared/core/Cargo.toml");
    assert!(core.contains(&"gitferry-git".to_string()), "{core:?}");
    assert!(
        !core.iter().any(|d| d.starts_with("aws")),
        "gitferry-core must not depend on AWS: {core:?}"
    );
    let git = dependencies("shared/git/Cargo.toml");
    assert!(
        !git.iter().any(|d| d.starts_with("aws") || d.starts_with("gitferry")),
        "{git:?}"
    );
    for file in rust_files(&root().join("shared/git/src")) {
        let text = std::fs::read_to_string(&file).unwrap();
        if file.ends_with("ssh/session.rs") {
            continue;
        }
        assert!(
            !text.contains("tokio") && !text.contains("async fn") && !text.contains(".await"),
            "{}: only ssh/session.rs may use an async runtime (the engine's API is blocking)",
            file.display()
        );
    }
    let aws = dependencies("shared/aws/Cargo.toml");
    assert!(
        aws.contains(&"aws-sdk-s3".to_string()) && aws.contains(&"gitferry-core".to_string()),
        "{aws:?}"
    );
    // The CLI reaches the SDK only through its `aws` feature, so `make demo` builds without it.
    let cli = read("functions/cli/Cargo.toml");
    assert!(
        cli.contains("gitferry-aws = { workspace = true, optional = true }"),
        "{cli}"
    );
    assert!(
        !dependencies("functions/cli/Cargo.toml")
            .iter()
            .any(|d| d.starts_with("aws-sdk"))
    );
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}
