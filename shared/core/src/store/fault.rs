//! [`FaultStore`]: wraps any [`ObjectStore`], counts the calls made to it and injects the
//! failures a test asks for, so the cache and sync logic can be tested against the failures S3
//! really has — including the nasty one where a write succeeded but its reply was lost.
//!
//! A test adds [`Rule`]s at any time (the store is shared behind an `Arc`, so rules and counts
//! live behind a mutex). A rule names an operation (or any), optionally a substring the key must
//! contain (for `list`, the prefix), and which of the calls it matches it hits: the n-th
//! (counting from 1, only calls the rule matches, from when it was added) or every one. The
//! first rule that hits a call decides its fault; a call no rule hits goes to the inner store
//! untouched. Everything is deterministic: no randomness, no timing beyond
//! [`Fault::Timeout`]'s own sleep.
//!
//! Counts include every call made to the wrapper, faulted or not.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Condition, Object, ObjectInfo, ObjectStore, StoreError};

/// An [`ObjectStore`] operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Put,
    Delete,
    List,
    Download,
    Upload,
}

/// What happens to a call a rule hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The call fails with `Unavailable`; the inner store is not called.
    Error,
    /// The inner call is made (and succeeds or fails), then `Unavailable` is returned: the
    /// write happened but the caller cannot know.
    ReplyLost,
    /// After sleeping this long, the call fails with `Unavailable`; the inner store is not
    /// called.
    Timeout(Duration),
}

/// Which of the calls a rule matches it hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Only the n-th matching call (1 = the first).
    Nth(u64),
    /// Every matching call.
    Always,
}

/// One injection rule; build with [`Rule::new`] and the chained setters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `None`: any operation.
    pub op: Option<Op>,
    /// Only keys (or list prefixes) containing this.
    pub key_contains: Option<String>,
    pub when: When,
    pub fault: Fault,
}

impl Rule {
    /// A rule hitting every call of `op` (`None`: of any operation) with `fault`.
    pub fn new(op: impl Into<Option<Op>>, fault: Fault) -> Rule {
        Rule {
            op: op.into(),
            key_contains: None,
            when: When::Always,
            fault,
        }
    }

    pub fn key_contains(mut self, part: impl Into<String>) -> Rule {
        self.key_contains = Some(part.into());
        self
    }

    /// Hit only the n-th matching call (1 = the first).
    pub fn nth(mut self, n: u64) -> Rule {
        self.when = When::Nth(n);
        self
    }

    fn matches(&self, op: Op, key: &str) -> bool {
        self.op.is_none_or(|o| o == op) && self.key_contains.as_deref().is_none_or(|part| key.contains(part))
    }
}

/// How many calls of each operation the wrapper received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Calls {
    pub get: u64,
    pub put: u64,
    pub delete: u64,
    pub list: u64,
    pub download: u64,
    pub upload: u64,
    /// Calls that a rule hit.
    pub faulted: u64,
}

impl Calls {
    pub fn of(&self, op: Op) -> u64 {
        match op {
            Op::Get => self.get,
            Op::Put => self.put,
            Op::Delete => self.delete,
            Op::List => self.list,
            Op::Download => self.download,
            Op::Upload => self.upload,
        }
    }

    /// All calls (faulted ones included).
    pub fn total(&self) -> u64 {
        self.get + self.put + self.delete + self.list + self.download + self.upload
    }

    /// Calls that may change the store: put, delete, upload.
    pub fn writes(&self) -> u64 {
        self.put + self.delete + self.upload
    }

    fn bump(&mut self, op: Op) {
        let n = match op {
            Op::Get => &mut self.get,
            Op::Put => &mut self.put,
            Op::Delete => &mut self.delete,
            Op::List => &mut self.list,
            Op::Download => &mut self.download,
            Op::Upload => &mut self.upload,
        };
        *n += 1;
    }
}

#[derive(Debug, Default)]
struct State {
    /// Each rule with the number of calls it has matched so far.
    rules: Vec<(Rule, u64)>,
    calls: Calls,
}

/// A fault-injecting, call-counting wrapper around another store.
#[derive(Debug)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    state: Mutex<State>,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> FaultStore {
        FaultStore {
            inner,
            state: Mutex::new(State::default()),
        }
    }

    /// The wrapped store, for looking behind the faults.
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// Add a rule; it counts matching calls from now on.
    pub fn inject(&self, rule: Rule) {
        self.state().rules.push((rule, 0));
    }

    /// Remove every rule.
    pub fn clear_faults(&self) {
        self.state().rules.clear();
    }

    /// Calls received so far.
    pub fn calls(&self) -> Calls {
        self.state().calls
    }

    pub fn reset_counts(&self) {
        self.state().calls = Calls::default();
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking test thread must not hide the counts from the others.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Count the call and decide its fault. Every matching rule advances its counter, so each
    /// rule's `Nth` is independent of the others.
    fn enter(&self, op: Op, key: &str) -> Option<Fault> {
        let mut state = self.state();
        state.calls.bump(op);
        let mut hit = None;
        for (rule, seen) in state.rules.iter_mut() {
            if !rule.matches(op, key) {
                continue;
            }
            *seen += 1;
            let fires = match rule.when {
                When::Always => true,
                When::Nth(n) => *seen == n,
            };
            if fires && hit.is_none() {
                hit = Some(rule.fault);
            }
        }
        if hit.is_some() {
            state.calls.faulted += 1;
        }
        hit
    }

    /// Run `call` on the inner store unless a rule says otherwise.
    async fn run<T, F>(&self, op: Op, key: &str, call: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, StoreError>>,
    {
        let injected = |what: &str| StoreError::Unavailable {
            key: key.to_owned(),
            message: format!("injected fault: {what} ({op:?})"),
        };
        match self.enter(op, key) {
            None => call.await,
            Some(Fault::Error) => Err(injected("error")),
            Some(Fault::ReplyLost) => {
                let _ = call.await;
                Err(injected("reply lost"))
            }
            Some(Fault::Timeout(d)) => {
                tokio::time::sleep(d).await;
                Err(injected("timeout"))
            }
        }
    }
}

#[async_trait::async_trait]
impl ObjectStore for FaultStore {
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        self.run(Op::Get, key, self.inner.get(key)).await
    }

    async fn put(&self, key: &str, body: Vec<u8>, condition: Condition) -> Result<String, StoreError> {
        self.run(Op::Put, key, self.inner.put(key, body, condition)).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.run(Op::Delete, key, self.inner.delete(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        self.run(Op::List, prefix, self.inner.list(prefix)).await
    }

    async fn download(&self, key: &str, dest: &Path) -> Result<ObjectInfo, StoreError> {
        self.run(Op::Download, key, self.inner.download(key, dest)).await
    }

    async fn upload(&self, key: &str, src: &Path, condition: Condition) -> Result<String, StoreError> {
        self.run(Op::Upload, key, self.inner.upload(key, src, condition)).await
    }
}
