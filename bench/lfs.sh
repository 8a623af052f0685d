#!/usr/bin/env bash
# Git LFS mirroring's memory bound (issue 19): `gitferry mirror` of a repository holding one
# LFS object of LFS_MB MiB (incompressible), from giftless to giftless through the test
# harness's loopback front (tests/src/bin/lfs-servers.rs). The object is streamed to the cache
# through SHA-256 and from the cache into the upload, so peak RSS must not grow with its size.
# Prints wall time and peak RSS (/usr/bin/time) and writes bench/out/lfs.md; fails when the
# peak RSS exceeds MAX_RSS_MB or the target's LFS server does not hold the object afterwards.
#
#   bash bench/lfs.sh                    # 300 MiB, release build
#   LFS_MB=1024 bash bench/lfs.sh        # the issue's 1 GB case
#   GITFERRY_BIN=target/debug/gitferry bash bench/lfs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LFS_MB=${LFS_MB:-300}
MAX_RSS_MB=${MAX_RSS_MB:-100}
OUT=$ROOT/bench/out
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/gitferry-lfs-bench.XXXXXX)
SERVERS_PID=
cleanup() {  # the servers stop when their stdin closes
  if [ -n "$SERVERS_PID" ]; then eval "exec ${SERVERS_IN}>&-"; wait "$SERVERS_PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$OUT"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=Bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_COMMITTER_NAME=Bench GIT_COMMITTER_EMAIL=bench@example.invalid

if [ -z "${GITFERRY_BIN:-}" ]; then
  cargo build -q --release -p gitferry
  GITFERRY_BIN=$TARGET_DIR/release/gitferry
fi
cargo build -q -p gitferry-tests --bin lfs-servers
coproc SERVERS { "$TARGET_DIR/debug/lfs-servers"; }
SERVERS_IN=${SERVERS[1]}
read -r PORT SRV_ROOT <&"${SERVERS[0]}"
BASE=http://127.0.0.1:$PORT/org

git init -q --bare --initial-branch=main "$SRV_ROOT/org/src.git"
git init -q --bare --initial-branch=main "$SRV_ROOT/org/dst.git"
git init -q --initial-branch=main "$WORK/wt"
cd "$WORK/wt"
git remote add origin "$BASE/src.git"
git lfs install --local >/dev/null
git lfs track '*.bin' >/dev/null
head -c "$((LFS_MB * 1048576))" /dev/urandom > big.bin
OID=$(sha256sum big.bin | cut -d' ' -f1)
git add .gitattributes big.bin
git commit -q -m "one ${LFS_MB} MiB LFS object"
git push -q origin main 2>/dev/null
rm big.bin
cd "$ROOT"

/usr/bin/time -f '%e %M' -o "$WORK/time" "$GITFERRY_BIN" mirror "$BASE/src.git" "$BASE/dst.git" \
  --cache-dir "$WORK/cache" --json > "$WORK/summary.json"
read -r WALL RSS_KB < "$WORK/time"
RSS_MB=$((RSS_KB / 1024))
HELD=$(find /tmp -maxdepth 5 -path "*gitferry-giftless-*/storage/org/dst/$OID" 2>/dev/null | head -1)
[ -n "$HELD" ] && [ "$(sha256sum "$HELD" | cut -d' ' -f1)" = "$OID" ] || { echo "the target's LFS server does not hold $OID"; exit 1; }

REPORT="| object | wall | peak RSS | limit |
|---|---|---|---|
| ${LFS_MB} MiB | ${WALL} s | ${RSS_MB} MiB | ${MAX_RSS_MB} MiB |"
echo "$REPORT"
echo "summary: $(cat "$WORK/summary.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lfs"])')"
{ echo "# LFS mirroring memory ($(date -u +%F), $(nproc) cores)"; echo; echo "$REPORT"; } > "$OUT/lfs.md"
[ "$RSS_MB" -le "$MAX_RSS_MB" ] || { echo "peak RSS ${RSS_MB} MiB is over ${MAX_RSS_MB} MiB"; exit 1; }
