# shellcheck shell=bash
# e2e-lib.sh: helpers of the end-to-end suite (sourced by e2e-test.sh): names and addresses, results,
# traffic probes, the virtgate logging shim, diagnostics.
#
# Topology (test ranges only; nothing leaves the namespaces):
#
#   guest A (10.213.50.10, reserved) --vnet--+
#                                            +-- vgte2e-br0 10.213.50.1/24 [vgt-e2e-host] vgt-e2e-hw 198.18.0.1/30
#   guest B (DHCP range, no reservation) ----+        (libvirtd, dnsmasq, QEMU, UFW)          |
#   guest C (10.213.50.12, reserved) --------+                                                |
#   guest D (10.213.51.10) -- vgt-e2e-br1 10.213.51.1/24 (plain bridge, no libvirt network)   |
#                                                                             vgt-e2e-wh 198.18.0.2/30 + 198.18.0.6/32
#                                                                                         [vgt-e2e-wan]
# vgt-e2e-wan is "the internet": it routes 10.213.50.0/24 straight at the host, so that routed (not
# forwarded) access to the guests can be shown to stay blocked; 198.18.0.6 is the one source allowed to
# reach the source-restricted forward.

E2E_NS_HOST=vgt-e2e-host
E2E_NS_WAN=vgt-e2e-wan
E2E_NAMESPACES="$E2E_NS_HOST $E2E_NS_WAN"
E2E_HOST_IP=198.18.0.1
E2E_WAN_IP=198.18.0.2
E2E_WAN_IP2=198.18.0.6
E2E_NET=vgte2e
E2E_BRIDGE=vgte2e-br0
E2E_SUBNET=10.213.50.0/24
E2E_GW=10.213.50.1
E2E_A=vgt-e2e-a
E2E_B=vgt-e2e-b
E2E_A_IP=10.213.50.10
E2E_A_MAC=52:54:00:e2:e0:0a
E2E_B_MAC=52:54:00:e2:e0:0b
E2E_WAN_PORT=9999     # the wan listener for guest egress
# Field-report shapes (step "shapes"): guest C on the network (reserved) with overlapping guest ports; guest D with
# a NIC of type='bridge' on a plain host bridge that is no libvirt network (its DHCP from a dnsmasq of the suite's).
E2E_C=vgt-e2e-c
E2E_C_IP=10.213.50.12
E2E_C_MAC=52:54:00:e2:e0:0c
E2E_D=vgt-e2e-d
E2E_D_MAC=52:54:00:e2:e0:0d
E2E_BRIDGE2=vgt-e2e-br1
E2E_SUBNET2=10.213.51.0/24
E2E_GW2=10.213.51.1
E2E_D_IP=10.213.51.10

# Tools the suite needs. A missing one is a failure, never a skip.
E2E_TOOLS="ip iptables iptables-save iptables-restore ufw socat unshare mount timeout flock jq
 sha256sum sysctl diff taskset libvirtd virsh qemu-system-x86_64 dnsmasq apt-get apt-cache dpkg cpio gzip ldd
 busybox"

# ---------------------------------------------------------------------------------------------------------------
# Results: one line per check in $E2E_RESULTS (shared by the outer and the inner part).

E2E_STEP="setup"
E2E_STEP_N=0

step() {
    E2E_STEP=$1
    E2E_STEP_N=$((E2E_STEP_N + 1))
    echo "# --- $1 ($(e2e_elapsed)s)"
}

e2e_elapsed() {
    echo $(( $(date +%s%N) / 1000000 - E2E_T0_MS )) | awk '{printf "%.1f", $1/1000}'
}

ok() {
    echo "ok - $*"
    echo "ok" >>"$E2E_RESULTS"
}

not_ok() {
    echo "not ok - [$E2E_STEP] $*"
    echo "not ok" >>"$E2E_RESULTS"
    echo "$E2E_STEP: $*" >>"$E2E_TMP/failed-steps"
    # the host namespace's ruleset at the first failure of each step (printed with the diagnostics)
    local snap
    snap=$E2E_TMP/ruleset-at-failure.$(printf %02d "$E2E_STEP_N")
    if [ "${E2E_INNER:-0}" = 1 ] && [ ! -e "$snap" ]; then
        { echo "$E2E_STEP"; ruleset; } >"$snap" 2>&1
    fi
}

info() {
    echo "# info: $*"
}

diag() {
    sed 's/^/#   /' "$@"
}

count() {
    if [ -f "$E2E_RESULTS" ]; then grep -cx "$1" "$E2E_RESULTS"; else echo 0; fi
}

summary() {
    echo "$(count ok) passed, $(count 'not ok') failed"
}

# check DESCRIPTION COMMAND...: ok if the command succeeds.
check() {
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}

# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then
        ok "$1"
    else
        not_ok "$1"
        echo "#   expected: '$2'"
        echo "#   observed: '$3'"
    fi
}

# wait_for SECONDS COMMAND...: retry every 0.2 s until the command succeeds.
wait_for() {
    local limit=$1 i
    shift
    for i in $(seq $((limit * 5))); do
        "$@" && return 0
        sleep 0.2
    done
    return 1
}

# ---------------------------------------------------------------------------------------------------------------
# Traffic. Every service answers one line "LABEL PORT PEER-ADDRESS" and closes. Clients always have connect,
# idle and overall timeouts.

hostns() { ip netns exec "$E2E_NS_HOST" "$@"; }
wanns() { ip netns exec "$E2E_NS_WAN" "$@"; }

# probe NS PROTO ADDR PORT [BIND-ADDRESS]: the first line the service answered, empty if none.
probe() {
    local ns=$1 proto=$2 addr=$3 port=$4 bind=${5:-} opt=""
    [ -n "$bind" ] && opt=",bind=$bind"
    if [ "$proto" = tcp ]; then
        ip netns exec "$ns" timeout 6 socat -T2 -u "TCP:$addr:$port,connect-timeout=2$opt" - 2>/dev/null | head -n1
    else
        # socat waits -t seconds for the answer after sending; a slow first answer of the TCG guest gets a second,
        # longer try
        local reply t
        for t in 1 3; do
            reply=$(echo probe | ip netns exec "$ns" timeout 6 socat -t "$t" -T 4 - "UDP:$addr:$port$opt" 2>/dev/null |
                head -n1)
            [ -n "$reply" ] && break
        done
        echo "$reply"
    fi
}

# guest_run GUEST_IP COMMAND [CONNECT-TIMEOUT]: runs COMMAND in the guest (its tcp 7000 shell, reached from the
# host netns over the bridge) and prints its output.
guest_run() {
    printf '%s\n' "$2" | hostns timeout 15 socat -t 12 -T 12 - "TCP:$1:7000,connect-timeout=${3:-2}" 2>/dev/null
}

# guest_probe GUEST_IP PROTO ADDR PORT: like probe, from inside the guest.
guest_probe() {
    local gip=$1 proto=$2 addr=$3 port=$4
    if [ "$proto" = tcp ]; then
        guest_run "$gip" "socat -T2 -u TCP:$addr:$port,connect-timeout=2 - 2>/dev/null | head -n1"
    else
        guest_run "$gip" "echo probe | socat -t 2 -T 4 - UDP:$addr:$port 2>/dev/null | head -n1"
    fi
}

# expect DESCRIPTION PATTERN REPLY-COMMAND...: the reply must match the glob PATTERN ("" = no reply expected).
expect() {
    local desc=$1 pattern=$2 reply
    shift 2
    reply=$("$@")
    if [ -z "$pattern" ]; then
        if [ -z "$reply" ]; then
            ok "$desc"
        else
            not_ok "$desc"
            echo "#   $*: expected no answer, observed '$reply'"
        fi
        return
    fi
    # shellcheck disable=SC2053  # PATTERN is a glob on purpose
    if [ -n "$reply" ] && [[ $reply == $pattern ]]; then
        ok "$desc (got '$reply')"
    else
        not_ok "$desc"
        echo "#   $*: expected '$pattern', observed '$reply'"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# The host namespace's ruleset (filter, nat, mangle; counters and comments stripped).

ruleset() {
    hostns sh -c 'iptables-save -t filter; iptables-save -t nat; iptables-save -t mangle' |
        sed -e 's/\[[0-9]*:[0-9]*\]//' | grep -v '^#'
}

# Lines of virtgate's own (chains VIRTGATE-* and VG?-*, and jumps to them).
virtgate_lines() {
    ruleset | grep -E '(^:|-j |^-A )(VIRTGATE-|VG[A-Z]-)' || true
}

# ---------------------------------------------------------------------------------------------------------------
# The logging shim, installed by install.sh in place of the binary (VIRTGATE_BINARY): every call is logged with
# its argv, exit status and stderr, hook calls (argv[0] .../hooks/qemu|network) also with stdin. It runs the real
# binary with argv[0] kept, since virtgate knows which hook it is from argv[0].

write_shim() { # SHIM REAL LOG
    cat >"$1" <<EOF
#!/bin/bash
# virtgate logging shim of the e2e suite
REAL=$2
LOG=$3
me=\$0
hook=no
case \$me in */hooks/qemu|*/hooks/network|*/hooks/qemu.d/*|*/hooks/network.d/*) hook=yes ;; esac
t=\$(mktemp -d "\$(dirname "\$LOG")/shim.XXXXXX") || exit 1
if [ \$hook = yes ]; then cat >"\$t/in"; else : >"\$t/in"; fi
start=\$(date +%T.%3N)
if [ \$hook = yes ]; then
    ( exec -a "\$me" "\$REAL" "\$@" ) <"\$t/in" 2>"\$t/err"
else
    ( exec -a "\$me" "\$REAL" "\$@" ) 2>"\$t/err"
fi
rc=\$?
{
    flock 9
    printf '=== %s-%s %s %s (rc=%s)\n' "\$start" "\$(date +%T.%3N)" "\$me" "\$*" "\$rc"
    awk '{print "  stdin | " \$0}' "\$t/in"
    awk '{print "  stderr| " \$0}' "\$t/err"
} 9>>"\$LOG" >&9
cat "\$t/err" >&2
rm -rf "\$t"
exit \$rc
EOF
    chmod 0755 "$1"
}

# hook_calls PATTERN: the hook log's header lines matching an extended regex.
hook_calls() {
    grep '^=== ' "$E2E_TMP/hook.log" 2>/dev/null | grep -E "$1" || true
}
