# shellcheck shell=bash
# private_mount.bash: every bats file runs in a private mount namespace of its own (`unshare --mount --propagation
# private -- bats ...`), where it may bind-mount and overlay the machine's paths; this tells whether it does. Loaded
# by each file's helpers.

# in_private_mount_namespace: this process is in a mount namespace of its own (not PID 1's; where PID 1's cannot
# be read, not that of some ancestor process), and "/" propagates no mount to a peer outside it.
in_private_mount_namespace() {
    local self ns pid found=no
    self=$(stat -L -c %i /proc/self/ns/mnt) || return 1
    if ns=$(stat -L -c %i /proc/1/ns/mnt 2>/dev/null); then
        [ "$ns" != "$self" ] || return 1
    else
        pid=$BASHPID
        while pid=$(awk '/^PPid:/ { print $2 }' "/proc/$pid/status" 2>/dev/null) && [ -n "$pid" ] && [ "$pid" -gt 1 ]; do
            if ns=$(stat -L -c %i "/proc/$pid/ns/mnt" 2>/dev/null) && [ "$ns" != "$self" ]; then
                found=yes
                break
            fi
        done
        [ "$found" = yes ] || return 1
    fi
    # mountinfo: field 5 is the mount point, optional fields (shared:N) follow field 6
    if awk '$5 == "/"' /proc/self/mountinfo | grep -q ' shared:'; then
        return 1
    fi
    return 0
}
