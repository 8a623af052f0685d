#!/usr/bin/env bash
# gitferry's main job, offline, in a temp dir: mirror a repository from one git server to another
# with `gitferry mirror`, then mirror again after the source changes (new commit, force-push,
# deleted tag), then once more with nothing to do. Verifies the target equals the source.
#
# Runs a loopback `git daemon` as the "hosting" side (the git CLI is only used to create the
# demo's source repository and to serve it; gitferry itself never runs git).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q -p gitferry
GF=$PWD/target/debug/gitferry
DIR=$(mktemp -d /tmp/gitferry-demo.XXXXXX)
DAEMON_PID=
trap 'kill $DAEMON_PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=Demo GIT_AUTHOR_EMAIL=demo@example.invalid GIT_COMMITTER_NAME=Demo GIT_COMMITTER_EMAIL=demo@example.invalid

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "creating a source repository with history (and an empty target)"
git init -q --bare --initial-branch=main "$DIR/srv/source.git"
git init -q --bare --initial-branch=main "$DIR/srv/target.git"
git clone -q "$DIR/srv/source.git" "$DIR/work" 2>/dev/null
cd "$DIR/work"
for i in 1 2 3 4 5; do echo "change $i" >> notes.txt; git add notes.txt; git commit -qm "change $i"; done
git tag -a v1.0 -m "release 1.0"
git checkout -qb feature; echo feature > feature.txt; git add feature.txt; git commit -qm feature
git checkout -q main; git tag old-tag HEAD~2
git push -q origin main feature --tags
cd - >/dev/null

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
git daemon --reuseaddr --export-all --enable=receive-pack --listen=127.0.0.1 --port="$PORT" \
  --base-path="$DIR/srv" "$DIR/srv" >/dev/null 2>&1 &
DAEMON_PID=$!
for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
SRC=git://127.0.0.1:$PORT/source.git
DST=git://127.0.0.1:$PORT/target.git

step "gitferry mirror $SRC $DST --cache-dir $DIR/cache"
"$GF" mirror "$SRC" "$DST" --cache-dir "$DIR/cache" --progress

step "the source moves on: a new commit, a force-pushed branch, a deleted tag"
cd "$DIR/work"
echo more >> notes.txt; git commit -qam "one more change"
git checkout -q feature; git commit -q --amend -m "feature, rewritten"; git checkout -q main
git push -q origin main; git push -q -f origin feature; git push -q origin :refs/tags/old-tag
cd - >/dev/null
"$GF" mirror "$SRC" "$DST" --cache-dir "$DIR/cache"

step "nothing changed: no pack is transferred in either direction"
"$GF" mirror "$SRC" "$DST" --cache-dir "$DIR/cache" --json | python3 -m json.tool | head -30

step "verifying: target refs == source refs"
refs() { git -C "$1" for-each-ref --format='%(objectname) %(refname)' refs/heads refs/tags; }
if diff <(refs "$DIR/srv/source.git") <(refs "$DIR/srv/target.git"); then
  refs "$DIR/srv/target.git"
  echo "OK: the target is an exact mirror of the source"
else
  echo "MISMATCH"; exit 1
fi
