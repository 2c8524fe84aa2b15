#!/usr/bin/env bats
# netns.bats: virtgate against real iptables/nftables, real UFW and real traffic, confined to network namespaces named
# vgt-* (the lab of helpers.bash, which also says how to run this file, the whole of it or one test).
#
# Tests are named "<scenario> <topic>: ...", so that `bats --filter '^12 '` runs one scenario and `--filter 'IPv6'` a
# topic. Scenarios (in file order): 0 the lab alone (UFW active, libvirt rules, egress works, routed access blocked);
# 1 baseline ruleset; 2 network start/started, g1 and g2 prepare/port-created/start/started; 3 inbound from wan
# (forwards, ranges, udp, source=, host-address=, no SNAT, routed access stays blocked); 4 hairpin and host-local
# (br_netfilter off; "on" reported as info); 5 guest egress under UFW; 6 idempotence, jump positions, foreign rules
# at position 1, ufw reload; 7 ten concurrent hook runs; 8 invalid metadata (warn and refuse); 12 IPv6; 13 a foreign
# nftables drop; 14 switching backends; 10 dry run (needs the applied state, so it runs before 9); 9 stopped/release
# and network stopped back to the exact baseline; 11 network known only from libvirt's status file; 15-22 field-report
# shapes, each from the baseline back to it (overlapping guest ports of one guest; two ranges overlapping on the guest
# side; an allow-list with overlapping entries; allow-list and host-address clashes between two guests; a forward at
# another guest's address; a NIC of type='bridge' on a plain host bridge; an IPv6 guest-address on an IPv4-only
# network; prefix-0 sources), each with "a second identical event writes nothing"; 23-28 untrusted metadata, each
# from the baseline back to it (a forward on a port a host process listens on, and a listener that appears after the
# claim; a udp 53 forward against the network's own address, where guests find DNS; guest-address at another guest's
# reservation, the gateway, outside the network; two names that shared a 32-bit id; a wide range with 12 sources and
# 300 forwards in one guest; HOST_PORTS). Fixtures (hookData, domain XML, the shapes' domain template) are in
# fixtures/lab/.
#
# State across tests: every test starts from the state it needs (netns_need): "baseline" (nothing of virtgate's),
# "applied" (network vgtnet, g1 and g2 started: scenario 2) or "ipv6" (applied, then the network and g1 with IPv6:
# scenario 12). In a whole run the tests themselves move the lab from one state to the next, in file order; a test run
# alone (--filter) first gets there through the same hook events, checked as in the test that makes them. A test that
# fails half way leaves the state "dirty": the next one removes everything of virtgate's and of the failed test's
# (netns_recover) and checks that the ruleset is the baseline again before it goes on.

load helpers

setup_file() {
    lab_setup_file lab_add_shape_topology
    local ok=yes
    lab_serve "$LAB_NS_G1" tcp 22 g1-22 || ok=no
    lab_serve "$LAB_NS_G1" tcp 80 g1-80 || ok=no
    lab_serve "$LAB_NS_G1" tcp 443 g1-443 || ok=no
    lab_serve "$LAB_NS_G1" tcp 9000 g1-9000 || ok=no
    lab_serve "$LAB_NS_G1" tcp 9001 g1-9001 || ok=no
    lab_serve "$LAB_NS_G1" tcp 9002 g1-9002 || ok=no
    lab_serve "$LAB_NS_G1" tcp 6000 g1-6000 || ok=no
    lab_serve "$LAB_NS_G1" tcp 3306 g1-3306 || ok=no   # never forwarded: must stay closed from outside
    lab_serve "$LAB_NS_G1" udp 53 g1-53-udp || ok=no
    lab_serve "$LAB_NS_G2" tcp 22 g2-22 || ok=no
    lab_serve "$LAB_NS_WAN" tcp 7000 wan-7000 || ok=no
    check "lab: socat services listening in $LAB_NS_G1, $LAB_NS_G2, $LAB_NS_WAN" test "$ok" = yes
    # the ruleset before virtgate runs (scenario 1 checks it)
    lab_ruleset >"$LAB_TMP/baseline.rules"
    netns_set_state baseline
}

teardown_file() {
    lab_teardown_file
}

# =================================================================================================================
# State

netns_state() {
    cat "$LAB_TMP/netns-state" 2>/dev/null || echo dirty
}

netns_set_state() {
    echo "$1" >"$LAB_TMP/netns-state"
}

# netns_need STATE: bring the lab to STATE (baseline, applied or ipv6) from wherever the last test left it.
netns_need() {
    local want=$1 now
    now=$(netns_state)
    [ "$now" = "$want" ] && return 0
    case $now in
        baseline | applied | ipv6) ;;
        # dirty, or half way through a scenario. Not `netns_recover && ...`: a function called in an && list runs
        # without errexit, and a failing check inside it would go unnoticed.
        *) netns_recover; now=baseline ;;
    esac
    [ "$now" = "$want" ] && return 0
    case $now-$want in
        baseline-applied) netns_apply ;;
        baseline-ipv6) netns_apply; netns_apply_ipv6 ;;
        applied-ipv6) netns_apply_ipv6 ;;
        applied-baseline) netns_stop_all ;;
        ipv6-applied) netns_back_to_ipv4 ;;
        ipv6-baseline) netns_back_to_ipv4; netns_stop_all ;;
        *) fail "netns_need: no way from state $now to $want" ;;
    esac
}

# netns_recover: after a test that failed half way (or a run that left out the test finishing a scenario): what such a
# test may have added besides virtgate's rules (a foreign nft table, foreign iptables rules, a UFW rule, host
# services, libvirt's status file, br_netfilter on), then everything of virtgate's on both backends, its state
# directory emptied; the ruleset must be the baseline again.
netns_recover() {
    local pid other=nft
    [ "$VG_BACKEND" = nft ] && other=iptables
    echo "# the lab is half way through a scenario (a test failed, or the one that finishes it did not run): recovering" >&3
    if [ -f "$LAB_TMP/host-services" ]; then
        while read -r pid; do lab_stop_pid "$pid"; done <"$LAB_TMP/host-services"
        rm -f "$LAB_TMP/host-services"
    fi
    ip netns exec "$LAB_NS_HOST" nft delete table inet vgt-foreign 2>/dev/null || true
    while [ "$(lab_ipt -S FORWARD | grep -c -- '^-A FORWARD -j LIBVIRT_FWX$')" -gt 1 ]; do
        lab_ipt -D FORWARD -j LIBVIRT_FWX || break
    done
    while [ "$(lab_ipt -t nat -S POSTROUTING | grep -c -- '^-A POSTROUTING -j LIBVIRT_PRT$')" -gt 1 ]; do
        lab_ipt -t nat -D POSTROUTING -j LIBVIRT_PRT || break
    done
    while lab_ipt -t nat -D PREROUTING -p tcp --dport 1 -j RETURN 2>/dev/null; do :; done
    while lab_ipt -t nat -D OUTPUT -p tcp --dport 1 -j RETURN 2>/dev/null; do :; done
    lab_ufw delete allow 22/tcp >/dev/null 2>&1 || true
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0
    rm -f "$VG_NET_RUN/vgtnet.xml"
    VG_EXTRA_ENV=()
    vg_run flush
    VG_BACKEND=$other vg_run flush
    rm -rf "$VG_STATE"
    mkdir -p "$VG_STATE"
    check_ruleset "recovery: after a failed test, virtgate flushed, the ruleset equals the baseline" \
        "$LAB_TMP/baseline.rules"
    netns_set_state baseline
}

# Scenario 2's events: `virsh net-start` and two `virsh start`, in libvirt 9.0's order (from the baseline).
netns_apply() {
    local net=$LAB_FIXTURES/network-vgtnet.xml g
    netns_set_state dirty
    vg_hook "$net" network vgtnet start begin -
    vg_hook "$net" network vgtnet started begin -
    check "apply: VIRTGATE-FWD chain exists after network started" lab_chain_exists filter VIRTGATE-FWD
    check "apply: VGN-vgtnet chain exists after network started" lab_chain_exists filter VGN-vgtnet

    for g in vgt-g1 vgt-g2; do
        vg_hook "$VG_XML/$g-prepare.xml" qemu "$g" prepare begin -
        vg_hook "$LAB_FIXTURES/port-$g.xml" network vgtnet port-created begin -
        vg_hook "$LAB_FIXTURES/domain-$g.xml" qemu "$g" start begin -
        vg_hook "$LAB_FIXTURES/domain-$g.xml" qemu "$g" started begin -
        if [ "$VG_BACKEND" = nft ]; then
            check "apply: $g owns elements of nft table inet virtgate" test "$(lab_nft_owner_elements "$g")" -gt 0
            check "apply: $g has no iptables chains (nft backend)" sh -c "! ip netns exec $LAB_NS_HOST iptables-save | grep -q -- 'VG[DFS]-$g'"
        else
            check "apply: nat VGD-$g exists" lab_chain_exists nat "VGD-$g"
            check "apply: filter VGF-$g exists" lab_chain_exists filter "VGF-$g"
            check "apply: nat VGS-$g exists" lab_chain_exists nat "VGS-$g"
        fi
    done
    check_jump_positions "apply"
    lab_ruleset >"$LAB_TMP/applied.rules"
    echo "# ruleset with network + g1 + g2 applied:"
    grep -E 'VIRTGATE|VG[NDFS]-' "$LAB_TMP/applied.rules" | sed 's/^/#   /' || true
    netns_set_state applied
}

# Scenario 12's events: the network gains an IPv6 subnet with a DHCPv6 reservation for g1 (by name); g1's forwards
# that name no family then also bind to its IPv6 address, beside IPv6-only ones (host-address, source).
netns_apply_ipv6() {
    netns_set_state dirty
    vg_hook "$LAB_FIXTURES/network-vgtnet-dual.xml" network vgtnet updated begin -
    check "ipv6: ip6tables has the network's outbound accept for $LAB_SUBNET6" sh -c \
        "ip netns exec $LAB_NS_HOST ip6tables-save | grep -q -- '-A VGN-vgtnet -s $LAB_SUBNET6 -i $LAB_BRIDGE -j ACCEPT'"
    check "ipv6: no IPv6 masquerade for the network (no NAT66)" sh -c \
        "! ip netns exec $LAB_NS_HOST ip6tables-save -t nat | grep -q -- '-s $LAB_SUBNET6 ! -d'"
    vg_hook "$LAB_FIXTURES/domain-vgt-g1-v6.xml" qemu vgt-g1 start begin -
    vg_hook "$LAB_FIXTURES/domain-vgt-g1-v6.xml" qemu vgt-g1 started begin -
    netns_set_state ipv6
}

# Back to the IPv4-only network and g1's usual forwards: nothing IPv6 of the guest may remain.
netns_back_to_ipv4() {
    netns_set_state dirty
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet updated begin -
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 start begin -
    check_ruleset "ipv6: back to IPv4 only, the ruleset is identical to before" "$LAB_TMP/applied.rules"
    netns_set_state applied
}

# From "applied" to the baseline, as libvirt stops two guests and the network (scenario 9 does the same, checking
# every step).
netns_stop_all() {
    local g
    netns_set_state dirty
    for g in vgt-g1 vgt-g2; do
        vg_hook "$VG_XML/$g-stopped.xml" qemu "$g" stopped end -
        vg_hook "$LAB_FIXTURES/port-$g.xml" network vgtnet port-deleted begin -
        vg_hook "$VG_XML/$g-stopped.xml" qemu "$g" release end -
    done
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet stopped end -
    check_ruleset "stopped: g1, g2 and the network stopped, the ruleset equals the baseline" "$LAB_TMP/baseline.rules"
    netns_set_state baseline
}

# =================================================================================================================
# Helpers of this file

# bad_domain IN OUT: vgt-bad's domain XML (IN, "-" for stdin) on g2's NIC (its MAC), whose leased address
# 10.213.0.12 its guest-address= forward points at.
bad_domain() {
    sed "s/52:54:00:00:00:13/$LAB_G2_MAC/" "$1" >"$2"
}

# check_output DESCRIPTION LINE...: each LINE must be a whole line of the last run's stdout.
check_output() {
    local desc=$1 line missing=""
    shift
    for line in "$@"; do
        grep -qxF -- "$line" "$VG_OUT" || missing="$missing '$line'"
    done
    if [ -z "$missing" ]; then
        lab_ok "$desc"
    else
        { echo "missing line(s):$missing; stdout was:"; head -n 40 "$VG_OUT"; echo "stderr was:"; head -n 20 "$VG_ERR"; } |
            lab_fail "$desc"
    fi
}

# check_stderr_line DESCRIPTION FILE WORD...: one line of FILE holds every WORD (fixed strings).
check_stderr_line() {
    local desc=$1 file=$2 word lines
    shift 2
    lines=$(cat "$file")
    for word in "$@"; do
        lines=$(printf '%s\n' "$lines" | grep -F -- "$word" || true)
    done
    if [ -n "$lines" ]; then
        lab_ok "$desc"
    else
        { echo "no line with all of: $*; stderr was:"; cat "$file"; } | lab_fail "$desc"
    fi
}

# -----------------------------------------------------------------------------------------------------------------
# Field-report shapes (scenarios 15-22). Ordinary guest metadata that once made the nft backend's transactions fail
# ("File exists": overlapping interval-set elements) or made the backends disagree. Each scenario starts from the
# baseline, starts the network and its guests as libvirt does, proves the outcome with real traffic, proves that a
# second identical event writes nothing, and stops everything back to the baseline exactly.

# shape_domain OUT NAME ID FORWARDS [bridge BRIDGE MAC DEV | network MAC DEV]: a domain XML as libvirt hands it to
# qemu `start`. The NIC is g1's or g2's on the network vgtnet (by NAME), with "network" one on vgtnet with the given
# MAC and target dev (a guest of another name in g1's or g2's namespace), or with "bridge" a NIC of type='bridge' on
# BRIDGE.
shape_domain() {
    local out=$1 name=$2 id=$3 forwards=$4 nic mac dev bridge=""
    if [ "${5:-}" = bridge ]; then
        nic=$(<"$LAB_FIXTURES/shape-interface-bridge.xml")
        bridge=$6 mac=$7 dev=$8
    elif [ "${5:-}" = network ]; then
        nic=$(<"$LAB_FIXTURES/shape-interface-network.xml")
        mac=$6 dev=$7
    else
        nic=$(<"$LAB_FIXTURES/shape-interface-network.xml")
        case $name in
            vgt-g1) mac=$LAB_G1_MAC dev=vgt-g1h ;;
            vgt-g2) mac=$LAB_G2_MAC dev=vgt-g2h ;;
            *) fail "shape_domain: no network NIC for $name" ;;
        esac
    fi
    nic=${nic//@MAC@/$mac}
    nic=${nic//@DEV@/$dev}
    nic=${nic//@BRIDGE@/$bridge}
    nic=${nic//@ID@/$id}
    local xml
    xml=$(<"$LAB_FIXTURES/shape-domain-template.xml")
    xml=${xml//@NAME@/$name}
    xml=${xml//@ID@/$id}
    xml=${xml//@FORWARDS@/$forwards}
    xml=${xml//@INTERFACE@/$nic}
    printf '%s\n' "$xml" >"$out"
}

# shape_unresolved IN OUT [keep-id]: the shape of `prepare` (keep-id) and of `stopped`/`release`: no portid, no
# <target dev>, no bridge= on a network NIC. A NIC of type='bridge' keeps its <source bridge=…/>: that is its
# configuration, not something libvirt resolved.
shape_unresolved() {
    local in=$1 out=$2 keep_id=${3:-} drop_id='s/^<domain type=.qemu. id=.[0-9]*.>/<domain type='"'qemu'"'>/'
    [ -z "$keep_id" ] || drop_id=''
    sed -e "$drop_id" -e "s/ portid='[^']*'//" -e "/<source network=/s/ bridge='[^']*'//" -e "/<target dev=/d" \
        "$in" >"$out"
}

# shape_net_up NETXML / shape_net_down NETXML: the network vgtnet's start+started / stopped events.
shape_net_up() {
    vg_hook "$1" network vgtnet start begin -
    vg_hook "$1" network vgtnet started begin -
    shape_no_error "network vgtnet started"
}
shape_net_down() {
    vg_hook "$1" network vgtnet stopped end -
    shape_no_error "network vgtnet stopped"
}

# shape_no_error WHAT: the last call's stderr holds no error line.
shape_no_error() {
    if grep -q 'error:' "$VG_ERR"; then
        lab_fail "$1: no error logged (the transaction was accepted)" <"$VG_ERR"
    else
        lab_ok "$1: no error logged (the transaction was accepted)"
    fi
}

# shape_guest_up NAME XML: prepare, start, started. start's stderr is kept in XML.start.err, its exit status in
# SHAPE_START_RC. A failed transaction of a guest event may still exit 0 (the guest must not be stopped by it), so
# the log is checked for errors as well.
shape_guest_up() {
    local name=$1 xml=$2 ev
    shape_unresolved "$xml" "$xml.prepare" keep-id
    vg_hook "$xml.prepare" qemu "$name" prepare begin -
    for ev in start started; do
        vg_hook "$xml" qemu "$name" "$ev" begin -
        if [ "$ev" = start ]; then
            SHAPE_START_RC=$VG_RC
            cp "$VG_ERR" "$xml.start.err"
        fi
        shape_no_error "$name $ev"
    done
}

# shape_guest_down NAME XML: stopped and release, with the XML libvirt passes then.
shape_guest_down() {
    local name=$1 xml=$2
    shape_unresolved "$xml" "$xml.stopped"
    vg_hook "$xml.stopped" qemu "$name" stopped end -
    vg_hook "$xml.stopped" qemu "$name" release end -
}

# shape_same_again TAG NAME XML: a second identical start writes nothing. The dry run prints only "no changes"
# lines; the real one logs no "applied" line and leaves the ruleset (iptables and virtgate's nft table) as it was.
shape_same_again() {
    local tag=$1 name=$2 xml=$3 before=$LAB_TMP/shape-same.rules
    lab_ruleset >"$before"
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    vg_exec "$VIRTGATE" "$xml" hook --dry-run qemu "$name" start begin -
    if [ "$VG_RC" -eq 0 ] && grep -q 'no changes' "$VG_OUT" && ! grep -v '^# .*: no changes$' "$VG_OUT" | grep -q .; then
        lab_ok "$tag: second identical start of $name, dry run: '$(head -n1 "$VG_OUT")'"
    else
        { echo "stdout (first 30 lines):"; head -n 30 "$VG_OUT"; head -n 10 "$VG_ERR"; } |
            lab_fail "$tag: second identical start of $name, dry run prints only '# …: no changes' (exit $VG_RC)"
    fi
    vg_hook "$xml" qemu "$name" start begin -
    if grep -q -e 'applied' -e 'error:' "$VG_ERR"; then
        lab_fail "$tag: second identical start of $name logs no apply and no error" <"$VG_ERR"
    else
        lab_ok "$tag: second identical start of $name logs no apply and no error"
    fi
    check_ruleset "$tag: second identical start of $name leaves the ruleset identical" "$before"
}

# shape_back_to_baseline TAG: after every guest and the network stopped.
shape_back_to_baseline() {
    check_ruleset "$1: everything stopped, the ruleset equals the baseline exactly" "$LAB_TMP/baseline.rules"
    netns_set_state baseline
}

# shape_begin: the start of every scenario from 15 on: the baseline, the shapes' services, the state "dirty" until
# shape_back_to_baseline.
shape_begin() {
    netns_need baseline
    shape_services
    netns_set_state dirty
}

# shape_services: the services the shapes use, once per run (scenario 15 starts them; a test run alone, itself).
shape_services() {
    local ok=yes p
    [ -f "$LAB_TMP/shape-services" ] && return 0
    for p in 81 9005 9010 9015; do
        lab_serve "$LAB_NS_G1" tcp "$p" "g1-$p" || ok=no
    done
    lab_serve "$LAB_NS_PB" tcp 22 pb-22 || ok=no
    # IPv6 beside g1's IPv4 services (scenario 12 may have started some already: a second listener on the same
    # port would fail, so only the missing ones)
    for p in 22 80; do
        ip netns exec "$LAB_NS_G1" ss -Hltn6 "sport = :$p" | grep -q . || lab_serve6 "$LAB_NS_G1" tcp "$p" "g1-$p-v6" || ok=no
    done
    check "shapes: services listening (g1 81, 9005, 9010, 9015, IPv6 22 and 80; vgt-pb 22)" test "$ok" = yes
    # the controls the "refused" checks of the second wan address lean on: the host routes to it, and vgt-pb is
    # reachable on its bridge
    expect_reply "shapes: the host reaches wan's second address $LAB_WAN_ALT_IP (lab)" \
        "$LAB_NS_HOST" tcp "$LAB_WAN_ALT_IP" 7000 "wan-7000 $LAB_HOST_WAN_IP"
    expect_reply "shapes: the host reaches vgt-pb:22 on $LAB_BRIDGE2 directly (lab)" \
        "$LAB_NS_HOST" tcp "$LAB_PB_IP" 22 "pb-22 $LAB_GW2"
    touch "$LAB_TMP/shape-services"
}

# -----------------------------------------------------------------------------------------------------------------
# Untrusted metadata (scenarios 23-28): what a guest's forwards may never do (README, "Security model"), each from the
# baseline back to it, driven as libvirt drives the hook, proved with real traffic and the real kernel, each with "a
# second identical event writes nothing".

# Two guest names of 25 bytes that shared one owner id under the old scheme (the first 15 characters, then FNV-1a
# 32-bit of the name: both "vgt_collision_p+8a34de67"). Found by brute force over 6-character suffixes.
SEC_COLLIDE_A=vgt-collision-pair-aag3zx
SEC_COLLIDE_B=vgt-collision-pair-aa1pad

# sec_old_id NAME: the owner id of a long name under the old scheme (prefix of 15, '+', FNV-1a 32-bit in hex).
sec_old_id() {
    local name=$1 h=$((0x811c9dc5)) i c prefix
    for ((i = 0; i < ${#name}; i++)); do
        printf -v c '%d' "'${name:i:1}"
        h=$((((h ^ c) * 0x01000193) & 0xffffffff))
    done
    prefix=${name:0:15}
    printf '%s+%08x\n' "${prefix//[^A-Za-z0-9]/_}" "$h"
}

# sec_id NAME: the owner id of a long name now: '+' and 128 bits of its SHA-256, base64url without padding.
sec_id() {
    local hex
    hex=$(printf '%s' "$1" | sha256sum | cut -c1-32)
    # shellcheck disable=SC2059  # the format is the bytes, as \x escapes
    printf '+%s\n' "$(printf "$(sed 's/../\\x&/g' <<<"$hex")" | base64 | tr '+/' '-_' | tr -d '=')"
}

# host_serve PROTO PORT LABEL [BIND]: a service of the host itself (standing for sshd or dnsmasq) in vgt-host, on
# every IPv4 address or on BIND only; answers like lab_serve. Its PID is in HOST_SERVE_PID, for host_unserve.
host_serve() {
    local proto=$1 port=$2 label=$3 bind=${4:+,bind=$4} kind=TCP-LISTEN linger="" wait=-t0.5
    [ "$proto" = udp ] && kind=UDP-RECVFROM linger="; $LAB_UDP_DRAIN" wait=-t5
    ip netns exec "$LAB_NS_HOST" socat "$wait" "$kind:$port$bind,fork,reuseaddr" SYSTEM:"echo $label \$SOCAT_PEERADDR$linger" \
        </dev/null >/dev/null 2>&1 3>&- 9>&- &
    HOST_SERVE_PID=$!
    lab_remember_pid "$HOST_SERVE_PID"
    echo "$HOST_SERVE_PID" >>"$LAB_TMP/host-services"
    lab_wait_listen "$LAB_NS_HOST" "$proto" "$port"
}

# host_unserve PID PROTO PORT: stop a service host_serve started (by its PID) and wait until its socket is gone.
host_unserve() {
    local pid=$1 proto=$2 port=$3 i flag=-Hltn
    [ "$proto" = udp ] && flag=-Hlun
    lab_stop_pid "$pid"
    wait "$pid" 2>/dev/null || true
    sed -i "/^$pid\$/d" "$LAB_TMP/host-services"
    for i in $(seq 50); do
        ip netns exec "$LAB_NS_HOST" ss $flag "sport = :$port" | grep -q . || return 0
        sleep 0.1
    done
    echo "# lab: host $proto socket on port $port still open after its service was stopped" >&2
    return 1
}

# sec_started_keeps TAG NAME XML HELD: a `started` event of a running guest writes nothing, logs no error, and skips
# nothing about HELD (the held forward's field="value", e.g. host-port="2222"). Other lines it logs are reported.
sec_started_keeps() {
    local tag=$1 name=$2 xml=$3 held=$4 before=$LAB_TMP/sec-started.rules
    lab_ruleset >"$before"
    vg_hook "$xml" qemu "$name" started begin -
    if grep -q -e 'applied' -e 'error:' "$VG_ERR" || grep -qF -- "$held" "$VG_ERR"; then
        lab_fail "$tag: started of $name logs no apply and no error, and nothing about $held" <"$VG_ERR"
    else
        lab_ok "$tag: started of $name logs no apply and no error, and nothing about $held"
        if grep -q . "$VG_ERR"; then lab_info "$tag: started of $name logged: $(head -n 3 "$VG_ERR" | tr '\n' ' ')"; fi
    fi
    check_ruleset "$tag: started of $name leaves the ruleset identical" "$before"
}

# netns_ipv6_services: g1's and wan's IPv6 services of scenario 12, started once.
netns_ipv6_services() {
    local ok=yes
    [ -f "$LAB_TMP/ipv6-services" ] && return 0
    lab_serve6 "$LAB_NS_G1" tcp 22 g1-22-v6 || ok=no
    lab_serve6 "$LAB_NS_G1" tcp 80 g1-80-v6 || ok=no
    lab_serve6 "$LAB_NS_G1" tcp 443 g1-443-v6 || ok=no
    lab_serve6 "$LAB_NS_G1" udp 53 g1-53-udp-v6 || ok=no
    lab_serve6 "$LAB_NS_WAN" tcp 7000 wan-7000-v6 || ok=no
    touch "$LAB_TMP/ipv6-services"
    [ "$ok" = yes ]
}

# =================================================================================================================
# 0. The lab itself, before virtgate runs. These prove the later virtgate checks can fail.

@test "0 lab: UFW active, FORWARD DROP, libvirt's jumps first" {
    check "lab: ufw status is active in $LAB_NS_HOST" \
        sh -c "ip netns exec $LAB_NS_HOST env TESTSTATE=1 ufw status | grep -q 'Status: active'"
    check_eq "lab: FORWARD policy is DROP (UFW)" "-P FORWARD DROP" \
        "$(lab_ipt -S FORWARD | sed -n 1p)"
    check_eq "lab: libvirt's LIBVIRT_FWX jump is first in FORWARD" "-A FORWARD -j LIBVIRT_FWX" \
        "$(lab_first_rule filter FORWARD)"
    check "lab: UFW's ufw-before-forward jump is in FORWARD" \
        sh -c "ip netns exec $LAB_NS_HOST iptables -S FORWARD | grep -q -- '-j ufw-before-forward'"
}

@test "0 lab: traffic without virtgate (egress works, routed access blocked)" {
    netns_need baseline
    expect_reply "lab: g1 egress to wan 198.18.0.2:7000 works (libvirt FWO + masquerade)" \
        "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 $LAB_HOST_WAN_IP"
    expect_reply "lab: g2 -> g1-22 directly on the bridge works, un-NATed" \
        "$LAB_NS_G2" tcp "$LAB_G1_IP" 22 "g1-22 $LAB_G2_IP"
    expect_reply "lab: host -> g1-22 directly works" "$LAB_NS_HOST" tcp "$LAB_G1_IP" 22 "g1-22 $LAB_GW"
    expect_no_reply "lab: wan routed straight to g1 10.213.0.11:22 is blocked (LIBVIRT_FWI REJECT)" \
        "$LAB_NS_WAN" tcp "$LAB_G1_IP" 22
    expect_no_reply "lab: wan -> 198.18.0.1:2222 gets nothing before virtgate runs" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_no_reply "lab: wan -> 198.18.0.1:5353/udp gets nothing before virtgate runs" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353
}

# =================================================================================================================
# 1-5. Apply, inbound, hairpin, egress

@test "1 baseline: ruleset of vgt-host saved before virtgate runs" {
    check "baseline: ruleset of $LAB_NS_HOST saved (filter, nat, mangle; counters stripped)" \
        grep -q LIBVIRT_FWI "$LAB_TMP/baseline.rules"
}

@test "2 apply: network started, g1 and g2 prepare/port-created/start/started" {
    netns_need baseline
    netns_apply
}

@test "3 inbound: wan reaches the forwards (ports, range, udp, address from the lease file), source unchanged" {
    netns_need applied
    local p
    expect_reply "inbound: wan -> 198.18.0.1:2222 reaches g1-22, source unchanged" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    for p in 0 1 2; do
        expect_reply "inbound: wan -> 198.18.0.1:500$p (range) reaches g1-900$p, source unchanged" \
            "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" "500$p" "g1-900$p $LAB_WAN_IP"
    done
    expect_reply "inbound: wan -> 198.18.0.1:5353/udp reaches g1-53-udp, source unchanged" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353 "g1-53-udp $LAB_WAN_IP"
    expect_reply "inbound: wan -> 198.18.0.1:2223 reaches g2-22 (address from the lease file)" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 $LAB_WAN_IP"
}

@test "3 inbound: source= and host-address= restrict who and where" {
    netns_need applied
    expect_reply "source: wan (198.18.0.2, in source=) -> 198.18.0.1:8080 reaches g1-80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 $LAB_WAN_IP"
    expect_no_reply "source: wan (not in source=192.0.2.0/24) -> 198.18.0.1:8443 is refused" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8443
    expect_reply "host-address: wan -> 198.18.0.5:6000 (host-address=198.18.0.5) reaches g1-6000" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_ALT_IP" 6000 "g1-6000 $LAB_WAN_IP"
    expect_no_reply "host-address: wan -> 198.18.0.1:6000 (other host address) is refused" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 6000
}

@test "3 inbound: ports not forwarded and routed access to the guests stay blocked" {
    netns_need applied
    expect_no_reply "inbound: wan -> 198.18.0.1:3306 (not forwarded) is refused" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 3306
    expect_no_reply "inbound: wan -> 198.18.0.1:22 (guest port, not a host port) is refused" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 22
    # wan routes 10.213.0.0/24 straight at the host: only DNAT'ed connections may pass, no blanket accept.
    expect_no_reply "routed: wan -> 10.213.0.11:22 directly stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 22
    expect_no_reply "routed: wan -> 10.213.0.11:9000 directly stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 9000
    expect_no_reply "routed: wan -> 10.213.0.11:3306 directly stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 3306
    expect_no_reply "routed: wan -> 10.213.0.11:53/udp directly stays blocked" "$LAB_NS_WAN" udp "$LAB_G1_IP" 53
    expect_no_reply "routed: wan -> 10.213.0.12:22 directly stays blocked" "$LAB_NS_WAN" tcp "$LAB_G2_IP" 22
}

@test "4 hairpin: guests reach forwards on the host address, never on the network's own address" {
    netns_need applied
    expect_reply "hairpin: g2 -> 198.18.0.1:2222 reaches g1-22" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply "hairpin: g1 -> its own forward 198.18.0.1:2222 reaches g1-22" \
        "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply "hairpin: g1 -> 198.18.0.1:2223 reaches g2-22" "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    # The network's own address (where guests find DNS and DHCP) is never taken by a forward on any address.
    expect_no_reply "hairpin: g2 -> 10.213.0.1:2222 (the network's own address) does not reach g1" \
        "$LAB_NS_G2" tcp "$LAB_GW" 2222
    expect_reply "direct: g2 -> 10.213.0.11:22 stays un-NATed" "$LAB_NS_G2" tcp "$LAB_G1_IP" 22 "g1-22 $LAB_G2_IP"
}

@test "4 host-local: the host reaches forwards on its own address; br_netfilter on reported as info" {
    netns_need applied
    expect_reply "host-local: host -> 198.18.0.1:2222 reaches g1-22" "$LAB_NS_HOST" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_no_reply "host-local: host -> 10.213.0.1:2222 (the network's own address) does not reach g1" \
        "$LAB_NS_HOST" tcp "$LAB_GW" 2222
    expect_reply "host-local: host -> 198.18.0.1:5353/udp reaches g1-53-udp" \
        "$LAB_NS_HOST" udp "$LAB_HOST_WAN_IP" 5353 "g1-53-udp *"
    expect_no_reply "host-local: host -> 127.0.0.1:2222 is not forwarded (no route_localnet)" \
        "$LAB_NS_HOST" tcp 127.0.0.1 2222

    # 4b. the same with bridge-nf-call-iptables=1 (information only)
    netns_set_state dirty
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.bridge.bridge-nf-call-iptables=1
    info_reply "br_netfilter on: g2 -> 198.18.0.1:2222 (neighbour hairpin)" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 2222
    info_reply "br_netfilter on: g1 -> 198.18.0.1:2222 (own forward)" "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 2222
    info_reply "br_netfilter on: wan -> 198.18.0.1:2222" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    info_reply "br_netfilter on: g2 -> 10.213.0.11:22 direct" "$LAB_NS_G2" tcp "$LAB_G1_IP" 22
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0
    netns_set_state applied
}

@test "5 egress: guests reach wan under UFW's FORWARD DROP" {
    netns_need applied
    expect_reply "egress: g1 -> wan 198.18.0.2:7000 works" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    expect_reply "egress: g2 -> wan 198.18.0.2:7000 works" "$LAB_NS_G2" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
}

# =================================================================================================================
# 6. Idempotence, jump positions, foreign rules, ufw reload

@test "6 idempotence: start twice, started, network started, reconnect leave the ruleset identical" {
    netns_need applied
    local applied=$LAB_TMP/applied.rules
    netns_set_state dirty
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 start begin -
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 start begin -
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 started begin -
    check_ruleset "idempotence: g1 start twice + started leaves the ruleset identical" "$applied"
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet started begin -
    check_ruleset "idempotence: network started again leaves the ruleset identical" "$applied"
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 reconnect begin -
    vg_hook "$LAB_FIXTURES/domain-vgt-g2.xml" qemu vgt-g2 reconnect begin -
    check_ruleset "idempotence: reconnect of g1 and g2 leaves the ruleset identical" "$applied"
    netns_set_state applied
    check_jump_positions "positions"
}

@test "6 foreign rules at position 1: reconnect puts virtgate's jumps first again" {
    netns_need applied
    local applied=$LAB_TMP/applied.rules
    netns_set_state dirty
    # libvirt re-inserts its own jumps at position 1 when it reloads its firewall (libvirtd restart).
    lab_ipt -I FORWARD 1 -j LIBVIRT_FWX
    check_eq "foreign: a LIBVIRT_FWX jump now sits at position 1 of FORWARD" "-A FORWARD -j LIBVIRT_FWX" \
        "$(lab_first_rule filter FORWARD)"
    # as after a libvirtd restart, which libvirt follows with `reconnect` (see the hook notes)
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 reconnect begin -
    check_eq "foreign: after reconnect, VIRTGATE-FWD is back at position 1 of FORWARD" "-A FORWARD -j VIRTGATE-FWD" \
        "$(lab_first_rule filter FORWARD)"
    check_eq "foreign: exactly one VIRTGATE-FWD jump in FORWARD" 1 \
        "$(lab_ipt -S FORWARD | grep -c -- '-j VIRTGATE-FWD$')"
    lab_ipt -D FORWARD -j LIBVIRT_FWX   # remove the duplicate we added
    check_ruleset "foreign: with our foreign rule removed again, the ruleset is identical" "$applied"

    lab_ipt -t nat -I POSTROUTING 1 -j LIBVIRT_PRT
    lab_ipt -t nat -I PREROUTING 1 -p tcp --dport 1 -j RETURN
    lab_ipt -t nat -I OUTPUT 1 -p tcp --dport 1 -j RETURN
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 reconnect begin -
    check_jump_positions "foreign nat"
    lab_ipt -t nat -D POSTROUTING -j LIBVIRT_PRT
    lab_ipt -t nat -D PREROUTING -p tcp --dport 1 -j RETURN
    lab_ipt -t nat -D OUTPUT -p tcp --dport 1 -j RETURN
    check_ruleset "foreign nat: with our foreign rules removed again, the ruleset is identical" "$applied"
    netns_set_state applied
}

@test "6 ufw reload: virtgate's chains and jumps stay, the forward still works" {
    netns_need applied
    # UFW reload (MANAGE_BUILTINS=no) must not disturb our chains or jumps.
    netns_set_state dirty
    if lab_ufw reload >"$LAB_TMP/ufw.out" 2>&1; then
        lab_ok "ufw reload in $LAB_NS_HOST"
    else
        lab_fail "ufw reload in $LAB_NS_HOST" <"$LAB_TMP/ufw.out"
    fi
    check_jump_positions "after ufw reload"
    check_ruleset "after ufw reload: ruleset identical" "$LAB_TMP/applied.rules"
    netns_set_state applied
    expect_reply "after ufw reload: wan -> 198.18.0.1:2222 still reaches g1-22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
}

# =================================================================================================================
# 7. libvirt takes no lock around hooks; virtgate must serialise itself.

@test "7 concurrency: ten concurrent hook runs exit 0 and leave the sequential ruleset" {
    netns_need applied
    local i pids="" pid rc failed=0 jobs job
    netns_set_state dirty
    # guest operation pairs: 3x start g1, 3x start g2, 2x started g1, reconnect g1, reconnect g2
    jobs="vgt-g1:start vgt-g1:start vgt-g1:start vgt-g2:start vgt-g2:start vgt-g2:start vgt-g1:started vgt-g1:started
          vgt-g1:reconnect vgt-g2:reconnect"
    i=0
    for job in $jobs; do
        i=$((i + 1))
        (
            VG_OUT=$LAB_TMP/conc.$i.out
            VG_ERR=$LAB_TMP/conc.$i.err
            vg_exec "$VIRTGATE" "$LAB_FIXTURES/domain-${job%%:*}.xml" hook qemu "${job%%:*}" "${job#*:}" begin -
            echo "$VG_RC" >"$LAB_TMP/conc.$i.rc"
        ) 3>&- &
        pids="$pids $!"
    done
    for pid in $pids; do
        wait "$pid" || true
    done
    for i in $(seq 10); do
        rc=$(cat "$LAB_TMP/conc.$i.rc" 2>/dev/null || echo missing)
        if [ "$rc" != 0 ]; then
            failed=$((failed + 1))
            echo "#   concurrent run $i exited $rc:"
            sed 's/^/#   /' "$LAB_TMP/conc.$i.err" || true
        fi
    done
    check_eq "concurrency: all 10 concurrent hook runs exit 0" 0 "$failed"
    lab_ruleset >"$LAB_TMP/conc.rules"
    check_eq "concurrency: no duplicate virtgate rule lines" "" \
        "$(grep -E '^-A .*(VIRTGATE|VG[NDFS]-)' "$LAB_TMP/conc.rules" | sort | uniq -d)"
    check_ruleset "concurrency: ruleset identical to the sequential one" "$LAB_TMP/applied.rules"
    netns_set_state applied
}

# =================================================================================================================
# 8. Invalid metadata. vgt-bad's valid forward points at 10.213.0.12 (guest-address=), in g2's namespace. An address
# leased to another MAC is not a guest's to point at (scenarios 19 and 25), so vgt-bad has g2's NIC here: the lease is
# its own.

@test "8 invalid metadata: ON_INVALID=warn names the bad value and applies the good forwards" {
    netns_need applied
    local before=$LAB_TMP/before-bad.rules bad=$VG_XML/vgt-bad.xml
    lab_ruleset >"$before"
    netns_set_state dirty
    bad_domain "$LAB_FIXTURES/domain-vgt-bad.xml" "$bad"
    lab_shape_unresolved "$bad" "$VG_XML/vgt-bad-prepare.xml" keep-id
    lab_shape_unresolved "$bad" "$VG_XML/vgt-bad-stopped.xml"

    # ON_INVALID=warn: exit 0, one-line error naming guest, field and value, good forwards applied.
    VG_CONFIG=$VG_CONF_WARN
    vg_hook "$VG_XML/vgt-bad-prepare.xml" qemu vgt-bad prepare begin -
    vg_hook "$bad" qemu vgt-bad start begin -
    if grep 'vgt-bad' "$VG_ERR" | grep 'host-port' | grep -q '70000'; then
        lab_ok "warn: stderr names guest vgt-bad, field host-port, value 70000"
    else
        lab_fail "warn: stderr names guest vgt-bad, field host-port, value 70000" <"$VG_ERR"
    fi
    check_eq "warn: exactly one error line on stderr about 70000" 1 "$(grep -c 70000 "$VG_ERR")"
    vg_hook "$bad" qemu vgt-bad started begin -
    expect_reply "warn: the good forward 198.18.0.1:2224 -> 10.213.0.12:22 (guest-address=) works" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2224 "g2-22 $LAB_WAN_IP"
    check "warn: no rule mentions 70000" sh -c "! ip netns exec $LAB_NS_HOST iptables-save | grep -q 70000"
    vg_hook "$VG_XML/vgt-bad-stopped.xml" qemu vgt-bad stopped end -
    vg_hook "$VG_XML/vgt-bad-stopped.xml" qemu vgt-bad release end -
    check_ruleset "warn: after vgt-bad stopped+release the ruleset is as before it" "$before"
    netns_set_state applied
}

@test "8 invalid metadata: ON_INVALID=refuse refuses each kind of invalid value, nothing applied" {
    netns_need applied
    local before=$LAB_TMP/before-bad.rules cases name forward value field xml
    lab_ruleset >"$before"
    netns_set_state dirty
    bad_domain "$LAB_FIXTURES/domain-vgt-bad.xml" "$VG_XML/vgt-bad.xml"
    lab_shape_unresolved "$VG_XML/vgt-bad.xml" "$VG_XML/vgt-bad-stopped.xml"

    # ON_INVALID=refuse: prepare/start exit non-zero, nothing applied. One case per kind of invalid value.
    VG_CONFIG=$VG_CONF_REFUSE
    # name|forward element|field|value expected in the error
    cases='port-70000|<vg:forward proto="tcp" host-port="70000" guest-port="22"/>|host-port|70000
port-0|<vg:forward proto="tcp" host-port="0" guest-port="22"/>|host-port|0
reversed-range|<vg:forward proto="tcp" host-port="9010-9000" guest-port="22"/>|host-port|9010-9000
range-lengths|<vg:forward proto="tcp" host-port="5000-5002" guest-port="9000-9001"/>|guest-port|9000-9001
bad-cidr|<vg:forward proto="tcp" host-port="2225" guest-port="22" source="10.0.0.0/33"/>|source|10.0.0.0/33
bad-proto|<vg:forward proto="foo" host-port="2225" guest-port="22"/>|proto|foo'
    while IFS='|' read -r name forward field value <&4; do
        xml=$VG_XML/vgt-bad-$name.xml
        # the template's @FORWARD@ line becomes the invalid forward; guest-address keeps the good one resolvable
        sed "s|@FORWARD@|$forward|" "$LAB_FIXTURES/domain-vgt-bad-template.xml" | bad_domain - "$xml"
        lab_shape_unresolved "$xml" "$xml.prepare" keep-id
        VG_OUT=$LAB_TMP/vg.out
        VG_ERR=$LAB_TMP/vg.err
        vg_exec "$VIRTGATE" "$xml.prepare" hook qemu vgt-bad prepare begin -
        check "refuse $name: prepare exits non-zero ($VG_RC)" test "$VG_RC" -ne 0
        vg_exec "$VIRTGATE" "$xml" hook qemu vgt-bad start begin -
        check "refuse $name: start exits non-zero ($VG_RC)" test "$VG_RC" -ne 0
        if grep 'vgt-bad' "$VG_ERR" | grep "$field" | grep -qF -- "$value"; then
            lab_ok "refuse $name: stderr names guest vgt-bad, field $field, value $value"
        else
            lab_fail "refuse $name: stderr names guest vgt-bad, field $field, value $value" <"$VG_ERR"
        fi
        check_ruleset "refuse $name: ruleset unchanged" "$before"
        # libvirt runs stopped+release after a failed start, too
        vg_exec "$VIRTGATE" "$VG_XML/vgt-bad-stopped.xml" hook qemu vgt-bad stopped end -
        vg_exec "$VIRTGATE" "$VG_XML/vgt-bad-stopped.xml" hook qemu vgt-bad release end -
    done 4<<<"$cases"
    check_ruleset "refuse: after all invalid cases the ruleset is as before them" "$before"
    netns_set_state applied
}

# =================================================================================================================
# 12. IPv6. The network gains an IPv6 subnet with a DHCPv6 reservation for g1 (by name); g1's forwards that name no
# family then also bind to its IPv6 address, beside IPv6-only ones (host-address, source). Real IPv6 traffic from wan,
# from a neighbour (hairpin) and out (egress, not NATed); then back to IPv4 only, exactly.

@test "12 IPv6: services listening; before, nothing is forwarded and egress is blocked" {
    netns_need applied
    check "ipv6: IPv6 services listening in $LAB_NS_G1 and $LAB_NS_WAN" netns_ipv6_services

    expect_no_reply "ipv6: before: wan -> [$LAB_HOST_WAN_IP6]:2222 closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 2222
    expect_no_reply "ipv6: before: g1 -> wan [$LAB_WAN_IP6]:7000 blocked by UFW's IPv6 FORWARD DROP" \
        "$LAB_NS_G1" tcp "$LAB_WAN_IP6" 7000
}

@test "12 IPv6: forwards from wan over IPv6, hairpin, egress not NATed" {
    netns_need ipv6
    if [ ! -f "$LAB_TMP/ipv6-services" ]; then
        # run alone: the services of the test before
        check "ipv6: IPv6 services listening in $LAB_NS_G1 and $LAB_NS_WAN" netns_ipv6_services
    fi
    expect_reply "ipv6: wan -> [$LAB_HOST_WAN_IP6]:2222 reaches g1:22 over IPv6, source kept" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 2222 "g1-22-v6 $LAB_WAN_IP6_PEER"
    expect_reply "ipv6: wan -> 198.18.0.1:2222 still reaches g1:22 over IPv4" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    expect_reply "ipv6: wan -> [$LAB_HOST_WAN_IP6]:5001 (range 5000-5002 -> 9000-9002) reaches g1:9001 over IPv4 only" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 5001 "g1-9001 *"
    expect_reply "ipv6: udp wan -> [$LAB_HOST_WAN_IP6]:5353 reaches g1:53" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP6" 5353 "g1-53-udp-v6 $LAB_WAN_IP6_PEER"
    expect_reply "ipv6: host-address=$LAB_HOST_WAN_IP6 forward 2280 reaches g1:80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 2280 "g1-80-v6 $LAB_WAN_IP6_PEER"
    expect_no_reply "ipv6: the IPv6-only forward 2280 is not on the IPv4 address" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2280
    expect_reply "ipv6: source=$LAB_WAN_IP6/128 forward 2243 admits wan" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 2243 "g1-443-v6 $LAB_WAN_IP6_PEER"
    expect_no_reply "ipv6: source=2001:db8:99::/48 forward 2244 refuses wan" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 2244
    expect_no_reply "ipv6: routed access wan -> [$LAB_G1_IP6]:22 stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP6" 22
    expect_no_reply "ipv6: routed access wan -> [$LAB_G1_IP6]:3306 stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP6" 3306
    expect_reply "ipv6: hairpin g2 -> [$LAB_HOST_WAN_IP6]:2222 reaches g1, masqueraded to the bridge address" \
        "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP6" 2222 "g1-22-v6 $LAB_GW6_PEER"
    expect_reply "ipv6: egress g1 -> wan [$LAB_WAN_IP6]:7000 works, source not NATed" \
        "$LAB_NS_G1" tcp "$LAB_WAN_IP6" 7000 "wan-7000-v6 $LAB_G1_IP6_PEER"
    expect_reply "ipv6: host itself -> [$LAB_HOST_WAN_IP6]:2222 reaches g1" \
        "$LAB_NS_HOST" tcp "$LAB_HOST_WAN_IP6" 2222 "g1-22-v6 *"
}

@test "12 IPv6: back to IPv4 only, the ruleset is identical to before" {
    netns_need ipv6
    netns_back_to_ipv4
    expect_no_reply "ipv6: after: wan -> [$LAB_HOST_WAN_IP6]:2222 closed again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 2222
}

# =================================================================================================================
# 13. A drop policy in someone else's native nftables table. Nothing virtgate can write overrides it (an accept in
# one table does not save a packet another table drops): doctor must say so, plainly.

@test "13 foreign nft drop: doctor names the foreign chain, traffic comes back when it goes" {
    netns_need applied
    vg_run doctor
    check "foreign drop: doctor does not report one before" sh -c "! grep -q nft-forward-drop-elsewhere '$VG_OUT'"
    netns_set_state dirty
    ip netns exec "$LAB_NS_HOST" nft -f - <<'NFT'
table inet vgt-foreign {
    chain forward_drop { type filter hook forward priority 0; policy drop; }
}
NFT
    expect_no_reply "foreign drop: wan -> 198.18.0.1:2222 dies in the foreign table" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    vg_run doctor
    check "foreign drop: doctor exits non-zero" test "$VG_RC" -ne 0
    check "foreign drop: doctor names the chain (nft-forward-drop-elsewhere, inet vgt-foreign forward_drop)" \
        sh -c "grep -q 'nft-forward-drop-elsewhere' '$VG_OUT' && grep -q 'inet vgt-foreign forward_drop' '$VG_OUT'"
    ip netns exec "$LAB_NS_HOST" nft delete table inet vgt-foreign
    netns_set_state applied
    expect_reply "foreign drop: removed, wan -> 198.18.0.1:2222 reaches g1 again" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
}

# =================================================================================================================
# 14. Switching backends. reapply with the other backend moves every forward there and leaves nothing of the old one;
# switching back restores the exact ruleset.

@test "14 backend switch: reapply on the other backend and back, the ruleset is identical" {
    netns_need applied
    local other=nft
    [ "$VG_BACKEND" = nft ] && other=iptables
    echo "# switching backends: $VG_BACKEND -> $other -> $VG_BACKEND"
    netns_set_state dirty
    vg_run reapply --backend "$other"
    check "switch: reapply --backend $other exits 0" test "$VG_RC" -eq 0
    if [ "$other" = nft ]; then
        check "switch: guests' iptables chains are gone" sh -c \
            "! ip netns exec $LAB_NS_HOST iptables-save | grep -qE 'VG[DFS]-vgt-g'"
        check "switch: g1's forwards are nft elements" test "$(lab_nft_owner_elements vgt-g1)" -gt 0
    else
        check "switch: virtgate's nft table is gone" sh -c "! ip netns exec $LAB_NS_HOST nft list table inet virtgate >/dev/null 2>&1"
        check "switch: g1's chains are back in iptables" lab_chain_exists nat VGD-vgt-g1
    fi
    expect_reply "switch: wan -> 198.18.0.1:2222 reaches g1 with $other" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    expect_reply "switch: hairpin g2 -> 198.18.0.1:2222 reaches g1 with $other" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_GW"
    vg_run reapply --backend "$VG_BACKEND"
    check "switch: reapply --backend $VG_BACKEND exits 0" test "$VG_RC" -eq 0
    check_ruleset "switch: back on $VG_BACKEND, the ruleset is identical to before" "$LAB_TMP/applied.rules"
    netns_set_state applied
}

# =================================================================================================================
# 10. A dry run prints the transaction and changes neither the ruleset nor the state. (Needs the applied state, so it
# runs before 9.)

@test "10 dry run: --dry-run start of a new guest prints the transaction and changes nothing" {
    netns_need applied
    sed 's|@FORWARD@||' "$LAB_FIXTURES/domain-vgt-bad-template.xml" | bad_domain - "$VG_XML/vgt-new.xml"
    local state_before
    state_before=$(state_digest)
    vg_hook "$VG_XML/vgt-new.xml" --dry-run qemu vgt-bad start begin -
    if [ "$VG_BACKEND" = nft ]; then
        check "dry-run: --dry-run start of a new guest prints the nft script" grep -q '^add element inet virtgate' "$VG_OUT"
        check "dry-run: the printed script maps to 10.213.0.12 . 22" grep -q -- ': 10.213.0.12 . 22' "$VG_OUT"
    else
        check_output "dry-run: --dry-run start of a new guest prints *nat, *filter, COMMIT" '*nat' '*filter' COMMIT
        check "dry-run: the printed input has the DNAT to 10.213.0.12:22" \
            grep -q -- '--to-destination 10.213.0.12:22' "$VG_OUT"
    fi
    check_ruleset "dry-run: --dry-run start of a new guest changed nothing" "$LAB_TMP/applied.rules"
    expect_no_reply "dry-run: wan -> 198.18.0.1:2224 stays closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2224
    check_eq "dry-run: state directory unchanged (new guest)" "$state_before" "$(state_digest)"
}

@test "10 dry run: stopped and start of applied guests, and VIRTGATE_DRY_RUN=1 through the hook paths, change nothing" {
    netns_need applied
    local applied=$LAB_TMP/applied.rules state_before
    state_before=$(state_digest)
    # an applied guest: there is something to remove
    vg_hook "$VG_XML/vgt-g1-stopped.xml" --dry-run qemu vgt-g1 stopped end -
    if [ "$VG_BACKEND" = nft ]; then
        check "dry-run: --dry-run stopped of g1 prints the nft script" grep -q '^delete element inet virtgate' "$VG_OUT"
    else
        check_output "dry-run: --dry-run stopped of g1 prints *nat, *filter, COMMIT" '*nat' '*filter' COMMIT
    fi
    check_ruleset "dry-run: --dry-run stopped of g1 changed nothing" "$applied"

    # an applied guest started again: nothing to do, nothing changed
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" --dry-run qemu vgt-g1 start begin -
    check_ruleset "dry-run: --dry-run start of the applied g1 changed nothing" "$applied"

    # the environment switch, through the hook paths libvirt uses (argv[0] dispatch)
    VG_EXTRA_ENV=(VIRTGATE_DRY_RUN=1)
    vg_hook_via "$VG_HOOKS/qemu" "$VG_XML/vgt-g2-stopped.xml" vgt-g2 stopped end -
    # Called by libvirt, stdout is not read (and is the migrate/restore filter output): virtgate logs the
    # transaction instead, on stderr with VIRTGATE_SYSLOG=0. Accept it on either stream.
    check "dry-run: VIRTGATE_DRY_RUN=1 stopped of g2 via hooks/qemu prints the transaction (stdout or log)" \
        grep -q -e 'COMMIT' -e 'delete element' "$VG_OUT" "$VG_ERR"
    check_ruleset "dry-run: VIRTGATE_DRY_RUN=1 stopped of g2 changed nothing" "$applied"
    vg_hook_via "$VG_HOOKS/qemu.d/virtgate" "$VG_XML/vgt-g2-stopped.xml" vgt-g2 release end -
    check_ruleset "dry-run: VIRTGATE_DRY_RUN=1 release of g2 via hooks/qemu.d/virtgate changed nothing" "$applied"
    vg_hook_via "$VG_HOOKS/network.d/virtgate" "$LAB_FIXTURES/network-vgtnet.xml" vgtnet stopped end -
    check_ruleset "dry-run: VIRTGATE_DRY_RUN=1 network stopped via hooks/network.d/virtgate changed nothing" "$applied"
    VG_EXTRA_ENV=()
    check_eq "dry-run: state directory unchanged" "$state_before" "$(state_digest)"
    expect_reply "dry-run: wan -> 198.18.0.1:2222 still reaches g1-22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
}

# =================================================================================================================
# 9. Teardown to zero residue. g1 the plain way, g2 and the network through the hook paths (argv[0]).

@test "9 teardown: g1 stopped/release follows what was applied, not its edited metadata" {
    netns_need applied
    netns_set_state dirty
    # g1's metadata was edited while it ran: removal must follow what was applied, not the new metadata.
    vg_hook "$VG_XML/vgt-g1-edited-stopped.xml" qemu vgt-g1 stopped end -
    vg_hook "$LAB_FIXTURES/port-vgt-g1.xml" network vgtnet port-deleted begin -
    vg_hook "$VG_XML/vgt-g1-edited-stopped.xml" qemu vgt-g1 release end -
    check "teardown g1: nat VGD-vgt-g1 removed" lab_chain_absent nat VGD-vgt-g1
    check "teardown g1: filter VGF-vgt-g1 removed" lab_chain_absent filter VGF-vgt-g1
    check "teardown g1: nat VGS-vgt-g1 removed" lab_chain_absent nat VGS-vgt-g1
    check "teardown g1: no rule mentions 10.213.0.11" \
        sh -c "! ip netns exec $LAB_NS_HOST iptables-save | grep -q '10\.213\.0\.11'"
    expect_no_reply "teardown g1: wan -> 198.18.0.1:2222 is closed again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_no_reply "teardown g1: wan -> 198.18.0.1:5353/udp is closed again" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353
    expect_reply "teardown g1: g2's forward 198.18.0.1:2223 still works" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 $LAB_WAN_IP"
    echo g2-network >"$LAB_TMP/netns-state"
}

@test "9 teardown: g2 and the network through the hook paths, back to the baseline exactly" {
    if [ "$(netns_state)" != g2-network ]; then
        # run alone: from the applied state, g1 stopped first as in the test before
        netns_need applied
        netns_set_state dirty
        vg_hook "$VG_XML/vgt-g1-edited-stopped.xml" qemu vgt-g1 stopped end -
        vg_hook "$LAB_FIXTURES/port-vgt-g1.xml" network vgtnet port-deleted begin -
        vg_hook "$VG_XML/vgt-g1-edited-stopped.xml" qemu vgt-g1 release end -
    fi
    netns_set_state dirty
    vg_hook_via "$VG_HOOKS/qemu" "$VG_XML/vgt-g2-stopped.xml" vgt-g2 stopped end -
    vg_hook_via "$VG_HOOKS/network.d/virtgate" "$LAB_FIXTURES/port-vgt-g2.xml" vgtnet port-deleted begin -
    vg_hook_via "$VG_HOOKS/qemu.d/virtgate" "$VG_XML/vgt-g2-stopped.xml" vgt-g2 release end -
    check "teardown g2 (via hooks/qemu): nat VGD-vgt-g2 removed" lab_chain_absent nat VGD-vgt-g2
    check "teardown g2: filter VGF-vgt-g2 removed" lab_chain_absent filter VGF-vgt-g2
    expect_no_reply "teardown g2: wan -> 198.18.0.1:2223 is closed again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223
    if [ "$VG_BACKEND" = nft ]; then
        # The last forward gone, the table stays while its network runs (a guest that starts again
        # only adds elements); it holds the network's gateway and nothing of any guest.
        check "teardown g2: the nft table stays while the network runs" \
            ip netns exec "$LAB_NS_HOST" nft list table inet virtgate
        check_eq "teardown g2: the nft table holds nothing of vgt-g1 or vgt-g2" 0 \
            "$(( $(lab_nft_owner_elements vgt-g1) + $(lab_nft_owner_elements vgt-g2) ))"
        check_eq "teardown g2: what the nft table holds is the network's gateway" "gw4 10.213.0.1" \
            "$(ip netns exec "$LAB_NS_HOST" nft -j list table inet virtgate | jq -r '.nftables[] | select(.set.elem) | .set | "\(.name) \(.elem[] | if type == "object" then .elem.val else . end)"' | sort | tr '\n' ' ' | sed 's/ $//')"
    fi

    vg_hook_via "$VG_HOOKS/network" "$LAB_FIXTURES/network-vgtnet.xml" vgtnet stopped end -
    if [ "$VG_BACKEND" = nft ]; then
        check "teardown: the network stopped, the nft table is gone" \
            sh -c "! ip netns exec $LAB_NS_HOST nft list table inet virtgate >/dev/null 2>&1"
    fi
    check "teardown: no VIRTGATE-* or VG*- chain left" \
        sh -c "! ip netns exec $LAB_NS_HOST iptables-save | grep -qE 'VIRTGATE|VG[NDFS]-'"
    check_ruleset "teardown: ruleset equals the baseline exactly (zero residue)" "$LAB_TMP/baseline.rules"
    netns_set_state baseline
    expect_reply "teardown: g1 egress still works (libvirt + UFW intact)" \
        "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    expect_no_reply "teardown: wan -> 10.213.0.11:22 directly still blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 22
    lab_info "state directory after teardown: $(cd "$VG_STATE" && find . -type f | tr '\n' ' ')"
}

# =================================================================================================================
# 11. virtgate installed while the network was already running, so it never saw the network hook: the network is
# read from libvirt's status file (/run/libvirt/network/<name>.xml, a <networkstatus> document).

@test "11 run dir: a network known only from libvirt's status file" {
    netns_need baseline
    netns_set_state dirty
    {
        echo "<networkstatus>"
        echo "  <class_id bitmap='0-2'/>"
        echo "  <floor sum='0'/>"
        sed -e '/hookData>/d' "$LAB_FIXTURES/network-vgtnet.xml"
        echo "</networkstatus>"
    } >"$VG_NET_RUN/vgtnet.xml"
    vg_hook "$VG_XML/vgt-g1-prepare.xml" qemu vgt-g1 prepare begin -
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 start begin -
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 started begin -
    expect_reply "run dir: wan -> 198.18.0.1:2222 reaches g1-22 (reservation read from the status file)" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    expect_reply "run dir: g1 egress still works" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    check_jump_positions "run dir"
    vg_hook "$VG_XML/vgt-g1-stopped.xml" qemu vgt-g1 stopped end -
    vg_hook "$VG_XML/vgt-g1-stopped.xml" qemu vgt-g1 release end -
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet stopped end -
    rm -f "$VG_NET_RUN/vgtnet.xml"
    check_ruleset "run dir: after g1 stopped+release and network stopped, ruleset equals the baseline" \
        "$LAB_TMP/baseline.rules"
    netns_set_state baseline
}

# =================================================================================================================
# 15-22. Field-report shapes

@test "15 shapes: one guest, overlapping guest ports" {
    shape_begin
    local x=$LAB_TMP/shape-ports.xml t="guest ports"
    shape_domain "$x" vgt-g1 21 '      <vg:forward proto="tcp" host-port="8080" guest-port="80"/>
      <vg:forward proto="tcp" host-port="2222" guest-port="22"/>
      <vg:forward proto="tcp" host-port="8090-8091" guest-port="80-81"/>
      <vg:forward proto="tcp" host-port="8443" guest-port="80" source="198.18.0.0/30"/>'
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x"
    expect_reply "$t: wan -> :8080 reaches g1:80" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 $LAB_WAN_IP"
    expect_reply "$t: wan -> :2222 reaches g1:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    expect_reply "$t: wan -> :8090 (range 8090-8091 -> 80-81) reaches g1:80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8090 "g1-80 $LAB_WAN_IP"
    expect_reply "$t: wan -> :8091 reaches g1:81" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8091 "g1-81 $LAB_WAN_IP"
    expect_reply "$t: wan $LAB_WAN_IP (in source=198.18.0.0/30) -> :8443 reaches g1:80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8443 "g1-80 $LAB_WAN_IP"
    expect_no_reply_from "$t: wan $LAB_WAN_ALT_IP (not in source=) -> :8443 is refused" \
        "$LAB_WAN_ALT_IP" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8443
    expect_reply_from "$t: wan $LAB_WAN_ALT_IP -> :8080 (no source=) reaches g1:80" \
        "$LAB_WAN_ALT_IP" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 $LAB_WAN_ALT_IP"
    expect_reply "$t: hairpin g2 -> :8080 reaches g1:80" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 *"
    expect_reply "$t: hairpin g2 -> :2222 reaches g1:22" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply "$t: hairpin g2 -> :8090 reaches g1:80" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 8090 "g1-80 *"
    expect_reply "$t: hairpin g2 -> :8091 reaches g1:81" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 8091 "g1-81 *"
    expect_no_reply "$t: hairpin g2 (not in source=) -> :8443 is refused" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 8443
    expect_no_reply "$t: routed wan -> 10.213.0.11:81 directly stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 81
    shape_same_again "$t" vgt-g1 "$x"
    shape_guest_down vgt-g1 "$x"
    expect_no_reply "$t: after stopped, wan -> :8091 is closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8091
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

@test "16 shapes: one guest, two ranges overlapping on the guest side" {
    shape_begin
    local x=$LAB_TMP/shape-ranges.xml t="guest ranges" p
    shape_domain "$x" vgt-g1 21 '      <vg:forward proto="tcp" host-port="9000-9010" guest-port="9000-9010"/>
      <vg:forward proto="tcp" host-port="9100-9110" guest-port="9005-9015"/>'
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x"
    for p in 9000 9005 9010; do
        expect_reply "$t: wan -> :$p (9000-9010 -> 9000-9010) reaches g1:$p" \
            "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" "$p" "g1-$p $LAB_WAN_IP"
    done
    expect_reply "$t: wan -> :9100 (9100-9110 -> 9005-9015) reaches g1:9005" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 9100 "g1-9005 $LAB_WAN_IP"
    expect_reply "$t: wan -> :9105 reaches g1:9010" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 9105 "g1-9010 $LAB_WAN_IP"
    expect_reply "$t: wan -> :9110 reaches g1:9015" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 9110 "g1-9015 $LAB_WAN_IP"
    expect_reply "$t: hairpin g2 -> :9105 reaches g1:9010" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 9105 "g1-9010 *"
    expect_reply "$t: hairpin g2 -> :9010 reaches g1:9010" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 9010 "g1-9010 *"
    expect_no_reply "$t: routed wan -> 10.213.0.11:9015 directly stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 9015
    shape_same_again "$t" vgt-g1 "$x"
    shape_guest_down vgt-g1 "$x"
    expect_no_reply "$t: after stopped, wan -> :9105 is closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 9105
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

@test "17 shapes: an allow-list with overlapping entries" {
    shape_begin
    local x=$LAB_TMP/shape-allow.xml t="allow-list"
    shape_domain "$x" vgt-g1 21 '      <vg:forward proto="tcp" host-port="7300" guest-port="80" source="198.18.0.0/30 198.18.0.2/32"/>
      <vg:forward proto="tcp" host-port="7301" guest-port="443" source="198.18.0.2/32 198.18.0.0/16"/>
      <vg:forward proto="tcp" host-port="2222" guest-port="22"/>'
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x"
    expect_reply "$t: wan $LAB_WAN_IP (in both entries) -> :7300 reaches g1:80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7300 "g1-80 $LAB_WAN_IP"
    expect_no_reply_from "$t: wan $LAB_WAN_ALT_IP (in neither) -> :7300 is refused" \
        "$LAB_WAN_ALT_IP" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7300
    expect_reply "$t: wan $LAB_WAN_IP -> :7301 (source=198.18.0.2/32 198.18.0.0/16) reaches g1:443" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7301 "g1-443 $LAB_WAN_IP"
    expect_reply_from "$t: wan $LAB_WAN_ALT_IP (in 198.18.0.0/16 only) -> :7301 reaches g1:443" \
        "$LAB_WAN_ALT_IP" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7301 "g1-443 $LAB_WAN_ALT_IP"
    expect_reply_from "$t: wan $LAB_WAN_ALT_IP -> :2222 (no source=) reaches g1:22" \
        "$LAB_WAN_ALT_IP" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_ALT_IP"
    expect_no_reply "$t: hairpin g2 (in neither) -> :7300 is refused" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 7300
    shape_same_again "$t" vgt-g1 "$x"
    shape_guest_down vgt-g1 "$x"
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

# Two guests ask for the same port: with overlapping allow-lists, and host address against any address (both ways).
# The first keeps it; the second starts (ON_INVALID=warn) with a line naming both guests, and its other forwards work.
@test "18 shapes: allow-list and host-address clashes between two guests" {
    shape_begin
    local x1=$LAB_TMP/shape-clash-g1.xml x2=$LAB_TMP/shape-clash-g2.xml t="clash" p
    shape_domain "$x1" vgt-g1 21 '      <vg:forward proto="tcp" host-port="7000" guest-port="80" source="198.18.0.0/30"/>
      <vg:forward proto="tcp" host-port="7100" guest-port="80" host-address="198.18.0.5"/>
      <vg:forward proto="tcp" host-port="7200" guest-port="443"/>'
    shape_domain "$x2" vgt-g2 22 '      <vg:forward proto="tcp" host-port="2223" guest-port="22"/>
      <vg:forward proto="tcp" host-port="7000" guest-port="22" source="198.18.0.2/32"/>
      <vg:forward proto="tcp" host-port="7100" guest-port="22"/>
      <vg:forward proto="tcp" host-port="7200" guest-port="22" host-address="198.18.0.5"/>'
    VG_CONFIG=$VG_CONF_WARN
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x1"
    shape_guest_up vgt-g2 "$x2"
    check_eq "$t: g2's start exits 0 (ON_INVALID=warn)" 0 "$SHAPE_START_RC"
    for p in 7000 7100 7200; do
        check_stderr_line "$t: g2's start warns about tcp $p, naming vgt-g2 and vgt-g1 ('conflicts with guest')" \
            "$x2.start.err" 'vgt-g2' "conflicts with guest" 'vgt-g1' "$p"
    done
    expect_reply "$t: wan $LAB_WAN_IP -> :7000 still reaches g1:80 (g1 holds it)" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7000 "g1-80 $LAB_WAN_IP"
    expect_reply "$t: wan -> 198.18.0.5:7100 (g1's host-address forward) reaches g1:80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_ALT_IP" 7100 "g1-80 $LAB_WAN_IP"
    expect_no_reply "$t: wan -> 198.18.0.1:7100 (g2's any-address ask, refused) gets nothing" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7100
    expect_reply "$t: wan -> 198.18.0.1:7200 reaches g1:443 (g1 holds any address)" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7200 "g1-443 $LAB_WAN_IP"
    expect_reply "$t: wan -> 198.18.0.5:7200 reaches g1:443, not g2 (g2's host-address ask refused)" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_ALT_IP" 7200 "g1-443 $LAB_WAN_IP"
    expect_reply "$t: g2's other forward wan -> :2223 reaches g2:22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 $LAB_WAN_IP"
    expect_reply "$t: hairpin g1 -> :2223 reaches g2:22" "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    shape_same_again "$t" vgt-g1 "$x1"
    shape_same_again "$t" vgt-g2 "$x2"
    shape_guest_down vgt-g2 "$x2"
    expect_reply "$t: after g2 stopped, wan -> :7000 still reaches g1:80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7000 "g1-80 $LAB_WAN_IP"
    shape_guest_down vgt-g1 "$x1"
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

# g1 forwards a range to g2's address (guest-address=), over g2's own guest port; g2 starts after it. The address is
# leased to g2's MAC, so it is not g1's to point at: g1's range is refused with one line (guest, field, value, why),
# its own forward applies, and g2's forwards are unaffected.
@test "19 shapes: a forward at another guest's address" {
    shape_begin
    local x1=$LAB_TMP/shape-foreign-g1.xml x2=$LAB_TMP/shape-foreign-g2.xml t="other guest's address"
    shape_domain "$x1" vgt-g1 21 '      <vg:forward proto="tcp" host-port="2222" guest-port="22"/>
      <vg:forward proto="tcp" host-port="6100-6102" guest-port="21-23" guest-address="10.213.0.12"/>'
    shape_domain "$x2" vgt-g2 22 '      <vg:forward proto="tcp" host-port="2223" guest-port="22"/>'
    VG_CONFIG=$VG_CONF_WARN
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x1"
    check_eq "$t: g1's start exits 0 (ON_INVALID=warn)" 0 "$SHAPE_START_RC"
    check_eq "$t: g1's start prints exactly one line about $LAB_G2_IP" 1 "$(grep -c -- "$LAB_G2_IP" "$x1.start.err")"
    check_stderr_line "$t: the line names vgt-g1, forward #2 guest-address, the value and 'leased ... to MAC $LAB_G2_MAC'" \
        "$x1.start.err" 'guest "vgt-g1"' 'forward #2 guest-address="10.213.0.12"' 'leased on network "vgtnet" to MAC' "$LAB_G2_MAC"
    shape_guest_up vgt-g2 "$x2"
    expect_reply "$t: g2's own forward wan -> :2223 reaches g2:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 $LAB_WAN_IP"
    expect_no_reply "$t: g1's refused forward wan -> :6101 gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 6101
    expect_no_reply "$t: g1's refused forward wan -> :6100 gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 6100
    expect_reply "$t: g1's own forward wan -> :2222 reaches g1:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    expect_reply "$t: hairpin g1 -> :2223 reaches g2:22" "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    expect_no_reply "$t: hairpin g1 -> :6101 gets nothing" "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 6101
    check_ruleset_lacks "$t: no rule or element holds host ports 6100-6102" '(^|[^0-9])610[0-2]([^0-9]|$)'
    shape_same_again "$t" vgt-g2 "$x2"
    shape_same_again "$t" vgt-g1 "$x1"
    # g1 goes first: removing its elements must leave g2's own
    shape_guest_down vgt-g1 "$x1"
    expect_no_reply "$t: g1 stopped, wan -> :2222 is closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_reply "$t: g1 stopped, g2's wan -> :2223 still reaches g2:22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 $LAB_WAN_IP"
    expect_reply "$t: g1 stopped, hairpin g1's namespace -> :2223 still reaches g2:22" \
        "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    shape_same_again "$t (g1 stopped)" vgt-g2 "$x2"
    shape_guest_down vgt-g2 "$x2"
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

@test "20 shapes: a NIC of type='bridge' on a plain host bridge" {
    shape_begin
    local x=$LAB_TMP/shape-bridge.xml t="bridge NIC"
    shape_domain "$x" vgt-pb 23 "      <vg:forward proto=\"tcp\" host-port=\"7400\" guest-port=\"22\" guest-address=\"$LAB_PB_IP\"/>" \
        bridge "$LAB_BRIDGE2" "$LAB_PB_MAC" vgt-pbh
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    expect_no_reply "$t: before start, wan -> :7400 gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7400
    shape_guest_up vgt-pb "$x"
    expect_reply "$t: wan -> :7400 reaches vgt-pb:22 on $LAB_BRIDGE2, source unchanged" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7400 "pb-22 $LAB_WAN_IP"
    expect_reply "$t: host itself -> :7400 reaches vgt-pb:22" "$LAB_NS_HOST" tcp "$LAB_HOST_WAN_IP" 7400 "pb-22 *"
    expect_no_reply "$t: routed wan -> $LAB_PB_IP:22 directly stays blocked" "$LAB_NS_WAN" tcp "$LAB_PB_IP" 22
    shape_same_again "$t" vgt-pb "$x"
    shape_guest_down vgt-pb "$x"
    expect_no_reply "$t: after stopped, wan -> :7400 is closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7400
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

# An IPv6 guest-address on a network without an IPv6 subnet: refused with one line (guest, field, value, why), the
# guest's other forwards applied, exit 0 under ON_INVALID=warn; the same on both backends.
@test "21 shapes: an IPv6 guest-address on an IPv4-only network" {
    shape_begin
    local x=$LAB_TMP/shape-v6addr.xml t="IPv6 guest-address"
    shape_domain "$x" vgt-g1 21 "      <vg:forward proto=\"tcp\" host-port=\"2222\" guest-port=\"22\"/>
      <vg:forward proto=\"tcp\" host-port=\"7500\" guest-port=\"22\" guest-address=\"$LAB_G1_IP6\"/>"
    VG_CONFIG=$VG_CONF_WARN
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x"
    check_eq "$t: g1's start exits 0 (ON_INVALID=warn)" 0 "$SHAPE_START_RC"
    check_eq "$t: g1's start prints exactly one line about $LAB_G1_IP6" 1 "$(grep -c -- "$LAB_G1_IP6" "$x.start.err")"
    check_stderr_line "$t: the line names the guest, the field guest-address, the value and 'not in a subnet'" \
        "$x.start.err" 'vgt-g1' 'guest-address' "$LAB_G1_IP6" 'not in a subnet'
    expect_reply "$t: g1's other forward wan -> :2222 reaches g1:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    expect_no_reply "$t: wan -> [$LAB_HOST_WAN_IP6]:7500 gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 7500
    expect_no_reply "$t: wan -> $LAB_HOST_WAN_IP:7500 gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7500
    check "$t: no rule or element holds $LAB_G1_IP6 or port 7500" sh -c \
        "! { ip netns exec $LAB_NS_HOST ip6tables-save; ip netns exec $LAB_NS_HOST iptables-save; \
             ip netns exec $LAB_NS_HOST nft list table inet virtgate 2>/dev/null; } | grep -qE 'fd00:213::11|dport 7500|[.] 7500 '"
    shape_same_again "$t" vgt-g1 "$x"
    shape_guest_down vgt-g1 "$x"
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

# Prefix-0 sources (0.0.0.0/0, ::/0): open to every source, and a second event writes nothing (iptables-save leaves
# out "-s 0.0.0.0/0", so a comparison of rule text must not see a difference there).
@test "22 shapes: source=0.0.0.0/0 and ::/0" {
    shape_begin
    local x=$LAB_TMP/shape-prefix0.xml t="prefix-0 source" net=$LAB_FIXTURES/network-vgtnet-dual.xml
    shape_domain "$x" vgt-g1 21 '      <vg:forward proto="tcp" host-port="7600" guest-port="22" source="0.0.0.0/0"/>
      <vg:forward proto="tcp" host-port="7601" guest-port="22" source="::/0"/>
      <vg:forward proto="tcp" host-port="7602" guest-port="80" source="0.0.0.0/0 ::/0"/>'
    shape_net_up "$net"
    shape_guest_up vgt-g1 "$x"
    expect_reply "$t: wan $LAB_WAN_IP -> :7600 reaches g1:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7600 "g1-22 $LAB_WAN_IP"
    expect_reply_from "$t: wan $LAB_WAN_ALT_IP -> :7600 reaches g1:22" \
        "$LAB_WAN_ALT_IP" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7600 "g1-22 $LAB_WAN_ALT_IP"
    expect_reply "$t: hairpin g2 -> :7600 reaches g1:22" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 7600 "g1-22 *"
    expect_reply "$t: wan -> [$LAB_HOST_WAN_IP6]:7601 (::/0) reaches g1:22 over IPv6" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 7601 "g1-22-v6 $LAB_WAN_IP6_PEER"
    expect_no_reply "$t: the IPv6-only forward 7601 is not on $LAB_HOST_WAN_IP" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7601
    expect_reply "$t: wan -> :7602 (0.0.0.0/0 ::/0) reaches g1:80 over IPv4" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7602 "g1-80 $LAB_WAN_IP"
    expect_reply "$t: wan -> [$LAB_HOST_WAN_IP6]:7602 reaches g1:80 over IPv6" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP6" 7602 "g1-80-v6 $LAB_WAN_IP6_PEER"
    shape_same_again "$t" vgt-g1 "$x"
    # the network's own event again, too
    lab_ruleset >"$LAB_TMP/shape-prefix0.rules"
    vg_hook "$net" network vgtnet started begin -
    shape_no_error "$t: network started again"
    check_ruleset "$t: network started again leaves the ruleset identical" "$LAB_TMP/shape-prefix0.rules"
    shape_guest_down vgt-g1 "$x"
    shape_net_down "$net"
    shape_back_to_baseline "$t"
}

# =================================================================================================================
# 23-28. Untrusted metadata

# A forward on a port a host process listens on (here 22, as sshd) is refused; the host's service keeps answering
# from wan and from the guests. A listener that appears after a guest took its port does not take the forward away.
@test "23 security: a forward never hides a host service" {
    shape_begin
    local x=$LAB_TMP/sec-listener.xml xg=$LAB_TMP/sec-listener-good.xml t="host listener" ssh_pid late_pid
    shape_domain "$x" vgt-g1 21 '      <vg:forward proto="tcp" host-port="22"/>
      <vg:forward proto="tcp" host-port="2222" guest-port="22"/>'
    shape_domain "$xg" vgt-g1 21 '      <vg:forward proto="tcp" host-port="2222" guest-port="22"/>'
    VG_CONFIG=$VG_CONF_WARN
    check "$t: the host's sshd stand-in listens on 0.0.0.0:22 in $LAB_NS_HOST" host_serve tcp 22 host-22
    ssh_pid=$HOST_SERVE_PID
    # as on a host running sshd: UFW admits it
    if lab_ufw allow 22/tcp >"$LAB_TMP/ufw.out" 2>&1; then
        lab_ok "$t: ufw allow 22/tcp in $LAB_NS_HOST"
    else
        lab_fail "$t: ufw allow 22/tcp in $LAB_NS_HOST" <"$LAB_TMP/ufw.out"
    fi
    lab_ruleset >"$LAB_TMP/sec-listener-baseline.rules"
    expect_reply "$t: before: wan -> 198.18.0.1:22 reaches the host's service" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 22 "host-22 $LAB_WAN_IP"
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    # the ruleset of g1 with its 2222 forward only: the refused one must add nothing to it
    shape_guest_up vgt-g1 "$xg"
    lab_ruleset >"$LAB_TMP/sec-listener-good.rules"
    shape_guest_down vgt-g1 "$xg"
    shape_guest_up vgt-g1 "$x"
    check_eq "$t: g1's start exits 0 (ON_INVALID=warn)" 0 "$SHAPE_START_RC"
    check_eq "$t: g1's start prints exactly one warning" 1 "$(grep -c 'warning:' "$x.start.err")"
    check_stderr_line "$t: the warning names vgt-g1, forward #1 host-port=\"22\" and the host's socket tcp 0.0.0.0:22" \
        "$x.start.err" 'guest "vgt-g1"' 'forward #1 host-port="22"' 'a host process holds tcp 0.0.0.0:22'
    expect_reply "$t: wan -> 198.18.0.1:22 still reaches the host's service" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 22 "host-22 $LAB_WAN_IP"
    expect_reply "$t: wan -> 198.18.0.5:22 (the host's other address) reaches the host's service" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_ALT_IP" 22 "host-22 $LAB_WAN_IP"
    expect_reply "$t: guest g2 -> 10.213.0.1:22 reaches the host's service" \
        "$LAB_NS_G2" tcp "$LAB_GW" 22 "host-22 $LAB_G2_IP"
    expect_reply "$t: guest g1 -> 198.18.0.1:22 reaches the host's service, not itself" \
        "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 22 "host-22 $LAB_G1_IP"
    expect_reply "$t: g1's other forward wan -> :2222 reaches g1:22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    check_ruleset "$t: the ruleset equals g1's with its 2222 forward only" "$LAB_TMP/sec-listener-good.rules"
    shape_same_again "$t" vgt-g1 "$x"

    # Later: a host process starts on a port the guest already holds. The guest keeps its forward.
    check "$t: a host process starts listening on 0.0.0.0:2222 after g1 took it" host_serve tcp 2222 host-2222
    late_pid=$HOST_SERVE_PID
    sec_started_keeps "$t: listener after the claim" vgt-g1 "$x" 'host-port="2222"'
    expect_reply "$t: after started, wan -> :2222 still reaches g1:22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    shape_same_again "$t (listener after the claim)" vgt-g1 "$x"
    expect_reply "$t: after a second start, wan -> :2222 still reaches g1:22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    check "$t: the late listener stopped" host_unserve "$late_pid" tcp 2222

    shape_guest_down vgt-g1 "$x"
    expect_no_reply "$t: after stopped, wan -> :2222 is closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_reply "$t: after stopped, wan -> 198.18.0.1:22 still reaches the host's service" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 22 "host-22 $LAB_WAN_IP"
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    check_ruleset "$t: everything stopped, the ruleset equals the one before the guest (UFW allows 22)" \
        "$LAB_TMP/sec-listener-baseline.rules"
    if lab_ufw delete allow 22/tcp >"$LAB_TMP/ufw.out" 2>&1; then
        lab_ok "$t: ufw delete allow 22/tcp in $LAB_NS_HOST"
    else
        lab_fail "$t: ufw delete allow 22/tcp in $LAB_NS_HOST" <"$LAB_TMP/ufw.out"
    fi
    check "$t: the host's sshd stand-in stopped" host_unserve "$ssh_pid" tcp 22
    shape_back_to_baseline "$t"
}

# Guests' DNS. A udp 53 forward on any address reaches the guest from wan, but never takes traffic to the network's
# own address (where guests find DNS and DHCP): a host service bound there later answers the other guests. A forward
# that names the gateway address as host-address does take it, and only while no host process is bound there.
@test "24 security: a forward on any address leaves the network's own address alone" {
    shape_begin
    local x1=$LAB_TMP/sec-dns-any.xml x2=$LAB_TMP/sec-dns-gw.xml t="gateway DNS" dns_pid
    shape_domain "$x1" vgt-g1 21 '      <vg:forward proto="udp" host-port="53"/>
      <vg:forward proto="tcp" host-port="2222" guest-port="22"/>'
    shape_domain "$x2" vgt-g1 21 "      <vg:forward proto=\"udp\" host-port=\"53\" host-address=\"$LAB_GW\"/>
      <vg:forward proto=\"tcp\" host-port=\"2222\" guest-port=\"22\"/>"
    VG_CONFIG=$VG_CONF_WARN
    check "$t: no host socket on port 53 in $LAB_NS_HOST before the guest starts" sh -c \
        "! ip netns exec $LAB_NS_HOST ss -Hlun 'sport = :53' | grep -q ."
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x1"
    check_eq "$t: g1's start warns about nothing" 0 "$(grep -c 'warning:' "$x1.start.err")"
    expect_reply "$t: wan -> 198.18.0.1:53/udp reaches g1:53" "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 53 "g1-53-udp $LAB_WAN_IP"
    expect_reply "$t: hairpin g2 -> 198.18.0.1:53/udp reaches g1:53" "$LAB_NS_G2" udp "$LAB_HOST_WAN_IP" 53 "g1-53-udp *"
    expect_no_reply "$t: g2 -> 10.213.0.1:53/udp (the network's own address) does not reach g1" \
        "$LAB_NS_G2" udp "$LAB_GW" 53
    expect_no_reply "$t: g2 -> 10.213.0.1:2222 (the network's own address) does not reach g1's tcp forward either" \
        "$LAB_NS_G2" tcp "$LAB_GW" 2222
    shape_same_again "$t" vgt-g1 "$x1"

    # The host's DNS comes up on the network's address (as libvirt's dnsmasq does), after the guest took port 53.
    check "$t: a host DNS stand-in is bound to $LAB_GW:53/udp" host_serve udp 53 host-dns "$LAB_GW"
    dns_pid=$HOST_SERVE_PID
    expect_reply "$t: g2 -> 10.213.0.1:53/udp reaches the host's DNS, not g1" "$LAB_NS_G2" udp "$LAB_GW" 53 "host-dns $LAB_G2_IP*"
    expect_reply "$t: wan -> 198.18.0.1:53/udp still reaches g1:53" "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 53 "g1-53-udp $LAB_WAN_IP"
    sec_started_keeps "$t: DNS bound after the claim" vgt-g1 "$x1" 'host-port="53"'
    expect_reply "$t: after started, wan -> 198.18.0.1:53/udp still reaches g1:53" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 53 "g1-53-udp $LAB_WAN_IP"

    # A forward that names the gateway address: refused while the host's DNS is bound there.
    shape_guest_down vgt-g1 "$x1"
    shape_guest_up vgt-g1 "$x2"
    check_eq "$t: g1's start with host-address=$LAB_GW exits 0 (ON_INVALID=warn)" 0 "$SHAPE_START_RC"
    check_stderr_line "$t: the warning names vgt-g1, forward #1 host-port=\"53\" and the host's socket udp $LAB_GW:53" \
        "$x2.start.err" 'guest "vgt-g1"' 'forward #1 host-port="53"' "a host process holds udp $LAB_GW:53"
    expect_reply "$t: g2 -> 10.213.0.1:53/udp still reaches the host's DNS" "$LAB_NS_G2" udp "$LAB_GW" 53 "host-dns $LAB_G2_IP*"
    expect_reply "$t: g1's other forward wan -> :2222 reaches g1:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    check "$t: the host's DNS stand-in stopped" host_unserve "$dns_pid" udp 53

    # No host DNS: the forward naming the gateway address applies, and takes exactly that address.
    vg_hook "$x2" qemu vgt-g1 start begin -
    cp "$VG_ERR" "$x2.start.err"
    shape_no_error "vgt-g1 start (no host DNS)"
    check_eq "$t: without the host's DNS, g1's start with host-address=$LAB_GW warns about nothing" 0 \
        "$(grep -c 'warning:' "$x2.start.err")"
    expect_reply "$t: g2 -> 10.213.0.1:53/udp (forward with host-address=$LAB_GW) reaches g1:53" \
        "$LAB_NS_G2" udp "$LAB_GW" 53 "g1-53-udp *"
    expect_no_reply "$t: wan -> 198.18.0.1:53/udp (not the forward's address) gets nothing" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 53
    shape_same_again "$t (host-address=$LAB_GW)" vgt-g1 "$x2"
    shape_guest_down vgt-g1 "$x2"
    expect_no_reply "$t: after stopped, g2 -> 10.213.0.1:53/udp gets nothing" "$LAB_NS_G2" udp "$LAB_GW" 53
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

# A guest-address that is not the guest's: another guest's reservation, the network's own address, an address outside
# the network. Each is refused with one line; nothing is opened for it; the guest's own forward works.
@test "25 security: a forward points only at its own guest" {
    shape_begin
    local x=$LAB_TMP/sec-addr.xml xg=$LAB_TMP/sec-addr-good.xml t="guest-address" p
    shape_domain "$xg" vgt-g2 22 '      <vg:forward proto="tcp" host-port="2223" guest-port="22"/>'
    shape_domain "$x" vgt-g2 22 "      <vg:forward proto=\"tcp\" host-port=\"2223\" guest-port=\"22\"/>
      <vg:forward proto=\"tcp\" host-port=\"7701\" guest-port=\"22\" guest-address=\"$LAB_G1_IP\"/>
      <vg:forward proto=\"tcp\" host-port=\"7702\" guest-port=\"22\" guest-address=\"$LAB_GW\"/>
      <vg:forward proto=\"tcp\" host-port=\"7703\" guest-port=\"22\" guest-address=\"192.0.2.44\"/>"
    VG_CONFIG=$VG_CONF_WARN
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    # the ruleset of g2 with its own forward only: the refused ones must add nothing to it
    shape_guest_up vgt-g2 "$xg"
    lab_ruleset >"$LAB_TMP/sec-addr-good.rules"
    shape_guest_down vgt-g2 "$xg"

    shape_guest_up vgt-g2 "$x"
    check_eq "$t: g2's start exits 0 (ON_INVALID=warn)" 0 "$SHAPE_START_RC"
    check_eq "$t: g2's start prints exactly three warnings" 3 "$(grep -c 'warning:' "$x.start.err")"
    check_stderr_line "$t: g1's reserved address: the line names vgt-g2, forward #2 guest-address, the value, 'reserved ... for MAC'" \
        "$x.start.err" 'guest "vgt-g2"' "forward #2 guest-address=\"$LAB_G1_IP\"" 'reserved on network "vgtnet" for MAC' "$LAB_G1_MAC"
    check_stderr_line "$t: the bridge (gateway) address: the line names vgt-g2, forward #3 guest-address, the value, 'the host's own address'" \
        "$x.start.err" 'guest "vgt-g2"' "forward #3 guest-address=\"$LAB_GW\"" "the host's own address on network \"vgtnet\""
    check_stderr_line "$t: an address outside the network: the line names vgt-g2, forward #4 guest-address, the value, 'not in a subnet'" \
        "$x.start.err" 'guest "vgt-g2"' 'forward #4 guest-address="192.0.2.44"' 'not in a subnet of network "vgtnet"'
    for p in 7701 7702 7703; do
        expect_no_reply "$t: wan -> :$p (refused forward) gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" "$p"
    done
    expect_no_reply "$t: hairpin g1 -> :7701 gets nothing" "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 7701
    expect_reply "$t: g2's own forward wan -> :2223 reaches g2:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 $LAB_WAN_IP"
    expect_reply "$t: hairpin g1 -> :2223 reaches g2:22" "$LAB_NS_G1" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    check_ruleset_lacks "$t: no rule or element names $LAB_G1_IP, 192.0.2.44 or ports 7701-7703" \
        '10\.213\.0\.11([^0-9]|$)|192\.0\.2\.44|(^|[^0-9])770[1-3]([^0-9]|$)'
    check_ruleset "$t: the ruleset equals g2's with its own forward only" "$LAB_TMP/sec-addr-good.rules"
    shape_same_again "$t" vgt-g2 "$x"
    shape_guest_down vgt-g2 "$x"
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

# Two long names that shared one owner id under the old 32-bit scheme. Each keeps its own chains or elements and its
# own forward; stopping one leaves the other's.
@test "26 security: names that collided under the old 32-bit id" {
    shape_begin
    local a=$SEC_COLLIDE_A b=$SEC_COLLIDE_B xa=$LAB_TMP/sec-collide-a.xml xb=$LAB_TMP/sec-collide-b.xml t="name collision"
    local ida idb
    check_eq "$t: $a and $b share the old id" "$(sec_old_id "$a")" "$(sec_old_id "$b")"
    ida=$(sec_id "$a")
    idb=$(sec_id "$b")
    check "$t: their ids differ now ($ida, $idb)" test "$ida" != "$idb"
    shape_domain "$xa" "$a" 31 '      <vg:forward proto="tcp" host-port="7801" guest-port="22"/>' network "$LAB_G1_MAC" vgt-g1h
    shape_domain "$xb" "$b" 32 '      <vg:forward proto="tcp" host-port="7802" guest-port="22"/>' network "$LAB_G2_MAC" vgt-g2h
    VG_CONFIG=$VG_CONF_WARN
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up "$a" "$xa"
    shape_guest_up "$b" "$xb"
    check_eq "$t: $b's start warns about nothing (no conflict with $a)" 0 "$(grep -c 'warning:' "$xb.start.err")"
    expect_reply "$t: wan -> :7801 reaches $a (g1:22)" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7801 "g1-22 $LAB_WAN_IP"
    expect_reply "$t: wan -> :7802 reaches $b (g2:22)" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7802 "g2-22 $LAB_WAN_IP"
    if [ "$VG_BACKEND" = nft ]; then
        check_eq "$t: one nft element owned by $ida" 1 "$(lab_nft_owner_elements "$ida")"
        check_eq "$t: one nft element owned by $idb" 1 "$(lab_nft_owner_elements "$idb")"
        check "$t: $ida's element is port 7801, $idb's is 7802" sh -c \
            "ip netns exec $LAB_NS_HOST nft list table inet virtgate | grep -F 'comment \"$ida\"' | grep -q 7801 &&
             ip netns exec $LAB_NS_HOST nft list table inet virtgate | grep -F 'comment \"$idb\"' | grep -q 7802"
    else
        check "$t: nat VGD-$ida exists" lab_chain_exists nat "VGD-$ida"
        check "$t: nat VGD-$idb exists" lab_chain_exists nat "VGD-$idb"
        check "$t: VGD-$ida forwards 7801, VGD-$idb forwards 7802" sh -c \
            "ip netns exec $LAB_NS_HOST iptables-save -t nat | grep -F -- '-A VGD-$ida ' | grep -q 'dport 7801' &&
             ip netns exec $LAB_NS_HOST iptables-save -t nat | grep -F -- '-A VGD-$idb ' | grep -q 'dport 7802'"
    fi
    check_ruleset_lacks "$t: nothing carries the old shared id" 'vgt_collision_p|8a34de67'
    shape_same_again "$t" "$a" "$xa"
    shape_same_again "$t" "$b" "$xb"
    shape_guest_down "$a" "$xa"
    expect_no_reply "$t: $a stopped, wan -> :7801 is closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7801
    expect_reply "$t: $a stopped, wan -> :7802 still reaches $b" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7802 "g2-22 $LAB_WAN_IP"
    if [ "$VG_BACKEND" = nft ]; then
        check_eq "$t: $a stopped, $idb still owns its element" 1 "$(lab_nft_owner_elements "$idb")"
    else
        check "$t: $a stopped, VGD-$ida is gone and VGD-$idb stays" sh -c \
            "! ip netns exec $LAB_NS_HOST iptables -t nat -S VGD-$ida >/dev/null 2>&1 &&
             ip netns exec $LAB_NS_HOST iptables -t nat -S VGD-$idb >/dev/null 2>&1"
    fi
    shape_same_again "$t ($a stopped)" "$b" "$xb"
    shape_guest_down "$b" "$xb"
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

# Bounded work. A wide range that keeps its ports, with 12 sources, is a handful of kernel objects (nft: one interval
# element per source), and admits exactly its sources at both edges. A guest with 300 forwards gets the first 256; the
# rest are refused in at most 21 lines.
@test "27 security: bounded work per guest (a wide range with 12 sources; 300 forwards)" {
    shape_begin
    local x=$LAB_TMP/sec-wide.xml x3=$LAB_TMP/sec-300.xml t="limits" i p sources="" forwards="" ok=yes n
    for i in $(seq 1 11); do sources="$sources 203.0.113.$i/32"; done
    sources="$LAB_WAN_IP/32$sources"
    shape_domain "$x" vgt-g1 21 "      <vg:forward proto=\"tcp\" host-port=\"20000-60000\" source=\"$sources\"/>"
    if [ ! -f "$LAB_TMP/limits-services" ]; then
        lab_serve "$LAB_NS_G1" tcp 20000 g1-20000 || ok=no
        lab_serve "$LAB_NS_G1" tcp 60000 g1-60000 || ok=no
        touch "$LAB_TMP/limits-services"
    fi
    check "$t: g1 listens on 20000 and 60000" test "$ok" = yes
    VG_CONFIG=$VG_CONF_WARN
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x"
    check_eq "$t: 20000-60000 with 12 sources: g1's start warns about nothing" 0 "$(grep -c 'warning:' "$x.start.err")"
    if [ "$VG_BACKEND" = nft ]; then
        check_eq "$t: g1 owns 12 nft elements (one interval per source, not 40,001 x 12)" 12 "$(lab_nft_owner_elements vgt-g1)"
        n=$(lab_nft_lines | grep -cvE '^nft (rule|chain) ' || true)
        check "$t: virtgate's whole nft table holds at most 16 elements ($n)" test "$n" -le 16
    else
        check_eq "$t: VGD-vgt-g1 holds 12 DNAT rules for 20000:60000" 12 \
            "$(ip netns exec "$LAB_NS_HOST" iptables-save -t nat | grep -c -- '^-A VGD-vgt-g1 .*--dport 20000:60000 .*-j DNAT')"
    fi
    for p in 20000 60000; do
        expect_reply "$t: wan $LAB_WAN_IP (a source) -> :$p reaches g1:$p" \
            "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" "$p" "g1-$p $LAB_WAN_IP"
        expect_no_reply_from "$t: wan $LAB_WAN_ALT_IP (not a source) -> :$p is refused" \
            "$LAB_WAN_ALT_IP" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" "$p"
    done
    shape_same_again "$t (wide range)" vgt-g1 "$x"
    shape_guest_down vgt-g1 "$x"
    expect_no_reply "$t: after stopped, wan -> :20000 is closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 20000

    for i in $(seq 1 300); do
        forwards="$forwards      <vg:forward proto=\"tcp\" host-port=\"$((30000 + i))\" guest-port=\"22\"/>
"
    done
    shape_domain "$x3" vgt-g1 21 "${forwards%$'\n'}"
    shape_guest_up vgt-g1 "$x3"
    check_eq "$t: 300 forwards: g1's start exits 0 (ON_INVALID=warn)" 0 "$SHAPE_START_RC"
    n=$(grep -c 'warning:' "$x3.start.err" || true)
    check "$t: 300 forwards: at most 21 warning lines for the event ($n)" test "$n" -le 21
    check_stderr_line "$t: 300 forwards: forward #257 is refused, 'more than 256 forwards'" \
        "$x3.start.err" 'guest "vgt-g1"' 'forward #257=' '30257' 'more than 256 forwards'
    check_stderr_line "$t: 300 forwards: one line counts the 24 problems not shown" \
        "$x3.start.err" '24 more problems' 'not shown'
    check "$t: 300 forwards: no line about forward #277 or later" sh -c \
        "! grep -qE 'forward #(27[7-9]|28[0-9]|29[0-9]|300)=' '$x3.start.err'"
    if [ "$VG_BACKEND" = nft ]; then
        check_eq "$t: 300 forwards: g1 owns 256 nft elements" 256 "$(lab_nft_owner_elements vgt-g1)"
    else
        check_eq "$t: 300 forwards: VGD-vgt-g1 holds 256 DNAT rules" 256 \
            "$(ip netns exec "$LAB_NS_HOST" iptables-save -t nat | grep -c -- '^-A VGD-vgt-g1 .*-j DNAT')"
    fi
    expect_reply "$t: 300 forwards: wan -> :30001 (#1) reaches g1:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 30001 "g1-22 $LAB_WAN_IP"
    expect_reply "$t: 300 forwards: wan -> :30256 (#256) reaches g1:22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 30256 "g1-22 $LAB_WAN_IP"
    expect_no_reply "$t: 300 forwards: wan -> :30257 (#257) gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 30257
    expect_no_reply "$t: 300 forwards: wan -> :30300 (#300) gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 30300
    shape_same_again "$t (300 forwards)" vgt-g1 "$x3"
    shape_guest_down vgt-g1 "$x3"
    expect_no_reply "$t: after stopped, wan -> :30001 is closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 30001
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    shape_back_to_baseline "$t"
}

# HOST_PORTS (here from VIRTGATE_HOST_PORTS, on every event): a host port outside it is refused.
@test "28 security: HOST_PORTS=8000-8999 refuses a host port outside it" {
    shape_begin
    local x=$LAB_TMP/sec-hostports.xml t="HOST_PORTS"
    shape_domain "$x" vgt-g1 21 '      <vg:forward proto="tcp" host-port="7000" guest-port="80"/>
      <vg:forward proto="tcp" host-port="8080" guest-port="80"/>'
    VG_CONFIG=$VG_CONF_WARN
    VG_EXTRA_ENV=(VIRTGATE_HOST_PORTS=8000-8999)
    shape_net_up "$LAB_FIXTURES/network-vgtnet.xml"
    shape_guest_up vgt-g1 "$x"
    check_eq "$t: g1's start exits 0 (ON_INVALID=warn)" 0 "$SHAPE_START_RC"
    check_eq "$t: g1's start prints exactly one warning" 1 "$(grep -c 'warning:' "$x.start.err")"
    check_stderr_line "$t: the warning names vgt-g1, forward #1 host-port=\"7000\" and HOST_PORTS" \
        "$x.start.err" 'guest "vgt-g1"' 'forward #1 host-port="7000"' 'HOST_PORTS'
    expect_no_reply "$t: wan -> :7000 (outside HOST_PORTS) gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 7000
    expect_reply "$t: wan -> :8080 (inside HOST_PORTS) reaches g1:80" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 $LAB_WAN_IP"
    check_ruleset_lacks "$t: no rule or element holds host port 7000" '(^|[^0-9])7000([^0-9]|$)'
    shape_same_again "$t" vgt-g1 "$x"
    shape_guest_down vgt-g1 "$x"
    shape_net_down "$LAB_FIXTURES/network-vgtnet.xml"
    VG_EXTRA_ENV=()
    shape_back_to_baseline "$t"
}
