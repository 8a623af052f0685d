//! The test harness's git + Git LFS front (`git http-backend` and giftless on one loopback
//! port, tests/src/lfs.rs), for the LFS benchmark (`bench/lfs.sh`): prints `HTTP_PORT ROOT` on
//! one line (create bare repositories as `ROOT/org/NAME.git`; their URLs are
//! `http://127.0.0.1:HTTP_PORT/org/NAME.git`), serves until its stdin closes, then stops.
//!
//!     lfs-servers

fn main() {
    let servers = harness::lfs::LfsServers::start();
    println!("{} {}", servers.http.port, servers.root().display());
    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    let (batches, downloads, uploads) = servers.counts.get();
    eprintln!("lfs-servers: {batches} batch calls, {downloads} downloads, {uploads} uploads");
}
