//! Git's delta encoding: a new version of an object as copies from a base and literal inserts.
//!
//! gix reads deltas but cannot make them, and the one crate on the registry that does is a
//! whole git implementation besides. Packs we write copy the deltas they hold; this encoder is
//! for the objects stored whole whose previous version the receiver has — after a repack the
//! newest version of every file is stored whole, and a push to a target that lags would carry
//! each changed file whole where `git push` sends a small delta against the target's version.
//!
//! The format (git's `patch-delta.c`): the base's and the result's sizes as little-endian
//! base-128 numbers, then instructions — `0x80 | bits` copies `size` bytes from `offset` of the
//! base (the bits say which offset and size bytes follow; size 0 means 0x10000), `1..=127`
//! inserts that many literal bytes that follow.
//!
//! The search is git's `diff-delta.c` in outline: the base is indexed by a hash of every
//! [`BLOCK`]-byte block at block boundaries; the result is scanned with a rolling hash of the same
//! width, and a hit is verified, then extended forwards and backwards into pending literals. A
//! delta that would not be smaller than `max_len` is abandoned as soon as it grows past it.

/// The width of the hashed window, in bytes (git's `RABIN_WINDOW`).
const BLOCK: usize = 16;
/// Candidates tried per hash hit: keeps a base full of one repeated block from going quadratic.
const CANDIDATES: usize = 8;
/// The largest copy one instruction says, for every reader's sake (git writes no larger).
const MAX_COPY: usize = 0x10000;
const MAX_INSERT: usize = 127;
const MULT: u64 = 0x100_0000_01b3;

/// The delta that makes `target` from `base`, or `None` when it would be `max_len` bytes or
/// more (not worth it), or the base is too short to index.
pub fn encode(base: &[u8], target: &[u8], max_len: usize) -> Option<Vec<u8>> {
    if base.len() < BLOCK || target.len() < BLOCK || base.len() > u32::MAX as usize {
        return None;
    }
    let index = Index::new(base);
    let mut out = Encoder {
        out: Vec::with_capacity(max_len.min(target.len() / 2 + 64)),
        max_len,
    };
    out.size(base.len());
    out.size(target.len());
    let mut pending = 0; // start of the literals not yet written
    let mut at = 0;
    let mut hash = window_hash(&target[..BLOCK]);
    while at + BLOCK <= target.len() {
        match index.best_match(base, target, at, pending, hash) {
            Some((from, to, len)) => {
                out.insert(&target[pending..to])?;
                out.copy(from, len)?;
                at = to + len;
                pending = at;
                if at + BLOCK <= target.len() {
                    hash = window_hash(&target[at..at + BLOCK]);
                }
            }
            None => {
                if at + BLOCK < target.len() {
                    hash = roll(hash, target[at], target[at + BLOCK]);
                }
                at += 1;
            }
        }
    }
    out.insert(&target[pending..])?;
    Some(out.out)
}

/// `MULT^(BLOCK-1)`: the weight of the byte leaving the window.
const fn out_weight() -> u64 {
    let mut w = 1u64;
    let mut i = 1;
    while i < BLOCK {
        w = w.wrapping_mul(MULT);
        i += 1;
    }
    w
}
const OUT_WEIGHT: u64 = out_weight();

fn window_hash(window: &[u8]) -> u64 {
    window
        .iter()
        .fold(0u64, |h, &b| h.wrapping_mul(MULT).wrapping_add(u64::from(b) + 1))
}

fn roll(hash: u64, leaving: u8, entering: u8) -> u64 {
    hash.wrapping_sub((u64::from(leaving) + 1).wrapping_mul(OUT_WEIGHT))
        .wrapping_mul(MULT)
        .wrapping_add(u64::from(entering) + 1)
}

/// The base's blocks by hash, sorted, so the blocks with one hash are found by binary search.
struct Index {
    blocks: Vec<(u64, u32)>,
}

impl Index {
    fn new(base: &[u8]) -> Index {
        let mut blocks: Vec<(u64, u32)> = (0..base.len() / BLOCK)
            .map(|n| (window_hash(&base[n * BLOCK..(n + 1) * BLOCK]), (n * BLOCK) as u32))
            .collect();
        blocks.sort_unstable();
        Index { blocks }
    }

    /// The longest match for the window at `at` of `target`: (base offset, target offset,
    /// length), extended back as far as `pending` (literals not yet written).
    fn best_match(
        &self,
        base: &[u8],
        target: &[u8],
        at: usize,
        pending: usize,
        hash: u64,
    ) -> Option<(usize, usize, usize)> {
        let first = self.blocks.partition_point(|(h, _)| *h < hash);
        let mut best: Option<(usize, usize, usize)> = None;
        for &(h, pos) in self.blocks[first..].iter().take(CANDIDATES) {
            if h != hash {
                break;
            }
            let pos = pos as usize;
            let ahead = common_prefix(&base[pos..], &target[at..]);
            if ahead < BLOCK {
                continue; // a hash collision
            }
            let back = (1..=pos.min(at - pending))
                .take_while(|&k| base[pos - k] == target[at - k])
                .count();
            if best.is_none_or(|(_, _, len)| ahead + back > len) {
                best = Some((pos - back, at - back, ahead + back));
            }
        }
        best
    }
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Writes instructions, giving up (`None`) once the delta reaches `max_len`.
struct Encoder {
    out: Vec<u8>,
    max_len: usize,
}

impl Encoder {
    fn size(&mut self, mut n: usize) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                return self.out.push(byte);
            }
            self.out.push(byte | 0x80);
        }
    }

    fn check(&self) -> Option<()> {
        (self.out.len() < self.max_len).then_some(())
    }

    fn insert(&mut self, literal: &[u8]) -> Option<()> {
        for piece in literal.chunks(MAX_INSERT) {
            self.out.push(piece.len() as u8);
            self.out.extend_from_slice(piece);
            self.check()?;
        }
        Some(())
    }

    fn copy(&mut self, mut offset: usize, mut len: usize) -> Option<()> {
        while len > 0 {
            let size = len.min(MAX_COPY);
            let at = self.out.len();
            self.out.push(0x80);
            for k in 0..4 {
                let byte = (offset >> (8 * k)) as u8;
                if byte != 0 {
                    self.out[at] |= 1 << k;
                    self.out.push(byte);
                }
            }
            // A size of 0x10000 is written as no size bytes at all.
            for k in 0..3 {
                let byte = ((size & 0xffff) >> (8 * k)) as u8;
                if size != MAX_COPY && byte != 0 {
                    self.out[at] |= 0x10 << k;
                    self.out.push(byte);
                }
            }
            offset += size;
            len -= size;
            self.check()?;
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// git's `patch_delta`, for checking: instructions applied to the base.
    fn apply(base: &[u8], delta: &[u8]) -> Vec<u8> {
        let mut at = 0;
        let mut size = || {
            let (mut n, mut shift) = (0usize, 0);
            loop {
                let b = delta[at];
                at += 1;
                n |= usize::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    return n;
                }
            }
        };
        assert_eq!(size(), base.len());
        let want = size();
        let mut out = Vec::new();
        while at < delta.len() {
            let op = delta[at];
            at += 1;
            if op & 0x80 != 0 {
                let mut field = |bits: u8, shift: usize| {
                    let mut v = 0usize;
                    for k in 0..shift {
                        if op & (bits << k) != 0 {
                            v |= usize::from(delta[at]) << (8 * k);
                            at += 1;
                        }
                    }
                    v
                };
                let offset = field(0x01, 4);
                let size = match field(0x10, 3) {
                    0 => 0x10000,
                    n => n,
                };
                out.extend_from_slice(&base[offset..offset + size]);
            } else {
                assert!(op > 0, "opcode 0 is reserved");
                out.extend_from_slice(&delta[at..at + usize::from(op)]);
                at += usize::from(op);
            }
        }
        assert_eq!(out.len(), want);
        out
    }

    fn text(lines: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..lines)
            .flat_map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                format!("line {i}: value {}\n", s >> 40).into_bytes()
            })
            .collect()
    }

    #[test]
    fn an_edited_file_is_a_small_delta_that_rebuilds_it() {
        let base = text(2000, 1);
        let mut target = base.clone();
        target.splice(5000..5010, b"an edit in the middle".iter().copied());
        target.extend_from_slice(b"and a new last line\n");
        target.drain(100..180);
        let delta = encode(&base, &target, target.len()).expect("worth a delta");
        assert!(
            delta.len() < 120,
            "delta of {} bytes for three small edits",
            delta.len()
        );
        assert_eq!(apply(&base, &delta), target);
    }

    #[test]
    fn copies_longer_than_one_instruction_are_split() {
        let base = text(20_000, 2); // ~ 500 KB: one run of it needs several copies
        let mut target = b"prefix\n".to_vec();
        target.extend_from_slice(&base);
        let delta = encode(&base, &target, target.len()).expect("worth a delta");
        assert!(delta.len() < 100);
        assert_eq!(apply(&base, &delta), target);
    }

    #[test]
    fn unrelated_content_gives_up_at_the_limit() {
        let base = text(500, 3);
        let target = text(500, 4);
        assert_eq!(encode(&base, &target, target.len() / 2), None);
    }

    #[test]
    fn any_pair_round_trips() {
        // Edits of every shape: repeated blocks, matches at both ends, bytes above 0x7f.
        let base: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8 ^ (i / 997) as u8).collect();
        let cases: Vec<Vec<u8>> = vec![
            base.clone(),
            base[..BLOCK].to_vec(),
            base[base.len() - 40..].to_vec(),
            [&base[300..40_000], &[0xff; 300][..], &base[..1000]].concat(),
            vec![7; 5000],
            base.iter().rev().copied().collect(),
        ];
        for target in cases {
            if let Some(delta) = encode(&base, &target, usize::MAX) {
                assert_eq!(apply(&base, &delta), target);
            }
        }
        assert_eq!(encode(&base[..BLOCK - 1], &base, usize::MAX), None);
    }

    #[test]
    fn random_edits_round_trip() {
        let mut s = 11u64;
        let mut next = |n: usize| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as usize % n.max(1)
        };
        for _ in 0..300 {
            let base = text(1 + next(400), next(1000) as u64);
            let mut target = base.clone();
            for _ in 0..next(6) {
                let at = next(target.len());
                match next(3) {
                    0 => target.truncate(target.len().min(at + next(200))),
                    1 => drop(target.splice(at..at, (0..next(300)).map(|i| i as u8))),
                    _ => drop(target.drain(at..target.len().min(at + next(500)))),
                }
            }
            if let Some(delta) = encode(&base, &target, usize::MAX) {
                assert_eq!(apply(&base, &delta), target);
            }
        }
    }
}
