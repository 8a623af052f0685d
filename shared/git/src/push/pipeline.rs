//! Pack forwarding, pipelined: the push to a target starts as the fetch's pack starts to arrive,
//! and every byte the source sends goes on to the target's receive-pack while the cache indexes
//! it — the mirror moves the pack once in and once out, and the target's first pass over it
//! (receiving, hashing every object) overlaps the cache's.
//!
//! Valid under [`super::Forward`]'s precondition, decided before the pack is asked for: the
//! target's refs equal the cache's before the fetch, and every new tip is an object the cache
//! lacks (so the source must send it) or one the target's refs already point to. The commands
//! go first, then the pack as it arrives; a sender thread owns the connection, so a slow target
//! never stalls the fetch beyond a small bounded queue.
//!
//! The last bytes of the pack (its checksum trailer) are held back until [`Pipeline::finish`]:
//! the target's receive-pack cannot finish the pack, let alone update a ref, before them. The
//! mirror finishes once the cache has the whole pack, received, checked and indexed — a fetch
//! that fails half-way pushes nothing — and, when the new objects include LFS pointers, only
//! after their LFS objects are on the target's LFS server (as git-lfs's pre-push does).
//! Dropping an unfinished [`Pipeline`] hangs up: the held-back pack is never applied. A target
//! left waiting too long (LFS transfers; servers and proxies cut idle request bodies) is pushed
//! to again instead ([`super::super::mirror`]).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gix::ObjectId;
use gix::protocol::transport::client::blocking_io::Transport;
use gix::protocol::transport::client::{MessageKind, WriteMode};

use super::{
    Capabilities, Command, Connected, PushOptions, PushOutcome, RemoteMessages, plan, read_report, results,
    write_commands,
};
use crate::pack::Counted;
use crate::refs::{RefPatterns, RefState};
use crate::remote::Remote;
use crate::{Error, lsremote};

/// Pieces of this size go to the sender thread; at most `QUEUED` wait there (bounded memory).
const PIECE: usize = 1 << 16;
const QUEUED: usize = 32;

/// A push fed with a fetch's pack while it arrives. See the module documentation.
pub struct Pipeline {
    to_sender: Option<SyncSender<Piece>>,
    sender: JoinHandle<Result<Sent, Error>>,
    remote: Remote,
    /// Received, not yet queued: at least the held-back tail.
    pending: Vec<u8>,
    hold: usize,
    /// The refs the push gives the target: the cache's after the fetch.
    desired: BTreeMap<String, ObjectId>,
    target_before: BTreeMap<String, ObjectId>,
    prune: bool,
    atomic: bool,
    last_piece: Instant,
    /// The end of the pack went out ([`Pipeline::finish`]).
    finished: bool,
}

enum Piece {
    Bytes(Vec<u8>),
    /// The held-back tail, and the commands as sent with their kinds classified now that the
    /// cache has the objects.
    Commit {
        tail: Vec<u8>,
        commands: Vec<Command>,
    },
}

/// What the sender thread did.
struct Sent {
    results: Vec<super::RefResult>,
    objects: u64,
    bytes: u64,
    messages: Vec<String>,
}

impl Pipeline {
    /// Start pushing, through `connected`, the pack a fetch is about to receive to bring `repo`
    /// (the cache) from `before` to the `source`'s refs — if that pack is valid for the target
    /// (see the module documentation). Gives the connection back when the pack does not fit (`None`: it
    /// was lost, connect again).
    pub fn start(
        repo: &gix::Repository,
        remote: &Remote,
        connected: Connected,
        before: &RefState,
        source: &RefState,
        options: &PushOptions,
    ) -> Result<Pipeline, Option<Connected>> {
        let Some(Fit {
            commands,
            caps,
            atomic,
            desired,
            target_before,
        }) = fits(repo, remote, &connected, before, source, options)
        else {
            return Err(Some(connected));
        };
        let (to_sender, from_fetch) = sync_channel(QUEUED);
        let name = remote.clone();
        let hash = repo.object_hash();
        let sender = std::thread::Builder::new()
            .name("gitferry-forward".into())
            .spawn(move || send(&name, connected.t, &caps, hash, commands, from_fetch));
        let Ok(sender) = sender else {
            return Err(None); // no thread (out of resources): the connection went with it
        };
        Ok(Pipeline {
            to_sender: Some(to_sender),
            sender,
            remote: remote.clone(),
            pending: Vec::with_capacity(PIECE + 64),
            hold: repo.object_hash().len_in_bytes(),
            desired,
            target_before,
            prune: options.prune,
            atomic,
            last_piece: Instant::now(),
            finished: false,
        })
    }

    /// The pack's next bytes.
    pub fn write(&mut self, bytes: &[u8]) {
        if self.to_sender.is_none() {
            return;
        }
        self.pending.extend_from_slice(bytes);
        if self.pending.len() >= PIECE + self.hold {
            let tail = self.pending.split_off(self.pending.len() - self.hold);
            let piece = std::mem::replace(&mut self.pending, tail);
            self.queue(Piece::Bytes(piece));
        }
    }

    fn queue(&mut self, piece: Piece) {
        let sent = self.to_sender.as_ref().is_some_and(|s| s.send(piece).is_ok());
        if !sent {
            self.to_sender = None; // the sender stopped (the target hung up): its error says why
        }
        self.last_piece = Instant::now();
    }

    /// How long the target has waited for the rest of the pack.
    pub fn idle(&self) -> Duration {
        self.last_piece.elapsed()
    }

    /// The refs the push gives the target (the cache's once the fetch has written them).
    pub fn desired(&self) -> &BTreeMap<String, ObjectId> {
        &self.desired
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The pack is in `repo` (the cache: received, checked, indexed): send its end, with the
    /// commands' kinds classified now that the new objects can be walked (the same plan as the
    /// commands sent, on the same refs: only the kinds differ). The target then finishes the
    /// pack and updates its refs while the caller goes on; [`Pipeline::outcome`] waits for its
    /// report.
    pub fn finish(&mut self, repo: &gix::Repository) {
        if self.finished {
            return;
        }
        self.finished = true;
        if self.pending.len() < self.hold {
            self.to_sender = None; // shorter than a trailer: not a pack; hang up
            return;
        }
        let commands = plan(&self.desired, &self.target_before, self.prune, |old, new| {
            crate::repo::is_ancestor(repo, old, new)
        });
        let tail = self.pending.split_off(self.pending.len() - self.hold);
        let rest = std::mem::take(&mut self.pending);
        if !rest.is_empty() {
            self.queue(Piece::Bytes(rest));
        }
        self.queue(Piece::Commit { tail, commands });
        self.to_sender = None;
    }

    /// The target's report on the push [`Pipeline::finish`] ended (an error if it was not).
    pub fn outcome(mut self) -> Result<PushOutcome, Error> {
        if !self.finished {
            return Err(self.refused("the forwarded pack was not finished"));
        }
        self.to_sender = None;
        let failed = self.refused("the forwarding thread failed");
        let sent = self.sender.join().unwrap_or(Err(failed))?;
        Ok(PushOutcome {
            results: sent.results,
            pack: super::PackMode::Streamed,
            objects: sent.objects,
            bytes: sent.bytes,
            remote_messages: sent.messages,
            atomic: self.atomic,
            diverged: Vec::new(),
            target_before: self.target_before,
        })
    }

    fn refused(&self, why: &str) -> Error {
        Error::Remote {
            remote: self.remote.to_string(),
            message: why.into(),
            transient: true,
        }
    }
}

/// A forwarded push's plan.
struct Fit {
    commands: Vec<Command>,
    caps: Capabilities,
    atomic: bool,
    desired: BTreeMap<String, ObjectId>,
    target_before: BTreeMap<String, ObjectId>,
}

/// The plan of a forwarded push, if the pack the fetch is about to receive is valid for this
/// target.
fn fits(
    repo: &gix::Repository,
    remote: &Remote,
    connected: &Connected,
    before: &RefState,
    source: &RefState,
    options: &PushOptions,
) -> Option<Fit> {
    let advertised = &connected.advertised;
    if options.keep_divergent.is_some() || !advertised.offers("ofs-delta") || advertised.offers("no-thin") {
        return None;
    }
    let target = lsremote::ref_state_from_advertisement(&advertised.refs, &RefPatterns::all()).ok()?;
    let current = target.filtered(&options.refs).ids();
    let before = before.filtered(&options.refs).ids();
    if current != before {
        return None;
    }
    // The cache's refs after the fetch: the source's, and (without prune) what else it had.
    let mut desired = before.clone();
    desired.extend(source.refs.iter().map(|(name, t)| (name.clone(), t.id)));
    if options.prune {
        desired.retain(|name, _| source.refs.contains_key(name));
    }
    // Kinds are classified again when the pack is in and the new objects can be walked.
    let commands = plan(&desired, &current, options.prune, |_, _| true);
    let known: std::collections::HashSet<&ObjectId> = current.values().collect();
    let arrives = |id: &ObjectId| known.contains(id) || !repo.has_object(id);
    if !commands.iter().any(|c| c.new.is_some()) || !commands.iter().filter_map(|c| c.new.as_ref()).all(arrives) {
        return None;
    }
    let atomic = options.atomic && advertised.offers("atomic");
    let caps = Capabilities::choose(remote, advertised, &commands, atomic).ok()?;
    Some(Fit {
        commands,
        caps,
        atomic,
        desired,
        target_before: current,
    })
}

/// The sender thread: commands, then the pack as it comes, then the target's report.
fn send(
    remote: &Remote,
    mut t: Box<dyn Transport + Send>,
    caps: &Capabilities,
    hash: gix::hash::Kind,
    commands: Vec<Command>,
    from_fetch: Receiver<Piece>,
) -> Result<Sent, Error> {
    let request = t
        .request(WriteMode::Binary, MessageKind::Flush, false)
        .map_err(|e| Error::from_client(remote, "starting push", &e))?;
    let (mut raw, mut reader) = request.into_parts();
    let mut counted = Counted::default();
    let streamed = stream(&mut raw, caps, hash, &commands, &from_fetch, &mut counted);
    drop(from_fetch);
    drop(raw); // ends the HTTP request body
    let commands = match streamed {
        Ok(Some(commands)) => commands,
        // Aborted: hang up without the rest of the pack, the target applies nothing.
        Ok(None) => return Err(Error::Interrupted),
        Err(e) => {
            let mut messages = RemoteMessages::default();
            return Err(match read_report(remote, &mut reader, caps.sideband, &mut messages) {
                Err(reason) => reason,
                Ok(_) => Error::from_io(remote, "forwarding the pack", &e),
            });
        }
    };
    let mut messages = RemoteMessages::default();
    let report = read_report(remote, &mut reader, caps.sideband, &mut messages)?;
    Ok(Sent {
        results: results(remote, commands, &report)?,
        objects: counted.objects(),
        bytes: counted.bytes,
        messages: messages.lines(remote),
    })
}

/// Commands, then the pieces as they come until the commit (its commands returned) or the
/// fetch's hang-up (`None`).
fn stream(
    raw: &mut dyn Write,
    caps: &Capabilities,
    hash: gix::hash::Kind,
    commands: &[Command],
    from_fetch: &Receiver<Piece>,
    counted: &mut Counted,
) -> std::io::Result<Option<Vec<Command>>> {
    write_commands(hash, commands, caps, raw)?;
    let mut w = BufWriter::with_capacity(PIECE, raw);
    loop {
        match from_fetch.recv() {
            Ok(Piece::Bytes(bytes)) => {
                w.write_all(&bytes)?;
                counted.add(&bytes);
            }
            Ok(Piece::Commit { tail, commands }) => {
                w.write_all(&tail)?;
                counted.add(&tail);
                w.flush()?;
                return Ok(Some(commands));
            }
            Err(_) => return Ok(None),
        }
    }
}
