//! Git LFS pointer files, as the Git LFS specification defines them (docs/spec.md of git-lfs):
//! a small blob of `key value` lines, sorted by key, `version` first:
//!
//! ```text
//! version https://git-lfs.github.com/spec/v1
//! oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393
//! size 12345
//! ```
//!
//! Why strict: a mirror decides from these bytes which objects to copy, and the bytes come from
//! whoever pushed to the source. Anything that is not exactly a pointer (wrong version, a
//! malformed oid, a size that does not parse, lines out of order, not UTF-8, over
//! [`MAX_POINTER_SIZE`]) is simply not a pointer: an ordinary file that happens to start with
//! `version` is mirrored as the blob it is, and nothing panics on what a remote sent.

use std::fmt;

/// Pointer files are small; git-lfs itself never reads a blob of 1024 bytes or more as one.
pub const MAX_POINTER_SIZE: usize = 1024;

/// The version line of every pointer this crate understands (and the pre-release alias that
/// git-lfs still accepts).
const VERSIONS: [&str; 2] = [
    "https://git-lfs.github.com/spec/v1",
    "https://hawser.github.com/spec/v1",
];

/// One LFS object named by a pointer: its SHA-256 (64 lowercase hex digits) and size in bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Pointer {
    pub oid: String,
    pub size: u64,
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes)", self.oid, self.size)
    }
}

impl Pointer {
    /// The pointer `data` encodes, or `None` when it is not a valid pointer file.
    pub fn parse(data: &[u8]) -> Option<Pointer> {
        if data.len() >= MAX_POINTER_SIZE {
            return None;
        }
        let text = std::str::from_utf8(data).ok()?;
        let body = text.strip_suffix('\n')?;
        let mut lines = body.split('\n');
        let version = lines.next()?.strip_prefix("version ")?;
        if !VERSIONS.contains(&version) {
            return None;
        }
        let (mut oid, mut size, mut last_key) = (None, None, "");
        for line in lines {
            let (key, value) = line.split_once(' ')?;
            // Keys are sorted and unique (after `version`); extension keys are allowed.
            if key <= last_key || !valid_key(key) {
                return None;
            }
            last_key = key;
            match key {
                "oid" => oid = Some(parse_oid(value)?),
                "size" => size = Some(parse_size(value)?),
                _ => {}
            }
        }
        Some(Pointer { oid: oid?, size: size? })
    }

    /// Whether `oid` is a valid object id (64 lowercase hex digits), safe in paths and URLs.
    pub fn valid_oid(oid: &str) -> bool {
        oid.len() == 64 && oid.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
}

fn parse_oid(value: &str) -> Option<String> {
    let hex = value.strip_prefix("sha256:")?;
    Pointer::valid_oid(hex).then(|| hex.to_owned())
}

fn parse_size(value: &str) -> Option<u64> {
    // Digits only: no sign, no spaces, no leading `+`.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OID: &str = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393";

    fn pointer(lines: &[&str]) -> Vec<u8> {
        let mut s = lines.join("\n");
        s.push('\n');
        s.into_bytes()
    }

    #[test]
    fn a_valid_pointer_parses() {
        let data = pointer(&[
            "version https://git-lfs.github.com/spec/v1",
            &format!("oid sha256:{OID}"),
            "size 12345",
        ]);
        assert_eq!(
            Pointer::parse(&data),
            Some(Pointer {
                oid: OID.into(),
                size: 12345
            })
        );
    }

    #[test]
    fn extension_keys_and_the_old_version_are_accepted() {
        let data = pointer(&[
            "version https://hawser.github.com/spec/v1",
            "ext-0-foo sha256:abc",
            &format!("oid sha256:{OID}"),
            "size 0",
        ]);
        assert_eq!(Pointer::parse(&data).map(|p| p.size), Some(0));
    }

    #[test]
    fn anything_else_is_not_a_pointer() {
        let v = "version https://git-lfs.github.com/spec/v1";
        let oid = format!("oid sha256:{OID}");
        let cases: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"hello world\n".to_vec(),
            pointer(&["version https://example.com/spec/v9", &oid, "size 1"]),
            pointer(&[v, &oid]),
            pointer(&[v, "size 1"]),
            pointer(&[v, "size 1", &oid]),
            pointer(&[v, &oid, "size 1", "size 2"]),
            pointer(&[v, &format!("oid sha256:{}", OID.to_uppercase()), "size 1"]),
            pointer(&[v, &format!("oid sha256:{}", &OID[1..]), "size 1"]),
            pointer(&[v, &format!("oid sha1:{OID}"), "size 1"]),
            pointer(&[v, &format!("oid sha256:../../{}", &OID[6..]), "size 1"]),
            pointer(&[v, &oid, "size -1"]),
            pointer(&[v, &oid, "size +1"]),
            pointer(&[v, &oid, "size 1 "]),
            pointer(&[v, &oid, "size 99999999999999999999999"]),
            pointer(&[v, &oid, "size 1"])[..pointer(&[v, &oid, "size 1"]).len() - 1].to_vec(),
            pointer(&[v, &oid, "size 1", ""]),
            pointer(&[v, &oid, "Size 1"]),
        ];
        for data in cases {
            assert_eq!(Pointer::parse(&data), None, "{:?}", String::from_utf8_lossy(&data));
        }
    }

    #[test]
    fn oversized_and_non_utf8_blobs_are_not_pointers() {
        let mut data = pointer(&[
            "version https://git-lfs.github.com/spec/v1",
            &format!("oid sha256:{OID}"),
            "size 1",
        ]);
        let mut big = data.clone();
        big.truncate(big.len() - 1);
        big.extend(std::iter::repeat_n(b'0', MAX_POINTER_SIZE));
        big.push(b'\n');
        assert_eq!(Pointer::parse(&big), None, "over the size limit");
        data.insert(0, 0xff);
        assert_eq!(Pointer::parse(&data), None, "not UTF-8");
        assert_eq!(Pointer::parse(&[0xc3, 0x28, b'\n']), None);
    }
}
