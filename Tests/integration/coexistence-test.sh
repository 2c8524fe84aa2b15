#!/bin/bash
# coexistence-test.sh: virtgate living next to UFW and libvirt, in network namespaces, with real UFW (private copies
# of its files), real netfilter and real traffic. The lab is lab.sh's (see there for the topology).
#
# Usage (as root):
#   bash Tests/integration/coexistence-test.sh
#   VIRTGATE=/path/to/virtgate bash Tests/integration/coexistence-test.sh
#
# Output: one `ok - ...` / `not ok - ...` line per check, `# ...` diagnostics, a timing table of every recovery
# (`# timing: FAULT -> WHAT RESTORED SERVICE, N ms`), and as the last line `N passed, M failed`. Exit status 0 only if
# nothing failed. Not root or a tool missing: a failure, not a skip.
#
# Nothing changes the machine's own network namespace: every iptables, ufw and virtgate call is
# `ip netns exec vgt-host ...`, inside a private mount namespace where /etc/ufw, /etc/default/ufw and /usr/lib/ufw are
# private copies. The machine's UFW files, ip_forward and ruleset (read with `nft list ruleset`) are compared before
# and after.
#
# UFW's after.init: a block between `# BEGIN virtgate` and `# END virtgate` that runs `virtgate reapply` on `start`
# and `stop` and never fails UFW, like install.sh's. If hooks/ufw-after.init.sh exists, its block is used (with
# /usr/local/sbin/virtgate pointed at the binary under test); otherwise the equivalent below.
#
# Scenarios (run order):
#   A  setup: UFW, libvirt 9 rules, network + g1 + g2 through the hooks; every forward and guest egress; snapshot
#   E1 ufw reload                      (no after.init block: virtgate's rules must survive on their own)
#   E2 ufw disable; ufw enable         (idem)
#   E3 ufw --force reset; ufw enable   (idem)
#   E1b/E2b/E3b the same with the after.init block: reapply on stop+start adds no duplicate; reset keeps the block
#   E4 MANAGE_BUILTINS=yes + ufw reload: without the block the forward breaks; with it, it works
#   E5 ufw-init flush-all, then virtgate reapply and ufw reload (after.init start)
#   E6 an admin's iptables -F FORWARD and -t nat -F, then virtgate reapply
#   E7 libvirt re-inserts its LIBVIRT_* jumps at position 1 (libvirtd restart), then the qemu reconnect hook
#   E8 concurrent hooks (start g1 || start g2 || reconnect g1 || reconnect g2, ...), three rounds
#   After each: every forward from wan, guest egress, virtgate's jumps first, no duplicate rule lines, virtgate's own
#   rules as in the snapshot, and (once libvirt's and UFW's rules are back) the whole ruleset as in the snapshot.
#   D  virtgate doctor --json: healthy lab exits 0; each broken state reports its finding id, then is restored
#   N  libvirt 10's nftables backend under UFW: egress fails without virtgate, works after the network hook;
#      doctor reports libvirt-nftables-under-ufw
#   L  a legacy iptables table inside vgt-host: doctor reports mixed-iptables-variants; virtgate still works

set -u

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_FIXTURES=$LAB_DIR/../bats/fixtures/lab
CX_FIXTURES=$LAB_FIXTURES/coexistence
CX_REPO=$(cd "$LAB_DIR/../.." && pwd)
# shellcheck source=lab.sh
. "$LAB_DIR/lab.sh"

VIRTGATE=${VIRTGATE:-$CX_REPO/.build/debug/virtgate}
export VIRTGATE

LAB_TOOLS="$LAB_TOOLS nft jq iptables-legacy"

# =================================================================================================================
# Outer part (the machine's mount namespace): namespaces, the inner run, and "the machine is unchanged".

LAB_CREATED=no
LAB_SUMMARY_DONE=no
LAB_INNER_PID=""

# The root namespace's ruleset, read only (nft never creates anything when listing), counters stripped.
cx_root_ruleset() {
    nft list ruleset 2>/dev/null | sed -e 's/counter packets [0-9]* bytes [0-9]*/counter/'
}

outer_exit() {
    local status=0
    if [ "$LAB_CREATED" = yes ]; then
        lab_delete_namespaces
        LAB_CREATED=no
    fi
    if [ "$(lab_count 'not ok')" -ne 0 ] || [ "$(lab_count ok)" -eq 0 ]; then
        status=1
    fi
    if [ "$LAB_SUMMARY_DONE" = no ]; then
        LAB_SUMMARY_DONE=yes
        lab_summary
    fi
    rm -rf "$LAB_TMP"
    exit "$status"
}

outer_interrupt() {
    echo "# interrupted"
    if [ -n "$LAB_INNER_PID" ]; then
        kill "$LAB_INNER_PID" 2>/dev/null
        wait "$LAB_INNER_PID"
    fi
    lab_not_ok "run interrupted"
    exit 1
}

main_outer() {
    LAB_TMP=$(mktemp -d /tmp/vgt-cx.XXXXXX) || exit 1
    LAB_RESULTS=$LAB_TMP/results
    : >"$LAB_RESULTS"
    export LAB_TMP LAB_RESULTS
    trap outer_exit EXIT
    trap outer_interrupt INT TERM

    lab_require_root || exit 1
    lab_require_tools || exit 1
    if [ ! -x "$VIRTGATE" ]; then
        lab_not_ok "prerequisite: virtgate binary $VIRTGATE exists and is executable"
        exit 1
    fi
    echo "# virtgate under test: $VIRTGATE ($(stat -c '%y' "$VIRTGATE"), sha256 $(sha256sum <"$VIRTGATE" | cut -c1-16))"
    # One run tests one build: a private copy, also the target of the hook links doctor inspects.
    cp "$VIRTGATE" "$LAB_TMP/virtgate" || exit 1
    VIRTGATE=$LAB_TMP/virtgate

    lab_take_lock || exit 1

    local ufw_sum_before root_rules_before root_forward_before
    ufw_sum_before=$(lab_ufw_checksum)
    root_rules_before=$(cx_root_ruleset)
    root_forward_before=$(sysctl -n net.ipv4.ip_forward)

    lab_delete_namespaces
    LAB_CREATED=yes
    if ! lab_create_topology; then
        lab_not_ok "lab: create namespaces, links and addresses"
        exit 1
    fi
    lab_ok "lab: namespaces $LAB_NAMESPACES created"

    unshare --mount --propagation private -- bash "$LAB_DIR/coexistence-test.sh" --inner 9>&- &
    LAB_INNER_PID=$!
    wait "$LAB_INNER_PID"
    local inner_rc=$?
    LAB_INNER_PID=""
    if [ "$inner_rc" -ne 0 ] && [ "$(lab_count 'not ok')" -eq 0 ]; then
        lab_not_ok "inner test run ended with status $inner_rc before recording a failure"
    fi

    lab_delete_namespaces
    LAB_CREATED=no

    check_eq "machine: no vgt- namespaces left" "" "$(lab_namespaces_left)"
    check_eq "machine: UFW's real files (/etc/ufw, /etc/default/ufw, /usr/lib/ufw) unchanged" \
        "$ufw_sum_before" "$(lab_ufw_checksum)"
    check_eq "machine: root namespace ip_forward unchanged" "$root_forward_before" "$(sysctl -n net.ipv4.ip_forward)"
    if [ "$root_rules_before" = "$(cx_root_ruleset)" ]; then
        lab_ok "machine: root namespace ruleset (nft list ruleset) unchanged"
    else
        lab_not_ok "machine: root namespace ruleset (nft list ruleset) unchanged"
        diff <(echo "$root_rules_before") <(cx_root_ruleset) | lab_diag
    fi
    exit 0
}

# =================================================================================================================
# Inner part: private mount namespace.

inner_cleanup() {
    lab_stop_services
}

# ---------------------------------------------------------------------------------------------------------------
# Timing of recoveries

# cx_timed FAULT RESTORER COMMAND...: run COMMAND, record how long it took; returns its status.
cx_timed() {
    local fault=$1 restorer=$2 t0 t1 rc ms
    shift 2
    t0=$(date +%s%N)
    "$@"
    rc=$?
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    echo "# timing: $fault -> $restorer, $ms ms (exit $rc)"
    printf '%s\t%s\t%s\n' "$fault" "$restorer" "$ms" >>"$LAB_TMP/timings"
    return "$rc"
}

cx_print_timings() {
    echo "# --- recovery timings (restoring command only; probes excluded)"
    printf '# %-58s | %-52s | %8s\n' "fault" "what restored service" "ms"
    while IFS=$'\t' read -r fault restorer ms; do
        printf '# %-58s | %-52s | %8s\n' "$fault" "$restorer" "$ms"
    done <"$LAB_TMP/timings"
}

# ---------------------------------------------------------------------------------------------------------------
# UFW, libvirt and virtgate helpers

# cx_ufw DESCRIPTION ARGS...: ufw in vgt-host, checked to exit 0.
cx_ufw() {
    local desc=$1
    shift
    if lab_ufw "$@" >"$LAB_TMP/ufw.out" 2>&1; then
        lab_ok "$desc"
    else
        lab_not_ok "$desc (exit $?)"
        lab_diag "$LAB_TMP/ufw.out"
    fi
}

cx_ufw_quiet() {
    lab_ufw "$@" >"$LAB_TMP/ufw.out" 2>&1
}

# cx_check_ufw_rc DESCRIPTION STATUS: the last ufw command (output in ufw.out) exited 0.
cx_check_ufw_rc() {
    if [ "$2" -eq 0 ]; then
        lab_ok "$1"
    else
        lab_not_ok "$1 (exit $2)"
        lab_diag "$LAB_TMP/ufw.out"
    fi
}

# The private /etc/default/ufw is a bind-mounted single file: rewrite it in place (sed -i would replace the inode
# and the mount would keep showing the old one).
cx_set_manage_builtins() {
    local f=$LAB_TMP/ufw/default/ufw
    sed -e "s/^MANAGE_BUILTINS=.*/MANAGE_BUILTINS=$1/" "$f" >"$LAB_TMP/default-ufw.new" &&
        cat "$LAB_TMP/default-ufw.new" >/etc/default/ufw
    grep -qx "MANAGE_BUILTINS=$1" /etc/default/ufw
}

# A wrapper that after.init calls instead of /usr/local/sbin/virtgate: the binary under test with the lab's
# VIRTGATE_* environment. It logs every call and keeps reapply's stderr (after.init's own output is discarded).
cx_write_reapply_wrapper() {
    CX_WRAPPER=$LAB_TMP/sbin/virtgate
    mkdir -p "$LAB_TMP/sbin" || return 1
    cat >"$CX_WRAPPER" <<WRAP
#!/bin/sh
echo "\$(date +%s%N) virtgate \$*" >>"$LAB_TMP/after-init.log"
env VIRTGATE_CONFIG="$VG_CONFIG" VIRTGATE_STATE_DIR="$VG_STATE" VIRTGATE_NETWORK_RUN_DIR="$VG_NET_RUN" \\
    VIRTGATE_NETWORK_ETC_DIR="$VG_NET_ETC" VIRTGATE_DNSMASQ_DIR="$VG_DNSMASQ" VIRTGATE_SYSLOG=0 \\
    VIRTGATE_BACKEND="$VG_BACKEND" "$VIRTGATE" "\$@" 2>>"$LAB_TMP/reapply.err"
rc=\$?
echo "\$(date +%s%N) exit \$rc" >>"$LAB_TMP/after-init.log"
exit \$rc
WRAP
    chmod 0755 "$CX_WRAPPER"
}

# The block install.sh puts into /etc/ufw/after.init, with /usr/local/sbin/virtgate pointed at the wrapper.
cx_write_after_init_block() {
    local snippet=$CX_REPO/hooks/ufw-after.init.sh
    CX_BLOCK=$LAB_TMP/after-init.block
    if [ -f "$snippet" ]; then
        if grep -q '^# BEGIN virtgate' "$snippet"; then
            sed -n '/^# BEGIN virtgate/,/^# END virtgate/p' "$snippet"
        else
            grep -v '^#!' "$snippet"
        fi | sed "s|/usr/local/sbin/virtgate|$CX_WRAPPER|g" >"$CX_BLOCK"
        CX_BLOCK_SOURCE="hooks/ufw-after.init.sh"
    else
        cat >"$CX_BLOCK" <<BLOCK
# BEGIN virtgate
# Re-assert virtgate's rules after UFW has (re)loaded its own (MANAGE_BUILTINS=yes and flush-all wipe them).
# Never fails UFW: a failing after.init makes "ufw enable" fail.
case "\${1:-}" in
    start|stop) $CX_WRAPPER reapply >/dev/null 2>&1 || true ;;
esac
# END virtgate
BLOCK
        CX_BLOCK_SOURCE="this suite's equivalent (hooks/ufw-after.init.sh not present)"
    fi
    grep -qF "$CX_WRAPPER" "$CX_BLOCK"
}

# after.init = UFW's pristine file (+ the block), executable either way so that only the block differs. A line
# after the shebang (the admin's part of the file, outside the block) logs how UFW calls it.
cx_after_init() {
    local with=$1 f=$LAB_TMP/ufw/etc/after.init
    sed -e "1a echo \"\$(date +%s%N) after.init \$*\" >>'$LAB_TMP/after-init.log'" /usr/share/ufw/after.init >"$f" ||
        return 1
    if [ "$with" = with-block ]; then
        { echo; cat "$CX_BLOCK"; } >>"$f" || return 1
    fi
    chmod 0755 "$f"
}

# What libvirtd does with its iptables rules when it restarts (or on a firewall reload): delete its jumps from the
# built-in chains and insert them again at position 1, refilling its own chains.
cx_libvirt_reload() {
    local spec
    for spec in filter:INPUT:LIBVIRT_INP filter:OUTPUT:LIBVIRT_OUT filter:FORWARD:LIBVIRT_FWX \
        filter:FORWARD:LIBVIRT_FWI filter:FORWARD:LIBVIRT_FWO nat:POSTROUTING:LIBVIRT_PRT \
        mangle:POSTROUTING:LIBVIRT_PRT; do
        IFS=: read -r t c j <<<"$spec"
        while lab_ipt -t "$t" -D "$c" -j "$j" 2>/dev/null; do :; done
    done
    lab_add_libvirt_rules
}

# Remove libvirt's iptables rules completely (a network on libvirt's nftables backend has none).
cx_libvirt_remove_iptables() {
    local spec t c j
    for spec in filter:INPUT:LIBVIRT_INP filter:OUTPUT:LIBVIRT_OUT filter:FORWARD:LIBVIRT_FWX \
        filter:FORWARD:LIBVIRT_FWI filter:FORWARD:LIBVIRT_FWO nat:POSTROUTING:LIBVIRT_PRT \
        mangle:POSTROUTING:LIBVIRT_PRT; do
        IFS=: read -r t c j <<<"$spec"
        while lab_ipt -t "$t" -D "$c" -j "$j" 2>/dev/null; do :; done
        lab_ipt -t "$t" -F "$j" 2>/dev/null
        lab_ipt -t "$t" -X "$j" 2>/dev/null
    done
    return 0
}

# libvirtd restarting with both guests running: port-created again, libvirt's reload, then reconnect per guest.
cx_libvirt_restart() {
    vg_hook "$LAB_FIXTURES/port-vgt-g1.xml" network vgtnet port-created begin -
    vg_hook "$LAB_FIXTURES/port-vgt-g2.xml" network vgtnet port-created begin -
    cx_libvirt_reload
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 reconnect begin -
    vg_hook "$LAB_FIXTURES/domain-vgt-g2.xml" qemu vgt-g2 reconnect begin -
}

# `virtgate reapply` as the admin (or after.init) runs it. Sets VG_RC.
cx_reapply() {
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    vg_exec "$VIRTGATE" /dev/null reapply
    return "$VG_RC"
}

cx_check_reapply_rc() {
    if [ "$VG_RC" -eq 0 ]; then
        lab_ok "$1: virtgate reapply exits 0"
    else
        lab_not_ok "$1: virtgate reapply exits 0 (exit $VG_RC)"
        lab_diag "$VG_ERR"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Verification after every event

cx_check_jumps() {
    local tag=$1 rule
    check_eq "$tag: first rule of filter FORWARD is the VIRTGATE-FWD jump" "-A FORWARD -j VIRTGATE-FWD" \
        "$(lab_first_rule filter FORWARD)"
    if [ "$VG_BACKEND" = nft ]; then
        lab_check_nft_hooks "$tag"
        return
    fi
    rule=$(lab_first_rule nat PREROUTING)
    check "$tag: first rule of nat PREROUTING jumps to VIRTGATE-DNAT ('$rule')" \
        sh -c "echo '$rule' | grep -q -- '--dst-type LOCAL' && echo '$rule' | grep -q -- '-j VIRTGATE-DNAT'"
    rule=$(lab_first_rule nat OUTPUT)
    check "$tag: first rule of nat OUTPUT jumps to VIRTGATE-DNAT ('$rule')" \
        sh -c "echo '$rule' | grep -q -- '! -d 127.0.0.0/8' && echo '$rule' | grep -q -- '-j VIRTGATE-DNAT'"
    check_eq "$tag: first rule of nat POSTROUTING is the VIRTGATE-POST jump" "-A POSTROUTING -j VIRTGATE-POST" \
        "$(lab_first_rule nat POSTROUTING)"
}

# cx_normalise RULESET_FILE: the ruleset with chains in name order (iptables-save lists them in creation order, which
# has no effect on packets and changes when UFW deletes and re-creates chains); rule order within a chain is kept.
cx_normalise() {
    awk '
        /^\*/ { t = $0; print t " 0"; next }
        /^:/ { print t " 1 " $0; next }
        /^-A / { n[t SUBSEP $2]++; printf "%s 2 %s %06d %s\n", t, $2, n[t SUBSEP $2], $0; next }
        { print t " 3 " $0 }
    ' "$1" | LC_ALL=C sort
}

# cx_check_ruleset DESCRIPTION EXPECTED_FILE: like lab.sh's check_ruleset, chain order aside.
cx_check_ruleset() {
    local desc=$1 expected=$2 now=$LAB_TMP/ruleset.now
    lab_ruleset >"$now"
    if diff -u <(cx_normalise "$expected") <(cx_normalise "$now") >"$LAB_TMP/ruleset.diff"; then
        lab_ok "$desc"
    else
        lab_not_ok "$desc"
        echo "#   diff expected -> observed (table, kind, chain, position; first 80 lines):"
        head -n 80 "$LAB_TMP/ruleset.diff" | lab_diag
    fi
}

# Duplicate rule lines, per table (nat and mangle both have "-A POSTROUTING -j LIBVIRT_PRT").
cx_dups() {
    awk '/^\*/ { t = $0 } /^-A / { print t " " $0 }' "$1" | sort | uniq -d
}

cx_virtgate_lines() {
    grep -E 'VIRTGATE|VG[NDFSM]-' "$1"
}

# cx_forwards TAG: every forward reachable from wan lands on its service, with the client's address.
cx_forwards() {
    local tag=$1 p
    expect_reply "$tag: wan -> 198.18.0.1:2222 reaches g1-22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    for p in 0 1 2; do
        expect_reply "$tag: wan -> 198.18.0.1:500$p reaches g1-900$p" \
            "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" "500$p" "g1-900$p $LAB_WAN_IP"
    done
    expect_reply "$tag: wan -> 198.18.0.1:5353/udp reaches g1-53-udp" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353 "g1-53-udp $LAB_WAN_IP"
    expect_reply "$tag: wan (in source=) -> 198.18.0.1:8080 reaches g1-80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 $LAB_WAN_IP"
    expect_reply "$tag: wan -> 198.18.0.5:6000 (host-address=) reaches g1-6000" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_ALT_IP" 6000 "g1-6000 $LAB_WAN_IP"
    expect_reply "$tag: wan -> 198.18.0.1:2223 reaches g2-22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 $LAB_WAN_IP"
}

# cx_verify TAG MODE
#   MODE full:    UFW and libvirt's rules are all in place: egress must be masqueraded by libvirt, routed access
#                 blocked, and the whole ruleset equal to the snapshot.
#   MODE partial: libvirt's (or UFW's) rules were wiped by the event and nothing of theirs restored them: egress
#                 must work (virtgate's network accept), its source address is reported; virtgate's own lines must
#                 equal the snapshot's.
cx_verify() {
    local tag=$1 mode=$2 now=$LAB_TMP/verify.rules
    cx_forwards "$tag"
    expect_no_reply "$tag: wan (not in source=) -> 198.18.0.1:8443 is still refused" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8443
    if [ "$mode" = full ]; then
        expect_reply "$tag: g1 egress to wan works, masqueraded" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 \
            "wan-7000 $LAB_HOST_WAN_IP"
        expect_reply "$tag: g2 egress to wan works, masqueraded" "$LAB_NS_G2" tcp "$LAB_WAN_IP" 7000 \
            "wan-7000 $LAB_HOST_WAN_IP"
        expect_no_reply "$tag: wan routed straight to 10.213.0.11:22 stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 22
    else
        expect_reply "$tag: g1 egress to wan works" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
        expect_reply "$tag: g2 egress to wan works" "$LAB_NS_G2" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
        if ! lab_ipt -t nat -S POSTROUTING | grep -q -- '-j LIBVIRT_PRT'; then
            lab_info "$tag: libvirt's masquerade is gone, so egress leaves un-NATed; it works here only because wan routes $LAB_SUBNET back (a real uplink would not) until libvirt re-adds its rules"
        fi
    fi
    cx_check_jumps "$tag"
    lab_ruleset >"$now"
    check_eq "$tag: no duplicate rule lines (beyond the lab's own)" "$(cat "$LAB_TMP/baseline.dups")" "$(cx_dups "$now")"
    if diff <(cx_normalise "$LAB_TMP/applied.rules" | cx_virtgate_lines -) <(cx_normalise "$now" | cx_virtgate_lines -) \
        >"$LAB_TMP/vg.diff"; then
        lab_ok "$tag: virtgate's rules are exactly those of the snapshot"
    else
        lab_not_ok "$tag: virtgate's rules are exactly those of the snapshot"
        lab_diag "$LAB_TMP/vg.diff"
    fi
    if [ "$mode" = full ]; then
        cx_check_ruleset "$tag: whole ruleset (filter, nat, mangle) identical to the snapshot" "$LAB_TMP/applied.rules"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Setup

cx_setup() {
    echo "# --- A. setup"
    if lab_mount_private_ufw; then
        lab_ok "lab: private copies of UFW's files mounted"
    else
        lab_not_ok "lab: private copies of UFW's files mounted"
        return 1
    fi
    if ! lab_prepare_virtgate_env; then
        lab_not_ok "lab: virtgate directories, config, lease file, hook symlinks"
        return 1
    fi
    cx_write_reapply_wrapper || return 1
    if cx_write_after_init_block; then
        lab_ok "lab: after.init block ($CX_BLOCK_SOURCE) calls the binary under test"
    else
        lab_not_ok "lab: after.init block ($CX_BLOCK_SOURCE) calls the binary under test"
        lab_diag "$CX_BLOCK"
        return 1
    fi
    echo "# after.init block:"
    lab_diag "$CX_BLOCK"
    cx_after_init without-block || return 1

    # Hooks as install.sh links them, for doctor: <dir>/qemu and <dir>/network -> the binary.
    CX_DHOOKS=$LAB_TMP/doctor-hooks
    mkdir -p "$CX_DHOOKS" "$LAB_TMP/noexec" || return 1
    ln -s "$VIRTGATE" "$CX_DHOOKS/qemu" && ln -s "$VIRTGATE" "$CX_DHOOKS/network" || return 1
    cp "$VIRTGATE" "$LAB_TMP/noexec/virtgate" && chmod 0644 "$LAB_TMP/noexec/virtgate" || return 1

    cx_ufw "lab: ufw --force enable in $LAB_NS_HOST" --force enable
    if lab_add_libvirt_rules; then
        lab_ok "lab: libvirt 9 style rules added"
    else
        lab_not_ok "lab: libvirt 9 style rules added"
        return 1
    fi
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.bridge.bridge-nf-call-iptables=0

    local ok=yes
    lab_serve "$LAB_NS_G1" tcp 22 g1-22 || ok=no
    lab_serve "$LAB_NS_G1" tcp 80 g1-80 || ok=no
    lab_serve "$LAB_NS_G1" tcp 443 g1-443 || ok=no
    lab_serve "$LAB_NS_G1" tcp 9000 g1-9000 || ok=no
    lab_serve "$LAB_NS_G1" tcp 9001 g1-9001 || ok=no
    lab_serve "$LAB_NS_G1" tcp 9002 g1-9002 || ok=no
    lab_serve "$LAB_NS_G1" tcp 6000 g1-6000 || ok=no
    lab_serve "$LAB_NS_G1" udp 53 g1-53-udp || ok=no
    lab_serve "$LAB_NS_G2" tcp 22 g2-22 || ok=no
    lab_serve "$LAB_NS_WAN" tcp 7000 wan-7000 || ok=no
    if [ "$ok" = yes ]; then
        lab_ok "lab: socat services listening"
    else
        lab_not_ok "lab: socat services listening"
        return 1
    fi

    check_eq "lab: FORWARD policy is DROP (UFW)" "-P FORWARD DROP" "$(lab_ipt -S FORWARD | sed -n 1p)"
    expect_no_reply "lab: before virtgate, wan -> 198.18.0.1:2222 gets nothing" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    lab_ruleset >"$LAB_TMP/baseline.rules"
    cx_dups "$LAB_TMP/baseline.rules" >"$LAB_TMP/baseline.dups"
    if [ -s "$LAB_TMP/baseline.dups" ]; then
        echo "# the lab's ruleset itself has duplicate lines (UFW's or libvirt's), tolerated below:"
        lab_diag "$LAB_TMP/baseline.dups"
    fi

    # network start/started, then each guest as `virsh start` runs the hooks
    local net=$LAB_FIXTURES/network-vgtnet.xml g
    vg_hook "$net" network vgtnet start begin -
    vg_hook "$net" network vgtnet started begin -
    for g in vgt-g1 vgt-g2; do
        vg_hook "$VG_XML/$g-prepare.xml" qemu "$g" prepare begin -
        vg_hook "$LAB_FIXTURES/port-$g.xml" network vgtnet port-created begin -
        vg_hook "$LAB_FIXTURES/domain-$g.xml" qemu "$g" start begin -
        vg_hook "$LAB_FIXTURES/domain-$g.xml" qemu "$g" started begin -
    done
    lab_ruleset >"$LAB_TMP/applied.rules"
    echo "# snapshot: virtgate's rules with network + g1 + g2 applied:"
    cx_virtgate_lines "$LAB_TMP/applied.rules" | lab_diag
    cx_verify "initial" full
    return 0
}

# ---------------------------------------------------------------------------------------------------------------
# Events

cx_e1_reload() {
    echo "# --- E1. ufw reload (after.init without the virtgate block)"
    cx_timed "ufw reload (no after.init block)" "nothing needed: survived" cx_ufw_quiet reload
    cx_check_ufw_rc "E1: ufw reload exits 0" "$?"
    cx_verify "E1 ufw reload" full
}

cx_e2_disable_enable() {
    echo "# --- E2. ufw disable, ufw enable (no block)"
    cx_ufw "E2: ufw disable exits 0" disable
    check_eq "E2: while UFW is disabled, FORWARD policy is ACCEPT" "-P FORWARD ACCEPT" "$(lab_ipt -S FORWARD | sed -n 1p)"
    cx_timed "ufw disable; ufw enable (no block)" "nothing needed: survived" cx_ufw_quiet --force enable
    cx_check_ufw_rc "E2: ufw enable exits 0" "$?"
    cx_verify "E2 ufw disable+enable" full
}

cx_e3_reset() {
    echo "# --- E3. ufw --force reset, then enable again (no block)"
    cx_ufw "E3: ufw --force reset exits 0" --force reset
    lab_diag "$LAB_TMP/ufw.out"
    check "E3: reset moved UFW's rules aside (user.rules.<date> exists)" \
        sh -c "ls '$LAB_TMP/ufw/etc/' | grep -q '^user.rules.[0-9]'"
    check "E3: reset left UFW disabled (ENABLED=no)" grep -qx 'ENABLED=no' "$LAB_TMP/ufw/etc/ufw.conf"
    # What is needed to enable again: the forward policy lives in /etc/default/ufw, which reset keeps; enable.
    check "E3: DEFAULT_FORWARD_POLICY is still DROP" grep -qx 'DEFAULT_FORWARD_POLICY="DROP"' /etc/default/ufw
    cx_timed "ufw --force reset; ufw enable (no block)" "nothing needed: survived" cx_ufw_quiet --force enable
    cx_check_ufw_rc "E3: ufw enable after reset exits 0" "$?"
    check_eq "E3: FORWARD policy is DROP again" "-P FORWARD DROP" "$(lab_ipt -S FORWARD | sed -n 1p)"
    cx_verify "E3 ufw reset+enable" full
}

cx_e12b_with_block() {
    echo "# --- E1b/E2b/E3b. the same with the after.init block installed"
    cx_after_init with-block
    : >"$LAB_TMP/after-init.log"
    cx_timed "ufw reload (with block)" "nothing needed: survived" cx_ufw_quiet reload
    cx_check_ufw_rc "E1b: ufw reload with the block exits 0" "$?"
    check_eq "E1b: UFW called after.init stop, start; each ran virtgate reapply, exit 0" \
        "after.init stop;virtgate reapply;exit 0;after.init start;virtgate reapply;exit 0;" \
        "$(cut -d' ' -f2- "$LAB_TMP/after-init.log" | tr '\n' ';')"
    cx_verify "E1b ufw reload with block" full
    cx_ufw "E2b: ufw disable with the block exits 0" disable
    cx_timed "ufw disable; ufw enable (with block)" "nothing needed: survived" cx_ufw_quiet --force enable
    cx_check_ufw_rc "E2b: ufw enable with the block exits 0" "$?"
    cx_verify "E2b ufw disable+enable with block" full

    local sum
    sum=$(sha256sum <"$LAB_TMP/ufw/etc/after.init")
    cx_ufw "E3b: ufw --force reset with the block exits 0" --force reset
    check_eq "E3b: ufw reset leaves after.init (and its virtgate block) untouched" "$sum" \
        "$(sha256sum <"$LAB_TMP/ufw/etc/after.init")"
    cx_timed "ufw --force reset; ufw enable (with block)" "nothing needed: survived" cx_ufw_quiet --force enable
    cx_check_ufw_rc "E3b: ufw enable after reset exits 0" "$?"
    cx_verify "E3b ufw reset+enable with block" full
}

cx_e4_manage_builtins() {
    echo "# --- E4. MANAGE_BUILTINS=yes, ufw reload"
    check "E4: MANAGE_BUILTINS=yes set in the private /etc/default/ufw" cx_set_manage_builtins yes

    # Without the block: UFW wipes virtgate's filter chains and every built-in chain's jumps; nothing puts them back.
    cx_after_init without-block
    cx_ufw "E4: ufw reload (MANAGE_BUILTINS=yes, no block) exits 0" reload
    check "E4 no block: VIRTGATE-FWD is gone (the fault is real)" lab_chain_absent filter VIRTGATE-FWD
    expect_no_reply "E4 no block: wan -> 198.18.0.1:2222 is broken" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_no_reply "E4 no block: g1 egress is broken too (libvirt's chains are gone as well)" \
        "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000

    # With the block: the same reload restores service.
    cx_after_init with-block
    : >"$LAB_TMP/after-init.log"
    : >"$LAB_TMP/reapply.err"
    cx_timed "MANAGE_BUILTINS=yes ufw reload wiped virtgate" "ufw reload with after.init block (reapply)" \
        cx_ufw_quiet reload
    cx_check_ufw_rc "E4 block: ufw reload exits 0" "$?"
    check "E4 block: after.init's virtgate reapply exited 0 every time" \
        sh -c "grep -q 'exit 0' '$LAB_TMP/after-init.log' && ! grep 'exit' '$LAB_TMP/after-init.log' | grep -qv 'exit 0'"
    [ -s "$LAB_TMP/reapply.err" ] && { echo "# reapply stderr:"; lab_diag "$LAB_TMP/reapply.err"; }
    cx_verify "E4 MANAGE_BUILTINS=yes reload with block" partial
    lab_info "E4: libvirt's own chains after the reload: $(lab_ipt -S | grep -c LIBVIRT) filter lines (libvirt puts them back on its next restart)"

    # Again, from the restored state: a second reload must not stack anything.
    cx_timed "MANAGE_BUILTINS=yes ufw reload (block already in place)" "after.init block (reapply) within the reload" \
        cx_ufw_quiet reload
    cx_check_ufw_rc "E4 block: second ufw reload exits 0" "$?"
    cx_verify "E4 second reload" partial

    # ufw disable + enable with MANAGE_BUILTINS=yes (disable flushes too; after.init stop re-applies)
    cx_ufw "E4: ufw disable (MANAGE_BUILTINS=yes) exits 0" disable
    cx_timed "MANAGE_BUILTINS=yes ufw disable; enable" "after.init block (reapply)" cx_ufw_quiet --force enable
    cx_check_ufw_rc "E4: ufw enable (MANAGE_BUILTINS=yes) exits 0" "$?"
    cx_verify "E4 disable+enable" partial

    # Back to the default; libvirt restarts (its rules back), reconnect puts virtgate first again.
    check "E4: MANAGE_BUILTINS=no restored" cx_set_manage_builtins no
    cx_ufw "E4: ufw reload (MANAGE_BUILTINS=no) exits 0" reload
    cx_libvirt_restart
    cx_verify "E4 restored (libvirt restarted)" full
}

cx_e5_flush_all() {
    echo "# --- E5. ufw-init flush-all"
    local init=/usr/lib/ufw/ufw-init
    [ -x "$init" ] || init=/lib/ufw/ufw-init
    : >"$LAB_TMP/after-init.log"
    if ip netns exec "$LAB_NS_HOST" "$init" flush-all >"$LAB_TMP/ufw.out" 2>&1; then
        lab_ok "E5: $init flush-all exits 0"
    else
        lab_not_ok "E5: $init flush-all exits 0"
        lab_diag "$LAB_TMP/ufw.out"
    fi
    check_eq "E5: flush-all left FORWARD policy ACCEPT" "-P FORWARD ACCEPT" "$(lab_ipt -S FORWARD | sed -n 1p)"
    # flush-all removes every chain; the after.init block runs on flush-all too and re-applies virtgate.
    if lab_chain_absent filter VIRTGATE-FWD; then
        lab_not_ok "E5: the after.init block re-applied VIRTGATE-FWD during flush-all"
    else
        lab_ok "E5: the after.init block re-applied VIRTGATE-FWD during flush-all"
    fi
    check "E5: after.init ran virtgate reapply on flush-all" grep -q "reapply" "$LAB_TMP/after-init.log"
    lab_info "E5: after.init calls during flush-all: $(cut -d' ' -f2- "$LAB_TMP/after-init.log" | tr '\n' ';')"
    info_reply "E5: right after flush-all (after.init flush-all ran), wan -> 198.18.0.1:2222" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222

    cx_timed "ufw-init flush-all" "virtgate reapply" cx_reapply
    cx_check_reapply_rc "E5"
    cx_forwards "E5 after reapply (UFW still flushed)"
    cx_check_jumps "E5 after reapply"

    # UFW back as an admin brings it back: ufw reload runs after.init stop + start (reapply).
    cx_timed "ufw-init flush-all, reapplied" "ufw reload (after.init start)" cx_ufw_quiet reload
    cx_check_ufw_rc "E5: ufw reload after flush-all exits 0" "$?"
    check_eq "E5: FORWARD policy is DROP again" "-P FORWARD DROP" "$(lab_ipt -S FORWARD | sed -n 1p)"
    cx_verify "E5 after ufw reload" partial
    cx_libvirt_restart
    cx_verify "E5 restored (libvirt restarted)" full
}

cx_e6_admin_flush() {
    echo "# --- E6. admin: iptables -F FORWARD; iptables -t nat -F"
    lab_ipt -F FORWARD
    lab_ipt -t nat -F
    check_eq "E6: FORWARD is empty (the fault is real)" "-P FORWARD DROP" "$(lab_ipt -S FORWARD)"
    expect_no_reply "E6: wan -> 198.18.0.1:2222 is broken" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    cx_timed "iptables -F FORWARD; iptables -t nat -F" "virtgate reapply" cx_reapply
    cx_check_reapply_rc "E6"
    cx_verify "E6 after reapply" partial
    lab_ruleset >"$LAB_TMP/e6.rules"
    cx_reapply
    cx_check_ruleset "E6: a second reapply leaves the ruleset identical" "$LAB_TMP/e6.rules"
    # What the admin also wiped: UFW's FORWARD jumps (UFW re-adds them only when it creates its chains) and libvirt's
    # rules (back on libvirt's restart).
    lab_ipt -A FORWARD -j ufw-before-logging-forward
    lab_ipt -A FORWARD -j ufw-before-forward
    lab_ipt -A FORWARD -j ufw-after-forward
    lab_ipt -A FORWARD -j ufw-after-logging-forward
    lab_ipt -A FORWARD -j ufw-reject-forward
    lab_ipt -A FORWARD -j ufw-track-forward
    cx_libvirt_restart
    cx_verify "E6 restored (UFW's jumps, libvirt restarted)" full
}

cx_e7_libvirt_reload() {
    echo "# --- E7. libvirtd restart: LIBVIRT_* jumps re-inserted at position 1, then reconnect"
    vg_hook "$LAB_FIXTURES/port-vgt-g1.xml" network vgtnet port-created begin -
    vg_hook "$LAB_FIXTURES/port-vgt-g2.xml" network vgtnet port-created begin -
    cx_libvirt_reload
    check_eq "E7: LIBVIRT_FWX is first in FORWARD (the fault is real)" "-A FORWARD -j LIBVIRT_FWX" \
        "$(lab_first_rule filter FORWARD)"
    check_eq "E7: LIBVIRT_PRT is first in nat POSTROUTING" "-A POSTROUTING -j LIBVIRT_PRT" \
        "$(lab_first_rule nat POSTROUTING)"
    expect_no_reply "E7: wan -> 198.18.0.1:2222 is rejected by LIBVIRT_FWI above virtgate" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    cx_timed "libvirt re-inserted its jumps at position 1" "qemu reconnect hook (g1)" \
        vg_exec "$VIRTGATE" "$LAB_FIXTURES/domain-vgt-g1.xml" hook qemu vgt-g1 reconnect begin -
    check_eq "E7: reconnect g1 exits 0" 0 "$VG_RC"
    vg_hook "$LAB_FIXTURES/domain-vgt-g2.xml" qemu vgt-g2 reconnect begin -
    cx_verify "E7 after reconnect" full
}

# cx_burst TAG JOB...: run hook jobs (guest:operation, or net:started) at the same time; all must exit 0.
cx_burst() {
    local tag=$1 i=0 job pids="" pid failed=0 rc
    shift
    for job in "$@"; do
        i=$((i + 1))
        (
            VG_OUT=$LAB_TMP/burst.$i.out
            VG_ERR=$LAB_TMP/burst.$i.err
            if [ "$job" = net:started ]; then
                vg_exec "$VIRTGATE" "$LAB_FIXTURES/network-vgtnet.xml" hook network vgtnet started begin -
            else
                vg_exec "$VIRTGATE" "$LAB_FIXTURES/domain-${job%%:*}.xml" hook qemu "${job%%:*}" "${job#*:}" begin -
            fi
            echo "$VG_RC" >"$LAB_TMP/burst.$i.rc"
        ) &
        pids="$pids $!"
    done
    for pid in $pids; do
        wait "$pid"
    done
    for i in $(seq "$#"); do
        rc=$(cat "$LAB_TMP/burst.$i.rc" 2>/dev/null || echo missing)
        if [ "$rc" != 0 ]; then
            failed=$((failed + 1))
            echo "#   concurrent run $i exited $rc:"
            lab_diag "$LAB_TMP/burst.$i.err"
        fi
        rm -f "$LAB_TMP/burst.$i.rc"
    done
    check_eq "$tag: all $# concurrent hook runs exit 0" 0 "$failed"
}

cx_stop_guests() {
    local g
    for g in vgt-g1 vgt-g2; do
        vg_hook "$VG_XML/$g-stopped.xml" qemu "$g" stopped end -
        vg_hook "$LAB_FIXTURES/port-$g.xml" network vgtnet port-deleted begin -
        vg_hook "$VG_XML/$g-stopped.xml" qemu "$g" release end -
    done
}

cx_e8_concurrency() {
    echo "# --- E8. hooks at the same time"
    local round
    for round in 1 2 3; do
        cx_stop_guests
        check "E8.$round: g1's and g2's chains are gone after stop" \
            sh -c "! ip netns exec $LAB_NS_HOST iptables-save | grep -qE 'VG[DFS]-vgt-g'"
        cx_timed "E8.$round both guests stopped" "concurrent start g1, g2 + reconnect g1, g2" \
            cx_burst "E8.$round start" vgt-g1:start vgt-g2:start vgt-g1:reconnect vgt-g2:reconnect
        cx_burst "E8.$round started" vgt-g1:started vgt-g2:started vgt-g1:reconnect vgt-g2:reconnect net:started
        lab_ruleset >"$LAB_TMP/e8.rules"
        check_eq "E8.$round: no duplicate rule lines" "$(cat "$LAB_TMP/baseline.dups")" "$(cx_dups "$LAB_TMP/e8.rules")"
        cx_check_ruleset "E8.$round: ruleset identical to the sequential snapshot" "$LAB_TMP/applied.rules"
    done
    # and a burst on the running guests: pure re-assertion
    cx_burst "E8 running" vgt-g1:start vgt-g2:start vgt-g1:reconnect vgt-g2:reconnect vgt-g1:started \
        vgt-g2:started net:started
    cx_verify "E8 after concurrent hooks" full
}

# ---------------------------------------------------------------------------------------------------------------
# Doctor

# cx_doctor: `virtgate doctor --json` in vgt-host with the lab's hooks dir and private UFW dir. Sets DOC_RC, DOC_IDS.
cx_doctor() {
    VG_OUT=$LAB_TMP/doctor.json
    VG_ERR=$LAB_TMP/doctor.err
    VG_EXTRA_ENV=(VIRTGATE_HOOKS_DIR="$CX_DHOOKS" VIRTGATE_UFW_DIR="$LAB_TMP/ufw/etc")
    if [ "$CX_DOCTOR_PIDNS" = yes ]; then
        # libvirt daemons run on this machine: doctor would (rightly) say our fresh hook links are newer than them.
        vg_exec unshare /dev/null --pid --fork --mount-proc "$VIRTGATE" doctor --json
    else
        vg_exec "$VIRTGATE" /dev/null doctor --json
    fi
    VG_EXTRA_ENV=()
    DOC_RC=$VG_RC
    DOC_IDS=$(jq -r '.findings[].id' "$VG_OUT" 2>/dev/null | sort | tr '\n' ' ' | sed 's/ $//')
}

cx_doctor_healthy() {
    local tag=$1 healthy
    cx_doctor
    healthy=$(jq -r '.healthy' "$VG_OUT" 2>/dev/null)
    if [ "$DOC_RC" -eq 0 ] && [ "$healthy" = true ] && [ -z "$DOC_IDS" ]; then
        lab_ok "doctor $tag: exit 0, healthy, no findings"
    else
        lab_not_ok "doctor $tag: exit 0, healthy, no findings (exit $DOC_RC, healthy=$healthy, findings: $DOC_IDS)"
        lab_diag "$VG_OUT"
        lab_diag "$VG_ERR"
    fi
}

# cx_doctor_finds TAG ID...: doctor exits 1 and reports every ID.
cx_doctor_finds() {
    local tag=$1 id missing=""
    shift
    cx_doctor
    for id in "$@"; do
        case " $DOC_IDS " in
            *" $id "*) ;;
            *) missing="$missing $id" ;;
        esac
    done
    if [ "$DOC_RC" -eq 1 ] && [ -z "$missing" ] && [ "$(jq -r .healthy "$VG_OUT" 2>/dev/null)" = false ]; then
        lab_ok "doctor $tag: exit 1, reports $* (all findings: $DOC_IDS)"
    else
        lab_not_ok "doctor $tag: exit 1, reports $* (exit $DOC_RC, missing:$missing, findings: $DOC_IDS)"
        lab_diag "$VG_OUT"
        lab_diag "$VG_ERR"
    fi
}

cx_doctor_cases() {
    echo "# --- D. virtgate doctor"
    cx_doctor_healthy "healthy lab"
    check "doctor: --json is valid JSON with healthy and findings" \
        sh -c "jq -e 'has(\"healthy\") and has(\"findings\")' '$LAB_TMP/doctor.json' >/dev/null"

    ip netns exec "$LAB_NS_HOST" sysctl -qw net.ipv4.ip_forward=0
    cx_doctor_finds "ip_forward=0" ip-forwarding-off
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.ipv4.ip_forward=1
    cx_doctor_healthy "ip_forward=1 again"

    # FORWARD DROP (UFW) with virtgate's filter chains gone
    local c
    lab_ipt -D FORWARD -j VIRTGATE-FWD
    for c in $(lab_ipt -S | sed -n 's/^-N \(VIRTGATE-FWD\|VG[NF]-.*\)$/\1/p'); do
        lab_ipt -F "$c"
    done
    for c in $(lab_ipt -S | sed -n 's/^-N \(VIRTGATE-FWD\|VG[NF]-.*\)$/\1/p'); do
        lab_ipt -X "$c"
    done
    check "doctor setup: virtgate's filter chains are gone" lab_chain_absent filter VIRTGATE-FWD
    cx_doctor_finds "FORWARD DROP, virtgate's chains flushed" forward-drop-without-accept rules-drift
    cx_timed "virtgate's filter chains deleted" "virtgate reapply" cx_reapply
    cx_check_reapply_rc "doctor restore"
    cx_doctor_healthy "after reapply"

    # a foreign rule above virtgate's jump
    lab_ipt -I FORWARD 1 -s 192.0.2.99/32 -j DROP
    cx_doctor_finds "foreign rule at FORWARD 1" jumps-not-first
    cx_timed "foreign rule inserted at FORWARD 1" "virtgate reapply" cx_reapply
    cx_check_reapply_rc "doctor jumps"
    check_eq "doctor: after reapply VIRTGATE-FWD is first again" "-A FORWARD -j VIRTGATE-FWD" \
        "$(lab_first_rule filter FORWARD)"
    cx_doctor_healthy "foreign rule below virtgate's jump"
    lab_ipt -D FORWARD -s 192.0.2.99/32 -j DROP
    cx_check_ruleset "doctor: ruleset identical to the snapshot again" "$LAB_TMP/applied.rules"

    # hooks not installed
    rm -f "$CX_DHOOKS/qemu" "$CX_DHOOKS/network"
    cx_doctor_finds "hooks dir without the links" hook-missing-qemu hook-missing-network
    ln -s "$VIRTGATE" "$CX_DHOOKS/qemu"
    ln -s "$VIRTGATE" "$CX_DHOOKS/network"
    cx_doctor_healthy "links back"

    # hook not executable
    ln -sfn "$LAB_TMP/noexec/virtgate" "$CX_DHOOKS/qemu"
    cx_doctor_finds "qemu hook -> non-executable copy" hook-not-executable-qemu
    ln -sfn "$VIRTGATE" "$CX_DHOOKS/qemu"
    cx_doctor_healthy "qemu hook executable again"

    # after.init without the block
    cx_after_init without-block
    cx_doctor_finds "after.init without the block" ufw-after-init-missing
    cx_after_init with-block
    cx_doctor_healthy "after.init block back"
}

# ---------------------------------------------------------------------------------------------------------------
# libvirt 10's nftables backend

cx_nft_scenario() {
    echo "# --- N. libvirt's nftables backend under UFW"
    # A fresh host: virtgate's guests and network stopped, libvirt's iptables rules gone.
    cx_stop_guests
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet stopped end -
    cx_libvirt_remove_iptables
    check "N: no virtgate and no libvirt rule left in iptables" \
        sh -c "! ip netns exec $LAB_NS_HOST iptables-save | grep -qE 'VIRTGATE|VG[NDFSM]-|LIBVIRT'"
    check_eq "N: FORWARD policy is DROP (UFW)" "-P FORWARD DROP" "$(lab_ipt -S FORWARD | sed -n 1p)"

    sed -e "s|@BRIDGE@|$LAB_BRIDGE|g" -e "s|@SUBNET@|$LAB_SUBNET|g" "$CX_FIXTURES/libvirt10-nat-network.nft" \
        >"$LAB_TMP/libvirt.nft"
    if ip netns exec "$LAB_NS_HOST" nft -f "$LAB_TMP/libvirt.nft" 2>"$LAB_TMP/nft.err"; then
        lab_ok "N: table ip libvirt_network loaded (libvirt 10 forward/guest_* chains)"
    else
        lab_not_ok "N: table ip libvirt_network loaded"
        lab_diag "$LAB_TMP/nft.err"
    fi
    # libvirt keeps the running network's status XML; doctor reads it
    {
        echo "<networkstatus>"
        sed -e '/hookData>/d' "$LAB_FIXTURES/network-vgtnet.xml"
        echo "</networkstatus>"
    } >"$VG_NET_RUN/vgtnet.xml"

    expect_no_reply "N: without virtgate, g1 egress fails (libvirt's nft accept loses to UFW's DROP)" \
        "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000
    expect_no_reply "N: without virtgate, g2 egress fails" "$LAB_NS_G2" tcp "$LAB_WAN_IP" 7000
    cx_doctor_finds "nftables backend, no virtgate" libvirt-nftables-under-ufw forward-drop-without-accept

    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet start begin -
    cx_timed "libvirt nftables backend under UFW (egress dead)" "network started hook" \
        vg_exec "$VIRTGATE" "$LAB_FIXTURES/network-vgtnet.xml" hook network vgtnet started begin -
    check_eq "N: network started hook exits 0" 0 "$VG_RC"
    expect_reply "N: after the network hook, g1 egress works, masqueraded by libvirt's nft table" \
        "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 $LAB_HOST_WAN_IP"
    expect_reply "N: after the network hook, g2 egress works" "$LAB_NS_G2" tcp "$LAB_WAN_IP" 7000 \
        "wan-7000 $LAB_HOST_WAN_IP"
    expect_reply "N: g2 -> g1 on the bridge works" "$LAB_NS_G2" tcp "$LAB_G1_IP" 22 "g1-22 $LAB_G2_IP"
    expect_no_reply "N: wan routed straight to 10.213.0.11:22 stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 22
    check_eq "N: VIRTGATE-FWD is first in FORWARD" "-A FORWARD -j VIRTGATE-FWD" "$(lab_first_rule filter FORWARD)"
    cx_doctor_finds "nftables backend, virtgate applied" libvirt-nftables-under-ufw
    check "N: doctor no longer reports forward-drop-without-accept" \
        sh -c "! echo ' $DOC_IDS ' | grep -q ' forward-drop-without-accept '"

    # Inbound forwards: README says libvirt's own nft table still rejects them. Reported, not required.
    vg_hook "$LAB_FIXTURES/domain-vgt-g1.xml" qemu vgt-g1 start begin -
    info_reply "N: with g1 started, wan -> 198.18.0.1:2222 (libvirt's guest_input rejects new inbound)" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222

    # Back to the iptables backend and the applied lab for what follows.
    vg_hook "$VG_XML/vgt-g1-stopped.xml" qemu vgt-g1 stopped end -
    vg_hook "$VG_XML/vgt-g1-stopped.xml" qemu vgt-g1 release end -
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet stopped end -
    ip netns exec "$LAB_NS_HOST" nft delete table ip libvirt_network
    rm -f "$VG_NET_RUN/vgtnet.xml"
    cx_check_ruleset "N: back to the pre-virtgate baseline after teardown" "$LAB_TMP/baseline.rules.nolibvirt"
    lab_add_libvirt_rules
    local g
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet started begin -
    for g in vgt-g1 vgt-g2; do
        vg_hook "$LAB_FIXTURES/domain-$g.xml" qemu "$g" start begin -
        vg_hook "$LAB_FIXTURES/domain-$g.xml" qemu "$g" started begin -
    done
    cx_verify "N restored (iptables backend again)" full
}

# ---------------------------------------------------------------------------------------------------------------
# Legacy tables next to iptables-nft (last: a legacy table cannot be removed from a namespace)

cx_legacy_case() {
    echo "# --- L. a legacy table inside $LAB_NS_HOST"
    cx_doctor_healthy "before the legacy table"
    # Listing a legacy table creates it: done inside vgt-host only, never in the machine's namespace.
    ip netns exec "$LAB_NS_HOST" iptables-legacy -w -t filter -L -n >/dev/null 2>&1
    check "L: vgt-host now has a legacy filter table" \
        sh -c "ip netns exec $LAB_NS_HOST cat /proc/net/ip_tables_names | grep -qx filter"
    cx_doctor_finds "legacy and nft tables both in use" mixed-iptables-variants
    # virtgate keeps working with the "legacy tables present" warning around
    lab_ipt -t nat -F PREROUTING
    cx_timed "nat PREROUTING flushed, legacy tables present" "virtgate reapply" cx_reapply
    cx_check_reapply_rc "L"
    cx_verify "L legacy tables present" full
}

main_inner() {
    trap inner_cleanup EXIT
    trap 'exit 1' INT TERM
    : >"$LAB_TMP/timings"
    CX_DOCTOR_PIDNS=${CX_DOCTOR_PIDNS:-no}
    local d
    for d in libvirtd virtqemud virtnetworkd; do
        if pgrep -x "$d" >/dev/null 2>&1; then
            CX_DOCTOR_PIDNS=yes
        fi
    done
    # With libvirt daemons running on this machine, doctor would (rightly) report the lab's fresh hook links as newer
    # than the daemons: it then runs in a PID namespace of its own. CX_DOCTOR_PIDNS=yes forces that.
    [ "$CX_DOCTOR_PIDNS" = yes ] && lab_info "doctor runs in its own PID namespace (libvirt daemon found, or CX_DOCTOR_PIDNS=yes)"

    if ! cx_setup; then
        lab_not_ok "setup failed; nothing else run"
        exit 1
    fi
    # the lab's ruleset without libvirt's rules, for the nftables scenario's teardown check
    grep -v LIBVIRT "$LAB_TMP/baseline.rules" >"$LAB_TMP/baseline.rules.nolibvirt"

    cx_e1_reload
    cx_e2_disable_enable
    cx_e3_reset
    cx_e12b_with_block
    cx_e4_manage_builtins
    cx_e5_flush_all
    cx_e6_admin_flush
    cx_e7_libvirt_reload
    cx_e8_concurrency
    cx_doctor_cases
    cx_nft_scenario
    cx_legacy_case
    cx_print_timings
    exit 0
}

if [ "${1:-}" = --inner ]; then
    shift
    main_inner "$@"
else
    main_outer "$@"
fi
