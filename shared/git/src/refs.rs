//! Ref snapshots and what changed between two of them.
//!
//! A [`RefState`] is what a remote advertised (or what a local repository has): full ref names
//! to object ids, with the peeled commit of annotated tags and the `HEAD` symref target. Sync
//! decisions are made by comparing snapshots ([`diff`]) rather than by asking remotes twice.
//! [`RefPatterns`] decide which refs a mirror carries: by default branches and tags only, since
//! hosted read-only refs such as GitHub's `refs/pull/*` are rejected by other hosts.

use std::collections::BTreeMap;

use gix::ObjectId;
use serde::{Deserialize, Serialize};

use super::Error;

/// Where a ref points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefTarget {
    /// The object the ref names (for an annotated tag: the tag object).
    #[serde(with = "hex_oid")]
    pub id: ObjectId,
    /// For annotated tags: the object the tag finally points to.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_oid_opt")]
    pub peeled: Option<ObjectId>,
}

impl RefTarget {
    pub fn new(id: ObjectId) -> RefTarget {
        RefTarget { id, peeled: None }
    }

    /// The commit (or other non-tag object) this ref finally points to.
    pub fn peeled_or_id(&self) -> ObjectId {
        self.peeled.unwrap_or(self.id)
    }
}

/// A snapshot of refs: full name → target, plus the `HEAD` symref (e.g. `refs/heads/main`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefState {
    pub refs: BTreeMap<String, RefTarget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
}

impl RefState {
    /// Only the refs the patterns select.
    pub fn filtered(&self, patterns: &RefPatterns) -> RefState {
        RefState {
            refs: self
                .refs
                .iter()
                .filter(|(name, _)| patterns.matches(name))
                .map(|(n, t)| (n.clone(), *t))
                .collect(),
            head: self.head.clone(),
        }
    }

    /// Name → id, the part that matters for equality of mirrors.
    pub fn ids(&self) -> BTreeMap<String, ObjectId> {
        self.refs.iter().map(|(n, t)| (n.clone(), t.id)).collect()
    }

    pub fn len(&self) -> usize {
        self.refs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }
}

/// The namespace of refs gitferry keeps for itself in its cache.
pub const OWN_REFS: &str = "refs/gitferry/";

/// Which refs a mirror carries: any `include` pattern matches and no `exclude` pattern does.
///
/// Patterns are full ref names in which `*` matches any run of characters (including `/`), e.g.
/// `refs/heads/*`, `refs/tags/v*`, `refs/heads/release/*`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefPatterns {
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Match gitferry's own refs too (only for whole-repository work: restore, repack).
    #[serde(skip)]
    own: bool,
}

impl Default for RefPatterns {
    fn default() -> Self {
        RefPatterns {
            include: vec!["refs/heads/*".into(), "refs/tags/*".into()],
            exclude: Vec::new(),
            own: false,
        }
    }
}

impl RefPatterns {
    pub fn new(include: Vec<String>, exclude: Vec<String>) -> Result<RefPatterns, Error> {
        for p in include.iter().chain(&exclude) {
            if !p.starts_with("refs/") || p.contains("..") || p.contains(char::is_whitespace) || p.ends_with('/') {
                return Err(Error::InvalidRefPattern {
                    pattern: p.clone(),
                    reason: "patterns are full ref names under refs/, e.g. refs/heads/* or refs/tags/v*".into(),
                });
            }
        }
        if include.is_empty() {
            return Err(Error::InvalidRefPattern {
                pattern: String::new(),
                reason: "at least one include pattern is needed".into(),
            });
        }
        Ok(RefPatterns {
            include,
            exclude,
            own: false,
        })
    }

    /// Every ref of a repository (what a target advertises, or a local copy as a whole).
    pub fn all() -> RefPatterns {
        RefPatterns {
            include: vec!["refs/*".into()],
            exclude: Vec::new(),
            own: false,
        }
    }

    /// Every ref including gitferry's own (`refs/gitferry/`).
    pub fn everything() -> RefPatterns {
        RefPatterns {
            own: true,
            ..RefPatterns::all()
        }
    }

    /// gitferry's own refs (`refs/gitferry/`, e.g. backups of overwritten tips) never match:
    /// they are not mirrored, whatever the patterns say.
    pub fn matches(&self, name: &str) -> bool {
        (self.own || !name.starts_with(OWN_REFS))
            && self.include.iter().any(|p| glob_match(p.as_bytes(), name.as_bytes()))
            && !self.exclude.iter().any(|p| glob_match(p.as_bytes(), name.as_bytes()))
    }

    /// The literal prefixes before the first `*` of each include pattern: used to ask servers
    /// (protocol v2 `ref-prefix`) for only what we want.
    pub fn prefixes(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .include
            .iter()
            .map(|p| p.split('*').next().unwrap_or_default().to_owned())
            .collect();
        p.sort();
        p.dedup();
        p
    }
}

/// `*` matches any sequence of bytes; everything else literally. Iterative, linear-ish.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

/// How a ref changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeltaKind {
    Created,
    /// Fast-forward (or, for tags, re-pointed to a descendant).
    Updated,
    /// Non-fast-forward: the old tip is not an ancestor of the new one (history rewritten).
    Forced,
    Deleted,
}

/// One ref's change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefDelta {
    pub name: String,
    pub kind: DeltaKind,
    #[serde(with = "hex_oid_opt", skip_serializing_if = "Option::is_none", default)]
    pub old: Option<ObjectId>,
    #[serde(with = "hex_oid_opt", skip_serializing_if = "Option::is_none", default)]
    pub new: Option<ObjectId>,
}

/// Compare two snapshots of names → ids. `is_fast_forward(old, new)` decides Updated vs Forced
/// (it is only asked when both ids differ).
pub fn diff(
    before: &BTreeMap<String, ObjectId>,
    after: &BTreeMap<String, ObjectId>,
    mut is_fast_forward: impl FnMut(ObjectId, ObjectId) -> bool,
) -> Vec<RefDelta> {
    let mut out = Vec::new();
    for (name, &new) in after {
        match before.get(name) {
            None => out.push(RefDelta {
                name: name.clone(),
                kind: DeltaKind::Created,
                old: None,
                new: Some(new),
            }),
            Some(&old) if old != new => out.push(RefDelta {
                name: name.clone(),
                kind: if is_fast_forward(old, new) {
                    DeltaKind::Updated
                } else {
                    DeltaKind::Forced
                },
                old: Some(old),
                new: Some(new),
            }),
            Some(_) => {}
        }
    }
    for (name, &old) in before {
        if !after.contains_key(name) {
            out.push(RefDelta {
                name: name.clone(),
                kind: DeltaKind::Deleted,
                old: Some(old),
                new: None,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Counts of deltas by kind, for summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaCounts {
    pub created: usize,
    pub updated: usize,
    pub forced: usize,
    pub deleted: usize,
}

impl DeltaCounts {
    pub fn of<'a>(kinds: impl IntoIterator<Item = &'a DeltaKind>) -> DeltaCounts {
        let mut c = DeltaCounts::default();
        for k in kinds {
            match k {
                DeltaKind::Created => c.created += 1,
                DeltaKind::Updated => c.updated += 1,
                DeltaKind::Forced => c.forced += 1,
                DeltaKind::Deleted => c.deleted += 1,
            }
        }
        c
    }

    pub fn total(&self) -> usize {
        self.created + self.updated + self.forced + self.deleted
    }
}

/// Validate a ref name received from a remote: git's rules (no `..`, no control characters,
/// no component starting with `.`, …), and it must live under `refs/`. Path-traversing or
/// otherwise hostile names are refused rather than written anywhere.
pub fn validate_ref_name(name: &[u8]) -> Result<String, Error> {
    let shown = String::from_utf8_lossy(name).chars().take(200).collect::<String>();
    let invalid = |reason: &str| Error::InvalidRefName {
        name: shown.escape_debug().to_string(),
        reason: reason.to_owned(),
    };
    let s = std::str::from_utf8(name).map_err(|_| invalid("not UTF-8"))?;
    if !s.starts_with("refs/") {
        return Err(invalid("not under refs/"));
    }
    gix::validate::reference::name(name.into()).map_err(|e| invalid(&e.to_string()))?;
    Ok(s.to_owned())
}

pub(crate) mod hex_oid {
    use gix::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &ObjectId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&id.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectId, D::Error> {
        let s = String::deserialize(d)?;
        ObjectId::from_hex(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod hex_oid_opt {
    use gix::ObjectId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<ObjectId>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.collect_str(&id.to_hex()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ObjectId>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| ObjectId::from_hex(s.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn default_patterns_take_heads_and_tags_only() {
        let p = RefPatterns::default();
        assert!(p.matches("refs/heads/main"));
        assert!(p.matches("refs/heads/feature/x"));
        assert!(p.matches("refs/tags/v1.0"));
        assert!(!p.matches("refs/pull/1/head"));
        assert!(!p.matches("refs/merge-requests/1/head"));
        assert!(!p.matches("HEAD"));
        let all = RefPatterns::new(vec!["refs/*".into()], vec![]).unwrap();
        assert!(all.matches("refs/pull/1/head") && !all.matches("refs/gitferry/overwritten/heads/main/1"));
        assert_eq!(p.prefixes(), vec!["refs/heads/", "refs/tags/"]);
    }

    #[test]
    fn excludes_win() {
        let p = RefPatterns::new(vec!["refs/heads/*".into()], vec!["refs/heads/tmp/*".into()]).unwrap();
        assert!(p.matches("refs/heads/main"));
        assert!(!p.matches("refs/heads/tmp/x"));
        assert!(RefPatterns::new(vec!["heads/*".into()], vec![]).is_err());
        assert!(RefPatterns::new(vec!["refs/../x".into()], vec![]).is_err());
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"refs/tags/v*", b"refs/tags/v1.2"));
        assert!(!glob_match(b"refs/tags/v*", b"refs/tags/x1"));
        assert!(glob_match(b"refs/*/main", b"refs/heads/main"));
        assert!(glob_match(b"*", b""));
        assert!(!glob_match(b"a*b", b"a/c"));
        assert!(glob_match(b"a*b*c", b"a-b-b-c"));
    }

    #[test]
    fn diff_classifies() {
        let before: BTreeMap<_, _> = [
            ("refs/heads/a", 1),
            ("refs/heads/b", 2),
            ("refs/heads/c", 3),
            ("refs/tags/t", 4),
        ]
        .into_iter()
        .map(|(n, i)| (n.to_owned(), oid(i)))
        .collect();
        let after: BTreeMap<_, _> = [
            ("refs/heads/a", 1),
            ("refs/heads/b", 5),
            ("refs/heads/c", 6),
            ("refs/heads/d", 7),
        ]
        .into_iter()
        .map(|(n, i)| (n.to_owned(), oid(i)))
        .collect();
        let d = diff(&before, &after, |old, _| old == oid(2));
        let kinds: Vec<_> = d.iter().map(|d| (d.name.as_str(), d.kind)).collect();
        assert_eq!(
            kinds,
            vec![
                ("refs/heads/b", DeltaKind::Updated),
                ("refs/heads/c", DeltaKind::Forced),
                ("refs/heads/d", DeltaKind::Created),
                ("refs/tags/t", DeltaKind::Deleted),
            ]
        );
        assert_eq!(DeltaCounts::of(d.iter().map(|d| &d.kind)).total(), 4);
    }

    #[test]
    fn hostile_ref_names_are_refused() {
        for bad in [
            &b"refs/heads/../../etc/passwd"[..],
            b"refs/heads/a..b",
            b"HEAD",
            b"refs/heads/x\0y",
            b"refs/heads/.hidden",
            b"/etc/passwd",
            b"refs/heads/a.lock",
            b"refs/heads/\xff",
        ] {
            assert!(
                validate_ref_name(bad).is_err(),
                "{:?} must be refused",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            validate_ref_name(b"refs/heads/feature/x").unwrap(),
            "refs/heads/feature/x"
        );
    }

    #[test]
    fn ref_state_json_roundtrip() {
        let mut s = RefState::default();
        s.refs.insert(
            "refs/tags/v1".into(),
            RefTarget {
                id: oid(1),
                peeled: Some(oid(2)),
            },
        );
        s.head = Some("refs/heads/main".into());
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains(&oid(1).to_hex().to_string()));
        assert_eq!(serde_json::from_str::<RefState>(&json).unwrap(), s);
    }
}
