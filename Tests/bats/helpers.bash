# shellcheck shell=bash
# helpers.bash: the network-namespace lab shared by virtgate's bats suites (netns.bats, admin.bats, coexistence.bats).
#
# Running a suite (as root; every file runs in a private mount namespace of its own):
#
#   sudo unshare --mount --propagation private -- bats --tap Tests/bats/netns.bats
#   sudo VIRTGATE_BACKEND=iptables unshare --mount --propagation private -- bats --tap Tests/bats/netns.bats
#   sudo unshare --mount --propagation private -- bats --filter '^12 IPv6: back' Tests/bats/netns.bats   # one test
#
# Environment: VIRTGATE = the binary under test (default <repo>/.build/debug/virtgate; a private copy is tested, so a
# rebuild during the run changes nothing); VIRTGATE_BACKEND = nft (default) or iptables, the backend of every
# virtgate run. Not root, not in a private mount namespace, or a tool missing: setup_file fails with one line saying
# so (a failure, never a skip).
#
# Everything here works only inside network namespaces named vgt-*: the machine's own network namespace, firewall and
# files are never changed (UFW runs on private copies of its files, bind-mounted in the private mount namespace; see
# lab_mount_private_ufw). teardown_file checks that the machine's UFW files, ip_forward and root-namespace rulesets
# are what they were before the file ran.
#
# Topology (all addresses are test ranges; nothing leaves the namespaces):
#
#   vgt-g1 (eth0 10.213.0.11) --vgt-g1h--+
#                                        +-- vgt-br0 10.213.0.1/24 [vgt-host] vgt-hw 198.18.0.1/30 + 198.18.0.5/32
#   vgt-g2 (eth0 10.213.0.12) --vgt-g2h--+                                |
#                                                                   vgt-wh 198.18.0.2/30 [vgt-wan]
#
#   vgt-pb (eth0 10.214.0.13) --vgt-pbh--- vgt-br1 10.214.0.1/24 [vgt-host]      vgt-wh + 198.18.1.2/32 [vgt-wan]
#                                          (lab_add_shape_topology, optional)
#
# vgt-host plays the libvirt host: ip_forward=1, libvirt 9-style iptables rules for a NAT network on vgt-br0, and a
# real UFW (FORWARD policy DROP). vgt-wan is "the internet"; it also routes 10.213.0.0/24 straight at vgt-host, so
# that routed (non-forwarded) access to the guests can be shown to stay blocked.
#
# A suite uses it like this:
#
#   load helpers
#   setup_file() {
#       lab_setup_file [EXTRA_TOPOLOGY_FUNCTION...]   # lab_begin, topology, UFW + libvirt rules, virtgate's env
#       lab_serve "$LAB_NS_G1" tcp 22 g1-22 ...        # services: background, closed fd 3 and 9, stopped by PID
#   }
#   teardown_file() { lab_teardown_file; }           # services, namespaces, mounts; then "the machine is unchanged"
#
# A suite that needs another order composes the steps lab_setup_file is made of (lab_begin, lab_create_topology,
# lab_firewall_up, lab_prepare_virtgate_env). State set in setup_file reaches the tests through exported variables
# (tests run in processes of their own): LAB_TMP is exported, and every path below LAB_TMP is derived from it when a
# test loads this file (lab_paths).
#
# Assertions: the old harness's checks (check, check_eq, expect_reply, check_ruleset, vg_hook, ...) keep their names
# and arguments; each one that fails fails the test with the check's description and a diagnosis (bats-support's
# fail). Every assertion, passed or failed, is also counted in $LAB_RESULTS; teardown_file prints the totals as a TAP
# comment ("# lab: N assertions passed, M failed").

bats_load_library bats-support
bats_load_library bats-assert
bats_load_library bats-file
load private_mount

LAB_BATS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_REPO=$(cd "$LAB_BATS_DIR/../.." && pwd)
LAB_FIXTURES=${LAB_FIXTURES:-$LAB_BATS_DIR/fixtures/lab}

LAB_NS_HOST=vgt-host
LAB_NS_WAN=vgt-wan
LAB_NS_G1=vgt-g1
LAB_NS_G2=vgt-g2
LAB_NAMESPACES="$LAB_NS_HOST $LAB_NS_WAN $LAB_NS_G1 $LAB_NS_G2"
# The backend every virtgate run of a suite uses (VIRTGATE_BACKEND from the caller, else nft).
VG_BACKEND=${VIRTGATE_BACKEND:-nft}

LAB_BRIDGE=vgt-br0
LAB_SUBNET=10.213.0.0/24
LAB_GW=10.213.0.1
LAB_G1_IP=10.213.0.11
LAB_G2_IP=10.213.0.12
LAB_G1_MAC=52:54:00:00:00:11
LAB_G2_MAC=52:54:00:00:00:12
LAB_HOST_WAN_IP=198.18.0.1     # the host's "public" address
LAB_HOST_ALT_IP=198.18.0.5     # a second host address, for host-address="" restricted forwards
LAB_WAN_IP=198.18.0.2          # the outside client
# IPv6 beside it: documentation prefix on the wan link, a ULA subnet on the bridge (routed, never NATed).
LAB_SUBNET6=fd00:213::/64
LAB_GW6=fd00:213::1
LAB_G1_IP6=fd00:213::11
LAB_G2_IP6=fd00:213::12
LAB_HOST_WAN_IP6=2001:db8:18::1
LAB_WAN_IP6=2001:db8:18::2
# socat prints IPv6 peers in full, bracketed (escaped: these are glob patterns)
LAB_WAN_IP6_PEER="\\[2001:0db8:0018:0000:0000:0000:0000:0002\\]"
LAB_GW6_PEER="\\[fd00:0213:0000:0000:0000:0000:0000:0001\\]"
LAB_G1_IP6_PEER="\\[fd00:0213:0000:0000:0000:0000:0000:0011\\]"

# Field-report shapes (netns.bats, scenarios 15-22): a second host bridge that is no libvirt network, with a guest
# namespace vgt-pb on it (a NIC of type='bridge'), and a second wan address that no allow-list of the shapes names.
# Created by lab_add_shape_topology (pass it to lab_setup_file). Always in the list of namespaces to remove.
LAB_NS_PB=vgt-pb
LAB_EXTRA_NAMESPACES="$LAB_NS_PB"
LAB_BRIDGE2=vgt-br1
LAB_SUBNET2=10.214.0.0/24
LAB_GW2=10.214.0.1
LAB_PB_IP=10.214.0.13
LAB_PB_MAC=52:54:00:00:01:13
LAB_WAN_ALT_IP=198.18.1.2      # a second outside client, in none of the shapes' allow-lists

# Tools the lab needs. A missing one is a failure, never a skip. A suite may add to it before setup_file.
LAB_TOOLS="ip iptables iptables-save iptables-restore ip6tables-save ufw socat ss unshare mount umount timeout flock
sha256sum sysctl diff nft jq"

# The lock every namespace suite takes (the namespace names are fixed), and the file that lists the services a run
# started (PID and start time), so that a run killed outright has its services stopped by the next one.
LAB_LOCK=/tmp/vgt-lab.lock
LAB_PIDFILE=/tmp/vgt-lab.pids

VG_EXTRA_ENV=()   # extra environment for virtgate calls, e.g. (VIRTGATE_DRY_RUN=1); tests set it themselves
VG_OUT=/dev/null
VG_ERR=/dev/null
VG_RC=0

# ---------------------------------------------------------------------------------------------------------------
# Results. Every assertion appends one line to $LAB_RESULTS ("ok" or "not ok"), so teardown_file can count them.

lab_ok() {
    [ -z "${LAB_RESULTS:-}" ] || echo "ok" >>"$LAB_RESULTS"
}

# lab_not_ok DESCRIPTION: count a failed assertion and say which (the caller then returns 1; lab_fail does both).
lab_not_ok() {
    [ -z "${LAB_RESULTS:-}" ] || echo "not ok" >>"$LAB_RESULTS"
    echo "not ok - $*" >&2
}

# lab_fail DESCRIPTION <DIAGNOSTICS: a failed assertion: counted, the description and the diagnostics (stdin, always
# redirected: </dev/null for none) on stderr, and bats-support's fail, which returns 1 and so fails the test.
lab_fail() {
    [ -z "${LAB_RESULTS:-}" ] || echo "not ok" >>"$LAB_RESULTS"
    { printf 'not ok - %s\n' "$1"; sed 's/^/#   /'; } | fail
}

# Informational lines are not checks: they document behaviour we do not require (e.g. br_netfilter on). They go to
# the TAP stream as comments.
lab_info() {
    echo "# info: $*" >&3
}

# Print a file (or stdin) as diagnostic lines (shown when the test fails).
lab_diag() {
    sed 's/^/#   /' "$@" >&2
}

lab_count() {
    # $1 = "ok" or "not ok"; exact whole-line match
    if [ -f "${LAB_RESULTS:-}" ]; then
        grep -cx "$1" "$LAB_RESULTS" || true
    else
        echo 0
    fi
}

# check DESCRIPTION COMMAND...: the command must succeed.
check() {
    local desc=$1
    shift
    if "$@"; then
        lab_ok "$desc"
    else
        lab_fail "$desc" </dev/null
    fi
}

# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
    if [ "$2" = "$3" ]; then
        lab_ok "$1"
    else
        printf "expected: '%s'\nobserved: '%s'\n" "$2" "$3" | lab_fail "$1"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Prerequisites

lab_require_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    lab_fail "prerequisite: must run as root (network namespaces, iptables): sudo unshare --mount --propagation private -- bats $(lab_this_file)" </dev/null
}

lab_this_file() {
    local f=${BATS_TEST_FILENAME:-Tests/bats/FILE.bats}
    echo "${f#"$LAB_REPO/"}"
}


lab_require_private_mount_namespace() {
    in_private_mount_namespace && return 0
    lab_fail "prerequisite: run in a private mount namespace: sudo unshare --mount --propagation private -- bats $(lab_this_file)" </dev/null
}

lab_require_tools() {
    local t missing=""
    for t in $LAB_TOOLS; do
        command -v "$t" >/dev/null 2>&1 || missing="$missing $t"
    done
    if [ -n "$missing" ]; then
        lab_fail "prerequisite: missing tools:$missing" </dev/null
        return 1
    fi
    # UFW's state directory: /usr/lib/ufw (with /lib -> usr/lib) or /lib/ufw.
    if [ ! -d /usr/lib/ufw ] && [ ! -d /lib/ufw ]; then
        lab_fail "prerequisite: UFW's /usr/lib/ufw not found" </dev/null
        return 1
    fi
    return 0
}

# A checksum of UFW's real files: the test must leave them untouched.
lab_ufw_checksum() {
    find /etc/ufw /etc/default/ufw /usr/lib/ufw /lib/ufw -type f -print0 2>/dev/null | sort -z |
        xargs -0 sha256sum | sha256sum | cut -d' ' -f1
}

# The root namespace's iptables ruleset (read only, counters stripped): the test must leave it untouched.
lab_root_ruleset() {
    iptables-save 2>/dev/null | sed -e 's/\[[0-9]*:[0-9]*\]//' | grep -v '^#' || true
}

# The root namespace's nftables ruleset (read only: listing creates nothing), counters stripped.
lab_root_nft_ruleset() {
    nft list ruleset 2>/dev/null | sed -e 's/counter packets [0-9]* bytes [0-9]*/counter/' || true
}

# lab_take_lock: the namespace names are fixed and shared by every suite: one lab at a time. Waits for a running one
# (on fd 9, held by the bats process of this file until it exits; lab_teardown_file closes it) rather than fail.
lab_take_lock() {
    exec 9>"$LAB_LOCK"
    if ! flock -n 9; then
        echo "# another vgt lab run holds $LAB_LOCK; waiting up to 15 minutes" >&3
        if ! flock -w 900 9; then
            lab_fail "prerequisite: no other vgt lab run in progress ($LAB_LOCK is held)" </dev/null
            return 1
        fi
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Namespaces. They are created in this file's private mount namespace; /run/netns/vgt-* files that a killed run left
# behind are removed by the next one (lab_delete_namespaces), and its services stopped by PID (lab_stop_services).

# Kill every process in one of our namespaces (by PID, from `ip netns pids`) and delete it.
lab_delete_namespace() {
    local ns=$1 pid
    ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$ns" || return 0
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        kill "$pid" 2>/dev/null || true
    done
    sleep 0.2
    for pid in $(ip netns pids "$ns" 2>/dev/null); do
        kill -9 "$pid" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
}

lab_delete_namespaces() {
    local ns
    for ns in $LAB_NAMESPACES $LAB_EXTRA_NAMESPACES; do
        lab_delete_namespace "$ns"
    done
}

lab_namespaces_left() {
    local ns
    for ns in $LAB_NAMESPACES $LAB_EXTRA_NAMESPACES; do
        ip netns list 2>/dev/null | awk '{print $1}' | grep -x -- "$ns" || true
    done
}

# Build the topology described at the top of this file. Returns non-zero on any error.
lab_create_topology() {
    local ns
    for ns in $LAB_NAMESPACES; do
        ip netns add "$ns" || return 1
        ip -n "$ns" link set lo up || return 1
    done

    # host <-> wan link; a second host address for host-address restricted forwards
    ip -n "$LAB_NS_HOST" link add vgt-hw type veth peer name vgt-wh netns "$LAB_NS_WAN" || return 1
    ip -n "$LAB_NS_HOST" addr add "$LAB_HOST_WAN_IP/30" dev vgt-hw || return 1
    ip -n "$LAB_NS_HOST" addr add "$LAB_HOST_ALT_IP/32" dev vgt-hw || return 1
    ip -n "$LAB_NS_HOST" link set vgt-hw up || return 1
    ip -n "$LAB_NS_WAN" addr add "$LAB_WAN_IP/30" dev vgt-wh || return 1
    ip -n "$LAB_NS_WAN" link set vgt-wh up || return 1
    ip -n "$LAB_NS_HOST" route add default via "$LAB_WAN_IP" || return 1
    # wan reaches the second host address, and routes the guest subnet straight at the host (the "no blanket
    # accept" checks need a path to the guests that does not go through a forward)
    ip -n "$LAB_NS_WAN" route add "$LAB_HOST_ALT_IP/32" via "$LAB_HOST_WAN_IP" || return 1
    ip -n "$LAB_NS_WAN" route add "$LAB_SUBNET" via "$LAB_HOST_WAN_IP" || return 1
    # the same over IPv6 (nodad: the addresses are usable at once)
    ip -n "$LAB_NS_HOST" addr add "$LAB_HOST_WAN_IP6/64" dev vgt-hw nodad || return 1
    ip -n "$LAB_NS_WAN" addr add "$LAB_WAN_IP6/64" dev vgt-wh nodad || return 1
    ip -n "$LAB_NS_HOST" -6 route add default via "$LAB_WAN_IP6" || return 1
    ip -n "$LAB_NS_WAN" -6 route add "$LAB_SUBNET6" via "$LAB_HOST_WAN_IP6" || return 1

    # the guest bridge, like libvirt's virbr0
    ip -n "$LAB_NS_HOST" link add "$LAB_BRIDGE" type bridge stp_state 0 forward_delay 0 || return 1
    ip -n "$LAB_NS_HOST" addr add "$LAB_GW/24" dev "$LAB_BRIDGE" || return 1
    ip -n "$LAB_NS_HOST" addr add "$LAB_GW6/64" dev "$LAB_BRIDGE" nodad || return 1
    ip -n "$LAB_NS_HOST" link set "$LAB_BRIDGE" up || return 1

    # two "guests": a veth whose host end (vgt-g1h, like vnet0) is a bridge port
    lab_add_guest "$LAB_NS_G1" vgt-g1h "$LAB_G1_IP" "$LAB_G1_MAC" "$LAB_G1_IP6" || return 1
    lab_add_guest "$LAB_NS_G2" vgt-g2h "$LAB_G2_IP" "$LAB_G2_MAC" "$LAB_G2_IP6" || return 1

    # routing in the host namespace only (sysctls under /proc/sys/net are per network namespace)
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.ipv4.ip_forward=1 || return 1
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.ipv6.conf.all.forwarding=1 || return 1
    return 0
}

# lab_add_shape_topology: the additions of the field-report shapes (see LAB_NS_PB above). No libvirt rules, no
# virtgate network for vgt-br1: only UFW's FORWARD DROP stands between wan and vgt-pb. wan routes 10.214.0.0/24
# straight at the host, so that routed (not forwarded) access to vgt-pb can be shown to stay blocked.
lab_add_shape_topology() {
    ip netns add "$LAB_NS_PB" || return 1
    ip -n "$LAB_NS_PB" link set lo up || return 1
    ip -n "$LAB_NS_HOST" link add "$LAB_BRIDGE2" type bridge stp_state 0 forward_delay 0 || return 1
    ip -n "$LAB_NS_HOST" addr add "$LAB_GW2/24" dev "$LAB_BRIDGE2" || return 1
    ip -n "$LAB_NS_HOST" link set "$LAB_BRIDGE2" up || return 1
    ip -n "$LAB_NS_HOST" link add vgt-pbh type veth peer name eth0 netns "$LAB_NS_PB" || return 1
    ip -n "$LAB_NS_HOST" link set vgt-pbh master "$LAB_BRIDGE2" || return 1
    ip -n "$LAB_NS_HOST" link set vgt-pbh up || return 1
    ip -n "$LAB_NS_PB" link set eth0 address "$LAB_PB_MAC" || return 1
    ip -n "$LAB_NS_PB" addr add "$LAB_PB_IP/24" dev eth0 || return 1
    ip -n "$LAB_NS_PB" link set eth0 up || return 1
    ip -n "$LAB_NS_PB" route add default via "$LAB_GW2" || return 1
    ip -n "$LAB_NS_WAN" route add "$LAB_SUBNET2" via "$LAB_HOST_WAN_IP" || return 1
    # the second client address; the host reaches it through its default route (via wan)
    ip -n "$LAB_NS_WAN" addr add "$LAB_WAN_ALT_IP/32" dev vgt-wh || return 1
    return 0
}

# lab_add_guest NS HOST_SIDE_IFNAME IP MAC [IPV6]
lab_add_guest() {
    local ns=$1 port=$2 ip=$3 mac=$4 ip6=${5:-}
    ip -n "$LAB_NS_HOST" link add "$port" type veth peer name eth0 netns "$ns" || return 1
    ip -n "$LAB_NS_HOST" link set "$port" master "$LAB_BRIDGE" || return 1
    ip -n "$LAB_NS_HOST" link set "$port" up || return 1
    ip -n "$ns" link set eth0 address "$mac" || return 1
    ip -n "$ns" addr add "$ip/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
    ip -n "$ns" route add default via "$LAB_GW" || return 1
    if [ -n "$ip6" ]; then
        ip -n "$ns" addr add "$ip6/64" dev eth0 nodad || return 1
        ip -n "$ns" -6 route add default via "$LAB_GW6" || return 1
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# UFW, on private copies of its files (bind mounts in this file's private mount namespace, undone in teardown_file).

LAB_UFW_MOUNTS="/etc/ufw /etc/default/ufw /usr/lib/ufw"

lab_mount_private_ufw() {
    local d=$LAB_TMP/ufw f
    mkdir -p "$d/etc" "$d/default" "$d/lib" || return 1
    cp -a /etc/ufw/. "$d/etc/" || return 1
    # Start from the package's pristine rules, init hooks and ENABLED=no, so whatever is customised on this machine
    # (user rules, a before.init/after.init hook) does not leak into the lab.
    for f in before.rules before6.rules after.rules after6.rules before.init after.init user.rules user6.rules \
        ufw.conf; do
        if [ -e "/usr/share/ufw/$f" ]; then
            cp -L "/usr/share/ufw/$f" "$d/etc/$f" || return 1
        fi
    done
    chmod 640 "$d/etc/"*.rules || return 1
    cp /etc/default/ufw "$d/default/ufw" || return 1
    # What the lab relies on, whatever this machine's defaults are: FORWARD DROP, UFW leaves foreign chains alone.
    sed -i -e 's/^DEFAULT_FORWARD_POLICY=.*/DEFAULT_FORWARD_POLICY="DROP"/' \
        -e 's/^MANAGE_BUILTINS=.*/MANAGE_BUILTINS=no/' "$d/default/ufw" || return 1
    cp -a /usr/lib/ufw/. "$d/lib/" || return 1

    # recorded before mounting, so that teardown undoes a half-done mount too
    echo yes >"$LAB_TMP/ufw-mounted"
    mount --bind "$d/etc" /etc/ufw || return 1
    mount --bind "$d/default/ufw" /etc/default/ufw || return 1
    mount --bind "$d/lib" /usr/lib/ufw || return 1
    return 0
}

# lab_unmount_private_ufw: undo lab_mount_private_ufw (another file may run in the same mount namespace after this one).
lab_unmount_private_ufw() {
    local m
    [ -f "${LAB_TMP:-}/ufw-mounted" ] || return 0
    for m in $LAB_UFW_MOUNTS; do
        umount "$m" 2>/dev/null || true
    done
    rm -f "$LAB_TMP/ufw-mounted"
}

# ufw inside vgt-host. TESTSTATE=1 keeps ufw's lock file in its (private) state directory instead of /run.
lab_ufw() {
    ip netns exec "$LAB_NS_HOST" env TESTSTATE=1 ufw "$@"
}

# ---------------------------------------------------------------------------------------------------------------
# libvirt 9.0's own rules for a NAT network (iptables backend), as `virsh net-start` creates them: libvirt inserts
# its chain jumps at position 1 of the built-in chains (so they sit above UFW's appended jumps) and fills its chains
# with -I as well (so the order below is the final order).
lab_add_libvirt_rules() {
    local br=$LAB_BRIDGE net=$LAB_SUBNET
    ip netns exec "$LAB_NS_HOST" iptables-restore -w --noflush <<RULES
*filter
:LIBVIRT_INP - [0:0]
:LIBVIRT_OUT - [0:0]
:LIBVIRT_FWO - [0:0]
:LIBVIRT_FWI - [0:0]
:LIBVIRT_FWX - [0:0]
-I INPUT 1 -j LIBVIRT_INP
-I FORWARD 1 -j LIBVIRT_FWO
-I FORWARD 1 -j LIBVIRT_FWI
-I FORWARD 1 -j LIBVIRT_FWX
-I OUTPUT 1 -j LIBVIRT_OUT
-A LIBVIRT_INP -i $br -p udp -m udp --dport 53 -j ACCEPT
-A LIBVIRT_INP -i $br -p tcp -m tcp --dport 53 -j ACCEPT
-A LIBVIRT_INP -i $br -p udp -m udp --dport 67 -j ACCEPT
-A LIBVIRT_INP -i $br -p tcp -m tcp --dport 67 -j ACCEPT
-A LIBVIRT_OUT -o $br -p udp -m udp --dport 53 -j ACCEPT
-A LIBVIRT_OUT -o $br -p tcp -m tcp --dport 53 -j ACCEPT
-A LIBVIRT_OUT -o $br -p udp -m udp --dport 68 -j ACCEPT
-A LIBVIRT_OUT -o $br -p tcp -m tcp --dport 68 -j ACCEPT
-A LIBVIRT_FWI -d $net -o $br -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A LIBVIRT_FWI -o $br -j REJECT --reject-with icmp-port-unreachable
-A LIBVIRT_FWO -s $net -i $br -j ACCEPT
-A LIBVIRT_FWO -i $br -j REJECT --reject-with icmp-port-unreachable
-A LIBVIRT_FWX -i $br -o $br -j ACCEPT
COMMIT
*nat
:LIBVIRT_PRT - [0:0]
-I POSTROUTING 1 -j LIBVIRT_PRT
-A LIBVIRT_PRT -s $net -d 224.0.0.0/24 -j RETURN
-A LIBVIRT_PRT -s $net -d 255.255.255.255/32 -j RETURN
-A LIBVIRT_PRT -s $net ! -d $net -p tcp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s $net ! -d $net -p udp -j MASQUERADE --to-ports 1024-65535
-A LIBVIRT_PRT -s $net ! -d $net -j MASQUERADE
COMMIT
*mangle
:LIBVIRT_PRT - [0:0]
-I POSTROUTING 1 -j LIBVIRT_PRT
-A LIBVIRT_PRT -o $br -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill
COMMIT
RULES
}

# lab_firewall_up: private UFW enabled in vgt-host (FORWARD DROP), then libvirt's rules above UFW's (as on a real
# host, where UFW starts at boot and libvirt inserts its jumps at position 1), br_netfilter off in vgt-host (it is
# built in here and on by default in every new namespace; the common case of a host without Docker has it off).
lab_firewall_up() {
    if lab_mount_private_ufw; then
        lab_ok "lab: private copies of UFW's files mounted"
    else
        lab_fail "lab: private copies of UFW's files mounted" </dev/null
        return 1
    fi
    if lab_ufw --force enable >"$LAB_TMP/ufw.out" 2>&1; then
        lab_ok "lab: ufw --force enable in $LAB_NS_HOST"
    else
        lab_fail "lab: ufw --force enable in $LAB_NS_HOST" <"$LAB_TMP/ufw.out"
        return 1
    fi
    if lab_add_libvirt_rules; then
        lab_ok "lab: libvirt 9 style rules (LIBVIRT_FWX/FWI/FWO/INP/OUT/PRT) added"
    else
        lab_fail "lab: libvirt 9 style rules (LIBVIRT_FWX/FWI/FWO/INP/OUT/PRT) added" </dev/null
        return 1
    fi
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0 ||
        return 1
}

# ---------------------------------------------------------------------------------------------------------------
# Rulesets of vgt-host

# The host namespace's ruleset, counters and comments stripped: what "identical" and "baseline" compare.
lab_ruleset() {
    # IPv6: only virtgate's lines (UFW's own IPv6 chains settle on their first reload), marked as such.
    ip netns exec "$LAB_NS_HOST" sh -c 'iptables-save -t filter; iptables-save -t nat; iptables-save -t mangle;
        { ip6tables-save -t filter; ip6tables-save -t nat; } | grep -E "^[*]|VIRTGATE|VG[NMDFS]-" | sed "s/^/ip6 /"' |
        sed -e 's/\[[0-9]*:[0-9]*\]//' | grep -v '^#' || true
    lab_nft_lines
}

# lab_nft_lines: virtgate's nft table, one line per element, rule and chain (nft's own listing wraps several
# elements per line), so that diffs and greps see single objects.
lab_nft_lines() {
    ip netns exec "$LAB_NS_HOST" nft -j list table inet virtgate 2>/dev/null | jq -r '.nftables[] |
        if (.map // .set) then ((.map // .set) as $s | ($s.elem // [])[] | "nft \($s.name) \(tojson)")
        elif .rule then "nft rule \(.rule.chain) \(.rule.expr | tojson)"
        elif .chain then "nft chain \(.chain.name)"
        else empty end' || true
}

# lab_check_nft_hooks TAG: with the nft backend, DNAT lives in base chains of virtgate's own table (no UFW or libvirt
# event touches it): its prerouting and output hooks must jump to the forwards chain, and iptables nat must hold no
# virtgate jump at all.
lab_check_nft_hooks() {
    local tag=$1
    check "$tag: nft prerouting and output chains jump to the forwards chain" sh -c \
        "ip netns exec $LAB_NS_HOST nft list table inet virtgate | grep -c 'fib daddr type local jump forwards' | grep -qx 3"
    check "$tag: no virtgate jumps in iptables nat (nft backend)" sh -c \
        "! ip netns exec $LAB_NS_HOST iptables-save -t nat | grep -q VIRTGATE"
}

# check_jump_positions TAG: virtgate's jumps are the first rule of their built-in chains (with nft: its base
# chains' jumps, lab_check_nft_hooks).
check_jump_positions() {
    local tag=$1 rule
    check_eq "$tag: first rule of filter FORWARD is the VIRTGATE-FWD jump" "-A FORWARD -j VIRTGATE-FWD" \
        "$(lab_first_rule filter FORWARD)"
    if [ "$VG_BACKEND" = nft ]; then
        lab_check_nft_hooks "$tag"
        return
    fi
    rule=$(lab_first_rule nat PREROUTING)
    check "$tag: first rule of nat PREROUTING jumps to VIRTGATE-DNAT for --dst-type LOCAL ('$rule')" \
        sh -c "echo '$rule' | grep -q -- '--dst-type LOCAL' && echo '$rule' | grep -q -- '-j VIRTGATE-DNAT'"
    rule=$(lab_first_rule nat OUTPUT)
    check "$tag: first rule of nat OUTPUT jumps to VIRTGATE-DNAT, not for 127.0.0.0/8 ('$rule')" \
        sh -c "echo '$rule' | grep -q -- '! -d 127.0.0.0/8' && echo '$rule' | grep -q -- '--dst-type LOCAL' &&
               echo '$rule' | grep -q -- '-j VIRTGATE-DNAT'"
    check_eq "$tag: first rule of nat POSTROUTING is the VIRTGATE-POST jump" "-A POSTROUTING -j VIRTGATE-POST" \
        "$(lab_first_rule nat POSTROUTING)"
}

# state directory content, without the lock file, to prove a dry run writes nothing
state_digest() {
    find "$VG_STATE" -type f ! -name '*lock*' -print0 | sort -z | xargs -0 -r sha256sum
}

# lab_nft_owner_elements GUEST: how many elements of virtgate's nft table the guest owns.
lab_nft_owner_elements() {
    { ip netns exec "$LAB_NS_HOST" nft list table inet virtgate 2>/dev/null || true; } | grep -o "comment \"$1\"" | wc -l
}

# check_ruleset DESCRIPTION EXPECTED_FILE: the current ruleset must equal the saved one exactly.
check_ruleset() {
    local desc=$1 expected=$2 now=$LAB_TMP/ruleset.now
    lab_ruleset >"$now"
    if diff -u "$expected" "$now" >"$LAB_TMP/ruleset.diff"; then
        lab_ok "$desc"
    else
        { echo "diff expected -> observed (first 80 lines):"; head -n 80 "$LAB_TMP/ruleset.diff"; } | lab_fail "$desc"
    fi
}

# check_ruleset_lacks DESCRIPTION ERE: no line of the ruleset (lab_ruleset: iptables, ip6tables' virtgate lines and
# virtgate's nft table, one object a line) matches ERE.
check_ruleset_lacks() {
    local desc=$1 re=$2 hits
    hits=$(lab_ruleset | grep -E -- "$re" || true)
    if [ -z "$hits" ]; then
        lab_ok "$desc"
    else
        { echo "matching lines (first 10):"; printf '%s\n' "$hits" | head -n 10; } | lab_fail "$desc"
    fi
}

# First rule of a built-in chain (line 2 of `iptables -S`, line 1 being the policy).
lab_first_rule() {
    local table=$1 chain=$2
    ip netns exec "$LAB_NS_HOST" iptables -w -t "$table" -S "$chain" | sed -n 2p
}

lab_chain_exists() {
    local table=$1 chain=$2
    ip netns exec "$LAB_NS_HOST" iptables -w -t "$table" -S "$chain" >/dev/null 2>&1
}

lab_chain_absent() {
    ! lab_chain_exists "$@"
}

lab_ipt() {
    ip netns exec "$LAB_NS_HOST" iptables -w "$@"
}

# ---------------------------------------------------------------------------------------------------------------
# Services: socat listeners that answer with "LABEL PEER-ADDRESS" and close, so a client learns which service it
# reached and which source address the service saw (SNAT or not). They run in the background with fds 3 (bats'
# output) and 9 (the lab lock) closed; each is listed in $LAB_PIDFILE with its start time and stopped by PID.

# lab_pid_start PID: the process's start time (field 22 of /proc/PID/stat), which tells a PID apart from its reuse.
lab_pid_start() {
    awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null || true
}

# lab_remember_pid PID: list a background process of this run in $LAB_PIDFILE.
lab_remember_pid() {
    echo "$1 $(lab_pid_start "$1")" >>"$LAB_PIDFILE"
}

# lab_last_pid: the PID of the service the last lab_serve/lab_serve6/host_serve started.
lab_last_pid() {
    tail -n 1 "$LAB_PIDFILE" 2>/dev/null | cut -d' ' -f1
}

# lab_stop_pid PID: stop one listed process (only if it is still the process that was listed) and unlist it.
lab_stop_pid() {
    local pid=$1 start
    start=$(awk -v p="$pid" '$1 == p { print $2 }' "$LAB_PIDFILE" 2>/dev/null | tail -n 1)
    if [ -n "$start" ] && [ "$(lab_pid_start "$pid")" = "$start" ]; then
        kill "$pid" 2>/dev/null || true
    fi
    if [ -f "$LAB_PIDFILE" ]; then
        awk -v p="$pid" '$1 != p' "$LAB_PIDFILE" >"$LAB_PIDFILE.new" && mv "$LAB_PIDFILE.new" "$LAB_PIDFILE"
    fi
    return 0
}

# lab_stop_services: stop every listed process (this run's, or a killed run's), by PID.
lab_stop_services() {
    local pid start
    [ -f "$LAB_PIDFILE" ] || return 0
    while read -r pid start; do
        [ -n "$pid" ] || continue
        if [ -n "$start" ] && [ "$(lab_pid_start "$pid")" = "$start" ]; then
            kill "$pid" 2>/dev/null || true
        fi
    done <"$LAB_PIDFILE"
    rm -f "$LAB_PIDFILE"
}

# UDP services and probes. A UDP-RECVFROM,fork responder whose command exits without reading the datagram can lose
# its answer on a busy machine: socat's child then fails to pass the datagram on (EPIPE, "E write(6, ..., 6): Broken
# pipe") and exits without relaying the answer the command wrote; and socat's -t (0.5 s by default) bounds how long
# either end waits once its own side is at EOF. So nothing here depends on timing: the responder's command reads the
# datagram to its end (LAB_UDP_DRAIN, with -t5), and the probe ends as soon as the answer's line has come (`head -n1`
# as socat's other end; -T3 ends a probe nobody answers), tried once more after a short pause if nothing came.
LAB_UDP_DRAIN="cat >/dev/null"

# lab_serve NS PROTO PORT LABEL (LABEL without ":" or ",": socat would parse them as address syntax)
lab_serve() {
    local ns=$1 proto=$2 port=$3 label=$4
    if [ "$proto" = tcp ]; then
        ip netns exec "$ns" socat "TCP-LISTEN:$port,fork,reuseaddr" SYSTEM:"echo $label \$SOCAT_PEERADDR" \
            </dev/null >/dev/null 2>&1 3>&- 9>&- &
    else
        ip netns exec "$ns" socat -t5 "UDP-RECVFROM:$port,fork,reuseaddr" SYSTEM:"echo $label \$SOCAT_PEERADDR; $LAB_UDP_DRAIN" \
            </dev/null >/dev/null 2>&1 3>&- 9>&- &
    fi
    # `ip netns exec` execs socat, so $! is socat's own PID
    lab_remember_pid $!
    lab_wait_listen "$ns" "$proto" "$port"
}

# lab_serve6 NS PROTO PORT LABEL: the same service over IPv6 only, beside an IPv4 one on the same port.
lab_serve6() {
    local ns=$1 proto=$2 port=$3 label=$4
    if [ "$proto" = tcp ]; then
        ip netns exec "$ns" socat "TCP6-LISTEN:$port,ipv6only=1,fork,reuseaddr" SYSTEM:"echo $label \$SOCAT_PEERADDR" \
            </dev/null >/dev/null 2>&1 3>&- 9>&- &
    else
        ip netns exec "$ns" socat -t5 "UDP6-RECVFROM:$port,ipv6only=1,fork,reuseaddr" SYSTEM:"echo $label \$SOCAT_PEERADDR; $LAB_UDP_DRAIN" \
            </dev/null >/dev/null 2>&1 3>&- 9>&- &
    fi
    lab_remember_pid $!
    lab_wait_listen "$ns" "$proto" "$port" 6
}

# lab_wait_listen NS PROTO PORT [6]: wait up to 5 s for a listening socket (IPv6 with "6").
lab_wait_listen() {
    local ns=$1 proto=$2 port=$3 v=${4:-} i flag=-Hltn
    [ "$proto" = udp ] && flag=-Hlun
    for i in $(seq 50); do
        if ip netns exec "$ns" ss $flag$v "sport = :$port" | grep -q .; then
            return 0
        fi
        sleep 0.1
    done
    echo "# lab: ${v:+IPv6 }$proto listener on port $port in $ns did not start" >&2
    return 1
}

# lab_probe NS PROTO ADDR PORT: print the first line the service answered, nothing if no answer. Every client has a
# connect timeout, an idle timeout and an overall timeout.
# LAB_PROBE_BIND (set by expect_reply_from/expect_no_reply_from): the client's source address, for tcp.
lab_probe() {
    local ns=$1 proto=$2 addr=$3 port=$4
    local v="" bind=${LAB_PROBE_BIND:+,bind=$LAB_PROBE_BIND} reply="" f try
    case $addr in *:*) v=6; addr="[$addr]" ;; esac   # IPv6: socat's TCP6/UDP6 with a bracketed address
    if [ "$proto" = tcp ]; then
        ip netns exec "$ns" timeout 5 socat -T2 -u "TCP$v:$addr:$port,connect-timeout=2$bind" - 2>/dev/null 3>&- |
            head -n1
        return 0
    fi
    # UDP has no handshake: a lost datagram looks like "closed"; one more try tells them apart.
    f=$(mktemp "$LAB_TMP/udp-probe.XXXXXX")
    for try in 1 2; do
        [ "$try" = 1 ] || sleep 0.5
        ip netns exec "$ns" timeout 5 socat -T3 -t0 "UDP$v:$addr:$port" SYSTEM:"echo probe; head -n1 >$f" \
            </dev/null >/dev/null 2>&1 3>&- 9>&- || true
        reply=$(head -n1 "$f")
        [ -z "$reply" ] || break
    done
    rm -f "$f"
    echo "$reply"
}

# expect_reply DESCRIPTION NS PROTO ADDR PORT PATTERN: the answer must match the glob PATTERN.
expect_reply() {
    local desc=$1 ns=$2 proto=$3 addr=$4 port=$5 pattern=$6 reply
    reply=$(lab_probe "$ns" "$proto" "$addr" "$port")
    # shellcheck disable=SC2053  # PATTERN is a glob on purpose
    if [ -n "$reply" ] && [[ $reply == $pattern ]]; then
        lab_ok "$desc (got '$reply')"
    else
        echo "$ns -> $proto $addr:$port${LAB_PROBE_BIND:+ from $LAB_PROBE_BIND}: expected '$pattern', observed '$reply'" |
            lab_fail "$desc"
    fi
}

# expect_no_reply DESCRIPTION NS PROTO ADDR PORT: no service may answer.
expect_no_reply() {
    local desc=$1 ns=$2 proto=$3 addr=$4 port=$5 reply
    reply=$(lab_probe "$ns" "$proto" "$addr" "$port")
    if [ -z "$reply" ]; then
        lab_ok "$desc"
    else
        echo "$ns -> $proto $addr:$port${LAB_PROBE_BIND:+ from $LAB_PROBE_BIND}: expected no answer, observed '$reply'" |
            lab_fail "$desc"
    fi
}

# expect_reply_from DESCRIPTION BIND NS tcp ADDR PORT PATTERN: expect_reply from the client address BIND.
expect_reply_from() {
    local desc=$1 LAB_PROBE_BIND=$2
    shift 2
    expect_reply "$desc" "$@"
}

# expect_no_reply_from DESCRIPTION BIND NS tcp ADDR PORT: expect_no_reply from the client address BIND.
expect_no_reply_from() {
    local desc=$1 LAB_PROBE_BIND=$2
    shift 2
    expect_no_reply "$desc" "$@"
}

# info_reply DESCRIPTION NS PROTO ADDR PORT: report what happens, without a verdict.
info_reply() {
    local desc=$1 ns=$2 proto=$3 addr=$4 port=$5 reply
    reply=$(lab_probe "$ns" "$proto" "$addr" "$port")
    lab_info "$desc: ${reply:-no answer}"
}

# ---------------------------------------------------------------------------------------------------------------
# Domain XML shapes. Fixtures hold the XML as libvirt passes it at qemu `start` (NIC resolved: bridge=, portid=,
# <target dev>). lab_shape_unresolved derives the shape libvirt 9.0 passes at `prepare` (NIC not yet resolved) and
# at `stopped`/`release` (no bridge=, no portid=, no <target dev>; at stopped/release there is no id= either).
# lab_shape_unresolved IN OUT [keep-id]
lab_shape_unresolved() {
    local in=$1 out=$2 keep_id=${3:-}
    if [ -n "$keep_id" ]; then
        sed -e "s/ portid='[^']*'//" -e "s/ bridge='[^']*'//" -e "/<target dev=/d" "$in" >"$out"
    else
        sed -e "s/^<domain type='qemu' id='[0-9]*'>/<domain type='qemu'>/" \
            -e "s/ portid='[^']*'//" -e "s/ bridge='[^']*'//" -e "/<target dev=/d" "$in" >"$out"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Driving virtgate exactly as libvirt does: argv `hook <driver> <object> <op> <subop> <extra>`, XML on stdin, a
# scrubbed environment (libvirt passes only LC_ALL, PATH, HOME, USER, LOGNAME), run inside the host namespace. The
# VIRTGATE_* overrides keep virtgate away from the machine's /run, /etc and /var.

# lab_paths: every path below $LAB_TMP (called by lab_begin, and when a test loads this file).
lab_paths() {
    LAB_RESULTS=$LAB_TMP/results
    VG_STATE=$LAB_TMP/state
    VG_NET_RUN=$LAB_TMP/network-run
    VG_NET_ETC=$LAB_TMP/network-etc
    VG_DNSMASQ=$LAB_TMP/dnsmasq
    VG_HOOKS=$LAB_TMP/hooks
    VG_XML=$LAB_TMP/xml
    VG_CONF_WARN=$LAB_TMP/virtgate-warn.conf
    VG_CONF_REFUSE=$LAB_TMP/virtgate-refuse.conf
    VG_CONFIG=$VG_CONF_WARN
    VIRTGATE=$LAB_TMP/virtgate
}
if [ -n "${LAB_TMP:-}" ]; then lab_paths; fi

lab_prepare_virtgate_env() {
    mkdir -p "$VG_STATE" "$VG_NET_RUN" "$VG_NET_ETC" "$VG_DNSMASQ" "$VG_HOOKS/qemu.d" "$VG_HOOKS/network.d" \
        "$VG_XML" || return 1

    echo "ON_INVALID=warn" >"$VG_CONF_WARN"
    echo "ON_INVALID=refuse" >"$VG_CONF_REFUSE"

    # g1's address comes from the network's <dhcp><host> reservation; g2 has none: its address comes from the
    # dnsmasq lease file, as libvirt's dnsmasq writes it.
    cat >"$VG_DNSMASQ/$LAB_BRIDGE.status" <<LEASES
[
  {
    "ip-address": "$LAB_G2_IP",
    "mac-address": "$LAB_G2_MAC",
    "hostname": "vgt-g2",
    "expiry-time": $(($(date +%s) + 3600))
  }
]
LEASES

    # The binary installed the ways libvirt finds hooks: /etc/libvirt/hooks/{qemu,network} and the .d directories.
    ln -s "$VIRTGATE" "$VG_HOOKS/qemu" || return 1
    ln -s "$VIRTGATE" "$VG_HOOKS/network" || return 1
    ln -s "$VIRTGATE" "$VG_HOOKS/qemu.d/virtgate" || return 1
    ln -s "$VIRTGATE" "$VG_HOOKS/network.d/virtgate" || return 1

    # The unresolved XML shapes (prepare; stopped/release), derived from the fixtures.
    local g
    for g in vgt-g1 vgt-g2 vgt-bad; do
        lab_shape_unresolved "$LAB_FIXTURES/domain-$g.xml" "$VG_XML/$g-prepare.xml" keep-id || return 1
        lab_shape_unresolved "$LAB_FIXTURES/domain-$g.xml" "$VG_XML/$g-stopped.xml" || return 1
    done
    lab_shape_unresolved "$LAB_FIXTURES/domain-vgt-g1-edited.xml" "$VG_XML/vgt-g1-edited-stopped.xml" || return 1
    return 0
}

# vg_exec PROGRAM STDIN_FILE ARGS...: run PROGRAM (virtgate or a hook symlink to it) like libvirt. Sets VG_RC;
# stdout and stderr go to $VG_OUT and $VG_ERR. Also sets bats' status, output and stderr, for bats-assert
# (assert_success, assert_output, ...).
vg_exec() {
    local prog=$1 stdin=$2
    shift 2
    if ip netns exec "$LAB_NS_HOST" timeout 30 env -i \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root USER=root LOGNAME=root \
        VIRTGATE_CONFIG="$VG_CONFIG" VIRTGATE_STATE_DIR="$VG_STATE" VIRTGATE_NETWORK_RUN_DIR="$VG_NET_RUN" \
        VIRTGATE_NETWORK_ETC_DIR="$VG_NET_ETC" VIRTGATE_DNSMASQ_DIR="$VG_DNSMASQ" VIRTGATE_SYSLOG=0 \
        VIRTGATE_BACKEND="$VG_BACKEND" \
        "${VG_EXTRA_ENV[@]}" "$prog" "$@" <"$stdin" >"$VG_OUT" 2>"$VG_ERR" 3>&- 9>&-; then
        VG_RC=0
    else
        VG_RC=$?
    fi
    # shellcheck disable=SC2034  # bats-assert reads them
    status=$VG_RC output=$(cat "$VG_OUT" 2>/dev/null || true) stderr=$(cat "$VG_ERR" 2>/dev/null || true)
    return 0
}

# vg_run ARGS...: `virtgate ARGS` (stdin /dev/null), output in $LAB_TMP/vg.out and vg.err; no verdict.
vg_run() {
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    vg_exec "$VIRTGATE" /dev/null "$@"
}

# vg_hook STDIN_FILE HOOK-ARGS...: `virtgate hook HOOK-ARGS`, checked to exit 0.
vg_hook() {
    local stdin=$1
    shift
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    vg_exec "$VIRTGATE" "$stdin" hook "$@"
    if [ "$VG_RC" -eq 0 ]; then
        lab_ok "virtgate hook $* exits 0"
    else
        lab_fail "virtgate hook $* exits 0 (exit $VG_RC)" <"$VG_ERR"
    fi
}

# vg_hook_via PROGRAM STDIN_FILE ARGS...: the same through a hook path (argv[0] dispatch), checked to exit 0.
vg_hook_via() {
    local prog=$1 stdin=$2
    shift 2
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    vg_exec "$prog" "$stdin" "$@"
    if [ "$VG_RC" -eq 0 ]; then
        lab_ok "${prog#"$LAB_TMP/"} $* exits 0"
    else
        lab_fail "${prog#"$LAB_TMP/"} $* exits 0 (exit $VG_RC)" <"$VG_ERR"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# setup_file / teardown_file

# lab_begin: prerequisites, a temp directory, the private copy of virtgate, the lab lock, a snapshot of what the
# machine must still be at the end, and the leftovers of a killed earlier run removed.
lab_begin() {
    LAB_TMP=$(mktemp -d /tmp/vgt-lab.XXXXXX) || return 1
    export LAB_TMP
    local virtgate=${VIRTGATE:-$LAB_REPO/.build/debug/virtgate}
    lab_paths
    : >"$LAB_RESULTS"

    lab_require_root || return 1
    lab_require_private_mount_namespace || return 1
    lab_require_tools || return 1
    if [ ! -x "$virtgate" ]; then
        lab_fail "prerequisite: virtgate binary $virtgate exists and is executable (VIRTGATE=...)" </dev/null
        return 1
    fi
    # Test a private copy: the binary may be rebuilt while the suite runs, and one run must test one build.
    echo "# virtgate under test: $virtgate ($(stat -c '%y' "$virtgate"), sha256 $(sha256sum <"$virtgate" | cut -c1-16)), backend $VG_BACKEND" >&3
    cp "$virtgate" "$VIRTGATE" || return 1

    lab_take_lock || return 1

    lab_ufw_checksum >"$LAB_TMP/machine.ufw"
    lab_root_ruleset >"$LAB_TMP/machine.rules"
    lab_root_nft_ruleset >"$LAB_TMP/machine.nft"
    sysctl -n net.ipv4.ip_forward >"$LAB_TMP/machine.forward"

    # Leftovers of a killed earlier run: only our own vgt-* namespaces and the processes listed as ours.
    lab_stop_services
    lab_delete_namespaces
}

# lab_setup_file [FUNCTION...]: lab_begin, the topology (then each FUNCTION, e.g. lab_add_shape_topology), UFW and
# libvirt's rules, virtgate's directories. The suite starts its services after it.
lab_setup_file() {
    local f
    lab_begin || return 1
    echo yes >"$LAB_TMP/namespaces-created"
    if ! lab_create_topology; then
        lab_fail "lab: create namespaces, links and addresses" </dev/null
        return 1
    fi
    for f in "$@"; do
        if ! "$f"; then
            case $f in
                lab_add_shape_topology)
                    lab_fail "lab: plain bridge $LAB_BRIDGE2 with $LAB_NS_PB, second wan address $LAB_WAN_ALT_IP" </dev/null ;;
                *) lab_fail "lab: $f" </dev/null ;;
            esac
            return 1
        fi
    done
    lab_ok "lab: namespaces $LAB_NAMESPACES${*:+ $LAB_EXTRA_NAMESPACES} created"
    lab_firewall_up || return 1
    if ! lab_prepare_virtgate_env; then
        lab_fail "lab: virtgate directories, config, lease file, hook symlinks" </dev/null
        return 1
    fi
}

# lab_teardown_file: services, namespaces, mounts, then the machine's own state compared with the snapshot of
# lab_begin; the assertion totals as a TAP comment; the temp directory and the lock released. Safe after a setup_file
# that failed half way. Returns non-zero if the machine changed.
lab_teardown_file() {
    local failed=0
    lab_stop_services
    if [ -f "${LAB_TMP:-}/namespaces-created" ]; then
        lab_delete_namespaces
    fi
    lab_unmount_private_ufw

    if [ -f "${LAB_TMP:-}/machine.ufw" ]; then
        # Things the test must never change on the machine itself.
        check_eq "machine: no vgt- namespaces left" "" "$(lab_namespaces_left)" || failed=1
        check_eq "machine: UFW's real files (/etc/ufw, /etc/default/ufw, /usr/lib/ufw) unchanged" \
            "$(cat "$LAB_TMP/machine.ufw")" "$(lab_ufw_checksum)" || failed=1
        check_eq "machine: root namespace ip_forward unchanged" "$(cat "$LAB_TMP/machine.forward")" \
            "$(sysctl -n net.ipv4.ip_forward)" || failed=1
        if lab_root_ruleset | diff "$LAB_TMP/machine.rules" - >"$LAB_TMP/machine.diff"; then
            lab_ok "machine: root namespace iptables ruleset unchanged"
        else
            lab_fail "machine: root namespace iptables ruleset unchanged" <"$LAB_TMP/machine.diff" || failed=1
        fi
        if lab_root_nft_ruleset | diff "$LAB_TMP/machine.nft" - >"$LAB_TMP/machine.diff"; then
            lab_ok "machine: root namespace nft ruleset unchanged"
        else
            lab_fail "machine: root namespace nft ruleset unchanged" <"$LAB_TMP/machine.diff" || failed=1
        fi
    fi
    if [ -f "${LAB_RESULTS:-}" ]; then
        echo "# lab: $(lab_count ok) assertions passed, $(lab_count 'not ok') failed (backend $VG_BACKEND)" >&3
    fi
    if [ -n "${LAB_TMP:-}" ] && [ -d "$LAB_TMP" ]; then
        rm -rf "$LAB_TMP"
    fi
    exec 9>&-
    return "$failed"
}
