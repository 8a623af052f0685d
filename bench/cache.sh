#!/usr/bin/env bash
# Benchmark the S3-cached bare repositories (issue 4) on a generated repository, against the
# local-directory store and a real S3 emulator (moto, from .venv — `make deps` installs it):
#
#   - initial: fetch the whole repository from a loopback git daemon and commit it to the store;
#   - cold restore: time and bytes downloaded into an empty work directory, vs the repository's
#     pack size (`git repack -adq`);
#   - warm no-op: a sync with nothing changed from a warm container — must write nothing;
#   - incremental: 20 new commits per run, synced from the warm container — bytes uploaded vs
#     the fetched pack (goal ≤ 2×).
#
# The measuring code is the ignored test `bench_cache` in tests/tests/cache.rs (release build).
# Prints a markdown table and writes it to bench/out/cache.md.
#
#   bash bench/cache.sh                                   # 3000 commits, 4000 files, 3 runs
#   COMMITS=10000 FILES=20000 RUNS=3 bash bench/cache.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COMMITS=${COMMITS:-3000}
FILES=${FILES:-4000}
RUNS=${RUNS:-3}
OUT=$ROOT/bench/out
WORK=$(mktemp -d /tmp/gitferry-bench-cache.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
[ -x .venv/bin/moto_server ] || make -s deps

echo "building the benchmark (release)" >&2
cargo test --release -q -p gitferry-tests --test cache --no-run

echo "generating repository: $COMMITS commits, $FILES files" >&2
git init -q --bare --initial-branch=main "$WORK/src.git"
python3 bench/gen_repo.py --commits "$COMMITS" --files "$FILES" | git -C "$WORK/src.git" fast-import --quiet
git -C "$WORK/src.git" repack -adq --depth=50 --window=10
NOBJ=$(git -C "$WORK/src.git" count-objects -v | awk '/in-pack/ {print $2}')
NREFS=$(git -C "$WORK/src.git" for-each-ref | wc -l)

BENCH_ROOT=$WORK BENCH_GEN=$ROOT/bench/gen_repo.py BENCH_COMMITS=$COMMITS BENCH_FILES=$FILES BENCH_RUNS=$RUNS \
  cargo test --release -q -p gitferry-tests --test cache -- --ignored --exact bench_cache --nocapture \
  > "$WORK/table" 2> "$WORK/stderr" || { cat "$WORK/stderr" "$WORK/table" >&2; exit 1; }

{
  echo "### S3-cached bare repos ($(date -u +%Y-%m-%d), $(nproc) cores)"
  echo
  echo "Repository: $COMMITS commits, $FILES files, $NREFS refs, $NOBJ objects; source on a loopback git daemon; moto $(.venv/bin/python -c 'import moto; print(moto.__version__)') on loopback."
  echo
  sed -n 's/^BENCH: \{0,1\}//p' "$WORK/table"
  echo
  echo "Every restored copy had the source's refs; the warm copy passed \`git fsck --full --strict\` after the incremental runs."
} | tee "$OUT/cache.md"
