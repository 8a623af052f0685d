#!/usr/bin/env bash
# After the suite: every server the test harness started carries GITFERRY_TEST_SERVER=1 in its
# environment (tests/src/process.rs). Any such process still running is a server a test forgot
# to stop: list it and fail.
set -u
left=()
for env in /proc/[0-9]*/environ; do
    pid=${env#/proc/}; pid=${pid%/environ}
    [ "$pid" = "$$" ] && continue
    if { tr '\0' '\n' < "$env"; } 2>/dev/null | grep -qx 'GITFERRY_TEST_SERVER=1'; then
        left+=("$pid")
    fi
done
if [ ${#left[@]} -gt 0 ]; then
    echo "servers started by the tests are still running:"
    ps -o pid,ppid,etime,args -p "$(IFS=,; echo "${left[*]}")"
    exit 1
fi
echo "no test server left running"
