# shellcheck shell=bash
# holder.bash: a network namespace ($NS) and in it a process that holds a pid namespace and a mount namespace of
# its own, for suites that run an installer's steps for real (install.bats, package.bats): every command they run
# there goes through inns. Loaded by install_helpers.bash and package.bats.

# inns COMMAND...: runs COMMAND in the holder's network, pid and mount namespaces (cwd: /).
inns() { nsenter -t "$HOLDER" -m -n -p -- "$@"; }

# start_holder: the network namespace vgt-inst, and in it a process (pid 1 of a new pid namespace, in a
# new mount namespace with that pid namespace's /proc) whose namespaces inns enters. Sets HOLDER (its pid
# here) and UNSHARE_PID (the unshare that waits for it; killing it kills the pid namespace).
start_holder() {
    if ip netns list | awk '{print $1}' | grep -qxF "$NS"; then ip netns del "$NS"; fi
    ip netns add "$NS"
    ip netns exec "$NS" ip link set lo up
    ip netns exec "$NS" unshare --mount --propagation private --pid --fork --kill-child --mount-proc \
        sleep infinity </dev/null >/dev/null 2>&1 3>&- 8>&- &
    UNSHARE_PID=$!
    local i
    HOLDER=
    for i in $(seq 100); do
        HOLDER=$(cat "/proc/$UNSHARE_PID/task/$UNSHARE_PID/children" 2>/dev/null | awk '{print $1}')
        if [ -n "$HOLDER" ] && [ "$(cat "/proc/$HOLDER/comm" 2>/dev/null)" = sleep ]; then break; fi
        HOLDER=
        sleep 0.05
    done
    [ -n "$HOLDER" ] || { echo "the namespace holder did not start" >&2; return 1; }
}

stop_holder() {
    if [ -n "${UNSHARE_PID:-}" ] && kill -0 "$UNSHARE_PID" 2>/dev/null; then
        # unshare ignores SIGTERM while it waits; SIGKILL makes it (--kill-child) kill the holder, and with
        # it every process of the pid namespace. Its mounts go with its mount namespace.
        kill -KILL "$UNSHARE_PID" 2>/dev/null
        wait "$UNSHARE_PID" 2>/dev/null || true
    fi
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$NS"; then ip netns del "$NS"; fi
}
