#!/usr/bin/env bash
# ssh:// beside git:// for `gitferry mirror` (issue 17): the same generated repository served by a
# loopback git daemon and by a loopback OpenSSH sshd (git-shell as the command, as in the tests),
# the same binary, scenarios initial / no-op / incremental. Prints a table and writes it to
# bench/out/ssh.md. Checks that every target ends with the source's refs.
#
#   bash bench/ssh.sh                     # 3000 commits, 4000 files (the bench repository)
#   GF=target/debug/gitferry bash bench/ssh.sh   # another build
#
# sshd runs as root with `ForceCommand git-shell -c "$SSH_ORIGINAL_COMMAND"` (see tests/src/sshd.rs
# for why), keys made here with ssh-keygen, everything under one temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
COMMITS=${COMMITS:-3000}
FILES=${FILES:-4000}
RUNS=${RUNS:-3}
OUT=$ROOT/bench/out
WORK=$(mktemp -d /tmp/gitferry-bench-ssh.XXXXXX)
DAEMON_PID=
SSHD_PID=
trap 'kill $DAEMON_PID $SSHD_PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
mkdir -p "$OUT"

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
export GIT_AUTHOR_NAME=Bench GIT_AUTHOR_EMAIL=bench@example.invalid GIT_COMMITTER_NAME=Bench GIT_COMMITTER_EMAIL=bench@example.invalid

if [ -z "${GF:-}" ]; then
  cargo build --release -q -p gitferry --no-default-features   # mirror needs no AWS adapters
  GF=$ROOT/target/release/gitferry
fi

echo "generating repository: $COMMITS commits, $FILES files" >&2
SRV=$WORK/srv
mkdir -p "$SRV"
git init -q --bare --initial-branch=main "$SRV/src.git"
python3 bench/gen_repo.py --commits "$COMMITS" --files "$FILES" | git -C "$SRV/src.git" fast-import --quiet
git -C "$SRV/src.git" repack -adq --depth=50 --window=10
PACK_BYTES=$(du -cb "$SRV/src.git/objects/pack/"*.pack | tail -1 | cut -f1)
NOBJ=$(git -C "$SRV/src.git" count-objects -v | awk '/in-pack/ {print $2}')

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 50); do (echo >/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

PORT=$(free_port)
git daemon --reuseaddr --export-all --enable=receive-pack --listen=127.0.0.1 --port="$PORT" \
  --base-path="$SRV" "$SRV" >/dev/null 2>&1 &
DAEMON_PID=$!
wait_port "$PORT"

SSH=$WORK/ssh
mkdir -p "$SSH" /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$SSH/host_ed25519"
ssh-keygen -q -t ed25519 -N '' -f "$SSH/client"
cp "$SSH/client.pub" "$SSH/authorized_keys"
SPORT=$(free_port)
cat > "$SSH/sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $SPORT
HostKey $SSH/host_ed25519
AuthorizedKeysFile $SSH/authorized_keys
PidFile none
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers root
ForceCommand git-shell -c "\$SSH_ORIGINAL_COMMAND"
AcceptEnv GIT_PROTOCOL
SetEnv GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
EOF
/usr/sbin/sshd -D -e -f "$SSH/sshd_config" 2>"$SSH/sshd.log" &
SSHD_PID=$!
wait_port "$SPORT"
echo "[127.0.0.1]:$SPORT $(cut -d' ' -f1-2 "$SSH/host_ed25519.pub")" > "$SSH/known_hosts"

measure() {  # prints wall seconds
  local t0=$EPOCHREALTIME
  "$@" >/dev/null 2>"$WORK/stderr" || { echo "failed: $*" >&2; cat "$WORK/stderr" >&2; exit 1; }
  local t1=$EPOCHREALTIME
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", b - a }'
}
refs_of() { git -C "$1" for-each-ref --format='%(objectname) %(refname)' refs/heads refs/tags; }
check_equal() {
  diff <(refs_of "$SRV/src.git") <(refs_of "$1") >/dev/null || { echo "MISMATCH: $1" >&2; exit 1; }
}

declare -A T
for run in $(seq "$RUNS"); do
  rm -rf "$SRV/git.git" "$SRV/ssh.git" "$WORK/cache-git" "$WORK/cache-ssh"
  git init -q --bare "$SRV/git.git"; git init -q --bare "$SRV/ssh.git"
  git -C "$SRV/src.git" for-each-ref --format='%(refname)' refs/tags/bench-* | xargs -r -n1 git -C "$SRV/src.git" update-ref -d
  if [ -n "${BASE_MAIN:-}" ]; then git -C "$SRV/src.git" update-ref refs/heads/main "$BASE_MAIN"; fi
  BASE_MAIN=$(git -C "$SRV/src.git" rev-parse refs/heads/main)
  for scenario in initial noop incremental; do
    if [ "$scenario" = incremental ]; then
      python3 bench/gen_repo.py --commits 20 --files "$FILES" --start "$COMMITS" --tag-every 0 --seed $((run + 7)) \
        --from-ref "$BASE_MAIN" | git -C "$SRV/src.git" fast-import --quiet --force
      git -C "$SRV/src.git" tag -a bench-$run -m "bench $run" main
    fi
    t=$(measure "$GF" mirror "git://127.0.0.1:$PORT/src.git" "git://127.0.0.1:$PORT/git.git" --cache-dir "$WORK/cache-git")
    T[git-$scenario]+="$t "
    t=$(measure "$GF" mirror "ssh://root@127.0.0.1:$SPORT$SRV/src.git" "ssh://root@127.0.0.1:$SPORT$SRV/ssh.git" \
      --cache-dir "$WORK/cache-ssh" --ssh-key "$SSH/client" --known-hosts "$SSH/known_hosts")
    T[ssh-$scenario]+="$t "
    check_equal "$SRV/git.git"; check_equal "$SRV/ssh.git"
  done
  git -C "$SRV/ssh.git" fsck --full --strict --no-dangling >/dev/null
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
{
  echo "### gitferry mirror over ssh:// beside git:// ($(date -u +%Y-%m-%d), $(nproc) cores, median of $RUNS runs)"
  echo
  echo "Repository: $COMMITS commits, $FILES files, $NOBJ objects, pack $((PACK_BYTES / 1048576)) MiB; source and target on the same"
  echo "loopback server: \`git daemon\`, or OpenSSH sshd running git-shell (ed25519 keys). Binary: \`$(basename "$(dirname "$GF")")\` build."
  echo
  echo "| scenario | git:// s | ssh:// s | ssh / git |"
  echo "|---|---:|---:|---:|"
  for s in initial noop incremental; do
    g=$(echo "${T[git-$s]}" | median); h=$(echo "${T[ssh-$s]}" | median)
    awk -v s="$s" -v g="$g" -v h="$h" 'BEGIN { printf "| %s | %.3f | %.3f | %.2f |\n", s, g, h, h/g }'
  done
  echo
  echo "All targets ended with refs equal to the source; the ssh target passed \`git fsck --full --strict\`."
} | tee "$OUT/ssh.md"
