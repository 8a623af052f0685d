//! `ls-remote`: what a remote has, without fetching anything.
//!
//! Over the network this is one handshake plus (protocol v2) one `ls-refs` limited to the
//! prefixes the mirror cares about (so a GitHub repository's thousands of `refs/pull/*` are not
//! even listed); a v0/v1 server's advertisement is read by [`super::advert`]; local
//! repositories are read directly.

use std::time::Duration;

use gix::protocol::handshake::Ref;
use gix::protocol::transport::{Protocol, Service};

use super::guard::guard;
use super::refs::{RefPatterns, RefState, RefTarget, validate_ref_name};
use super::remote::{Location, Remote};
use super::{Error, advert, repo, transport};

/// List the refs of `remote` that `patterns` select, with peeled tags and the HEAD symref.
pub fn ls_remote(remote: &Remote, patterns: &RefPatterns) -> Result<RefState, Error> {
    list(remote, patterns, transport::Timeouts::TRANSFER)
}

/// [`ls_remote`] with every wait bounded by `limit` (connecting, each read; over HTTP the whole
/// exchange): a silent source fails with a transient network error. The poller's probe, which
/// must not let one stalled source hold up the rest.
pub fn ls_remote_within(remote: &Remote, patterns: &RefPatterns, limit: Duration) -> Result<RefState, Error> {
    list(remote, patterns, transport::Timeouts::within(limit))
}

fn list(remote: &Remote, patterns: &RefPatterns, limits: transport::Timeouts) -> Result<RefState, Error> {
    guard(remote, "listing refs", || match remote.location() {
        Location::Local(path) => {
            let r = repo::open(path).map_err(|e| not_found_if_missing(remote, path, e))?;
            repo::read_refs(&r, patterns, repo::Peel::Yes)
        }
        Location::Network(_) => list_network(remote, patterns, limits),
    })
}

/// One handshake; a v0/v1 server sends its refs right away (parsed by [`advert::parse_v1`]), a
/// v2 server is asked with `ls-refs` for our prefixes only.
fn list_network(remote: &Remote, patterns: &RefPatterns, limits: transport::Timeouts) -> Result<RefState, Error> {
    let mut t = transport::open_with(remote, Service::UploadPack, Protocol::V2, limits)?;
    let (v1, capabilities) = {
        let response = t
            .handshake(Service::UploadPack, &[])
            .map_err(|e| Error::from_client(remote, "list refs", &e))?;
        let v1 = response
            .refs
            .map(|mut reader| advert::parse_v1(&mut reader, response.actual_protocol, &response.capabilities));
        (v1, response.capabilities)
    };
    if let Some(advertised) = v1 {
        let advertised = advertised.map_err(|e| Error::from_advert(remote, "list refs", e))?;
        let _ = gix::protocol::indicate_end_of_interaction(&mut t, false);
        return ref_state_from_advertisement(&advertised.refs, patterns);
    }
    let listed = advert::capability_list(Protocol::V2, &capabilities);
    advert::check_object_format(&listed).map_err(|e| Error::from_advert(remote, "list refs", e))?;
    let gix_err = |e: gix::Error| {
        let mapped = Error::from_gix(remote, "list refs", &e);
        match mapped {
            // A ref line that does not parse came whole (pkt-line framing): the server will send
            // it again on every retry. Refuse it like an invalid ref name.
            Error::Remote { remote, message, .. } if e.is_corrupted() => Error::Remote {
                remote,
                message: format!("malformed ref advertisement, refused: {message}"),
                transient: false,
            },
            other => other,
        }
    };
    let mut prefixes = gix::protocol::ls_refs::RefPrefixes::new();
    prefixes.extend(patterns.prefixes().into_iter().map(Into::into));
    prefixes.extend(["HEAD".into()]);
    let refs = gix::protocol::LsRefsCommand::new(
        Some(prefixes),
        &capabilities,
        ("agent", Some(gix::protocol::agent(transport::AGENT))),
    )
    .invoke_blocking(&mut t, &mut gix::progress::Discard, false)
    .map_err(gix_err)?;
    let _ = gix::protocol::indicate_end_of_interaction(&mut t, false);
    ref_state_from_advertisement(&refs, patterns)
}

/// Turn an advertisement into a [`RefState`]: only refs the patterns select, every name
/// validated (hostile names are refused, not written anywhere).
pub(crate) fn ref_state_from_advertisement(refs: &[Ref], patterns: &RefPatterns) -> Result<RefState, Error> {
    let mut state = RefState::default();
    for r in refs {
        match r {
            Ref::Symbolic {
                full_ref_name, target, ..
            }
            | Ref::Unborn { full_ref_name, target }
                if full_ref_name == "HEAD" =>
            {
                state.head = validate_ref_name(target).ok();
                continue;
            }
            _ => {}
        }
        let (name, id, peeled) = r.unpack();
        let Some(id) = id else { continue };
        if !name.starts_with(b"refs/") || !patterns.matches(&String::from_utf8_lossy(name)) {
            continue;
        }
        let name = validate_ref_name(name)?;
        state.refs.insert(
            name,
            RefTarget {
                id: id.to_owned(),
                peeled: peeled.map(ToOwned::to_owned).filter(|p| p.as_ref() != id),
            },
        );
    }
    Ok(state)
}

pub(crate) fn not_found_if_missing(remote: &Remote, path: &std::path::Path, e: Error) -> Error {
    if !path.exists() {
        Error::NotFound {
            remote: remote.to_string(),
            message: "no such directory".into(),
        }
    } else {
        e
    }
}
