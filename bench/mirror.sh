#!/usr/bin/env bash
# Benchmark `gitferry mirror` against the git CLI on the same generated repository, in the same
# run, over the same loopback git daemon. Prints a table (wall time, peak RSS, ratios) and writes
# it to bench/out/results.md. Checks that every target ends with the source's refs.
#
#   bash bench/mirror.sh                 # default size: 3000 commits, 4000 files
#   COMMITS=10000 FILES=20000 bash bench/mirror.sh
#
# git side:   git clone --mirror / git fetch --prune  +  git push --mirror (one `sh -c`)
# gitferry:   gitferry mirror SRC DST --cache-dir DIR
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COMMITS=${COMMITS:-3000}
FILES=${FILES:-4000}
RUNS=${RUNS:-3}
OUT=$ROOT/bench/out
WORK=$(mktemp -d /tmp/gitferry-bench.XXXXXX)
DAEMON_PID=
trap 'kill $DAEMON_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=Bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_COMMITTER_NAME=Bench GIT_COMMITTER_EMAIL=bench@example.invalid

cargo build --release -q -p gitferry
GF=$ROOT/target/release/gitferry

echo "generating repository: $COMMITS commits, $FILES files" >&2
SRV=$WORK/srv
mkdir -p "$SRV"
git init -q --bare --initial-branch=main "$SRV/src.git"
python3 bench/gen_repo.py --commits "$COMMITS" --files "$FILES" | git -C "$SRV/src.git" fast-import --quiet
git -C "$SRV/src.git" repack -adq --depth=50 --window=10
PACK_BYTES=$(du -cb "$SRV/src.git/objects/pack/"*.pack | tail -1 | cut -f1)
NOBJ=$(git -C "$SRV/src.git" count-objects -v | awk '/in-pack/ {print $2}')
NREFS=$(git -C "$SRV/src.git" for-each-ref | wc -l)

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --reuseaddr --export-all --enable=receive-pack --listen=127.0.0.1 --port="$PORT" \
  --base-path="$SRV" "$SRV" >/dev/null 2>&1 &
DAEMON_PID=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
URL=git://127.0.0.1:$PORT

# GNU time: wall seconds and peak RSS (KiB) of the command and its children. (A measuring
# process written in Python would inflate every figure: a forked child's peak RSS includes the
# parent's pages until exec.)
if [ ! -x /usr/bin/time ]; then
  SUDO=$( [ "$(id -u)" = 0 ] || echo sudo ); $SUDO apt-get install -y -qq time >/dev/null
fi
measure() {  # prints "<wall seconds> <peak RSS KiB>"; wall from bash's microsecond clock
  local t0=$EPOCHREALTIME
  /usr/bin/time -f "%M" -o "$WORK/measure" "$@" >/dev/null 2>"$WORK/stderr" \
    || { echo "failed: $*" >&2; cat "$WORK/stderr" >&2; exit 1; }
  local t1=$EPOCHREALTIME
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }') $(cat "$WORK/measure")"
}
refs_of() { git -C "$1" for-each-ref --format='%(objectname) %(refname)' refs/heads refs/tags; }
check_equal() {
  if ! diff <(refs_of "$SRV/src.git") <(refs_of "$1") >/dev/null; then
    echo "MISMATCH: $1 differs from the source" >&2; exit 1
  fi
}

declare -A GF_T GF_M GIT_T GIT_M
# One round = fresh targets, then the four scenarios for both tools. Median of RUNS rounds.
for run in $(seq "$RUNS"); do
  rm -rf "$SRV/gf.git" "$SRV/git.git" "$WORK/gfcache" "$WORK/gitcache"
  git init -q --bare "$SRV/gf.git"; git init -q --bare "$SRV/git.git"
  # restore the source to its generated state
  git -C "$SRV/src.git" for-each-ref --format='%(refname)' refs/tags/bench-* refs/heads/bench-* | xargs -r -n1 git -C "$SRV/src.git" update-ref -d
  if [ -n "${BASE_MAIN:-}" ]; then git -C "$SRV/src.git" update-ref refs/heads/main "$BASE_MAIN"; fi
  BASE_MAIN=$(git -C "$SRV/src.git" rev-parse refs/heads/main)
  git -C "$SRV/src.git" tag -f -a bench-doomed -m doomed main >/dev/null

  for scenario in initial noop incremental tagdelete; do
    case $scenario in
      incremental)
        python3 bench/gen_repo.py --commits 20 --files "$FILES" --start "$COMMITS" --tag-every 0 --seed $((run + 7)) \
          --from-ref "$BASE_MAIN" | git -C "$SRV/src.git" fast-import --quiet --force
        git -C "$SRV/src.git" tag -a bench-$run -m "bench $run" main ;;
      tagdelete)
        git -C "$SRV/src.git" tag -d bench-doomed >/dev/null ;;
    esac
    if [ "$scenario" = initial ]; then
      git_cmd=(sh -c "git clone -q --mirror $URL/src.git $WORK/gitcache && git -C $WORK/gitcache push -q --mirror $URL/git.git")
    else
      git_cmd=(sh -c "git -C $WORK/gitcache fetch -q --prune origin && git -C $WORK/gitcache push -q --mirror $URL/git.git")
    fi
    read -r t m < <(measure "$GF" mirror "$URL/src.git" "$URL/gf.git" --cache-dir "$WORK/gfcache")
    GF_T[$scenario]+="$t "; GF_M[$scenario]+="$m "
    read -r t m < <(measure "${git_cmd[@]}")
    GIT_T[$scenario]+="$t "; GIT_M[$scenario]+="$m "
    check_equal "$SRV/gf.git"; check_equal "$SRV/git.git"
  done
  git -C "$SRV/gf.git" fsck --full --strict --no-dangling >/dev/null
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "### gitferry mirror vs git CLI ($(date -u +%Y-%m-%d), $(nproc) cores, median of $RUNS runs)"
  echo
  echo "Repository: $COMMITS commits, $FILES files, $NREFS refs, $NOBJ objects, pack $((PACK_BYTES / 1048576)) MiB; git daemon on loopback."
  echo "git = \`git clone --mirror\` or \`git fetch --prune\`, then \`git push --mirror\`; gitferry = \`gitferry mirror\` (release build)."
  echo
  echo "| scenario | gitferry s | git s | time ratio | gitferry RSS MiB | git RSS MiB | RSS ratio |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for s in initial noop incremental tagdelete; do
    gt=$(echo "${GF_T[$s]}" | median); ct=$(echo "${GIT_T[$s]}" | median)
    gm=$(echo "${GF_M[$s]}" | median); cm=$(echo "${GIT_M[$s]}" | median)
    awk -v s="$s" -v gt="$gt" -v ct="$ct" -v gm="$gm" -v cm="$cm" 'BEGIN {
      printf "| %s | %.4f | %.4f | %.2f | %.1f | %.1f | %.2f |\n", s, gt, ct, gt/ct, gm/1024, cm/1024, gm/cm }'
  done
  echo
  echo "All targets ended with refs equal to the source; gitferry's target passed \`git fsck --full --strict\`."
} | tee "$OUT/results.md"
