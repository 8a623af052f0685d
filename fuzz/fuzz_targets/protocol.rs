//! What git servers send us, framed as on the wire: ref advertisements (protocol v0/v1 with
//! capabilities behind the first line's NUL; protocol v2 `ls-refs` responses) and receive-pack
//! responses (side-band demultiplexing and report-status). The first byte picks which.
//!
//! Invariants, beyond "no panic" (gix-protocol's own v1 parser panicked on a dangling symref;
//! `advert::parse_v1_bytes` also runs it on the capabilities `Guarded` would hand it):
//! * v0/v1: a symref is unborn only when its name is not listed; every ref kept in a
//!   [`RefState`] has a valid name under `refs/`;
//! * v2: the same for the refs gix parsed;
//! * report-status: each ref is named once, and at most 100 message lines come back.
#![no_main]

use gitferry_core::git::advert::{self, Advertisement};
use gitferry_core::git::push::parse_push_response;
use gitferry_core::git::refs::validate_ref_name;
use gitferry_core::git::{RefPatterns, RefState};
use gix::protocol::handshake::Ref;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(advertised) = advert::parse_v1_bytes(wire) {
                check_unborn_only_when_unlisted(&advertised);
                check_ref_state(advertised.ref_state(&RefPatterns::all()));
            }
        }
        1 => {
            if let Ok(refs) = advert::parse_v2_bytes(wire) {
                let advertised = Advertisement {
                    refs,
                    capabilities: Vec::new(),
                };
                check_ref_state(advertised.ref_state(&RefPatterns::all()));
            }
        }
        sideband => {
            if let Ok((status, messages)) = parse_push_response(wire, sideband == 3) {
                assert!(messages.len() <= 100);
                assert!(status.refs.len() <= wire.len());
            }
        }
    }
});

fn check_unborn_only_when_unlisted(advertised: &Advertisement) {
    for r in &advertised.refs {
        if let Ref::Unborn { full_ref_name, .. } = r {
            let listed = advertised
                .refs
                .iter()
                .filter(|o| !matches!(o, Ref::Unborn { .. }) && o.unpack().0 == full_ref_name.as_slice())
                .count();
            assert_eq!(listed, 0, "unborn {full_ref_name} is also listed");
        }
    }
}

fn check_ref_state(state: Result<RefState, gitferry_core::git::Error>) {
    if let Ok(state) = state {
        for name in state.refs.keys() {
            assert!(validate_ref_name(name.as_bytes()).is_ok(), "{name:?} kept");
        }
    }
}
