//! The test harness's `git daemon` (git://, receive-pack enabled) and `git http-backend` (smart
//! HTTP, streaming request bodies) over one directory of bare repositories, for the benchmarks
//! (`bench/mirror.sh`): prints `GIT_PORT HTTP_PORT` on one line, serves until its stdin closes,
//! then stops both.
//!
//!     git-servers ROOT

use std::path::PathBuf;

fn main() {
    let Some(root) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: git-servers ROOT");
        std::process::exit(2);
    };
    let daemon = harness::GitDaemon::start(&root);
    let http = harness::HttpBackend::start(&root, None);
    println!("{} {}", daemon.port, http.port);
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
}
