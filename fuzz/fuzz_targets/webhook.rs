//! Webhook deliveries: any provider path, headers and body (JSON, form-encoded, anything) must get
//! an answer from the documented set, never a panic, and nothing may be enqueued without a valid
//! signature.
#![no_main]

use std::sync::OnceLock;

use gitferry_core::config::Config;
use gitferry_core::queue::memory::MemoryQueue;
use gitferry_core::webhook::{Delivery, accept};
use libfuzzer_sys::fuzz_target;

fn config() -> &'static Config {
    static C: OnceLock<Config> = OnceLock::new();
    C.get_or_init(|| {
        // Per-repository hooks, account-level ones (organisation/group/system hooks), and a
        // repository only an account hook speaks for.
        let text = "[webhooks.gitlab]\nsecret_env = \"S\"\n[webhooks.gitea]\nsecret_env = \"S\"\n\
                    [repos.app]\nurl = \"https://github.com/org/app.git\"\n\
                    webhook = { provider = \"github\", secret_env = \"S\" }\n[[repos.app.targets]]\nurl = \"/t\"\n\
                    [repos.lab]\nurl = \"https://gitlab.com/org/lab.git\"\n\
                    webhook = { provider = \"gitlab\", secret_env = \"S\" }\n[[repos.lab.targets]]\nurl = \"/t2\"\n\
                    [repos.tea]\nurl = \"https://gitea.example.com/org/tea.git\"\n[[repos.tea.targets]]\nurl = \"/t3\"\n";
        Config::parse(text, std::path::Path::new("fuzz.toml"), &|_| Some("secret".into())).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    // Layout: provider selector byte, then header lines until a blank line, then the body.
    let Some((&sel, rest)) = data.split_first() else { return };
    let provider = ["github", "gitlab", "gitea", "forgejo", "x"][usize::from(sel) % 5];
    let split = rest.windows(2).position(|w| w == b"\n\n").unwrap_or(rest.len());
    let (head, body) = rest.split_at(split);
    let body = body.get(2..).unwrap_or_default();
    let headers: Vec<(String, String)> = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let queue = MemoryQueue::new(5);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reply = rt.block_on(accept(config(), &queue, &Delivery { provider, headers: &headers, body }, 1 << 20));
    assert!([200, 202, 400, 401, 404, 413, 503].contains(&reply.status), "{reply:?}");
    let queued = rt.block_on(queue.len());
    if reply.status != 202 {
        assert_eq!(queued, 0, "nothing enqueued on {reply:?}");
    }
});
