#!/usr/bin/env python3
"""Generate a repository of realistic shape as a `git fast-import` stream on stdout.

Deterministic (fixed seed), so every run benchmarks the same data: FILES source-like text files in
nested directories, COMMITS commits on main touching a few files each (small edits, so packs hold
delta chains like real history), a few long-lived branches with merges, and an annotated tag every
TAG_EVERY commits.

    python3 bench/gen_repo.py --commits 3000 --files 4000 | git -C repo.git fast-import --quiet
"""
import argparse
import random
import sys

WORDS = ("let fn mut impl struct enum match return self crate pub use mod async await "
         "for while loop if else where trait type const static unsafe move ref box").split()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=3000)
    ap.add_argument("--files", type=int, default=4000)
    ap.add_argument("--tag-every", type=int, default=100)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--start", type=int, default=0, help="continue numbering (for incremental runs)")
    ap.add_argument("--branch", default="main")
    ap.add_argument("--from-ref", default=None, help="parent for the first commit")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    out = sys.stdout.buffer
    w = out.write

    def line():
        return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 12)))

    def path(i):
        return f"src/m{i % 37}/d{i % 11}/file_{i}.rs"

    contents = {}
    mark = 0
    t = 1_600_000_000 + args.start * 600

    def blob(data):
        nonlocal mark
        mark += 1
        w(b"blob\nmark :%d\ndata %d\n" % (mark, len(data)))
        w(data)
        w(b"\n")
        return mark

    def commit(branch, msg, changes, parent=None, merge=None):
        nonlocal mark, t
        t += 600
        mark += 1
        w(b"commit refs/heads/%s\nmark :%d\n" % (branch.encode(), mark))
        w(b"author Bench <bench@example.invalid> %d +0000\n" % t)
        w(b"committer Bench <bench@example.invalid> %d +0000\n" % t)
        m = msg.encode()
        w(b"data %d\n%s\n" % (len(m), m))
        if parent:
            w(b"from %s\n" % parent.encode())
        if merge:
            w(b"merge %s\n" % merge.encode())
        for p, bm in changes:
            w(b"M 100644 :%d %s\n" % (bm, p.encode()))
        w(b"\n")
        return mark

    if args.start == 0:
        # Initial tree: all files.
        changes = []
        for i in range(args.files):
            data = "\n".join(line() for _ in range(rnd.randint(20, 80))).encode() + b"\n"
            contents[i] = data
            changes.append((path(i), blob(data)))
        commit(args.branch, "initial import", changes)
    parent = args.from_ref
    for c in range(args.start, args.start + args.commits):
        changes = []
        for _ in range(rnd.randint(1, 4)):
            i = rnd.randrange(args.files)
            old = contents.get(i) or ("\n".join(line() for _ in range(40)).encode() + b"\n")
            lines = old.split(b"\n")
            k = rnd.randrange(len(lines))
            lines[k:k + 1] = [line().encode(), line().encode()]
            contents[i] = b"\n".join(lines)
            changes.append((path(i), blob(contents[i])))
        commit(args.branch, f"change {c}", changes, parent=parent)
        parent = None
        if args.branch == "main" and c % 500 == 250:
            # A topic branch forked here, two commits, merged back.
            br = f"topic/{c}"
            w(b"reset refs/heads/%s\nfrom refs/heads/main\n" % br.encode())
            for j in range(2):
                i = rnd.randrange(args.files)
                contents[i] = contents.get(i, b"") + line().encode() + b"\n"
                commit(br, f"topic {c} step {j}", [(path(i), blob(contents[i]))])
            commit("main", f"merge topic {c}", [], merge=f"refs/heads/{br}")
        if args.tag_every and c % args.tag_every == args.tag_every - 1:
            tag = f"v{c // args.tag_every}.0".encode()
            msg = b"release " + tag
            w(b"tag %s\nfrom refs/heads/%s\ntagger Bench <bench@example.invalid> %d +0000\ndata %d\n%s\n"
              % (tag, args.branch.encode(), t, len(msg), msg))
    w(b"done\n")


if __name__ == "__main__":
    main()
