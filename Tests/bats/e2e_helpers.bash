# shellcheck shell=bash
# e2e_helpers.bash: helpers of the end-to-end suite (e2e.bats): names and addresses, assertions that keep a
# tally, traffic probes, the virtgate logging shim, libvirt objects, the private mounts, the clean-up and the
# diagnostics.
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

E2E_REPO=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
# the guest image builder, the guest's scripts and the cache (kernel .deb, guest image, libvirt's QEMU
# capabilities) stay in Tests/e2e
E2E_DIR=$E2E_REPO/Tests/e2e

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
# Field-report shapes: guest C on the network (reserved) with overlapping guest ports; guest D with a NIC of
# type='bridge' on a plain host bridge that is no libvirt network (its DHCP from a dnsmasq of the suite's).
E2E_C=vgt-e2e-c
E2E_C_IP=10.213.50.12
E2E_C_MAC=52:54:00:e2:e0:0c
E2E_D=vgt-e2e-d
E2E_D_MAC=52:54:00:e2:e0:0d
E2E_BRIDGE2=vgt-e2e-br1
E2E_SUBNET2=10.213.51.0/24
E2E_GW2=10.213.51.1
E2E_D_IP=10.213.51.10

# One end-to-end run at a time (the namespace names are fixed); the PIDs a run starts, kept where the next run
# finds them if this one is killed.
E2E_LOCK=/tmp/vgt-e2e.lock
E2E_PIDS=/tmp/vgt-e2e.pids

# Tools the suite needs. A missing one is a failure, never a skip.
E2E_TOOLS="ip iptables iptables-save iptables-restore nft ufw socat unshare mount umount findmnt timeout flock jq
 sha256sum sysctl diff taskset libvirtd virsh qemu-system-x86_64 dnsmasq apt-get apt-cache dpkg cpio gzip ldd
 busybox"

E2E_RUN_HINT="VIRTGATE_BACKEND=nft unshare --mount --propagation private -- bats --tap Tests/bats/e2e.bats"

# ---------------------------------------------------------------------------------------------------------------
# Steps, state across tests, assertions.
#
# Each @test runs in its own process: what a later test needs (B's address, which forwards are expected, the
# PIDs) is kept in files under $E2E_TMP/state. Every assertion adds a line to $E2E_TMP/assertions, so that the
# run can say how many assertions passed.

E2E_STEP=${E2E_STEP:-setup}

# step ID: the start of a test; a test after a fatal failure is not run (as the old suite stopped there).
step() {
    E2E_STEP=$1
    if [ -e "$E2E_TMP/fatal" ]; then
        skip "not run: $(cat "$E2E_TMP/fatal")"
    fi
    touch "$E2E_TMP/state/ran.$1"
}

# needs ID: the step this test builds on must have run (with --filter, select it and what it builds on too).
needs() {
    local filter
    [ -e "$E2E_TMP/state/ran.$1" ] && return 0
    case $1 in
        network) filter='^network:' ;;
        guests-start) filter='^(network|guests start):' ;;
        guests-boot) filter='^(network|guests start|guests boot):' ;;
        shapes-start) filter='^(network|guests start|guests boot):|^shapes: guest C' ;;
        teardown-a) filter='^(network|guests start|guests boot):|^teardown: destroying A' ;;
        *) filter=$1 ;;
    esac
    fail "this test builds on the step '$1': select it and what it builds on too: bats --filter '$filter|^${BATS_TEST_DESCRIPTION%%:*}'"
}

state_set() { printf '%s\n' "$2" >"$E2E_TMP/state/$1"; }
state_get() { cat "$E2E_TMP/state/$1" 2>/dev/null || true; }
state_has() { [ -e "$E2E_TMP/state/$1" ]; }
state_del() { rm -f "$E2E_TMP/state/$1"; }

tally() { # ok|"not ok" DESCRIPTION
    printf '%s - [%s] %s\n' "$1" "$E2E_STEP" "$2" >>"$E2E_TMP/assertions"
}

info() {
    echo "# info: $*" >&3
}

ms_since() { # NANOSECONDS (date +%s%N)
    echo $(( ($(date +%s%N) - $1) / 1000000 ))
}

# check DESCRIPTION COMMAND...: the command must succeed.
check() {
    local desc=$1
    shift
    if "$@"; then
        tally ok "$desc"
        return 0
    fi
    tally "not ok" "$desc"
    fail "$desc"
}

# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then
        tally ok "$1"
        return 0
    fi
    tally "not ok" "$1"
    batslib_print_kv_single_or_multi 8 expected "$2" observed "$3" | batslib_decorate "$1" | fail
}

# pass DESCRIPTION: an assertion the caller has decided already (the old suite's bare "ok").
pass() {
    tally ok "$1"
}

# flunk DESCRIPTION [DETAILS]: a failed assertion the caller has decided already (the old suite's bare "not ok").
flunk() {
    tally "not ok" "$1"
    [ -z "${2:-}" ] || printf '%s\n' "$2"
    fail "$1"
}

# fatal DESCRIPTION [DETAILS]: a failure after which the rest of the run makes no sense (the old suite
# stopped there): the later tests are not run.
fatal() {
    tally "not ok" "$1"
    printf '%s\n' "$E2E_STEP: $1" >"$E2E_TMP/fatal"
    [ -z "${2:-}" ] || printf '%s\n' "$2"
    fail "$1"
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
    [ -z "$bind" ] || opt=",bind=$bind"
    if [ "$proto" = tcp ]; then
        ip netns exec "$ns" timeout 6 socat -T2 -u "TCP:$addr:$port,connect-timeout=2$opt" - 2>/dev/null | head -n1
    else
        # socat waits -t seconds for the answer after sending; a slow first answer of the TCG guest gets a second,
        # longer try
        local reply t
        for t in 1 3; do
            reply=$(echo probe | ip netns exec "$ns" timeout 6 socat -t "$t" -T 4 - "UDP:$addr:$port$opt" 2>/dev/null |
                head -n1)
            [ -z "$reply" ] || break
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
    reply=$("$@") || true
    if [ -z "$pattern" ]; then
        if [ -z "$reply" ]; then
            tally ok "$desc"
            return 0
        fi
        tally "not ok" "$desc"
        fail "$desc: $*: expected no answer, observed '$reply'"
    fi
    # shellcheck disable=SC2053  # PATTERN is a glob on purpose
    if [ -n "$reply" ] && [[ $reply == $pattern ]]; then
        tally ok "$desc (got '$reply')"
        return 0
    fi
    tally "not ok" "$desc"
    fail "$desc: $*: expected '$pattern', observed '$reply'"
}

# ---------------------------------------------------------------------------------------------------------------
# The host namespace's ruleset (filter, nat, mangle; counters and comments stripped).

ruleset() {
    hostns sh -c 'iptables-save -t filter; iptables-save -t nat; iptables-save -t mangle' |
        sed -e 's/\[[0-9]*:[0-9]*\]//' | { grep -v '^#' || true; }
}

# Lines of virtgate's own (chains VIRTGATE-* and VG?-*, and jumps to them).
virtgate_lines() {
    ruleset | grep -E '(^:|-j |^-A )(VIRTGATE-|VG[A-Z]-)' || true
}

# The machine's own ruleset (the root network namespace; the suite must never change it).
root_ruleset() {
    { iptables-save 2>/dev/null; nft list ruleset 2>/dev/null; } | sed -e 's/\[[0-9]*:[0-9]*\]//' |
        { grep -v '^#' || true; }
}

# What the suite must never change on the machine (read with the private mounts undone).
machine_files_checksum() {
    { find /etc/libvirt /etc/ufw /etc/default/ufw /usr/lib/ufw /etc/systemd/system -xdev \( -type f -o -type l \) \
        -print0 2>/dev/null | sort -z | xargs -0 sha256sum 2>/dev/null
      ls -la /etc/virtgate /usr/local/sbin /run/virtgate 2>&1; } | sha256sum | cut -d' ' -f1
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

# hook_block_stderr PATTERN: the stderr lines of the hook log's calls whose header matches PATTERN (extended regex)
hook_block_stderr() {
    awk -v pat="$1" '/^=== / { cur = ($0 ~ pat) } cur && /^  stderr\| / { sub(/^  stderr\| /, ""); print }' \
        "$E2E_TMP/hook.log" 2>/dev/null
}

n_reconnect() {
    hook_calls "hooks/qemu ($E2E_A|$E2E_B) reconnect begin - \(rc=0\)" | wc -l
}

# ---------------------------------------------------------------------------------------------------------------
# libvirt and virtgate

virsh_() { virsh -q -c "$E2E_URI" "$@"; }
vg() { hostns /usr/local/sbin/virtgate "$@"; }
ufw_() { hostns env TESTSTATE=1 ufw "$@"; }

network_xml() {
    cat <<EOF
<network>
  <name>$E2E_NET</name>
  <forward mode='nat'/>
  <bridge name='$E2E_BRIDGE' stp='off' delay='0'/>
  <ip address='$E2E_GW' netmask='255.255.255.0'>
    <dhcp>
      <range start='10.213.50.100' end='10.213.50.199'/>
      <host mac='$E2E_A_MAC' name='$E2E_A' ip='$E2E_A_IP'/>
      <host mac='$E2E_C_MAC' name='$E2E_C' ip='$E2E_C_IP'/>
    </dhcp>
  </ip>
</network>
EOF
}

# domain_xml NAME LABEL MAC FORWARDS-XML [BRIDGE]: a NIC on the network, or with BRIDGE one of type='bridge' on it
domain_xml() {
    local g=${2,,} nic="<interface type='network'>
      <source network='$E2E_NET'/>"
    [ -z "${5:-}" ] || nic="<interface type='bridge'>
      <source bridge='$5'/>"
    cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>160</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$E2E_DIR/cache/guest/vmlinuz</kernel>
    <initrd>$E2E_DIR/cache/guest/initrd.img</initrd>
    <cmdline>console=ttyS0 loglevel=4 panic=-1 mitigations=off vgname=$2</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    $nic
      <mac address='$3'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
    <serial type='file'>
      <source path='$E2E_TMP/console-$g.log'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <metadata>
    <vg:forwards xmlns:vg="urn:virtgate:forwards:1">
$4
    </vg:forwards>
  </metadata>
</domain>
EOF
}

A_FORWARDS='      <vg:forward proto="tcp" host-port="2222" guest-port="22"/>
      <vg:forward proto="tcp" host-port="8080" guest-port="80"/>
      <vg:forward proto="tcp" host-port="8000-8002" guest-port="9000-9002"/>
      <vg:forward proto="udp" host-port="6000"/>
      <vg:forward proto="tcp" host-port="8443" guest-port="443" source="198.18.0.6/32"/>'
B_FORWARDS='      <vg:forward proto="tcp" host-port="2223" guest-port="22"/>
      <vg:forward proto="udp" host-port="6001" guest-port="6000"/>'
# C's forwards overlap on the guest side (80 three times, 80-81 as a range, one with an allow-list); D's only NIC
# is of type='bridge' on a plain host bridge, its forward with an explicit guest-address.
C_FORWARDS='      <vg:forward proto="tcp" host-port="8180" guest-port="80"/>
      <vg:forward proto="tcp" host-port="2224" guest-port="22"/>
      <vg:forward proto="tcp" host-port="8190-8191" guest-port="80-81"/>
      <vg:forward proto="tcp" host-port="8543" guest-port="80" source="198.18.0.0/30"/>'
D_FORWARDS="      <vg:forward proto=\"tcp\" host-port=\"2225\" guest-port=\"22\" guest-address=\"$E2E_D_IP\"/>"

lease_ip() { # MAC: the address dnsmasq's lease file has for it
    jq -r --arg m "$1" '.[] | select(."mac-address" == $m) | ."ip-address"' \
        "/var/lib/libvirt/dnsmasq/$E2E_BRIDGE.status" 2>/dev/null | head -n1
}

guest_up() { [ "$(guest_run "$1" 'echo up' 0.5 2>/dev/null)" = up ]; }

# status_summary: `virtgate status --json` in one line: networks, jumps, orphans, each forward's state.
status_summary() {
    vg status --connect "$E2E_URI" --json 2>"$E2E_TMP/status.err" | jq -r '
        "nets=" + ([.networks[] | "\(.name):\(.rules)"] | join(","))
        + " jumps=\(.jumpsInPlace) orphans=\(.orphans | length) "
        + ([.guests[] | .name as $n | .forwards[] | "\($n)#\(.position)=\(.state)"] | join(" "))' 2>&1
}

check_status() { # DESCRIPTION EXPECTED
    local got
    got=$(status_summary)
    if [ "$got" != "$2" ]; then
        vg status --connect "$E2E_URI" 2>&1 || true
    fi
    check_eq "status --json $1: $2" "$2" "$got"
}

A_ACTIVE="$E2E_A#1=active $E2E_A#2=active $E2E_A#3=active $E2E_A#4=active $E2E_A#5=active"

# all_active: every forward of A and B active, with A's forward added at run time while it is there (the steps
# "late binding" and "forward add" set what is expected, "forward remove" takes the added forward away again).
all_active() {
    local s="nets=$E2E_NET:in-place jumps=true orphans=0 $A_ACTIVE"
    if state_has added; then s="$s $E2E_A#6=active"; fi
    if state_has ran.late-binding; then
        s="$s $E2E_B#1=active $E2E_B#2=active"
    else
        s="$s $E2E_B#1=pending $E2E_B#2=pending"
    fi
    echo "$s"
}

# traffic_round LABEL: forwards from wan (with the client address the guests saw), the source restriction, egress,
# hairpin and host-local. B's and the added forward's checks once they are expected.
traffic_round() {
    local l=$1 p b_ip
    b_ip=$(state_get b_ip)
    expect "$l: wan -> host:2222/tcp reaches A:22, A sees the wan client" "A 22 $E2E_WAN_IP" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    expect "$l: wan -> host:8080/tcp reaches A:80" "A 80 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8080
    for p in 0 1 2; do
        expect "$l: wan -> host:800$p/tcp (range) reaches A:900$p" "A 900$p $E2E_WAN_IP" \
            probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" "800$p"
    done
    expect "$l: wan -> host:6000/udp reaches A:6000" "A 6000 $E2E_WAN_IP" probe "$E2E_NS_WAN" udp "$E2E_HOST_IP" 6000
    expect "$l: source-restricted host:8443 answers the allowed source $E2E_WAN_IP2" "A 443 $E2E_WAN_IP2" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8443 "$E2E_WAN_IP2"
    expect "$l: source-restricted host:8443 stays closed to $E2E_WAN_IP" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8443
    expect "$l: guest egress A -> wan:$E2E_WAN_PORT (masqueraded to the host address)" "WAN $E2E_HOST_IP" \
        guest_probe "$E2E_A_IP" tcp "$E2E_WAN_IP" "$E2E_WAN_PORT"
    expect "$l: host-local host -> $E2E_HOST_IP:8080 reaches A:80" "A 80 *" probe "$E2E_NS_HOST" tcp "$E2E_HOST_IP" 8080
    if [ -n "$b_ip" ]; then
        expect "$l: hairpin B -> $E2E_HOST_IP:2222 reaches A:22" "A 22 *" guest_probe "$b_ip" tcp "$E2E_HOST_IP" 2222
    fi
    if state_has b_bound; then
        expect "$l: wan -> host:2223/tcp reaches B:22" "B 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2223
        expect "$l: wan -> host:6001/udp reaches B:6000" "B 6000 $E2E_WAN_IP" \
            probe "$E2E_NS_WAN" udp "$E2E_HOST_IP" 6001
    fi
    if state_has added; then
        expect "$l: wan -> host:5001/tcp (forward added at run time) reaches A:5000" "A 5000 $E2E_WAN_IP" \
            probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 5001
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Processes the suite starts: tracked by PID and start time, stopped by PID (never by name). The list in
# $E2E_PIDS outlives a killed run: the next run stops what is still there (same PID, same start time).

pid_start() { # PID: the process's start time (clock ticks since boot), empty if there is none
    sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f20
}

pid_alive() { # PID: running (not gone, not a zombie)
    local st
    st=$(sed -e 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ]
}

# track NAME PID: remember a process the suite started
track() {
    local start
    start=$(pid_start "$2")
    [ -n "$start" ] || return 0
    printf '%s %s %s\n' "$2" "$start" "$1" >>"$E2E_PIDS"
    state_set "pid.$1" "$2 $start"
}

# track_namespaces: remember every process now in the suite's namespaces (QEMU and dnsmasq, which libvirtd starts)
track_namespaces() {
    local ns pid
    for ns in $E2E_NAMESPACES; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            grep -q "^$pid $(pid_start "$pid") " "$E2E_PIDS" 2>/dev/null || track "$ns" "$pid"
        done
    done
}

# stop_pid PID [START]: TERM, up to 5 s, then KILL; only if it is still the process that was started
stop_pid() {
    local pid=$1 start=${2:-} i
    [ -n "$pid" ] || return 0
    if [ -n "$start" ] && [ "$(pid_start "$pid")" != "$start" ]; then return 0; fi
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 50); do pid_alive "$pid" || break; sleep 0.1; done
    if pid_alive "$pid"; then
        kill -9 "$pid" 2>/dev/null || true
        for i in $(seq 30); do pid_alive "$pid" || break; sleep 0.1; done
    fi
    wait "$pid" 2>/dev/null || true   # reaps it if this shell started it
}

# stop_tracked NAME: stops the process tracked under NAME
stop_tracked() {
    local entry
    entry=$(state_get "pid.$1")
    [ -n "$entry" ] || return 0
    # shellcheck disable=SC2086  # "PID START"
    stop_pid $entry
    state_del "pid.$1"
}

# A simple command in the background: $! is libvirtd's own PID (ip netns exec and taskset exec it). Descriptors
# 3 (bats' output), 4 and 8 (the lock) are closed.
start_libvirtd() {
    ip netns exec "$E2E_NS_HOST" taskset -c 0 /usr/sbin/libvirtd >>"$E2E_TMP/libvirtd.log" 2>&1 </dev/null 3>&- 4>&- 8>&- &
    track libvirtd "$!"
    wait_for 30 virsh_ version >/dev/null 2>&1
}

libvirtd_pid() {
    state_get pid.libvirtd | cut -d' ' -f1
}

# Our own libvirtd only: the PID we started (same start time), in our host namespace.
stop_libvirtd() {
    local entry pid
    entry=$(state_get pid.libvirtd)
    [ -n "$entry" ] || return 0
    pid=${entry%% *}
    if [ "$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null)" = "$(stat -L -c %i "/run/netns/$E2E_NS_HOST" 2>/dev/null)" ]; then
        # shellcheck disable=SC2086
        stop_pid $entry
    fi
    state_del pid.libvirtd
}

# the plain bridge for D, with DHCP (a dnsmasq of the suite's, the only DHCP there) and UFW's INPUT opened for it
shapes_bridge_up() {
    hostns ip link add "$E2E_BRIDGE2" type bridge stp_state 0 forward_delay 0 || return 1
    hostns ip addr add "$E2E_GW2/24" dev "$E2E_BRIDGE2" || return 1
    hostns ip link set "$E2E_BRIDGE2" up || return 1
    hostns iptables -w -I INPUT 1 -i "$E2E_BRIDGE2" -p udp --dport 67 -j ACCEPT || return 1
    ip netns exec "$E2E_NS_WAN" ip route add "$E2E_SUBNET2" via "$E2E_HOST_IP" || return 1
    # -k: in the foreground, so $! is dnsmasq's own PID (ip netns exec execs it)
    ip netns exec "$E2E_NS_HOST" dnsmasq -k --conf-file=/dev/null --port=0 --bind-interfaces \
        --interface="$E2E_BRIDGE2" --except-interface=lo --dhcp-range=10.213.51.100,10.213.51.150,255.255.255.0 \
        --dhcp-host="$E2E_D_MAC,$E2E_D_IP" --dhcp-leasefile="$E2E_TMP/br1.leases" --pid-file="$E2E_TMP/br1.pid" \
        </dev/null >>"$E2E_TMP/dnsmasq-br1.log" 2>&1 3>&- 4>&- 8>&- &
    track dnsmasq-br1 "$!"
}

shapes_bridge_down() {
    stop_tracked dnsmasq-br1
    hostns iptables -w -D INPUT -i "$E2E_BRIDGE2" -p udp --dport 67 -j ACCEPT 2>/dev/null || true
    ip netns exec "$E2E_NS_WAN" ip route del "$E2E_SUBNET2" 2>/dev/null || true
    hostns ip link del "$E2E_BRIDGE2" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------------------------
# Set-up (setup_file)


# refuse: root, a private mount namespace, every tool, the binary; one clear line otherwise
refuse_unless_ready() {
    if [ "$(id -u)" -ne 0 ]; then
        fail "e2e.bats must run as root (namespaces, iptables, libvirtd): $E2E_RUN_HINT"
    fi
    if ! in_private_mount_namespace; then
        fail "e2e.bats must run in a private mount namespace: $E2E_RUN_HINT"
    fi
    local t missing=""
    for t in $E2E_TOOLS; do
        command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing="$missing $t"
    done
    [ -d /usr/lib/ufw ] && [ -d /usr/share/ufw ] || missing="$missing ufw-data"
    # the guest's /bin/busybox must be the static one (busybox-static), not Debian's dynamic busybox
    [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing="$missing busybox-static"
    if [ -n "$missing" ]; then
        fail "e2e.bats: missing:$missing (packages: see Tests/e2e/README.md)"
    fi
    case ${VIRTGATE_BACKEND:-nft} in
        nft | iptables) ;;
        *) fail "e2e.bats: VIRTGATE_BACKEND must be nft or iptables, not '$VIRTGATE_BACKEND'" ;;
    esac
    if [ ! -x "$VIRTGATE" ]; then
        fail "e2e.bats: no binary at $VIRTGATE (build it first, or set VIRTGATE)"
    fi
}

# take the lock; a running end-to-end run is waited for, not collided with
take_lock() {
    exec 8>"$E2E_LOCK"
    if ! flock -n 8; then
        echo "# another end-to-end run holds $E2E_LOCK; waiting up to 15 minutes" >&3
        flock -w 900 8 || fail "another end-to-end run holds $E2E_LOCK (waited 15 minutes)"
    fi
}

# leftovers of a killed run: its processes (by PID and start time), namespaces and temp dir
remove_leftovers() {
    local pid start name ns
    if [ -f "$E2E_PIDS" ]; then
        while read -r pid start name; do
            [ -n "$start" ] || continue
            [ "$(pid_start "$pid")" = "$start" ] || continue
            echo "# stopping pid $pid ($name), left by an earlier run" >&3
            stop_pid "$pid" "$start"
        done <"$E2E_PIDS"
        while read -r name start; do
            [ "$name" = tmp ] || continue
            case $start in
                /tmp/vgt-e2e.??????)
                    findmnt -rn -o TARGET | grep -q "^$start" || rm -rf --one-file-system "$start"
                    ;;
            esac
        done < <(grep '^tmp ' "$E2E_PIDS")
        rm -f "$E2E_PIDS"
    fi
    for ns in $E2E_NAMESPACES; do
        ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}

create_topology() {
    local ns
    for ns in $E2E_NAMESPACES; do
        ip netns add "$ns" || return 1
        ip -n "$ns" link set lo up || return 1
    done
    ip -n "$E2E_NS_HOST" link add vgt-e2e-hw type veth peer name vgt-e2e-wh netns "$E2E_NS_WAN" || return 1
    ip -n "$E2E_NS_HOST" addr add "$E2E_HOST_IP/30" dev vgt-e2e-hw || return 1
    ip -n "$E2E_NS_HOST" link set vgt-e2e-hw up || return 1
    ip -n "$E2E_NS_WAN" addr add "$E2E_WAN_IP/30" dev vgt-e2e-wh || return 1
    ip -n "$E2E_NS_WAN" addr add "$E2E_WAN_IP2/32" dev vgt-e2e-wh || return 1
    ip -n "$E2E_NS_WAN" link set vgt-e2e-wh up || return 1
    ip -n "$E2E_NS_HOST" route add default via "$E2E_WAN_IP" || return 1
    # wan routes the guest subnet straight at the host: routed access must stay blocked
    ip -n "$E2E_NS_WAN" route add "$E2E_SUBNET" via "$E2E_HOST_IP" || return 1
    return 0
}

# mount_private TARGET MOUNT-ARGS...: a mount of the suite's, listed for the clean-up (undone in reverse order)
mount_private() {
    local target=$1
    shift
    mount "$@" "$target" || return 1
    echo "$target" >>"$E2E_TMP/mounts"
}

# The private mounts (this process's mount namespace is private already): /etc an overlay whose writes land in
# the temp dir, /run a tmpfs keeping the machine's /run/netns (so that `ip netns` sees the namespaces the suite
# creates and the machine sees their names), and /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt,
# /usr/local/sbin and /usr/lib/ufw private directories.
setup_mounts() {
    local d
    mkdir -p "$E2E_TMP/etc-upper" "$E2E_TMP/etc-work" || return 1
    mount_private /etc -t overlay overlay -o "lowerdir=/etc,upperdir=$E2E_TMP/etc-upper,workdir=$E2E_TMP/etc-work" ||
        return 1
    # /run: a tmpfs; the machine's /run/netns moves onto it (moved, not copied: one mount of it, which
    # `ip netns del` can take away again)
    mkdir -p "$E2E_TMP/netns" "$E2E_TMP/run-libvirt" || return 1
    mount --rbind /run/netns "$E2E_TMP/netns" || return 1
    mount_private /run -t tmpfs -o mode=0755 e2e-run || { umount -l "$E2E_TMP/netns"; return 1; }
    mkdir -p /run/netns /run/libvirt /run/lock || return 1
    mount --move "$E2E_TMP/netns" /run/netns || { umount -l "$E2E_TMP/netns"; return 1; }
    echo /run/netns >>"$E2E_TMP/mounts"
    # libvirt's run dir also at a path outside this mount namespace (its socket is in the connection URI)
    mount_private /run/libvirt --bind "$E2E_TMP/run-libvirt" || return 1
    # libvirt's QEMU capabilities cache persists in Tests/e2e/cache (libvirt validates it and re-probes if stale)
    mkdir -p "$E2E_DIR/cache/libvirt" || return 1
    mount_private /var/cache/libvirt --bind "$E2E_DIR/cache/libvirt" || return 1
    for d in /var/lib/libvirt /var/log/libvirt /usr/local/sbin; do
        mkdir -p "$E2E_TMP/mnt$d" || return 1
        chmod 0755 "$E2E_TMP/mnt$d"
        mount_private "$d" --bind "$E2E_TMP/mnt$d" || return 1
    done
    mkdir -p "$E2E_TMP/mnt/usr/lib/ufw" && cp -a /usr/lib/ufw/. "$E2E_TMP/mnt/usr/lib/ufw/" || return 1
    mount_private /usr/lib/ufw --bind "$E2E_TMP/mnt/usr/lib/ufw" || return 1
    # libvirt probes every QEMU binary at start (~4 s each here): hide the one we do not use
    if [ -e /usr/bin/qemu-system-i386 ]; then
        : >"$E2E_TMP/no-qemu" && chmod 0644 "$E2E_TMP/no-qemu"
        mount_private /usr/bin/qemu-system-i386 --bind "$E2E_TMP/no-qemu" || return 1
    fi
    return 0
}

# undo the private mounts, the last first; /run/netns stays until the namespaces are deleted
undo_mounts() {
    local m status=0
    [ -f "$E2E_TMP/mounts" ] || return 0
    while read -r m; do
        if [ "$m" = /run/netns ]; then
            # the machine's /run/netns, moved onto our /run: unmounting it here unmounts only our view of it
            umount -l /run/netns 2>/dev/null || status=1
            continue
        fi
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || status=1
    done < <(tac "$E2E_TMP/mounts")
    rm -f "$E2E_TMP/mounts"
    return $status
}

setup_libvirt_config() {
    # a clean private /etc/libvirt: no networks, guests or hooks of the machine's
    rm -rf /etc/libvirt/hooks /etc/libvirt/qemu/networks/autostart /etc/libvirt/qemu/networks/*.xml \
        /etc/libvirt/qemu/*.xml /etc/libvirt/qemu/autostart || return 1
    mkdir -p /etc/libvirt/qemu/networks || return 1
    # our own daemon settings, whatever the machine's files say
    cat >/etc/libvirt/qemu.conf <<'EOF'
# virtgate e2e
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = []
stdio_handler = "file"
EOF
    cat >/etc/libvirt/libvirtd.conf <<'EOF'
# virtgate e2e
auth_unix_ro = "none"
auth_unix_rw = "none"
EOF
}

setup_ufw_config() {
    # UFW's package defaults, whatever this machine has customised; FORWARD DROP; UFW leaves foreign chains alone
    local f
    for f in before.rules before6.rules after.rules after6.rules before.init after.init user.rules user6.rules ufw.conf; do
        if [ -e "/usr/share/ufw/$f" ]; then
            cp -L "/usr/share/ufw/$f" "/etc/ufw/$f" || return 1
        fi
    done
    chmod 640 /etc/ufw/*.rules || return 1
    sed -i -e 's/^DEFAULT_FORWARD_POLICY=.*/DEFAULT_FORWARD_POLICY="DROP"/' \
        -e 's/^MANAGE_BUILTINS=.*/MANAGE_BUILTINS=no/' -e 's/^IPV6=.*/IPV6=no/' /etc/default/ufw || return 1
}

# ---------------------------------------------------------------------------------------------------------------
# Clean-up and diagnostics (teardown_file)

diag() {
    sed 's/^/#   /' "$@"
}

# print_diagnostics: to bats' output (fd 3), after a failure
print_diagnostics() {
    echo "# ================= diagnostics (failures above) ================="
    [ -n "${BATS_SETUP_FILE_COMPLETED:-}" ] || echo "# setup_file did not complete (see its output below)"
    echo "# failed tests:"
    [ ! -f "$E2E_TMP/failed-tests" ] || diag "$E2E_TMP/failed-tests"
    echo "# failed assertions:"
    grep '^not ok' "$E2E_TMP/assertions" 2>/dev/null | diag
    [ ! -f "$E2E_TMP/fatal" ] || { echo "# stopped after:"; diag "$E2E_TMP/fatal"; }
    echo "# hook log (every call of the virtgate shim: argv, exit status, stdin of hook calls, stderr):"
    [ ! -f "$E2E_TMP/hook.log" ] || diag "$E2E_TMP/hook.log"
    local f n=0
    for f in "$E2E_TMP"/ruleset-at-failure.*; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        [ "$n" -le 3 ] || { echo "# (rulesets at later failing tests not shown)"; break; }
        echo "# ruleset of $E2E_NS_HOST at the failure of \"$(head -n1 "$f")\":"
        tail -n +2 "$f" | diag
    done
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$E2E_NS_HOST"; then
        echo "# ruleset of $E2E_NS_HOST now:"
        ruleset 2>&1 | diag
    fi
    echo "# libvirtd log (last 40 lines):"
    [ ! -f "$E2E_TMP/libvirtd.log" ] || tail -n 40 "$E2E_TMP/libvirtd.log" | diag
    local g
    for g in a b c d; do
        [ -f "$E2E_TMP/console-$g.log" ] || continue
        echo "# serial console of guest $g:"
        tr -d '\r' <"$E2E_TMP/console-$g.log" | tail -n 60 | diag
    done
    [ ! -f "$E2E_TMP/install.log" ] || { echo "# install.sh output:"; diag "$E2E_TMP/install.log"; }
}

# stop_everything: the guests and the network (through libvirt, so that the hooks run), libvirtd by its PID,
# the suite's own processes by PID, then every process left in the namespaces (QEMU, dnsmasq), by PID, and the
# namespaces
stop_everything() {
    local g ns pid
    if [ -n "$(libvirtd_pid)" ] && pid_alive "$(libvirtd_pid)"; then
        for g in "$E2E_A" "$E2E_B" "$E2E_C" "$E2E_D"; do
            timeout 30 virsh -q -c "$E2E_URI" destroy "$g" >/dev/null 2>&1 || true
        done
        timeout 30 virsh -q -c "$E2E_URI" net-destroy "$E2E_NET" >/dev/null 2>&1 || true
    fi
    stop_libvirtd
    stop_tracked dnsmasq-br1
    stop_tracked wan-listener
    for ns in $E2E_NAMESPACES; do
        ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
        for _ in $(seq 30); do
            [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
            sleep 0.1
        done
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
