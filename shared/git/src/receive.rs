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
    let context = fetch::refmap::init::Context {
        fetch_refspecs: refspecs,
        extra_refspecs: extra,
    };
    let ref_map = handshake
        .prepare_lsrefs_or_extract_refmap(agent(), prefix_filter, context)?
        .fetch_blocking(gix::progress::Discard, &mut transport, false)?;
    Ok(Listing {
        transport,
        handshake,
        ref_map,
    })
}

fn agent() -> (&'static str, Option<String>) {
    ("agent", Some(super::transport::AGENT.into()))
}

impl<T: Transport> Listing<T> {
    /// Negotiate with the source as `git fetch` does (the cache's refs named by the mappings are
    /// the haves) and write the pack it sends into `cache`, with its index; no ref is touched.
    pub fn receive(mut self, cache: &gix::Repository, interrupt: &AtomicBool) -> Result<Received, gix::Error> {
        let graph_repo = {
            let mut r = cache.clone();
            // Checking for unknown server refs must not trigger ODB refreshes, and the graph keeps
            // what negotiation needs (as gix's own fetch does).
            r.objects.refresh = gix::odb::store::RefreshMode::Never;
            r.objects.unset_object_cache();
            r
        };
        let mut graph = graph_repo.revision_graph(None);
        let mut negotiator = Negotiator {
            objects: &graph_repo.objects,
            refs: &graph_repo.refs,
            graph: &mut graph,
            ref_map: &self.ref_map,
            algorithm: gix::negotiate::Algorithm::Consecutive.into_negotiator(),
        };
        let mut received = Received::default();
        let pack_dir = cache.objects.store_ref().path().join("pack");
        let outcome = gix::protocol::fetch(
            &mut negotiator,
            |reader, progress, interrupt| {
                let bundle = gix_pack::Bundle::write_to_directory(
                    reader,
                    Some(&pack_dir),
                    progress,
                    interrupt,
                    Some(cache.objects.clone()),
                    cache.object_hash(),
                    gix_pack::bundle::write::Options::default(),
                )
                .or_raise(|| gix::error::message("writing the received pack"))?;
                received.objects = u64::from(bundle.index.num_objects);
                received.bytes = bundle
                    .data_path
                    .as_ref()
                    .and_then(|p| std::fs::metadata(p).ok())
                    .map_or(0, |m| m.len());
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
