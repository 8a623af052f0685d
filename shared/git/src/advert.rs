//! Protocol v0/v1 ref advertisements, read by us rather than by gix.
//!
//! Why: gix-protocol 0.68 panics (`unreachable!` in `handshake/refs/shared.rs`) when a `symref=`
//! capability names a ref that the advertisement does not list. dulwich does that for every new
//! repository (`symref=HEAD:refs/heads/master` before `master` exists), and any v0/v1 server
//! whose `HEAD` names a deleted branch does too. For a mirror such a `HEAD` is simply *unborn*,
//! which protocol v2 says outright (`unborn HEAD symref-target:…`); we give it the same meaning.
//!
//! Two ways in, one reading:
//! * push and ls-remote parse the advertisement themselves ([`parse_v1`]): pkt-lines come from
//!   gix's reader, the lines are interpreted here, and a symref whose ref is missing becomes
//!   [`Ref::Unborn`];
//! * gix's fetch parses it with gix's code, so [`Guarded`] wraps the fetch transport: gix gets
//!   the capabilities without any `symref=` (without them its parser has no panicking path) and
//!   the symrefs are kept aside for us ([`Seen::head`]).
//!
//! Both refuse an object format other than SHA-1 before any object id is read, so a SHA-256
//! repository is named as such rather than reported as an undecodable id.

use std::sync::{Arc, Mutex, PoisonError};

use gix::ObjectId;

use super::Error;
use super::refs::{RefPatterns, RefState};
use gix::bstr::{BString, ByteSlice};
use gix::protocol::handshake::Ref;
use gix::protocol::transport::client::blocking_io::{ReadlineBufRead, SetServiceResponse, Transport};
use gix::protocol::transport::client::{Capabilities, TransportWithoutIO};
use gix::protocol::transport::{Protocol, Service, client};

/// What a v0/v1 server advertised: its refs (symrefs resolved, dangling ones [`Ref::Unborn`])
/// and its capabilities.
#[derive(Debug, Default)]
pub struct Advertisement {
    pub refs: Vec<Ref>,
    pub capabilities: Vec<(String, Option<String>)>,
}

impl Advertisement {
    pub fn offers(&self, name: &str) -> bool {
        self.capabilities.iter().any(|(n, _)| n == name)
    }

    /// The refs `patterns` select, names validated, `HEAD`'s target (unborn or not) as head.
    pub fn ref_state(&self, patterns: &RefPatterns) -> Result<RefState, Error> {
        super::lsremote::ref_state_from_advertisement(&self.refs, patterns)
    }
}

/// Why an advertisement was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdvertError {
    /// The server sent something that is not a ref advertisement: permanent (it will send the
    /// same again).
    #[error("malformed ref advertisement, refused: {0}")]
    Malformed(String),
    /// The repository does not use SHA-1.
    #[error("object format {0}")]
    ObjectFormat(String),
    /// The connection failed while the advertisement was read.
    #[error("reading the ref advertisement: {0}")]
    Io(#[from] std::io::Error),
}

/// The capabilities of a handshake as name/value pairs. A v0 server sent none: gix then fills
/// in defaults that claim features nobody offered, so those are dropped.
pub fn capability_list(protocol: Protocol, capabilities: &Capabilities) -> Vec<(String, Option<String>)> {
    if protocol == Protocol::V0 {
        return Vec::new();
    }
    capabilities
        .iter()
        .map(|c| (c.name().to_string(), c.value().map(|v| v.to_string())))
        .filter(|(name, _)| !name.is_empty())
        .collect()
}

/// Refuse an `object-format` other than `sha1` (this build of gix reads SHA-1 only).
pub fn check_object_format(capabilities: &[(String, Option<String>)]) -> Result<(), AdvertError> {
    match capabilities.iter().find(|(n, _)| n == "object-format") {
        Some((_, Some(format))) if !format.eq_ignore_ascii_case("sha1") => {
            Err(AdvertError::ObjectFormat(format.clone()))
        }
        _ => Ok(()),
    }
}

/// Read a v0/v1 advertisement: the ref lines from `reader` (gix's pkt-line reader, the first
/// line already cut at its NUL by the handshake) and the capabilities of the handshake.
pub fn parse_v1(
    reader: &mut dyn ReadlineBufRead,
    protocol: Protocol,
    capabilities: &Capabilities,
) -> Result<Advertisement, AdvertError> {
    let capabilities = capability_list(protocol, capabilities);
    check_object_format(&capabilities)?;
    let mut refs = Vec::new();
    while let Some(line) = reader.readline() {
        let line = line?.map_err(|e| AdvertError::Malformed(format!("undecodable pkt-line: {e}")))?;
        match line.as_slice() {
            Some(data) => parse_ref_line(data, &mut refs)?,
            None => break,
        }
    }
    for (name, target) in symrefs(&capabilities) {
        resolve_symref(&mut refs, name, target);
    }
    Ok(Advertisement { refs, capabilities })
}

/// One `<oid> <name>` line (or `<oid> <name>^{}` for the peeled tag before it).
fn parse_ref_line(data: &[u8], refs: &mut Vec<Ref>) -> Result<(), AdvertError> {
    let line = data.strip_suffix(b"\n").unwrap_or(data);
    let malformed = |why: &str| AdvertError::Malformed(format!("{why}: {}", shown(line)));
    let (hex, name) = line.split_once_str(" ").ok_or_else(|| malformed("no ref name"))?;
    if name.is_empty() {
        return Err(malformed("no ref name"));
    }
    if hex == b"shallow" {
        return Ok(()); // a shallow repository's boundary: nothing a mirror uses
    }
    let id = parse_id(hex).ok_or_else(|| malformed("not an object id"))??;
    match name.strip_suffix(b"^{}") {
        Some(b"capabilities") if id.is_null() => Ok(()), // the empty repository's placeholder
        Some(base) => match refs.pop() {
            Some(Ref::Direct { full_ref_name, object }) if full_ref_name == base => {
                refs.push(Ref::Peeled {
                    full_ref_name,
                    tag: object,
                    object: id,
                });
                Ok(())
            }
            _ => Err(malformed("peeled ref without its ref before it")),
        },
        None => {
            refs.push(Ref::Direct {
                full_ref_name: name.into(),
                object: id,
            });
            Ok(())
        }
    }
}

/// A SHA-1 id; `Some(Err)` for a SHA-256 one, `None` for anything else.
fn parse_id(hex: &[u8]) -> Option<Result<ObjectId, AdvertError>> {
    if hex.len() == 64 && hex.iter().all(u8::is_ascii_hexdigit) {
        return Some(Err(AdvertError::ObjectFormat("sha256".into())));
    }
    if hex.len() != 40 {
        return None;
    }
    ObjectId::from_hex(hex).ok().map(Ok)
}

/// The `symref=NAME:TARGET` capabilities, first one per name. Values that do not have that
/// shape are ignored, as git's client does: they are hints, nothing depends on them.
pub fn symrefs(capabilities: &[(String, Option<String>)]) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (_, value) in capabilities.iter().filter(|(n, _)| n == "symref") {
        let Some((name, target)) = value.as_deref().and_then(|v| v.split_once(':')) else {
            continue;
        };
        if !name.is_empty() && !target.is_empty() && target != "(null)" && out.iter().all(|(n, _)| *n != name) {
            out.push((name, target));
        }
    }
    out
}

/// Make `name` a symbolic ref to `target`: the advertised ref becomes [`Ref::Symbolic`], and a
/// name the server did not list becomes [`Ref::Unborn`] (a `HEAD` on a branch that does not exist).
fn resolve_symref(refs: &mut Vec<Ref>, name: &str, target: &str) {
    let listed = refs.iter().position(|r| r.unpack().0 == name.as_bytes());
    match listed.map(|i| &mut refs[i]) {
        Some(r @ Ref::Direct { .. }) => {
            let Ref::Direct { full_ref_name, object } = r.clone() else {
                return;
            };
            *r = Ref::Symbolic {
                full_ref_name,
                target: target.into(),
                tag: None,
                object,
            };
        }
        Some(_) => {} // a peeled (tag) ref with a symref: keep what the lines say
        None => refs.push(Ref::Unborn {
            full_ref_name: name.into(),
            target: target.into(),
        }),
    }
}

/// A protocol line as text for an error message: control characters escaped, at most 100
/// characters.
fn shown(line: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(line).chars().take(100).collect();
    format!("\"{}\"", text.escape_debug())
}

/// What [`Guarded`] saw during a handshake.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// `symref=` capabilities of a v0/v1 advertisement, withheld from gix.
    pub symrefs: Vec<(String, String)>,
    /// An object format other than SHA-1 the server announced.
    pub object_format: Option<String>,
}

impl Seen {
    /// What the server's `HEAD` points to, per its `symref=` capability.
    pub fn head(&self) -> Option<&str> {
        self.symrefs.iter().find(|(n, _)| n == "HEAD").map(|(_, t)| t.as_str())
    }
}

/// A transport whose handshake gix can parse without panicking (see the module docs): the
/// `symref=` capabilities of a v0/v1 advertisement are withheld from gix and recorded in
/// [`Seen`], and a repository that does not use SHA-1 ends the handshake with an error before
/// any ref is read.
pub struct Guarded<T> {
    inner: T,
    seen: Arc<Mutex<Seen>>,
}

impl<T> Guarded<T> {
    pub fn new(inner: T) -> (Guarded<T>, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        (
            Guarded {
                inner,
                seen: seen.clone(),
            },
            seen,
        )
    }
}

/// Read what a [`Guarded`] transport recorded.
pub fn seen(seen: &Mutex<Seen>) -> Seen {
    seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The capabilities without `symref=` entries, for gix's v1 parser.
pub fn without_symrefs(capabilities: &Capabilities) -> Capabilities {
    let mut data = BString::from("\0");
    for c in capabilities
        .iter()
        .filter(|c| c.name() != "symref" && !c.name().is_empty())
    {
        if data.len() > 1 {
            data.push(b' ');
        }
        data.extend_from_slice(c.name());
        if let Some(v) = c.value() {
            data.push(b'=');
            data.extend_from_slice(v);
        }
    }
    if data.len() == 1 {
        // Only symrefs were offered: gix wants at least one (empty) entry after the NUL.
        data.push(b' ');
    }
    Capabilities::from_bytes(&data)
        .map(|(c, _)| c)
        .unwrap_or_else(|_| Capabilities::from_bytes(b"\0 ").map(|(c, _)| c).unwrap_or_default())
}

impl<T: Transport> TransportWithoutIO for Guarded<T> {
    fn set_identity(&mut self, identity: gix::sec::identity::Account) -> Result<(), client::Error> {
        self.inner.set_identity(identity)
    }

    fn to_url(&self) -> std::borrow::Cow<'_, gix::bstr::BStr> {
        self.inner.to_url()
    }

    fn supported_protocol_versions(&self) -> &[Protocol] {
        self.inner.supported_protocol_versions()
    }

    fn connection_persists_across_multiple_requests(&self) -> bool {
        self.inner.connection_persists_across_multiple_requests()
    }

    fn configure(&mut self, config: &dyn std::any::Any) -> gix::error::Result {
        self.inner.configure(config)
    }
}

impl<T: Transport> Transport for Guarded<T> {
    fn handshake<'a>(
        &mut self,
        service: Service,
        extra_parameters: &'a [(&'a str, Option<&'a str>)],
    ) -> Result<SetServiceResponse<'_>, client::Error> {
        let mut response = self.inner.handshake(service, extra_parameters)?;
        let capabilities = capability_list(response.actual_protocol, &response.capabilities);
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(AdvertError::ObjectFormat(format)) = check_object_format(&capabilities) {
            seen.object_format = Some(format.clone());
            return Err(client::Error::Io(std::io::Error::other(format!(
                "the repository uses object format {format}"
            ))));
        }
        if response.refs.is_some() {
            seen.symrefs = symrefs(&capabilities)
                .into_iter()
                .map(|(n, t)| (n.to_owned(), t.to_owned()))
                .collect();
            response.capabilities = without_symrefs(&response.capabilities);
        }
        Ok(response)
    }

    fn request(
        &mut self,
        write_mode: client::WriteMode,
        on_into_read: client::MessageKind,
        trace: bool,
    ) -> Result<client::blocking_io::RequestWriter<'_>, client::Error> {
        self.inner.request(write_mode, on_into_read, trace)
    }
}

/// Parse a whole v0/v1 advertisement as it arrives on the wire (pkt-lines, capabilities behind
/// the first line's NUL), through gix's handshake reader and [`parse_v1`]. Also checks that gix's
/// own parser, given what [`Guarded`] hands it, returns (an error or refs) instead of panicking.
/// For fuzzing and tests.
pub fn parse_v1_bytes(data: &[u8]) -> Result<Advertisement, AdvertError> {
    use gix::protocol::transport::client::capabilities::blocking_recv::Handshake;
    use gix::protocol::transport::packetline::PacketLineRef;
    use gix::protocol::transport::packetline::blocking_io::StreamingPeekableIter;

    let read = |data| StreamingPeekableIter::new(data, &[PacketLineRef::Flush], false);
    let mut lines = read(data);
    let handshake = Handshake::from_lines_with_version_detection(&mut lines)
        .map_err(|e| AdvertError::Malformed(format!("handshake: {e}")))?;
    let capabilities = without_symrefs(&handshake.capabilities);
    let (protocol, original) = (handshake.protocol, handshake.capabilities);
    let Some(mut refs) = handshake.refs else {
        return Ok(Advertisement {
            refs: Vec::new(),
            capabilities: capability_list(protocol, &original),
        });
    };
    let ours = parse_v1(&mut refs, protocol, &original);
    drop(refs);
    let mut again = read(data);
    if let Ok(Handshake {
        refs: Some(mut refs), ..
    }) = Handshake::from_lines_with_version_detection(&mut again)
    {
        let _ = gix::protocol::handshake::refs::from_v1_refs_received_as_part_of_handshake_and_capabilities(
            &mut refs,
            capabilities.iter(),
        );
    }
    ours
}

/// Parse a protocol v2 `ls-refs` response as it arrives on the wire, with gix's parser (the one
/// ls-remote and fetch use for v2). For fuzzing and tests.
pub fn parse_v2_bytes(data: &[u8]) -> Result<Vec<Ref>, String> {
    use gix::protocol::transport::packetline::PacketLineRef;
    use gix::protocol::transport::packetline::blocking_io::StreamingPeekableIter;

    let mut lines = StreamingPeekableIter::new(data, &[PacketLineRef::Flush], false);
    gix::protocol::handshake::refs::from_v2_refs(&mut lines.as_read()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(out: &mut Vec<u8>, line: &[u8]) {
        out.extend_from_slice(format!("{:04x}", line.len() + 4).as_bytes());
        out.extend_from_slice(line);
    }

    fn advert(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            pkt(&mut out, l);
        }
        out.extend_from_slice(b"0000");
        out
    }

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn names(a: &Advertisement) -> Vec<String> {
        a.refs
            .iter()
            .map(|r| match r {
                Ref::Unborn { full_ref_name, target } => format!("unborn {full_ref_name} -> {target}"),
                Ref::Symbolic {
                    full_ref_name, target, ..
                } => format!("{full_ref_name} -> {target}"),
                Ref::Peeled { full_ref_name, .. } => format!("peeled {full_ref_name}"),
                Ref::Direct { full_ref_name, .. } => full_ref_name.to_string(),
            })
            .collect()
    }

    #[test]
    fn dangling_head_symref_is_unborn() {
        // dulwich, a repository whose HEAD names a branch that does not exist.
        let first = format!("{A} refs/heads/main\0side-band-64k symref=HEAD:refs/heads/master\n");
        let data = advert(&[first.as_bytes()]);
        let a = parse_v1_bytes(&data).unwrap();
        assert_eq!(names(&a), ["refs/heads/main", "unborn HEAD -> refs/heads/master"]);
        assert!(a.offers("side-band-64k"));
    }

    #[test]
    fn capabilities_only_line_with_a_dangling_symref() {
        // dulwich's receive-pack on a new repository.
        let first = format!(
            "{} capabilities^{{}}\0report-status delete-refs symref=HEAD:refs/heads/master",
            "0".repeat(40)
        );
        let a = parse_v1_bytes(&advert(&[first.as_bytes()])).unwrap();
        assert_eq!(names(&a), ["unborn HEAD -> refs/heads/master"]);
        assert!(a.offers("report-status"));
    }

    #[test]
    fn listed_head_symref_peeled_tags_and_duplicates() {
        let first = format!("{A} HEAD\0symref=HEAD:refs/heads/main symref=HEAD:refs/heads/other agent=x\n");
        let lines = [
            first,
            format!("{A} refs/heads/main\n"),
            format!("{B} refs/tags/v1\n"),
            format!("{A} refs/tags/v1^{{}}\n"),
            format!("{A} .have\n"),
        ];
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let a = parse_v1_bytes(&advert(&lines)).unwrap();
        assert_eq!(
            names(&a),
            [
                "HEAD -> refs/heads/main",
                "refs/heads/main",
                "peeled refs/tags/v1",
                ".have"
            ]
        );
    }

    #[test]
    fn empty_v0_advertisement_has_no_refs_and_no_capabilities() {
        let a = parse_v1_bytes(b"0000").unwrap();
        assert!(a.refs.is_empty() && a.capabilities.is_empty(), "{a:?}");
    }

    #[test]
    fn malformed_lines_are_refused_not_panicked_on() {
        for bad in [
            format!("{A}refs/heads/x\0caps"),
            format!("{A} \0caps"),
            format!("zz{} refs/heads/x\0caps", &A[2..]),
            format!("{A} refs/tags/v1^{{}}\0caps"),
        ] {
            let e = parse_v1_bytes(&advert(&[bad.as_bytes()])).unwrap_err();
            assert!(matches!(e, AdvertError::Malformed(_)), "{bad:?}: {e:?}");
        }
    }

    #[test]
    fn sha256_is_recognised_from_capabilities_or_ids() {
        let z = "0".repeat(64);
        let by_cap = format!("{z} capabilities^{{}}\0report-status object-format=sha256");
        let by_id = format!("{} refs/heads/main\0report-status", "a".repeat(64));
        for line in [by_cap, by_id] {
            let e = parse_v1_bytes(&advert(&[line.as_bytes()])).unwrap_err();
            assert!(matches!(&e, AdvertError::ObjectFormat(f) if f == "sha256"), "{e:?}");
        }
    }

    #[test]
    fn v2_unborn_head_and_peeled_tags() {
        let lines = [
            "unborn HEAD symref-target:refs/heads/master\n".to_owned(),
            format!("{A} refs/heads/main\n"),
            format!("{B} refs/tags/v1 peeled:{A}\n"),
        ];
        let lines: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        let refs = parse_v2_bytes(&advert(&lines)).unwrap();
        let a = Advertisement {
            refs,
            capabilities: Vec::new(),
        };
        assert_eq!(
            names(&a),
            [
                "unborn HEAD -> refs/heads/master",
                "refs/heads/main",
                "peeled refs/tags/v1"
            ]
        );
        let state = a.ref_state(&RefPatterns::default()).unwrap();
        assert_eq!(state.head.as_deref(), Some("refs/heads/master"));
        assert_eq!(state.refs.len(), 2);
    }

    #[test]
    fn symrefs_are_withheld_from_gix_and_other_capabilities_kept() {
        let (caps, _) = Capabilities::from_bytes(b"\0ofs-delta symref=HEAD:refs/heads/x agent=git/2").unwrap();
        let kept: Vec<String> = without_symrefs(&caps)
            .iter()
            .map(|c| match c.value() {
                Some(v) => format!("{}={v}", c.name()),
                None => c.name().to_string(),
            })
            .collect();
        assert_eq!(kept, ["ofs-delta", "agent=git/2"]);
        let (only, _) = Capabilities::from_bytes(b"\0symref=HEAD:refs/heads/x").unwrap();
        assert!(!without_symrefs(&only).contains("symref"));
    }
}
