#!/usr/bin/env python3
"""List every function in product code longer than a limit (default 80 lines).

Product code is `shared/*/src` and `functions/*/src`; `#[cfg(test)]` items (the unit-test
modules) and `tests/` directories are skipped. A function's length runs from the line of its
`fn` keyword to the line of its closing brace. Issue 16 asks that no product function be longer
than ~80 lines without a reason written next to it: a `//` comment directly above the function
(among its docs and attributes) that says why it stays long. Such functions are still listed,
marked `(reason given)`, so the list stays honest.

Usage: python3 infra/ci/long_fns.py [--limit N] [ROOT]
Exit status: 0 always (a report, not a gate); the last line counts what was found.
"""

import argparse
import glob
import os
import re
import sys

FN_RE = re.compile(r"\bfn\s+([A-Za-z_][A-Za-z0-9_]*)")
REASON_RE = re.compile(r"\blong\b", re.IGNORECASE)


def mask(src):
    """Return src with comments, strings and char literals blanked (newlines kept), so that
    braces and `fn` inside them do not count."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', src[i:]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            m = re.match(r'r(#*)"', src[i:])
            end = '"' + m.group(1)
            j = src.find(end, i + len(m.group(0)))
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            j += 1
            out.append(re.sub(r"[^\n]", " ", src[i:j]))
            i = j
        elif c == "'":
            # char literal ('a', '\n', '\u{..}', '{') vs lifetime ('a)
            m = re.match(r"'(\\.[^']*|[^\\'])'", src[i:])
            if m:
                out.append(" " * len(m.group(0)))
                i += len(m.group(0))
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def match_brace(masked, open_at):
    depth = 0
    for j in range(open_at, len(masked)):
        if masked[j] == "{":
            depth += 1
        elif masked[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(masked) - 1


def body_start(masked, at):
    """Where the body of the fn whose signature starts at `at` opens, or None when the
    signature ends in `;`. Brackets are skipped: `-> [u8; 32]` does not end a signature."""
    depth = 0
    for j in range(at, len(masked)):
        c = masked[j]
        if c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif depth == 0 and c == "{":
            return j
        elif depth == 0 and c == ";":
            return None
    return None


def test_spans(masked):
    """Character spans of items under #[cfg(test)] (a module or a function)."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]", masked):
        k = m.end()
        # the item's body: the first `{` before any `;` (a `mod tests;` has no body here)
        brace, semi = masked.find("{", k), masked.find(";", k)
        if brace >= 0 and (semi < 0 or brace < semi):
            spans.append((m.start(), match_brace(masked, brace)))
    return spans


def reason_above(lines, fn_line):
    """A `//` comment that mentions `long` among the docs/attributes just above line fn_line."""
    k = fn_line - 1
    while k >= 0:
        s = lines[k].strip()
        if s.startswith("//") or s.startswith("#[") or s.startswith("#!") or s == "":
            if s.startswith("//") and not s.startswith("///") and not s.startswith("//!") and REASON_RE.search(s):
                return True
            if s == "":
                return False
            k -= 1
        else:
            return False
    return False


def long_fns(path, limit):
    src = open(path, encoding="utf-8").read()
    masked = mask(src)
    lines = src.split("\n")
    skip = test_spans(masked)
    found = []
    for m in FN_RE.finditer(masked):
        if any(a <= m.start() <= b for a, b in skip):
            continue
        brace = body_start(masked, m.end())
        if brace is None:
            continue  # a declaration without a body (trait method, extern)
        end = match_brace(masked, brace)
        first = masked.count("\n", 0, m.start())
        last = masked.count("\n", 0, end)
        length = last - first + 1
        if length > limit:
            found.append((length, path, first + 1, m.group(1), reason_above(lines, first)))
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("root", nargs="?", default=os.path.join(os.path.dirname(__file__), "..", ".."))
    args = ap.parse_args()
    root = os.path.normpath(args.root)
    files = []
    for top in ("shared", "functions"):
        files += glob.glob(os.path.join(root, top, "*", "src", "**", "*.rs"), recursive=True)
    found = []
    for f in sorted(files):
        rel = os.path.relpath(f, root)
        if "/tests/" in "/" + rel:
            continue
        found += long_fns(f, args.limit)
    found.sort(key=lambda x: (-x[0], x[1]))
    for length, path, line, name, reason in found:
        note = "  (reason given)" if reason else ""
        print(f"{length:5d}  {os.path.relpath(path, root)}:{line}  {name}{note}")
    unexplained = sum(1 for x in found if not x[4])
    print(f"{len(found)} function(s) over {args.limit} lines, {unexplained} without a reason")
    return 0


if __name__ == "__main__":
    sys.exit(main())
