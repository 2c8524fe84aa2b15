#!/bin/bash
# e2e-test.sh: end-to-end test of virtgate with a real libvirtd, a real NAT network (dnsmasq), two real guest VMs
# (QEMU, TCG), real UFW and real traffic, all inside network namespaces vgt-e2e-* and a private mount namespace.
#
# Usage (as root):  bash Tests/e2e/e2e-test.sh
#   VIRTGATE=/path/to/virtgate   the binary under test (default: .build/debug/virtgate; it is copied first)
#   E2E_KEEP=1                   keep the temp dir (logs, consoles) after the run
#
# Output: `ok - ...` / `not ok - [step] ...` per check, `# ...` diagnostics, and as the last line exactly
# `N passed, M failed`. Exit status 0 only if every check passed. Not root, or a tool or package missing: a failure,
# never a skip. On failure it prints the failed steps, the hook log (argv, stdin, stderr, exit status of every hook
# call), the host namespace's ruleset, libvirtd's log and both guests' serial consoles.
#
# How it runs:
# - outer part (the machine's mount namespace): builds the guest (cached in Tests/e2e/cache/, see build-guest.sh),
#   removes leftovers of a killed run, creates the namespaces vgt-e2e-host and vgt-e2e-wan, runs the inner part,
#   then deletes the namespaces (stopping every process in them, by PID) and checks that the machine's ruleset,
#   /etc and /usr/local/sbin are unchanged.
# - inner part (this file again, with --inner, under `unshare --mount --propagation private`): /etc becomes an
#   overlay whose writes land in the temp dir, /run a tmpfs (keeping /run/netns), and /var/lib/libvirt,
#   /var/log/libvirt, /var/cache/libvirt, /usr/local/sbin and /usr/lib/ufw private directories. There virtgate is
#   installed with the real install.sh (default paths; the binary it installs is a logging shim around a copy of
#   the binary under test, so every hook call is logged with argv and stdin), UFW is enabled in vgt-e2e-host, and
#   libvirtd runs in vgt-e2e-host with virtgate as its qemu and network hooks.
#
# Steps: install; UFW on; libvirtd; network start; guests A (DHCP reservation) and B (none) start; forwards from wan
# (tcp, udp, a range, a source-restricted one) and the client address the guest saw; non-forwarded and routed
# access blocked; guest egress; hairpin (B -> host address -> A); host-local; B's late binding (`virtgate reapply`
# run by the suite once the lease file has B's lease: in production virtgate-leases.path runs it); `virtgate
# forward add` on the running guest; `ufw reload`; `ufw disable` + `enable`; libvirtd restart with the guests
# running (reconnect hook; `virtgate reapply` while libvirtd is down); `virtgate sync` and `doctor` on a healthy host,
# then after virtgate's FORWARD jump was deleted by hand (doctor and status see it, sync repairs it); `virtgate
# forward remove`; field-report shapes (guest C with overlapping guest ports, guest D with a NIC of type='bridge' on a
# plain host bridge; traffic, hairpin, a second identical event writes nothing per the hook log and a dry run);
# destroy + net-destroy leave zero residue. `virtgate status --json` is compared with the expected
# states at each step.

set -u

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E_REPO=$(cd "$E2E_DIR/../.." && pwd)
# shellcheck source=e2e-lib.sh
. "$E2E_DIR/e2e-lib.sh"

# =================================================================================================================
# Outer part

E2E_SUMMARY_DONE=no
E2E_INNER_PID=""

outer_cleanup() {
    local ns pid
    # leftovers first: every process in our namespaces (QEMU, dnsmasq, libvirtd), by PID, then the namespaces
    for ns in $E2E_NAMESPACES; do
        ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns" || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
        for _ in $(seq 30); do
            [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
            sleep 0.1
        done
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null; done
        ip netns del "$ns" 2>/dev/null
    done
}

outer_exit() {
    local status=0
    outer_cleanup
    if [ "$(count 'not ok')" -ne 0 ] || [ "$(count ok)" -eq 0 ]; then status=1; fi
    local line
    line=$(summary)
    if [ "${E2E_KEEP:-0}" = 1 ]; then
        echo "# kept $E2E_TMP"
    else
        rm -rf "$E2E_TMP"
    fi
    if [ "$E2E_SUMMARY_DONE" = no ]; then
        E2E_SUMMARY_DONE=yes
        # the summary is the last line
        echo "$line"
    fi
    exit "$status"
}

outer_interrupt() {
    echo "# interrupted"
    E2E_STEP=interrupted
    if [ -n "$E2E_INNER_PID" ]; then
        kill "$E2E_INNER_PID" 2>/dev/null   # its trap stops what it started
        wait "$E2E_INNER_PID" 2>/dev/null
    fi
    not_ok "run interrupted"
    exit 1
}

root_ruleset() {
    { iptables-save 2>/dev/null; nft list ruleset 2>/dev/null; } | sed -e 's/\[[0-9]*:[0-9]*\]//' | grep -v '^#'
}

machine_files_checksum() {
    # what the suite must never change on the machine
    { find /etc/libvirt /etc/ufw /etc/default/ufw /usr/lib/ufw /etc/systemd/system -xdev \( -type f -o -type l \) \
        -print0 2>/dev/null | sort -z | xargs -0 sha256sum 2>/dev/null
      ls -la /etc/virtgate /usr/local/sbin /run/virtgate 2>&1; } | sha256sum | cut -d' ' -f1
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

main_outer() {
    E2E_T0_MS=$(( $(date +%s%N) / 1000000 ))
    E2E_TMP=$(mktemp -d /tmp/vgt-e2e.XXXXXX) || exit 1
    chmod 755 "$E2E_TMP"
    E2E_RESULTS=$E2E_TMP/results
    : >"$E2E_RESULTS"
    export E2E_TMP E2E_RESULTS E2E_T0_MS
    trap outer_exit EXIT
    trap outer_interrupt INT TERM

    step "prerequisites"
    if [ "$(id -u)" -ne 0 ]; then
        not_ok "must run as root (namespaces, iptables, libvirtd)"
        exit 1
    fi
    # The namespace names are fixed: one end-to-end run at a time; wait for a running one rather than fail.
    exec 8>/tmp/vgt-e2e.lock
    if ! flock -n 8; then
        echo "# another end-to-end run holds /tmp/vgt-e2e.lock; waiting up to 15 minutes"
        flock -w 900 8 || { not_ok "no other end-to-end run in progress (/tmp/vgt-e2e.lock is held)"; exit 1; }
    fi
    local t missing=""
    for t in $E2E_TOOLS; do
        command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing="$missing $t"
    done
    [ -d /usr/lib/ufw ] && [ -d /usr/share/ufw ] || missing="$missing ufw-data"
    # the guest's /bin/busybox must be the static one (busybox-static), not Debian's dynamic busybox
    [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || missing="$missing busybox-static"
    if [ -n "$missing" ]; then
        not_ok "prerequisites: missing:$missing (packages: see Tests/e2e/README.md)"
        exit 1
    fi
    VIRTGATE=${VIRTGATE:-$E2E_REPO/.build/debug/virtgate}
    if [ ! -x "$VIRTGATE" ]; then
        not_ok "prerequisites: no binary at $VIRTGATE (build it first)"
        exit 1
    fi
    mkdir -p "$E2E_TMP/bin"
    cp "$VIRTGATE" "$E2E_TMP/bin/virtgate" || exit 1
    ok "prerequisites: root, tools, binary ($("$E2E_TMP/bin/virtgate" --version 2>&1))"

    step "guest image"
    local out t1
    t1=$(date +%s%N)
    if out=$(bash "$E2E_DIR/build-guest.sh" "$E2E_DIR/cache" 2>&1); then
        ok "guest image: $out in $(( ($(date +%s%N) - t1) / 1000000 )) ms"
    else
        not_ok "guest image could not be built"
        echo "$out" | diag
        exit 1
    fi

    step "namespaces"
    outer_cleanup   # leftovers of a killed run
    local before_rules before_files
    before_rules=$(root_ruleset)
    before_files=$(machine_files_checksum)
    if create_topology; then
        ok "namespaces $E2E_NAMESPACES created"
    else
        not_ok "namespaces could not be created"
        exit 1
    fi

    export VIRTGATE E2E_DIR E2E_REPO
    unshare --mount --propagation private -- bash "$E2E_DIR/e2e-test.sh" --inner &
    E2E_INNER_PID=$!
    wait "$E2E_INNER_PID"
    E2E_INNER_PID=""

    step "machine untouched"
    outer_cleanup
    local left
    left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^vgt-e2e-' || true)
    check_eq "namespaces deleted, no process left in them" "" "$left"
    check_eq "the machine's own ruleset (iptables, nft) is unchanged" "$before_rules" "$(root_ruleset)"
    check_eq "the machine's /etc/libvirt, /etc/ufw, /etc/default/ufw, /usr/lib/ufw, /etc/systemd/system, /etc/virtgate, /usr/local/sbin, /run/virtgate are unchanged" \
        "$before_files" "$(machine_files_checksum)"
    info "total time $(e2e_elapsed)s"
}

# =================================================================================================================
# Inner part (private mount namespace)

LIBVIRTD_PID=""
URI=""

virsh_() { virsh -q -c "$URI" "$@"; }
vg() { hostns /usr/local/sbin/virtgate "$@"; }
ufw_() { hostns env TESTSTATE=1 ufw "$@"; }

setup_mounts() {
    local d
    # /etc: an overlay on the machine's, writes land in the temp dir
    mkdir -p "$E2E_TMP/etc-upper" "$E2E_TMP/etc-work" || return 1
    mount -t overlay overlay -o "lowerdir=/etc,upperdir=$E2E_TMP/etc-upper,workdir=$E2E_TMP/etc-work" /etc || return 1
    # /run: a tmpfs, keeping /run/netns
    mkdir -p "$E2E_TMP/netns" "$E2E_TMP/run-libvirt" || return 1
    mount --rbind /run/netns "$E2E_TMP/netns" || return 1
    mount -t tmpfs -o mode=0755 e2e-run /run || return 1
    mkdir -p /run/netns /run/libvirt /run/lock || return 1
    mount --rbind "$E2E_TMP/netns" /run/netns || return 1
    # libvirt's run dir also at a path outside this mount namespace (its socket is in the connection URI)
    mount --bind "$E2E_TMP/run-libvirt" /run/libvirt || return 1
    # libvirt's QEMU capabilities cache persists in Tests/e2e/cache (libvirt validates it and re-probes if stale)
    mkdir -p "$E2E_DIR/cache/libvirt" && mount --bind "$E2E_DIR/cache/libvirt" /var/cache/libvirt || return 1
    for d in /var/lib/libvirt /var/log/libvirt /usr/local/sbin; do
        mkdir -p "$E2E_TMP/mnt$d" || return 1
        chmod 0755 "$E2E_TMP/mnt$d"
        mount --bind "$E2E_TMP/mnt$d" "$d" || return 1
    done
    mkdir -p "$E2E_TMP/mnt/usr/lib/ufw" && cp -a /usr/lib/ufw/. "$E2E_TMP/mnt/usr/lib/ufw/" || return 1
    mount --bind "$E2E_TMP/mnt/usr/lib/ufw" /usr/lib/ufw || return 1
    # libvirt probes every QEMU binary at start (~4 s each here): hide the one we do not use
    if [ -e /usr/bin/qemu-system-i386 ]; then
        : >"$E2E_TMP/no-qemu" && chmod 0644 "$E2E_TMP/no-qemu"
        mount --bind "$E2E_TMP/no-qemu" /usr/bin/qemu-system-i386 || return 1
    fi
    return 0
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

start_libvirtd() {
    # a simple command in the background: $! is libvirtd's own PID (ip netns exec and taskset exec it)
    ip netns exec "$E2E_NS_HOST" taskset -c 0 /usr/sbin/libvirtd >>"$E2E_TMP/libvirtd.log" 2>&1 </dev/null &
    LIBVIRTD_PID=$!
    wait_for 30 virsh_ version >/dev/null 2>&1
}

# Our own libvirtd only: a PID we started, in our host namespace.
stop_libvirtd() {
    [ -n "$LIBVIRTD_PID" ] || return 0
    if [ -e "/proc/$LIBVIRTD_PID" ] &&
        [ "$(stat -L -c %i "/proc/$LIBVIRTD_PID/ns/net" 2>/dev/null)" = "$(stat -L -c %i "/run/netns/$E2E_NS_HOST")" ]; then
        kill "$LIBVIRTD_PID" 2>/dev/null
        wait "$LIBVIRTD_PID" 2>/dev/null
    fi
    LIBVIRTD_PID=""
}

inner_exit() {
    local rc=$?
    if [ "$(count 'not ok')" -ne 0 ]; then
        print_diagnostics
    fi
    if [ -n "$LIBVIRTD_PID" ]; then
        virsh_ destroy "$E2E_A" >/dev/null 2>&1
        virsh_ destroy "$E2E_B" >/dev/null 2>&1
        virsh_ destroy "$E2E_C" >/dev/null 2>&1
        virsh_ destroy "$E2E_D" >/dev/null 2>&1
        virsh_ net-destroy "$E2E_NET" >/dev/null 2>&1
        stop_libvirtd
    fi
    # QEMU or dnsmasq still running are stopped by the outer part (every PID in our namespaces)
    exit "$rc"
}

print_diagnostics() {
    echo "# ================= diagnostics (failures above) ================="
    echo "# failed checks, by step:"
    diag "$E2E_TMP/failed-steps"
    echo "# hook log (every call of the virtgate shim: argv, exit status, stdin of hook calls, stderr):"
    [ -f "$E2E_TMP/hook.log" ] && diag "$E2E_TMP/hook.log"
    local f n=0
    for f in "$E2E_TMP"/ruleset-at-failure.*; do
        [ -e "$f" ] || continue
        n=$((n + 1))
        [ "$n" -le 3 ] || { echo "# (rulesets at later failing steps not shown)"; break; }
        echo "# ruleset of $E2E_NS_HOST at the first failure of step \"$(head -n1 "$f")\":"
        tail -n +2 "$f" | diag
    done
    echo "# ruleset of $E2E_NS_HOST now:"
    ruleset | diag
    echo "# libvirtd log (last 40 lines):"
    [ -f "$E2E_TMP/libvirtd.log" ] && tail -n 40 "$E2E_TMP/libvirtd.log" | diag
    local g
    for g in a b c d; do
        [ -f "$E2E_TMP/console-$g.log" ] || continue
        echo "# serial console of guest $g:"
        [ -f "$E2E_TMP/console-$g.log" ] && tr -d '\r' <"$E2E_TMP/console-$g.log" | tail -n 60 | diag
    done
    [ -f "$E2E_TMP/install.log" ] && { echo "# install.sh output:"; diag "$E2E_TMP/install.log"; }
}

# ---------------------------------------------------------------------------------------------------------------
# libvirt objects

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
    [ -n "${5:-}" ] && nic="<interface type='bridge'>
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

lease_ip() { # MAC: the address dnsmasq's lease file has for it
    jq -r --arg m "$1" '.[] | select(."mac-address" == $m) | ."ip-address"' \
        "/var/lib/libvirt/dnsmasq/$E2E_BRIDGE.status" 2>/dev/null | head -n1
}

guest_up() { [ "$(guest_run "$1" 'echo up' 0.5 2>/dev/null)" = up ]; }

# status_summary: `virtgate status --json` in one line: networks, jumps, orphans, each forward's state.
status_summary() {
    vg status --connect "$URI" --json 2>"$E2E_TMP/status.err" | jq -r '
        "nets=" + ([.networks[] | "\(.name):\(.rules)"] | join(","))
        + " jumps=\(.jumpsInPlace) orphans=\(.orphans | length) "
        + ([.guests[] | .name as $n | .forwards[] | "\($n)#\(.position)=\(.state)"] | join(" "))' 2>&1
}

check_status() { # DESCRIPTION EXPECTED
    local got
    got=$(status_summary)
    check_eq "status --json $1: $2" "$2" "$got"
    if [ "$got" != "$2" ]; then
        vg status --connect "$URI" 2>&1 | diag
    fi
}

A_ACTIVE="$E2E_A#1=active $E2E_A#2=active $E2E_A#3=active $E2E_A#4=active $E2E_A#5=active"

# ---------------------------------------------------------------------------------------------------------------
# Traffic rounds

# traffic_round LABEL: forwards from wan (with the client address the guests saw), the source restriction, egress,
# hairpin and host-local. B's and the added forward's checks once they are expected.
traffic_round() {
    local l=$1 p
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
    if [ -n "${B_IP:-}" ]; then
        expect "$l: hairpin B -> $E2E_HOST_IP:2222 reaches A:22" "A 22 *" guest_probe "$B_IP" tcp "$E2E_HOST_IP" 2222
    fi
    if [ "${B_BOUND:-no}" = yes ]; then
        expect "$l: wan -> host:2223/tcp reaches B:22" "B 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2223
        expect "$l: wan -> host:6001/udp reaches B:6000" "B 6000 $E2E_WAN_IP" \
            probe "$E2E_NS_WAN" udp "$E2E_HOST_IP" 6001
    fi
    if [ "${ADDED:-no}" = yes ]; then
        expect "$l: wan -> host:5001/tcp (forward added at run time) reaches A:5000" "A 5000 $E2E_WAN_IP" \
            probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 5001
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Field-report shapes: guest C's forwards overlap on the guest side (80 three times, 80-81 as a range, one with an
# allow-list); guest D's only NIC is of type='bridge' on a plain host bridge (no libvirt network), its forward with
# an explicit guest-address. Both boot together; real traffic; a second identical event writes nothing (the hook
# log: no "applied" line); destroyed, they leave no rule.

C_FORWARDS='      <vg:forward proto="tcp" host-port="8180" guest-port="80"/>
      <vg:forward proto="tcp" host-port="2224" guest-port="22"/>
      <vg:forward proto="tcp" host-port="8190-8191" guest-port="80-81"/>
      <vg:forward proto="tcp" host-port="8543" guest-port="80" source="198.18.0.0/30"/>'
D_FORWARDS="      <vg:forward proto=\"tcp\" host-port=\"2225\" guest-port=\"22\" guest-address=\"$E2E_D_IP\"/>"

# hook_block_stderr PATTERN: the stderr lines of the hook log's calls whose header matches PATTERN (extended regex)
hook_block_stderr() {
    awk -v pat="$1" '/^=== / { cur = ($0 ~ pat) } cur && /^  stderr\| / { sub(/^  stderr\| /, ""); print }' \
        "$E2E_TMP/hook.log" 2>/dev/null
}

DNSMASQ2_PID=""

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
        </dev/null >>"$E2E_TMP/dnsmasq-br1.log" 2>&1 &
    DNSMASQ2_PID=$!
}

shapes_bridge_down() {
    if [ -n "$DNSMASQ2_PID" ]; then
        kill "$DNSMASQ2_PID" 2>/dev/null
        wait "$DNSMASQ2_PID" 2>/dev/null
        DNSMASQ2_PID=""
    fi
    hostns iptables -w -D INPUT -i "$E2E_BRIDGE2" -p udp --dport 67 -j ACCEPT 2>/dev/null
    ip netns exec "$E2E_NS_WAN" ip route del "$E2E_SUBNET2" 2>/dev/null
    hostns ip link del "$E2E_BRIDGE2" 2>/dev/null
}

step_shapes() {
    local out rc tc ev g live
    step "shapes: overlapping guest ports (C), a bridge-type NIC (D)"
    if shapes_bridge_up; then
        ok "plain bridge $E2E_BRIDGE2 ($E2E_GW2/24) with its own DHCP for D"
    else
        not_ok "plain bridge $E2E_BRIDGE2 could not be set up"
    fi
    domain_xml "$E2E_C" C "$E2E_C_MAC" "$C_FORWARDS" >"$E2E_TMP/c.xml"
    domain_xml "$E2E_D" D "$E2E_D_MAC" "$D_FORWARDS" "$E2E_BRIDGE2" >"$E2E_TMP/d.xml"
    tc=$(date +%s%N)
    for g in "$E2E_C" "$E2E_D"; do
        if out=$(virsh_ define "$E2E_TMP/${g: -1}.xml" 2>&1 && virsh_ start "$g" 2>&1); then
            ok "virsh define + start $g"
        else
            not_ok "virsh define + start $g"
            echo "$out" | diag
        fi
    done
    for ev in "start begin" "started begin"; do
        check "qemu hook ran for C and D: $ev (exit 0)" eval \
            '[ -n "$(hook_calls "hooks/qemu $E2E_C $ev - \(rc=0\)")" ] && [ -n "$(hook_calls "hooks/qemu $E2E_D $ev - \(rc=0\)")" ]'
    done
    if wait_for 90 guest_up "$E2E_C_IP"; then
        ok "guest C answers on $E2E_C_IP (boot to services: $(( ($(date +%s%N) - tc) / 1000000 )) ms)"
    else
        not_ok "guest C did not come up within 90 s"
    fi
    if wait_for 60 guest_up "$E2E_D_IP"; then
        ok "guest D answers on $E2E_D_IP on $E2E_BRIDGE2 (boot to services: $(( ($(date +%s%N) - tc) / 1000000 )) ms)"
    else
        not_ok "guest D did not come up on $E2E_D_IP within 60 s"
    fi
    # C serves tcp 81 too, for the range 8190-8191 -> 80-81
    guest_run "$E2E_C_IP" "socat TCP-LISTEN:81,fork,reuseaddr SYSTEM:'echo C 81 \$SOCAT_PEERADDR' </dev/null >/dev/null 2>&1 &" >/dev/null
    check "guest C serves tcp 81" wait_for 5 eval '[ "$(probe "$E2E_NS_HOST" tcp "$E2E_C_IP" 81)" = "C 81 $E2E_GW" ]'

    expect "shapes: wan -> host:8180 reaches C:80" "C 80 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8180
    expect "shapes: wan -> host:2224 reaches C:22" "C 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2224
    expect "shapes: wan -> host:8190 (8190-8191 -> 80-81) reaches C:80" "C 80 $E2E_WAN_IP" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8190
    expect "shapes: wan -> host:8191 reaches C:81" "C 81 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8191
    expect "shapes: wan $E2E_WAN_IP (in source=198.18.0.0/30) -> host:8543 reaches C:80" "C 80 $E2E_WAN_IP" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8543
    expect "shapes: wan $E2E_WAN_IP2 (not in source=) -> host:8543 gets nothing" "" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8543 "$E2E_WAN_IP2"
    expect "shapes: wan $E2E_WAN_IP2 -> host:8180 (no source=) reaches C:80" "C 80 $E2E_WAN_IP2" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8180 "$E2E_WAN_IP2"
    expect "shapes: hairpin A -> host:8190 reaches C:80" "C 80 *" guest_probe "$E2E_A_IP" tcp "$E2E_HOST_IP" 8190
    expect "shapes: hairpin A -> host:8191 reaches C:81" "C 81 *" guest_probe "$E2E_A_IP" tcp "$E2E_HOST_IP" 8191
    expect "shapes: hairpin A -> host:2224 reaches C:22" "C 22 *" guest_probe "$E2E_A_IP" tcp "$E2E_HOST_IP" 2224
    expect "shapes: A's own forward wan -> host:2222 still reaches A:22" "A 22 $E2E_WAN_IP" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    expect "shapes: wan -> host:2225 reaches D:22 on the plain bridge $E2E_BRIDGE2" "D 22 $E2E_WAN_IP" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2225
    expect "shapes: routed wan -> D:22 directly (not DNAT'ed) is blocked" "" probe "$E2E_NS_WAN" tcp "$E2E_D_IP" 22
    check_status "with C and D" "nets=$E2E_NET:in-place jumps=true orphans=0 $A_ACTIVE $E2E_B#1=active $E2E_B#2=active $E2E_C#1=active $E2E_C#2=active $E2E_C#3=active $E2E_C#4=active $E2E_D#1=active"

    # a second identical event writes nothing: libvirt's own `started` right after `start`, then `start` again
    # through the hook path with the live XML; and a dry run says "no changes"
    for g in "$E2E_A" "$E2E_C" "$E2E_D"; do
        check "hook log: $g's start applied its forwards" \
            eval '[ -n "$(hook_block_stderr "hooks/qemu $g start begin" | grep "applied")" ]'
    done
    # a guest event whose transaction the kernel rejects still exits 0 (it must not stop the guest): its error line
    check_eq "hook log: no error logged by any hook call of C or D" "" \
        "$(hook_block_stderr "hooks/qemu ($E2E_C|$E2E_D) " | grep 'error:' || true)"
    for g in "$E2E_A" "$E2E_B" "$E2E_C" "$E2E_D"; do
        check_eq "hook log: $g's started (right after start) applied nothing" "" \
            "$(hook_block_stderr "hooks/qemu $g started begin" | grep "applied" || true)"
    done
    for g in "$E2E_C" "$E2E_D"; do
        live=$E2E_TMP/${g: -1}-live.xml
        virsh_ dumpxml "$g" >"$live"
        out=$(hostns /usr/local/sbin/virtgate hook --dry-run qemu "$g" start begin - <"$live" 2>&1)
        rc=$?
        if [ "$rc" = 0 ] && echo "$out" | grep -q 'no changes' && ! echo "$out" | grep -v '^# .*: no changes$' | grep -q .; then
            ok "a second start of $g, dry run: '$out'"
        else
            not_ok "a second start of $g, dry run prints only '# …: no changes' (exit $rc)"
            echo "$out" | head -n 30 | diag
        fi
        virtgate_lines >"$E2E_TMP/shapes-before.rules"
        hostns nft list table inet virtgate >>"$E2E_TMP/shapes-before.rules" 2>/dev/null
        hostns /etc/libvirt/hooks/qemu "$g" start begin - <"$live" >/dev/null 2>&1
        check_eq "a second start of $g through hooks/qemu exits 0" 0 "$?"
        check_eq "hook log: of $g's two start calls, only the first applied anything" 1 \
            "$(hook_block_stderr "hooks/qemu $g start begin" | grep -c "applied")"
        virtgate_lines >"$E2E_TMP/shapes-after.rules"
        hostns nft list table inet virtgate >>"$E2E_TMP/shapes-after.rules" 2>/dev/null
        check "the second start of $g left virtgate's rules and nft table as they were" \
            diff -u "$E2E_TMP/shapes-before.rules" "$E2E_TMP/shapes-after.rules"
    done

    for g in "$E2E_C" "$E2E_D"; do
        out=$(virsh_ destroy "$g" 2>&1)
        check "virsh destroy $g" eval '[ "$(virsh_ domstate "$g" | head -n1)" = "shut off" ]'
        check "qemu hook ran for $g: release end (exit 0)" \
            wait_for 5 eval '[ -n "$(hook_calls "hooks/qemu $g release end - \(rc=0\)")" ]'
        virsh_ undefine "$g" >/dev/null 2>&1
    done
    check_eq "C's and D's rules are gone" "" "$(virtgate_lines | grep -E -- "$E2E_C|$E2E_D|$E2E_BRIDGE2" || true)"
    check_eq "C's and D's nft elements are gone" "" \
        "$(hostns nft list table inet virtgate 2>/dev/null | grep -E -- "$E2E_C|$E2E_D" || true)"
    expect "C destroyed: wan -> host:8191 gets nothing" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8191
    expect "D destroyed: wan -> host:2225 gets nothing" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2225
    expect "C and D gone: wan -> host:2222 still reaches A:22" "A 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    shapes_bridge_down
}

# ---------------------------------------------------------------------------------------------------------------

main_inner() {
    E2E_INNER=1
    trap inner_exit EXIT
    trap 'exit 130' INT TERM
    local out rc t1 baseline
    URI="qemu:///system?socket=$E2E_TMP/run-libvirt/libvirt-sock"

    step "private mounts"
    if setup_mounts && setup_libvirt_config && setup_ufw_config; then
        ok "private /etc (overlay), /run, /var/lib/libvirt, /usr/local/sbin, /usr/lib/ufw"
    else
        not_ok "private mounts or configuration failed"
        exit 1
    fi

    step "install"
    write_shim "$E2E_TMP/bin/virtgate-shim" "$E2E_TMP/bin/virtgate" "$E2E_TMP/hook.log"
    # in its own PID namespace too, so that its "SIGHUP every libvirtd" can only ever see ours (none yet)
    unshare --pid --fork --mount-proc env VIRTGATE_SKIP_APT=1 VIRTGATE_BINARY="$E2E_TMP/bin/virtgate-shim" \
        bash "$E2E_REPO/install.sh" >"$E2E_TMP/install.log" 2>&1
    rc=$?
    check_eq "install.sh exits 0" 0 "$rc"
    [ "$rc" = 0 ] || diag "$E2E_TMP/install.log"
    check_eq "install.sh linked /etc/libvirt/hooks/qemu to the binary" /usr/local/sbin/virtgate \
        "$(readlink /etc/libvirt/hooks/qemu)"
    check_eq "install.sh linked /etc/libvirt/hooks/network to the binary" /usr/local/sbin/virtgate \
        "$(readlink /etc/libvirt/hooks/network)"
    check "install.sh added its block to UFW's after.init, executable" \
        eval 'grep -q "^# BEGIN virtgate" /etc/ufw/after.init && [ -x /etc/ufw/after.init ]'
    check "install.sh installed /etc/virtgate/virtgate.conf" test -f /etc/virtgate/virtgate.conf
    # no syslog daemon here: virtgate's messages go to stderr, which the shim logs
    echo "SYSLOG=no" >>/etc/virtgate/virtgate.conf
    # VIRTGATE_BACKEND picks the backend for the whole run (hooks run by libvirt read only this file); unset: auto
    if [ -n "${VIRTGATE_BACKEND:-}" ]; then
        echo "BACKEND=$VIRTGATE_BACKEND" >>/etc/virtgate/virtgate.conf
    fi
    echo "# backend: ${VIRTGATE_BACKEND:-auto}"

    step "ufw"
    out=$(ufw_ --force enable 2>&1)
    check "ufw enable in $E2E_NS_HOST" eval 'ufw_ status | grep -q "Status: active"'
    check_eq "FORWARD policy is DROP" "-P FORWARD DROP" "$(hostns iptables -w -S FORWARD | head -n1)"
    hostns sysctl -qw net.ipv4.ip_forward=1   # libvirt sets it too when the nat network starts
    baseline=$E2E_TMP/ruleset.baseline
    ruleset >"$baseline"

    # the wan listener for guest egress
    ip netns exec "$E2E_NS_WAN" socat "TCP-LISTEN:$E2E_WAN_PORT,fork,reuseaddr" SYSTEM:'echo WAN $SOCAT_PEERADDR' \
        </dev/null >/dev/null 2>&1 &

    step "libvirtd"
    t1=$(date +%s%N)
    if start_libvirtd; then
        ok "libvirtd started in $E2E_NS_HOST (pid $LIBVIRTD_PID) in $(( ($(date +%s%N) - t1) / 1000000 )) ms"
    else
        not_ok "libvirtd did not answer within 30 s"
        exit 1
    fi

    step "network"
    network_xml >"$E2E_TMP/net.xml"
    if virsh_ net-define "$E2E_TMP/net.xml" >/dev/null && virsh_ net-start "$E2E_NET" >/dev/null; then
        ok "network $E2E_NET defined and started"
    else
        not_ok "network $E2E_NET did not start"
        exit 1
    fi
    check "network hook ran: network $E2E_NET started (exit 0)" \
        eval '[ -n "$(hook_calls "hooks/network $E2E_NET started begin - \(rc=0\)")" ]'
    check "network hook added the network chain VGN-$E2E_NET" eval 'ruleset | grep -q "^:VGN-$E2E_NET"'
    check_status "with the network only" "nets=$E2E_NET:in-place jumps=true orphans=0 "

    step "guests start"
    domain_xml "$E2E_A" A "$E2E_A_MAC" "$A_FORWARDS" >"$E2E_TMP/a.xml"
    domain_xml "$E2E_B" B "$E2E_B_MAC" "$B_FORWARDS" >"$E2E_TMP/b.xml"
    local ta tb
    if ! virsh_ define "$E2E_TMP/a.xml" >/dev/null || ! virsh_ define "$E2E_TMP/b.xml" >/dev/null; then
        not_ok "guests could not be defined"
        exit 1
    fi
    ta=$(date +%s%N)
    out=$(virsh_ start "$E2E_A" 2>&1) && ok "virsh start $E2E_A" || { not_ok "virsh start $E2E_A"; echo "$out" | diag; exit 1; }
    tb=$(date +%s%N)
    out=$(virsh_ start "$E2E_B" 2>&1) && ok "virsh start $E2E_B" || { not_ok "virsh start $E2E_B"; echo "$out" | diag; exit 1; }
    local ev
    for ev in "prepare begin" "start begin" "started begin"; do
        check "qemu hook ran for A and B: $ev (exit 0)" eval \
            '[ -n "$(hook_calls "hooks/qemu $E2E_A $ev - \(rc=0\)")" ] && [ -n "$(hook_calls "hooks/qemu $E2E_B $ev - \(rc=0\)")" ]'
    done
    # B has no reservation and has not booted yet: its forwards wait for a lease
    check_status "right after start (B without a lease: pending)" \
        "nets=$E2E_NET:in-place jumps=true orphans=0 $A_ACTIVE $E2E_B#1=pending $E2E_B#2=pending"

    step "guests boot"
    if wait_for 90 guest_up "$E2E_A_IP"; then
        ok "guest A answers on $E2E_A_IP (boot to services: $(( ($(date +%s%N) - ta) / 1000000 )) ms)"
    else
        not_ok "guest A did not come up within 90 s"
        exit 1
    fi
    if wait_for 90 eval '[ -n "$(lease_ip "$E2E_B_MAC")" ]' && B_IP=$(lease_ip "$E2E_B_MAC") && wait_for 30 guest_up "$B_IP"; then
        ok "guest B leased $B_IP and answers (boot to services: $(( ($(date +%s%N) - tb) / 1000000 )) ms)"
    else
        B_IP=""
        not_ok "guest B got no lease or did not come up"
    fi

    step "forwards from wan"
    traffic_round "first start"
    expect "non-forwarded: wan -> host:5000/tcp gets nothing" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 5000
    expect "non-forwarded: wan -> host:6002/udp gets nothing" "" probe "$E2E_NS_WAN" udp "$E2E_HOST_IP" 6002
    expect "routed: wan -> A:22 directly (not DNAT'ed) is blocked" "" probe "$E2E_NS_WAN" tcp "$E2E_A_IP" 22
    expect "routed: wan -> A:5000 directly is blocked" "" probe "$E2E_NS_WAN" tcp "$E2E_A_IP" 5000
    expect "B's forward host:2223 is not there before B is bound" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2223
    info "bridge-nf-call-iptables in $E2E_NS_HOST: $(hostns cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 'n/a')"

    step "late binding of B"
    if [ -n "${B_IP:-}" ]; then
        info "status with B's lease, before reapply: $(status_summary)"
        # In production virtgate-leases.path runs `virtgate reapply` when dnsmasq rewrites the lease file; there
        # is no systemd here, so the suite runs it once the lease file has B's lease.
        out=$(vg reapply 2>&1)
        check_eq "virtgate reapply (run by the suite, in place of virtgate-leases.path) exits 0" 0 "$?"
        echo "$out" | diag
        B_BOUND=yes
        expect "late binding: wan -> host:2223/tcp reaches B:22" "B 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2223
        expect "late binding: wan -> host:6001/udp reaches B:6000" "B 6000 $E2E_WAN_IP" probe "$E2E_NS_WAN" udp "$E2E_HOST_IP" 6001
        check_status "after reapply" \
            "nets=$E2E_NET:in-place jumps=true orphans=0 $A_ACTIVE $E2E_B#1=active $E2E_B#2=active"
    else
        not_ok "late binding not tested: B has no lease"
    fi

    step "forward add"
    out=$(vg forward add "$E2E_A" 5001:5000/tcp --connect "$URI" 2>&1)
    check_eq "virtgate forward add $E2E_A 5001:5000/tcp exits 0" 0 "$?"
    echo "$out" | diag
    ADDED=yes
    expect "forward add applies at once: wan -> host:5001 reaches A:5000" "A 5000 $E2E_WAN_IP" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 5001
    check "the added forward is in A's live and persistent metadata" eval \
        'virsh_ metadata "$E2E_A" urn:virtgate:forwards:1 --live | grep -q "host-port=\"5001\"" &&
         virsh_ metadata "$E2E_A" urn:virtgate:forwards:1 --config | grep -q "host-port=\"5001\""'
    local all_active="nets=$E2E_NET:in-place jumps=true orphans=0 $A_ACTIVE $E2E_A#6=active $E2E_B#1=active $E2E_B#2=active"
    check_status "after forward add" "$all_active"

    step "ufw reload"
    out=$(ufw_ reload 2>&1)
    check "ufw reload succeeds" eval 'ufw_ status | grep -q "Status: active"'
    traffic_round "after ufw reload"
    check_status "after ufw reload" "$all_active"

    step "ufw disable + enable"
    out=$(ufw_ disable 2>&1) ; check "ufw disable succeeds" eval '! ufw_ status | grep -q "Status: active"'
    out=$(ufw_ --force enable 2>&1)
    check "ufw enable succeeds (after.init with virtgate's block does not fail it)" eval 'ufw_ status | grep -q "Status: active"'
    check_eq "FORWARD policy is DROP again" "-P FORWARD DROP" "$(hostns iptables -w -S FORWARD | head -n1)"
    traffic_round "after ufw disable+enable"
    check_status "after ufw disable+enable" "$all_active"

    step "libvirtd restart"
    local n_reconnect
    stop_libvirtd
    check "the guests keep running while libvirtd is down" eval 'guest_up "$E2E_A_IP"'
    out=$(vg reapply 2>&1)
    check_eq "virtgate reapply works while libvirtd is down (exit 0)" 0 "$?"
    echo "$out" | diag
    t1=$(date +%s%N)
    if start_libvirtd; then
        ok "libvirtd restarted (pid $LIBVIRTD_PID) in $(( ($(date +%s%N) - t1) / 1000000 )) ms"
    else
        not_ok "libvirtd did not come back within 30 s"
        exit 1
    fi
    n_reconnect() { hook_calls "hooks/qemu ($E2E_A|$E2E_B) reconnect begin - \(rc=0\)" | wc -l; }
    check "qemu hook ran reconnect for A and B (exit 0)" wait_for 20 eval '[ "$(n_reconnect)" -ge 2 ]'
    check_eq "both guests still running" "running running" \
        "$(virsh_ domstate "$E2E_A" | head -n1) $(virsh_ domstate "$E2E_B" | head -n1)"
    traffic_round "after libvirtd restart"
    check_status "after libvirtd restart" "$all_active"
    check_eq "FORWARD's first rule is virtgate's jump" "-A FORWARD -j VIRTGATE-FWD" \
        "$(hostns iptables -w -S FORWARD | sed -n 2p)"

    step "sync and doctor"
    out=$(vg sync --connect "$URI" 2>&1)
    rc=$?
    check_eq "virtgate sync exits 0" 0 "$rc"
    check "virtgate sync finds hook-made rules already in sync" eval 'echo "$out" | grep -q "already in sync"'
    echo "$out" | diag
    out=$(vg doctor 2>&1)
    rc=$?
    check_eq "virtgate doctor reports a healthy host (exit 0)" 0 "$rc"
    echo "$out" | diag
    # an admin removes virtgate's FORWARD jump: forwards die, doctor and status see it, sync repairs it
    hostns iptables -w -D FORWARD -j VIRTGATE-FWD
    expect "with virtgate's FORWARD jump removed by hand, wan -> host:2222 fails" "" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    out=$(vg doctor 2>&1)
    check_eq "virtgate doctor reports the missing jump (exit 1)" 1 "$?"
    echo "$out" | diag
    check_eq "status --json reports the jumps not in place" false \
        "$(vg status --connect "$URI" --json 2>/dev/null | jq -r .jumpsInPlace)"
    out=$(vg sync --connect "$URI" 2>&1)
    check_eq "virtgate sync repairs it (exit 0)" 0 "$?"
    echo "$out" | diag
    expect "after sync, wan -> host:2222 reaches A:22 again" "A 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    check_eq "FORWARD's first rule is virtgate's jump again" "-A FORWARD -j VIRTGATE-FWD" \
        "$(hostns iptables -w -S FORWARD | sed -n 2p)"
    check_status "after sync" "$all_active"

    step "forward remove"
    out=$(vg forward remove "$E2E_A" 5001/tcp --connect "$URI" 2>&1)
    check_eq "virtgate forward remove $E2E_A 5001/tcp exits 0" 0 "$?"
    echo "$out" | diag
    expect "forward remove applies at once: wan -> host:5001 gets nothing" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 5001
    check_status "after forward remove" \
        "nets=$E2E_NET:in-place jumps=true orphans=0 $A_ACTIVE $E2E_B#1=active $E2E_B#2=active"

    step_shapes

    step "teardown"
    out=$(virsh_ destroy "$E2E_A" 2>&1)
    check "virsh destroy $E2E_A" eval '[ "$(virsh_ domstate "$E2E_A" | head -n1)" = "shut off" ]'
    for ev in "stopped end" "release end"; do
        check "qemu hook ran for A: $ev (exit 0)" \
            wait_for 5 eval '[ -n "$(hook_calls "hooks/qemu $E2E_A $ev - \(rc=0\)")" ]'
    done
    check_eq "A's rules are gone" "" "$(virtgate_lines | grep -- "$E2E_A" || true)"
    expect "A's forward host:2222 is closed" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    check_status "with A destroyed" "nets=$E2E_NET:in-place jumps=true orphans=0 $E2E_B#1=active $E2E_B#2=active"
    out=$(virsh_ destroy "$E2E_B" 2>&1)
    check "virsh destroy $E2E_B" eval '[ "$(virsh_ domstate "$E2E_B" | head -n1)" = "shut off" ]'
    out=$(virsh_ net-destroy "$E2E_NET" 2>&1)
    check "virsh net-destroy $E2E_NET" eval '[ -z "$(virsh_ net-list --name)" ]'
    check "network hook ran: stopped (exit 0)" \
        eval '[ -n "$(hook_calls "hooks/network $E2E_NET stopped end - \(rc=0\)")" ]'
    check_eq "no virtgate chain or jump is left" "" "$(virtgate_lines)"
    ruleset >"$E2E_TMP/ruleset.after"
    # libvirt 9 keeps its own top-level chains (LIBVIRT_INP/OUT/FWI/FWO/FWX/PRT, empty) and their jumps once its
    # first network has started: those lines, and only those, are libvirt's and not compared. Every rule libvirt
    # put into them must be gone.
    check_eq "libvirt's own chains are empty after net-destroy" "" \
        "$(grep -E '^-A LIBVIRT_' "$E2E_TMP/ruleset.after" || true)"
    info "libvirt keeps, empty: $(grep -E '^:LIBVIRT_' "$E2E_TMP/ruleset.after" | awk '{printf "%s ", $1}')"
    grep -vE '^:LIBVIRT_[A-Z]+ |^-A (INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING) -j LIBVIRT_[A-Z]+$' \
        "$E2E_TMP/ruleset.after" >"$E2E_TMP/ruleset.after.cmp"
    if diff -u "$baseline" "$E2E_TMP/ruleset.after.cmp" >"$E2E_TMP/ruleset.diff"; then
        ok "zero residue: iptables-save of $E2E_NS_HOST (filter, nat, mangle; counters stripped) equals the baseline taken before libvirtd started, libvirt's empty chains aside"
    else
        not_ok "zero residue: iptables-save of $E2E_NS_HOST differs from the baseline"
        diag "$E2E_TMP/ruleset.diff"
    fi
    check_status "with everything stopped" "nets= jumps=true orphans=0 "
    check_eq "no hook call failed" "" "$(hook_calls 'hooks/.*\(rc=[1-9][0-9]*\)')"
    info "hook calls: $(hook_calls 'hooks/' | wc -l)"
    virsh_ undefine "$E2E_A" >/dev/null 2>&1
    virsh_ undefine "$E2E_B" >/dev/null 2>&1
    virsh_ net-undefine "$E2E_NET" >/dev/null 2>&1
}

if [ "${1:-}" = --inner ]; then
    main_inner
else
    main_outer
fi
