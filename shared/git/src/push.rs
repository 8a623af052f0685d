//! Push: a `git-receive-pack` client (gix has none), and the same plan applied to local paths.
//!
//! 1. **Plan** ([`plan`]): compare the refs we want on the target with what it advertises
//!    (only refs our patterns select: refs outside them, such as a host's `refs/pull/*`, are
//!    never touched) → create / update / force / delete commands.
//! 2. **Handshake** for `git-receive-pack` (protocol v0/v1; v2 has no push), parse the
//!    advertisement and capabilities.
//! 3. **Commands** as pkt-lines, the first carrying our capabilities: `report-status`,
//!    `side-band-64k`, `ofs-delta`, `delete-refs`, `atomic` (each only when offered; atomic
//!    only when asked for), `agent`.
//! 4. **Pack** of exactly what the target lacks, streamed raw after the commands' flush
//!    ([`super::pack`]). No pack when every command is a delete; an empty (32-byte) pack when
//!    refs are created or moved to objects the target already has — receive-pack waits for a
//!    pack whenever any command is not a delete. When the target's refs are the cache's before
//!    a fetch, the fetch's pack is sent instead, as it is: after the fetch ([`Forward`]) or
//!    while it arrives ([`Pipeline`]) — no counting, no re-packing ([`PackMode`] says which).
//! 5. **report-status**, demultiplexed from side-band channel 1 (channel 2 carries hook
//!    messages and progress, channel 3 a fatal error), into a per-ref result.
//!
//! A ref the target refuses (hook, protection, non-fast-forward policy) is a per-ref
//! rejection in the outcome, not an error: the other refs still land (unless `atomic`).
//!
//! Local-path targets get the same plan, applied in process. A non-bare one (a work tree) is
//! accepted under git's rule: a branch checked out in one of its work trees is refused, since
//! its files and index would silently fall behind, unless its `receive.denyCurrentBranch`
//! (`receive.denyDeleteCurrent` for deletes) is `ignore`, `warn` or `false`.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::sync::atomic::AtomicBool;

use gix::ObjectId;
use gix::protocol::transport::client::blocking_io::{ReadlineBufRead, Transport};
use gix::protocol::transport::client::{MessageKind, WriteMode};
use gix::protocol::transport::packetline::PacketLineRef;
use gix::protocol::transport::packetline::blocking_io::{StreamingPeekableIter, encode};
use gix::protocol::transport::{Protocol, Service};
use serde::Serialize;

use super::guard::guard;
use super::pack::{self, PackError};
use super::refs::{self, DeltaKind, RefPatterns, RefState};
use super::remote::{Location, Remote, scrub};
use super::repo::{self, LocalUpdate, Peel};
use super::{Error, advert, local, lsremote, transport};

mod pipeline;
pub use pipeline::Pipeline;

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    pub refs: RefPatterns,
    /// Delete target refs (matching the patterns) that we do not have.
    pub prune: bool,
    /// Ask for all-or-nothing (`atomic`) when the target offers it.
    pub atomic: bool,
    /// Keep refs someone else moved: with the refs we last knew the target to have, a command
    /// that would overwrite (non-fast-forward) or delete a ref that is no longer where we left
    /// it is withheld and reported in [`PushOutcome::diverged`]. `None` = a mirror overwrites.
    pub keep_divergent: Option<BTreeMap<String, ObjectId>>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            refs: RefPatterns::default(),
            prune: true,
            atomic: false,
            keep_divergent: None,
        }
    }
}

/// A target ref left alone because someone else moved it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diverged {
    pub name: String,
    /// Where the target has it.
    #[serde(with = "refs::hex_oid")]
    pub target: ObjectId,
    /// Where the source has it (`None`: the source deleted it).
    #[serde(with = "refs::hex_oid_opt")]
    pub wanted: Option<ObjectId>,
}

/// One ref command: `old → new` on the target (`None` = absent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Command {
    pub name: String,
    pub kind: DeltaKind,
    #[serde(with = "refs::hex_oid_opt")]
    pub old: Option<ObjectId>,
    #[serde(with = "refs::hex_oid_opt")]
    pub new: Option<ObjectId>,
}

/// The target's verdict on one command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RefResult {
    #[serde(flatten)]
    pub command: Command,
    /// `None` = applied; `Some(reason)` = rejected by the target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// How the pack of a push was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PackMode {
    /// No pack was needed (nothing to send, or only deletes).
    #[default]
    None,
    /// Counted and written for this target (what it lacks, thin where it allows).
    Counted,
    /// The pack received from the source, sent as it is after the fetch ([`Forward`]).
    Forwarded,
    /// The pack received from the source, sent while it arrived ([`Pipeline`]).
    Streamed,
}

/// What a push did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PushOutcome {
    pub results: Vec<RefResult>,
    /// How the pack was made.
    pub pack: PackMode,
    /// Objects and bytes of the pack sent (0 when none was needed).
    pub objects: u64,
    pub bytes: u64,
    /// Messages the target sent for humans (hook output), progress lines removed.
    pub remote_messages: Vec<String>,
    /// Whether the update was requested as atomic and the target supports it.
    pub atomic: bool,
    /// Refs withheld by `keep_divergent`.
    pub diverged: Vec<Diverged>,
    /// The target's refs (within the patterns) before the push.
    #[serde(skip)]
    pub target_before: BTreeMap<String, ObjectId>,
}

impl PushOutcome {
    pub fn rejected(&self) -> impl Iterator<Item = &RefResult> {
        self.results.iter().filter(|r| r.rejected.is_some())
    }

    pub fn applied(&self) -> impl Iterator<Item = &RefResult> {
        self.results.iter().filter(|r| r.rejected.is_none())
    }

    /// The target's refs after the push: what it had, with the applied commands.
    pub fn target_after(&self) -> BTreeMap<String, ObjectId> {
        let mut refs = self.target_before.clone();
        for r in self.applied() {
            match r.command.new {
                Some(id) => refs.insert(r.command.name.clone(), id),
                None => refs.remove(&r.command.name),
            };
        }
        refs
    }
}

/// Split off commands that would overwrite or delete a ref someone else moved since we last
/// knew it (`last_known`).
fn withhold_diverged(
    commands: Vec<Command>,
    current: &BTreeMap<String, ObjectId>,
    last_known: Option<&BTreeMap<String, ObjectId>>,
) -> (Vec<Command>, Vec<Diverged>) {
    let Some(last_known) = last_known else {
        return (commands, Vec::new());
    };
    let mut keep = Vec::new();
    let mut diverged = Vec::new();
    for c in commands {
        let overwrites = matches!(c.kind, DeltaKind::Forced | DeltaKind::Deleted);
        match current.get(&c.name) {
            Some(now) if overwrites && last_known.get(&c.name) != Some(now) => diverged.push(Diverged {
                name: c.name.clone(),
                target: *now,
                wanted: c.new,
            }),
            _ => keep.push(c),
        }
    }
    (keep, diverged)
}

/// Commands that turn `target` into `desired` (both already filtered by the ref patterns).
/// `is_fast_forward(old, new)` classifies updates; deletions only when `prune`.
pub fn plan(
    desired: &BTreeMap<String, ObjectId>,
    target: &BTreeMap<String, ObjectId>,
    prune: bool,
    is_fast_forward: impl FnMut(ObjectId, ObjectId) -> bool,
) -> Vec<Command> {
    refs::diff(target, desired, is_fast_forward)
        .into_iter()
        .filter(|d| prune || d.kind != DeltaKind::Deleted)
        .map(|d| Command {
            name: d.name,
            kind: d.kind,
            old: d.old,
            new: d.new,
        })
        .collect()
}

/// Make `remote` carry exactly the refs `desired` (from the local repository `repo`), within
/// `options.refs`.
pub fn push(
    repo: &gix::Repository,
    remote: &Remote,
    desired: &RefState,
    options: &PushOptions,
    interrupt: &AtomicBool,
) -> Result<PushOutcome, Error> {
    push_through(repo, remote, None, None, desired, options, interrupt)
}

/// A pack received from the source, to be sent to a target as it is: the lower bound of a
/// mirror is moving the pack once in and once out, without counting and re-packing.
///
/// Valid for a target whose refs (within the patterns) are exactly `valid_for`, the cache's
/// refs before the fetch: the source sent every object reachable from its new tips that is not
/// reachable from those refs, and the target, having exactly those refs, has all the rest (a
/// first mirror into an empty target: the whole pack). Extra objects (bases gix appended to
/// complete a thin pack) are harmless to receive-pack.
#[derive(Clone, Debug)]
pub struct Forward {
    pub pack: std::path::PathBuf,
    pub valid_for: BTreeMap<String, ObjectId>,
}

impl Forward {
    /// Whether the pack can be sent to a target with refs `target` for `commands`: the refs
    /// must be `valid_for`, and every new ref value must be in the pack or be one of those refs'
    /// values. (The source sends nothing for a tip the cache has as an object, even one no ref
    /// reaches — a branch moved back to a commit the cache still holds — and the target may
    /// lack it.)
    fn covers(&self, target: &BTreeMap<String, ObjectId>, commands: &[Command], hash: gix::hash::Kind) -> bool {
        if self.valid_for != *target {
            return false;
        }
        let Ok(index) = gix_pack::index::File::at(self.pack.with_extension("idx"), hash) else {
            return false;
        };
        let known: std::collections::HashSet<&ObjectId> = target.values().collect();
        commands
            .iter()
            .filter_map(|c| c.new.as_ref())
            .all(|id| known.contains(id) || index.lookup(id).is_some())
    }
}

/// A target's `git-receive-pack`, connected and its advertisement read, waiting for commands.
/// Opened while something else runs ([`super::mirror`] opens it while the fetch runs, so the
/// target's handshake costs no time of its own) and used by [`push_through`].
pub struct Connected {
    t: Box<dyn Transport + Send>,
    advertised: advert::Advertisement,
    opened: std::time::Instant,
}

impl Connected {
    /// How long the connection has been waiting.
    pub fn age(&self) -> std::time::Duration {
        self.opened.elapsed()
    }

    /// The target has no refs at all (a new repository).
    pub fn is_empty(&self) -> bool {
        self.advertised.refs.is_empty()
    }
}

/// Connect to a network target's receive-pack and read its advertisement; `None` for a local
/// path, which needs no connection.
pub fn connect(remote: &Remote) -> Result<Option<Connected>, Error> {
    match remote.location() {
        Location::Local(_) => Ok(None),
        Location::Network(_) => guard(remote, "connecting to push", || connect_network(remote)).map(Some),
    }
}

/// [`push`], through `connected` (from [`connect`] on the same remote) when given, sending
/// `forward`'s pack instead of a new one when the target's refs make it valid.
pub fn push_through(
    repo: &gix::Repository,
    remote: &Remote,
    connected: Option<Connected>,
    forward: Option<&Forward>,
    desired: &RefState,
    options: &PushOptions,
    interrupt: &AtomicBool,
) -> Result<PushOutcome, Error> {
    guard(remote, "pushing", || {
        let desired = desired.filtered(&options.refs).ids();
        match remote.location() {
            Location::Local(path) => push_local(repo, remote, path, &desired, options, interrupt),
            Location::Network(_) => {
                let c = match connected {
                    Some(c) => c,
                    None => connect_network(remote)?,
                };
                push_network(repo, remote, c, forward, &desired, options, interrupt)
            }
        }
    })
}

fn push_local(
    repo: &gix::Repository,
    remote: &Remote,
    path: &std::path::Path,
    desired: &BTreeMap<String, ObjectId>,
    options: &PushOptions,
    interrupt: &AtomicBool,
) -> Result<PushOutcome, Error> {
    let target = repo::open(path).map_err(|e| lsremote::not_found_if_missing(remote, path, e))?;
    let all = RefPatterns::all();
    let target_all = repo::read_refs(&target, &all, Peel::No)?;
    let current = target_all.filtered(&options.refs).ids();
    let commands = plan(desired, &current, options.prune, |old, new| {
        repo::is_ancestor(repo, old, new)
    });
    let (commands, diverged) = withhold_diverged(commands, &current, options.keep_divergent.as_ref());
    let mut outcome = PushOutcome {
        atomic: options.atomic,
        diverged,
        target_before: current,
        ..Default::default()
    };
    if commands.is_empty() {
        return Ok(outcome);
    }
    let refusals = checked_out_refusals(&target, &commands);
    let tips: Vec<ObjectId> = commands.iter().filter_map(|c| c.new).collect();
    let haves: Vec<ObjectId> = target_all.refs.values().map(|t| t.id).collect();
    let stats =
        local::copy_objects(repo, &target, &tips, &haves, interrupt).map_err(|e| e.into_error(remote.to_string()))?;
    outcome.objects = stats.objects;
    outcome.bytes = stats.bytes;
    if !tips.is_empty() {
        outcome.pack = PackMode::Counted;
    }
    let to_update = |c: &Command| LocalUpdate {
        name: c.name.clone(),
        old: c.old,
        new: c.new,
    };
    if options.atomic {
        let verdict = match refusals.iter().next() {
            Some((name, reason)) => Some(format!("atomic update refused: {name}: {reason}")),
            None => {
                let updates: Vec<_> = commands.iter().map(to_update).collect();
                let applied = repo::apply_ref_updates(&target, &updates, None, "gitferry: push");
                applied.err().map(|e| format!("atomic update failed: {e}"))
            }
        };
        outcome.results = commands
            .into_iter()
            .map(|command| RefResult {
                command,
                rejected: verdict.clone(),
            })
            .collect();
    } else {
        outcome.results = commands
            .into_iter()
            .map(|command| {
                let rejected = match refusals.get(&command.name) {
                    Some(reason) => Some(reason.clone()),
                    None => repo::apply_ref_updates(&target, &[to_update(&command)], None, "gitferry: push")
                        .err()
                        .map(|e| e.to_string()),
                };
                RefResult { command, rejected }
            })
            .collect();
    }
    Ok(outcome)
}

/// The commands a non-bare target refuses, as git's receive-pack does by default: updating or
/// deleting a branch checked out in one of its work trees (allowed only when the target's
/// `receive.denyCurrentBranch` / `receive.denyDeleteCurrent` say `ignore`, `warn` or `false`).
fn checked_out_refusals(target: &gix::Repository, commands: &[Command]) -> BTreeMap<String, String> {
    let checked_out = repo::checked_out_branches(target);
    commands
        .iter()
        .filter(|c| checked_out.contains(&c.name))
        .filter_map(|c| {
            let (key, what) = match c.new {
                Some(_) => ("receive.denyCurrentBranch", "update"),
                None => ("receive.denyDeleteCurrent", "delete"),
            };
            (!repo::allows_pushing_checked_out(target, key)).then(|| {
                let reason = format!("refusing to {what} the branch checked out in the target's work tree (see {key})");
                (c.name.clone(), reason)
            })
        })
        .collect()
}

/// Handshake with the target's receive-pack: its refs and capabilities, read by us (see
/// `advert`: gix's reader panics on the dangling HEAD symref dulwich advertises for every new
/// repository).
fn connect_network(remote: &Remote) -> Result<Connected, Error> {
    let opened = std::time::Instant::now();
    let mut t = transport::open(remote, Service::ReceivePack, Protocol::V1)?;
    let advertised = {
        let response = t
            .handshake(Service::ReceivePack, &[])
            .map_err(|e| Error::from_client(remote, "receive-pack handshake", &e))?;
        let mut reader = response.refs.ok_or_else(|| Error::Remote {
            remote: remote.to_string(),
            message: "receive-pack sent no ref advertisement".into(),
            transient: true,
        })?;
        advert::parse_v1(&mut reader, response.actual_protocol, &response.capabilities)
            .map_err(|e| Error::from_advert(remote, "reading the target's refs", e))?
    };
    Ok(Connected { t, advertised, opened })
}

/// The receive-pack conversation after the handshake: plan, commands and pack on one stream,
/// then the target's report.
fn push_network(
    repo: &gix::Repository,
    remote: &Remote,
    connected: Connected,
    forward: Option<&Forward>,
    desired: &BTreeMap<String, ObjectId>,
    options: &PushOptions,
    interrupt: &AtomicBool,
) -> Result<PushOutcome, Error> {
    let Connected { mut t, advertised, .. } = connected;
    let target_all = lsremote::ref_state_from_advertisement(&advertised.refs, &RefPatterns::all())?;
    let current = target_all.filtered(&options.refs).ids();
    let commands = plan(desired, &current, options.prune, |old, new| {
        repo::is_ancestor(repo, old, new)
    });
    let (commands, diverged) = withhold_diverged(commands, &current, options.keep_divergent.as_ref());
    let mut outcome = PushOutcome {
        atomic: options.atomic && advertised.offers("atomic"),
        diverged,
        target_before: current,
        ..Default::default()
    };
    if commands.is_empty() {
        let _ = gix::protocol::indicate_end_of_interaction(&mut t, false);
        return Ok(outcome);
    }
    let caps = Capabilities::choose(remote, &advertised, &commands, outcome.atomic)?;
    // The received pack may hold ofs-deltas: only for a target that reads them.
    let forward =
        forward.filter(|f| caps.pack.ofs_delta && f.covers(&outcome.target_before, &commands, repo.object_hash()));
    let request = t
        .request(WriteMode::Binary, MessageKind::Flush, false)
        .map_err(|e| Error::from_client(remote, "starting push", &e))?;
    let (mut raw, mut reader) = request.into_parts();
    let haves: Vec<ObjectId> = target_all.refs.values().map(|t| t.id).collect();
    let source = match forward {
        Some(f) => PackSource::Forward(&f.pack),
        None => PackSource::Count { haves: &haves },
    };
    if commands.iter().any(|c| c.new.is_some()) {
        outcome.pack = match source {
            PackSource::Forward(_) => PackMode::Forwarded,
            PackSource::Count { .. } => PackMode::Counted,
        };
    }
    let send = send_commands_and_pack(repo, &commands, &caps, source, &mut raw, interrupt);
    drop(raw); // ends the HTTP request body
    if let Err(SendError::Pack(PackError::Interrupted)) = send {
        // The target still waits for the rest of the pack: reading its report would block
        // until the connection times out. Hanging up makes it discard what it got.
        return Err(Error::Interrupted);
    }
    let mut messages = RemoteMessages::default();
    let report = read_report(remote, &mut reader, caps.sideband, &mut messages);
    outcome.remote_messages = messages.lines(remote);
    let (stats, report) = sent(repo, remote, send, report)?;
    (outcome.objects, outcome.bytes) = stats;
    outcome.results = results(remote, commands, &report)?;
    Ok(outcome)
}

/// What we ask of the target's receive-pack, from what it offers.
struct Capabilities {
    /// The capability list sent with the first command.
    wanted: Vec<String>,
    sideband: bool,
    pack: pack::PackOptions,
}

impl Capabilities {
    fn choose(
        remote: &Remote,
        advertised: &advert::Advertisement,
        commands: &[Command],
        atomic: bool,
    ) -> Result<Capabilities, Error> {
        let offers = |name: &str| advertised.offers(name);
        if !offers("report-status") {
            return Err(Error::Remote {
                remote: remote.to_string(),
                message: "the target's receive-pack does not offer report-status; refusing to push blind".into(),
                transient: false,
            });
        }
        let mut wanted = vec!["report-status".to_owned()];
        let sideband = offers("side-band-64k");
        for (cap, want) in [
            ("side-band-64k", sideband),
            ("ofs-delta", true),
            ("delete-refs", commands.iter().any(|c| c.new.is_none())),
            ("atomic", atomic),
        ] {
            if want && offers(cap) {
                wanted.push(cap.to_owned());
            }
        }
        wanted.push(format!("agent={}", transport::AGENT));
        // Thin packs as `git push` sends them, unless the target says it cannot complete them.
        let pack = pack::PackOptions {
            ofs_delta: offers("ofs-delta"),
            thin: !offers("no-thin"),
        };
        Ok(Capabilities { wanted, sideband, pack })
    }
}

/// Where the pack comes from: the source's pack as received, or counted against `haves`.
enum PackSource<'a> {
    Forward(&'a std::path::Path),
    Count { haves: &'a [ObjectId] },
}

/// Commands, then (if anything is created or updated) the pack, all on one stream. Returns the
/// pack's objects and bytes.
fn send_commands_and_pack(
    repo: &gix::Repository,
    commands: &[Command],
    caps: &Capabilities,
    source: PackSource<'_>,
    raw: &mut dyn Write,
    interrupt: &AtomicBool,
) -> Result<(u64, u64), SendError> {
    write_commands(repo.object_hash(), commands, caps, raw).map_err(SendError::Io)?;
    let mut stats = (0, 0);
    if commands.iter().any(|c| c.new.is_some()) {
        let mut w = BufWriter::with_capacity(1 << 16, &mut *raw);
        let s = match source {
            PackSource::Forward(path) => pack::copy_pack(path, &mut w, interrupt),
            PackSource::Count { haves } => {
                let tips: Vec<ObjectId> = commands.iter().filter_map(|c| c.new).collect();
                pack::write_pack(repo, &tips, haves, caps.pack, &mut w, interrupt)
            }
        }
        .map_err(SendError::Pack)?;
        w.flush().map_err(SendError::Io)?;
        stats = (s.objects, s.bytes);
    }
    raw.flush().map_err(SendError::Io)?;
    Ok(stats)
}

/// The commands as pkt-lines and their flush, the first line carrying our capabilities.
fn write_commands(
    hash: gix::hash::Kind,
    commands: &[Command],
    caps: &Capabilities,
    raw: &mut dyn Write,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let zero = ObjectId::null(hash);
    for (i, c) in commands.iter().enumerate() {
        let mut line = format!("{} {} {}", c.old.unwrap_or(zero), c.new.unwrap_or(zero), c.name);
        if i == 0 {
            line.push('\0');
            line.push_str(&caps.wanted.join(" "));
        }
        line.push('\n');
        encode::data_to_write(line.as_bytes(), &mut buf)?;
    }
    encode::flush_to_write(&mut buf)?;
    raw.write_all(&buf)
}

/// What was sent and the target's report, or why sending failed — in the target's own words
/// when it hung up early with a report or a fatal error, which explain more than our broken
/// pipe.
fn sent(
    repo: &gix::Repository,
    remote: &Remote,
    send: Result<(u64, u64), SendError>,
    report: Result<Vec<String>, Error>,
) -> Result<((u64, u64), Vec<String>), Error> {
    match send {
        Ok(stats) => Ok((stats, report?)),
        Err(SendError::Pack(PackError::Interrupted)) => Err(Error::Interrupted),
        Err(SendError::Pack(PackError::Local(m))) => Err(Error::Local {
            path: repo.path().display().to_string(),
            message: m,
        }),
        Err(SendError::Pack(PackError::Write(e)) | SendError::Io(e)) => Err(match report {
            Err(reason) => reason,
            Ok(_) => Error::from_io(remote, "sending pack", &e),
        }),
    }
}

/// Each command with the target's verdict from its report-status.
fn results(remote: &Remote, commands: Vec<Command>, report: &[String]) -> Result<Vec<RefResult>, Error> {
    let status = parse_report_status(report).map_err(|m| Error::Remote {
        remote: remote.to_string(),
        message: scrub(&m, remote),
        transient: true,
    })?;
    if let Err(reason) = status.unpack {
        return Err(Error::Unpack {
            remote: remote.to_string(),
            message: scrub(&reason, remote),
        });
    }
    Ok(commands
        .into_iter()
        .map(|command| {
            let rejected = match status.refs.get(&command.name) {
                Some(None) => None,
                Some(Some(reason)) => Some(scrub(reason, remote)),
                None => Some("the target reported no status for this ref".into()),
            };
            RefResult { command, rejected }
        })
        .collect())
}

enum SendError {
    Io(std::io::Error),
    Pack(PackError),
}

/// Text the remote sends on side-band 2 (hook output, progress) and 3 (fatal).
#[derive(Default)]
struct RemoteMessages {
    text: Vec<u8>,
    fatal: Vec<u8>,
}

impl RemoteMessages {
    /// Human lines, progress meters (`\r`-updated "…: 50% (1/2)") removed, at most 100.
    fn lines(&self, remote: &Remote) -> Vec<String> {
        String::from_utf8_lossy(&self.text)
            .split(['\n', '\r'])
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !is_progress(l))
            .take(100)
            .map(|l| scrub(l, remote))
            .collect()
    }
}

fn is_progress(line: &str) -> bool {
    line.contains("% (")
        || line.starts_with("Total ") && line.contains("(delta ")
        || line.starts_with("Checking connectivity")
}

/// Read report-status lines from the response.
///
/// With side-band, raw packets are demultiplexed here rather than by gix's reader, whose
/// progress callback strips a trailing newline from every packet — and receive-pack relays hook
/// output in arbitrary 128-byte chunks, so line boundaries would be lost. Channel 1 carries the
/// (small) report as nested pkt-lines, 2 human text, 3 a fatal error.
fn read_report(
    remote: &Remote,
    reader: &mut dyn ReadlineBufRead,
    sideband: bool,
    messages: &mut RemoteMessages,
) -> Result<Vec<String>, Error> {
    let protocol = |m: String| Error::Remote {
        remote: remote.to_string(),
        message: scrub(&m, remote),
        transient: true,
    };
    let mut lines = Vec::new();
    let push_text = |lines: &mut Vec<String>, data: &[u8]| -> Result<(), Error> {
        let text = String::from_utf8_lossy(data).trim_end_matches('\n').to_owned();
        if let Some(err) = text.strip_prefix("ERR ") {
            return Err(protocol(format!("remote error: {err}")));
        }
        lines.push(text);
        Ok(())
    };
    let mut band1 = Vec::new();
    while let Some(line) = reader.readline() {
        let line = match line {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => return Err(protocol(format!("malformed push response: {e}"))),
            Err(e) => {
                let fatal = String::from_utf8_lossy(&messages.fatal).trim().to_owned();
                return Err(protocol(if fatal.is_empty() {
                    format!("reading push result: {}", super::error::chain(&e))
                } else {
                    format!("remote error: {fatal}")
                }));
            }
        };
        let Some(data) = line.as_slice() else { continue };
        if !sideband {
            push_text(&mut lines, data)?;
            continue;
        }
        match data.split_first() {
            Some((1, rest)) => band1.extend_from_slice(rest),
            Some((2, rest)) => messages.text.extend_from_slice(rest),
            Some((3, rest)) => messages.fatal.extend_from_slice(rest),
            _ => push_text(&mut lines, data)?, // e.g. an `ERR` line outside the side-band
        }
    }
    if sideband {
        // A fatal error on channel 3 explains an empty or cut channel 1 better than we can.
        let fatal = String::from_utf8_lossy(&messages.fatal).trim().to_owned();
        let unpacked = unpack_band1(&band1, &mut lines, push_text);
        if !fatal.is_empty() && (unpacked.is_err() || lines.is_empty()) {
            return Err(protocol(format!("remote error: {fatal}")));
        }
        unpacked.map_err(protocol)??;
    }
    Ok(lines)
}

/// The report-status pkt-lines nested in side-band channel 1 (nothing at all is no lines: the
/// caller says what is missing). The outer error is a framing problem, the inner one what
/// `push_text` refused.
fn unpack_band1(
    band1: &[u8],
    lines: &mut Vec<String>,
    push_text: impl Fn(&mut Vec<String>, &[u8]) -> Result<(), Error>,
) -> Result<Result<(), Error>, String> {
    if band1.is_empty() {
        return Ok(Ok(()));
    }
    let mut inner = StreamingPeekableIter::new(band1, &[PacketLineRef::Flush], false);
    while let Some(line) = inner.read_line() {
        match line {
            Ok(Ok(l)) => {
                if let Some(data) = l.as_slice()
                    && let Err(e) = push_text(lines, data)
                {
                    return Ok(Err(e));
                }
            }
            Ok(Err(e)) => return Err(format!("malformed report-status: {e}")),
            Err(e) => return Err(format!("truncated report-status: {e}")),
        }
    }
    Ok(Ok(()))
}

/// Demultiplex and parse a whole receive-pack response held in memory, as [`push`] does with
/// the one it reads from the connection: the report and the remote's messages. For fuzzing and
/// tests.
pub fn parse_push_response(data: &[u8], sideband: bool) -> Result<(ReportStatus, Vec<String>), String> {
    let remote = Remote::local("receive-pack response".into());
    let mut lines = StreamingPeekableIter::new(data, &[PacketLineRef::Flush], false);
    let mut messages = RemoteMessages::default();
    let report = read_report(&remote, &mut lines.as_read(), sideband, &mut messages).map_err(|e| e.to_string())?;
    let status = parse_report_status(&report)?;
    Ok((status, messages.lines(&remote)))
}

/// A parsed `report-status`.
#[derive(Debug, PartialEq, Eq)]
pub struct ReportStatus {
    /// `unpack ok` or the server's reason.
    pub unpack: Result<(), String>,
    /// Per ref: `None` = ok, `Some(reason)` = ng.
    pub refs: BTreeMap<String, Option<String>>,
}

/// Parse report-status lines (`unpack ok`, `ok <ref>`, `ng <ref> <reason>`). An `ERR` line or a
/// missing `unpack` line is an error.
pub fn parse_report_status(lines: &[String]) -> Result<ReportStatus, String> {
    let mut iter = lines.iter();
    let first = iter.next().ok_or("the target sent no report-status")?;
    if let Some(err) = first.strip_prefix("ERR ") {
        return Err(format!("remote error: {err}"));
    }
    let unpack = match first.strip_prefix("unpack ") {
        Some("ok") => Ok(()),
        Some(reason) => Err(reason.to_owned()),
        None => return Err(format!("unexpected report-status line {first:?}")),
    };
    let mut refs = BTreeMap::new();
    for line in iter {
        if let Some(name) = line.strip_prefix("ok ") {
            refs.insert(name.to_owned(), None);
        } else if let Some(rest) = line.strip_prefix("ng ") {
            let (name, reason) = rest.split_once(' ').unwrap_or((rest, "rejected"));
            refs.insert(name.to_owned(), Some(reason.to_owned()));
        } else if let Some(err) = line.strip_prefix("ERR ") {
            return Err(format!("remote error: {err}"));
        } else {
            return Err(format!("unexpected report-status line {line:?}"));
        }
    }
    Ok(ReportStatus { unpack, refs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn report_status_parsing() {
        let lines: Vec<String> = ["unpack ok", "ok refs/heads/main", "ng refs/heads/blocked hook declined"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r = parse_report_status(&lines).unwrap();
        assert_eq!(r.unpack, Ok(()));
        assert_eq!(r.refs["refs/heads/main"], None);
        assert_eq!(r.refs["refs/heads/blocked"].as_deref(), Some("hook declined"));
        assert!(parse_report_status(&[]).is_err());
        assert!(parse_report_status(&["ERR no".into()]).is_err());
        assert!(parse_report_status(&["garbage".into()]).is_err());
        let r = parse_report_status(&["unpack index-pack abnormal exit".into()]).unwrap();
        assert_eq!(r.unpack, Err("index-pack abnormal exit".into()));
    }

    #[test]
    fn plan_creates_updates_deletes_and_respects_prune() {
        let desired: BTreeMap<_, _> = [("refs/heads/a", 1), ("refs/heads/b", 2), ("refs/heads/n", 3)]
            .into_iter()
            .map(|(n, i)| (n.to_owned(), oid(i)))
            .collect();
        let target: BTreeMap<_, _> = [("refs/heads/a", 1), ("refs/heads/b", 9), ("refs/heads/old", 4)]
            .into_iter()
            .map(|(n, i)| (n.to_owned(), oid(i)))
            .collect();
        let p = plan(&desired, &target, true, |_, _| false);
        let kinds: Vec<_> = p.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("refs/heads/b", DeltaKind::Forced),
                ("refs/heads/n", DeltaKind::Created),
                ("refs/heads/old", DeltaKind::Deleted)
            ]
        );
        assert_eq!(plan(&desired, &target, false, |_, _| true).len(), 2);
        assert!(plan(&desired, &desired, true, |_, _| true).is_empty());
    }

    #[test]
    fn keep_divergent_withholds_only_refs_someone_else_moved() {
        let map = |v: &[(&str, u8)]| -> BTreeMap<String, ObjectId> {
            v.iter().map(|(n, i)| (n.to_string(), oid(*i))).collect()
        };
        let current = map(&[
            ("refs/heads/ours", 1),
            ("refs/heads/theirs", 9),
            ("refs/heads/gone", 5),
            ("refs/heads/ff", 7),
        ]);
        let last = map(&[
            ("refs/heads/ours", 1),
            ("refs/heads/theirs", 2),
            ("refs/heads/gone", 4),
            ("refs/heads/ff", 6),
        ]);
        let desired = map(&[
            ("refs/heads/ours", 3),
            ("refs/heads/theirs", 3),
            ("refs/heads/ff", 8),
            ("refs/heads/new", 1),
        ]);
        // ff: 7 -> 8 is a fast-forward even though someone else moved it.
        let commands = plan(&desired, &current, true, |old, _| old == oid(7));
        let (keep, diverged) = withhold_diverged(commands, &current, Some(&last));
        let kept: Vec<_> = keep.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(kept, vec!["refs/heads/ff", "refs/heads/new", "refs/heads/ours"]);
        let names: Vec<_> = diverged.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["refs/heads/gone", "refs/heads/theirs"]);
        let (all, none) = withhold_diverged(plan(&desired, &current, true, |_, _| false), &current, None);
        assert_eq!((all.len(), none.len()), (5, 0));
    }

    fn pkt(out: &mut Vec<u8>, data: &[u8]) {
        out.extend_from_slice(format!("{:04x}", data.len() + 4).as_bytes());
        out.extend_from_slice(data);
    }

    #[test]
    fn side_band_response_is_demultiplexed() {
        let mut report = Vec::new();
        for l in ["unpack ok\n", "ok refs/heads/main\n", "ng refs/heads/x hook declined\n"] {
            pkt(&mut report, l.as_bytes());
        }
        report.extend_from_slice(b"0000");
        let mut data = Vec::new();
        // The report split across two channel-1 packets, hook output in between on channel 2.
        let (a, b) = report.split_at(7);
        pkt(&mut data, &[&[1u8][..], a].concat());
        pkt(&mut data, b"\x02policy: x is frozen\n");
        pkt(&mut data, &[&[1u8][..], b].concat());
        data.extend_from_slice(b"0000");
        let (status, messages) = parse_push_response(&data, true).unwrap();
        assert_eq!(status.unpack, Ok(()));
        assert_eq!(status.refs["refs/heads/main"], None);
        assert_eq!(status.refs["refs/heads/x"].as_deref(), Some("hook declined"));
        assert_eq!(messages, ["policy: x is frozen"]);
        // Without side-band the report lines come as they are; a fatal channel 3 is an error.
        assert!(parse_push_response(&report, false).is_ok());
        let mut fatal = Vec::new();
        pkt(&mut fatal, b"\x03fatal: out of space");
        fatal.extend_from_slice(b"0000");
        let e = parse_push_response(&fatal, true).unwrap_err();
        assert!(e.contains("out of space"), "{e}");
    }

    #[test]
    fn progress_lines_are_dropped_from_messages() {
        let m = RemoteMessages {
            text: b"Resolving deltas:  50% (1/2)\rResolving deltas: 100% (2/2), done.\nrefusing blocked branch\n"
                .to_vec(),
            fatal: Vec::new(),
        };
        let r = Remote::parse("git://h/r").unwrap();
        assert_eq!(m.lines(&r), vec!["refusing blocked branch".to_owned()]);
    }
}
