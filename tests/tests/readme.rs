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
    // Every referenced secret is "set".
    let config =
        gitferry_core::config::Config::parse(example, std::path::Path::new("README.md"), &|_| Some("x".into()))
            .unwrap_or_else(|e| panic!("README example does not parse:\n{e}"));
    let app = config.repo("app").expect("the example's repo");
    assert_eq!(app.targets.len(), 2);
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
        makefile.contains("demo:\n\t$(CARGO) run -q -p gitferry -- demo"),
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
