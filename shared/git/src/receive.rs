//! One conversation with upload-pack: list the source's refs, negotiate, receive the pack into
//! the cache — and write no ref.
//!
//! Why not gix's `Prepare::receive`: it always updates the refs its refspecs map, in a ref
//! transaction that takes a lock file per ref even in packed-refs-only mode, so a first fetch of
//! 20,000 tags created and removed 20,000 lock files; and gix refuses a glob refspec without a
//! destination, so it cannot be told to leave the refs alone. Here the same gix-protocol steps
//! run (handshake, `ls-refs` or the v0/v1 advertisement, gix's negotiation helpers,
//! `gix_pack::Bundle::write_to_directory`) and the caller writes the cache's refs itself, all of
//! them in one packed-refs write ([`super::packed`]).

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use gix::error::ResultExt;
use gix::protocol::fetch::negotiate::{self, Action};
use gix::protocol::fetch::{self, Arguments, RefMap, Shallow, Tags};
use gix::protocol::transport::client::blocking_io::Transport;
use gix::protocol::{Handshake, transport::Protocol};

use super::pack::Counted;

/// A source's refs as listed at the start of a conversation that can still ask for a pack.
pub(crate) struct Listing<T> {
    transport: T,
    handshake: Handshake,
    pub ref_map: RefMap,
}

/// What [`Listing::receive`] wrote into the cache.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub objects: u64,
    pub bytes: u64,
    /// The pack file as stored in the cache (the source's pack; a thin one completed with its
    /// bases), for [`super::push::Forward`].
    pub pack: Option<PathBuf>,
    /// The `.keep` file that protects the new pack from a concurrent gc until refs point into
    /// it: remove it (with [`Received::release`]) once the refs are written.
    keep: Option<PathBuf>,
}

impl Received {
    /// Objects and bytes copied without a pack of their own (a local-path fetch).
    pub fn new(objects: u64, bytes: u64) -> Received {
        Received {
            objects,
            bytes,
            pack: None,
            keep: None,
        }
    }

    /// The refs are written: the pack no longer needs its `.keep` guard.
    pub fn release(&mut self) {
        if let Some(keep) = self.keep.take() {
            let _ = std::fs::remove_file(keep);
        }
    }
}

/// Handshake and ref listing over `transport`: `refspecs` select what to list (with
/// `prefix_filter`, only their literal prefixes are asked for in `ls-refs`), `extra` are listed
/// but never wanted unless they map (`HEAD`, for the source's default branch).
pub(crate) fn list<T: Transport>(
    mut transport: T,
    refspecs: Vec<gix::refspec::RefSpec>,
    extra: Vec<gix::refspec::RefSpec>,
    prefix_filter: bool,
) -> Result<Listing<T>, gix::Error> {
    let mut handshake = gix::protocol::handshake(
        &mut transport,
        gix::protocol::transport::Service::UploadPack,
        |_| Ok(None),
        Vec::new(),
        &mut gix::progress::Discard,
    )?;
    let prefixes = prefix_filter.then(|| ref_prefixes(refspecs.iter().chain(&extra)));
    let refs = match handshake.refs.take() {
        Some(refs) => refs, // v0/v1: listed in the handshake
        None => ls_refs(&mut transport, &handshake.capabilities, prefixes)?,
    };
    let context = fetch::refmap::init::Context {
        fetch_refspecs: refspecs,
        extra_refspecs: extra,
    };
    let ref_map = RefMap::from_refs(refs, &handshake.capabilities, context)?;
    Ok(Listing {
        transport,
        handshake,
        ref_map,
    })
}

/// `ls-refs` as gix sends it, without `peel`: a mirror compares ref values, never what a tag
/// points to, and peeling costs the server a read of every annotated tag object (a fifth of
/// the time git's upload-pack takes to list 20,000 tags).
fn ls_refs<T: Transport>(
    transport: &mut T,
    capabilities: &gix::protocol::transport::client::Capabilities,
    prefixes: Option<Vec<gix::bstr::BString>>,
) -> Result<Vec<gix::protocol::handshake::Ref>, gix::Error> {
    use gix::protocol::Command;
    use gix::protocol::transport::client::blocking_io::TransportV2Ext;
    let mut features = Command::LsRefs.default_features(Protocol::V2, capabilities);
    features.push(agent());
    let mut arguments: Vec<gix::bstr::BString> = vec!["symrefs".into()];
    let unborn = capabilities.capability("ls-refs").and_then(|c| c.supports("unborn"));
    if unborn.unwrap_or_default() {
        arguments.push("unborn".into());
    }
    arguments.extend(prefixes.into_iter().flatten().map(|p| {
        let mut arg = gix::bstr::BString::from("ref-prefix ");
        arg.extend_from_slice(&p);
        arg
    }));
    let mut listed = transport
        .invoke("ls-refs", features.into_iter(), Some(arguments.into_iter()), false)
        .or_raise(|| gix::error::message("Failed to list references on the remote"))?;
    gix::protocol::handshake::refs::from_v2_refs(&mut listed)
}

/// The literal prefixes of `specs` for `ref-prefix` (names a short spec could mean, expanded
/// as git does).
fn ref_prefixes<'a>(specs: impl Iterator<Item = &'a gix::refspec::RefSpec>) -> Vec<gix::bstr::BString> {
    let mut prefixes = Vec::new();
    for spec in specs {
        spec.to_ref().expand_prefixes(&mut prefixes);
    }
    prefixes.sort();
    prefixes.dedup();
    prefixes
}

fn agent() -> (&'static str, Option<String>) {
    ("agent", Some(super::transport::AGENT.into()))
}

impl<T: Transport> Listing<T> {
    /// Negotiate with the source as `git fetch` does (the cache's refs named by the mappings are
    /// the haves) and write the pack it sends into `cache`, with its index; no ref is touched.
    /// `tee`, when given, sees every byte of the pack as it is read (see [`PackTee`]).
    pub fn receive(
        mut self,
        cache: &gix::Repository,
        interrupt: &AtomicBool,
        tee: Option<&mut (dyn PackTee + '_)>,
    ) -> Result<Received, gix::Error> {
        let graph_repo = {
            let mut r = cache.clone();
            // Checking for unknown server refs must not trigger ODB refreshes, and the graph keeps
            // what negotiation needs (as gix's own fetch does).
            r.objects.refresh = gix::odb::store::RefreshMode::Never;
            r.objects.unset_object_cache();
            r
        };
        let mut graph = graph_repo.revision_graph(None);
        let wants_only = wants_only(&self.ref_map);
        let mut negotiator = Negotiator {
            objects: &graph_repo.objects,
            refs: &graph_repo.refs,
            graph: &mut graph,
            ref_map: &wants_only,
            algorithm: gix::negotiate::Algorithm::Consecutive.into_negotiator(),
        };
        let mut received = Received::default();
        let pack_dir = cache.objects.store_ref().path().join("pack");
        let outcome = gix::protocol::fetch(
            &mut negotiator,
            |reader, progress, interrupt| {
                let mut reader = Teed {
                    inner: reader,
                    tee,
                    counted: Counted::default(),
                };
                let bundle = gix_pack::Bundle::write_to_directory(
                    &mut reader,
                    Some(&pack_dir),
                    progress,
                    interrupt,
                    Some(cache.objects.clone()),
                    cache.object_hash(),
                    gix_pack::bundle::write::Options::default(),
                )
                .or_raise(|| gix::error::message("writing the received pack"))?;
                // As on the wire (a thin pack is stored completed with its bases).
                received.objects = reader.counted.objects();
                received.bytes = reader.counted.bytes;
                received.pack = bundle.data_path;
                received.keep = bundle.keep_path;
                Ok(true)
            },
            gix::progress::Discard,
            interrupt,
            fetch::Context {
                handshake: &mut self.handshake,
                transport: &mut self.transport,
                user_agent: agent(),
                trace_packetlines: false,
            },
            fetch::Options {
                shallow_file: cache.path().join("shallow"),
                shallow: &Shallow::NoChange,
                tags: Tags::None,
                reject_shallow_remote: true,
            },
        );
        if matches!(self.handshake.server_protocol_version, Protocol::V2) {
            let _ = gix::protocol::indicate_end_of_interaction(&mut self.transport, false);
        }
        outcome?;
        Ok(received)
    }
}

/// Sees a fetch's pack as it arrives, before it is indexed: [`super::mirror`] forwards it to a
/// target's receive-pack while the cache indexes it (see `super::push::Pipeline`).
pub trait PackTee {
    /// A pack is about to be asked for, to bring the cache from `before` to the `source`'s refs
    /// as listed: whether to see it.
    fn start(&mut self, before: &super::refs::RefState, source: &super::refs::RefState) -> bool;
    /// The pack's next bytes, in order: every byte read from the source's pack stream.
    fn write(&mut self, bytes: &[u8]);
    /// The whole pack is in the cache, checked and indexed (no ref points into it yet).
    fn received(&mut self) {}
}

/// A reader that counts what is read through it and hands it to a [`PackTee`].
struct Teed<'r, 't, 'o> {
    inner: &'r mut dyn std::io::BufRead,
    tee: Option<&'t mut (dyn PackTee + 'o)>,
    counted: Counted,
}

fn seen(counted: &mut Counted, tee: &mut Option<&mut (dyn PackTee + '_)>, bytes: &[u8]) {
    counted.add(bytes);
    if let Some(tee) = tee {
        tee.write(bytes);
    }
}

impl std::io::Read for Teed<'_, '_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        seen(&mut self.counted, &mut self.tee, &buf[..n]);
        Ok(n)
    }
}

impl std::io::BufRead for Teed<'_, '_, '_> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        // What was filled and not consumed is still buffered: filling again reads nothing.
        let Teed { inner, tee, counted } = self;
        if let Ok(buf) = inner.fill_buf() {
            seen(counted, tee, &buf[..amount.min(buf.len())]);
        }
        inner.consume(amount);
    }
}

/// The mappings without their local side: gix would look each one up in the cache's ref store
/// (five file probes per name, 100,000 for 20,000 tags: ~0.3 s before the first `want`) only to
/// tell unchanged refs, which the caller already ruled out. The haves are every cache ref
/// either way (`mark_complete_and_common_ref` walks them all).
fn wants_only(ref_map: &RefMap) -> RefMap {
    let mut map = ref_map.clone();
    for m in &mut map.mappings {
        m.local = None;
    }
    map
}

/// gix's negotiation helpers, fed with the cache (no alternates, no shallow, no tag following).
struct Negotiator<'a, 'g, 'c> {
    objects: &'a gix::OdbHandle,
    refs: &'a gix::refs::file::Store,
    graph: &'a mut gix::negotiate::Graph<'g, 'c>,
    ref_map: &'a RefMap,
    algorithm: Box<dyn gix::negotiate::Negotiator>,
}

impl fetch::Negotiate for Negotiator<'_, '_, '_> {
    fn mark_complete_and_common_ref(&mut self) -> Result<Action, gix::Error> {
        negotiate::mark_complete_and_common_ref(
            self.objects,
            self.refs,
            || Ok(std::iter::empty::<(gix::refs::file::Store, gix::OdbHandle)>()),
            self.algorithm.as_mut(),
            self.graph,
            self.ref_map,
            &Shallow::NoChange,
            negotiate::make_refmapping_ignore_predicate(Tags::None, self.ref_map),
        )
    }

    fn add_wants(&mut self, arguments: &mut Arguments, remote_ref_target_known: &[bool]) -> bool {
        negotiate::add_wants(
            self.objects,
            arguments,
            self.ref_map,
            remote_ref_target_known,
            &Shallow::NoChange,
            negotiate::make_refmapping_ignore_predicate(Tags::None, self.ref_map),
        )
    }

    fn one_round(
        &mut self,
        state: &mut negotiate::one_round::State,
        arguments: &mut Arguments,
        previous_response: Option<&fetch::Response>,
    ) -> Result<(negotiate::Round, bool), gix::Error> {
        negotiate::one_round(self.algorithm.as_mut(), self.graph, state, arguments, previous_response)
    }
}
