# shellcheck shell=bash
# coexistence_helpers.bash: what coexistence.bats needs beyond helpers.bash: UFW's after.init with and without
# virtgate's block, MANAGE_BUILTINS, libvirt's restarts, virtgate reapply, the checks made after every event, hooks
# run at the same time, virtgate doctor, the timing of recoveries, and the lab states the tests start from.
#
# UFW's after.init: a block between `# BEGIN virtgate` and `# END virtgate` that runs `virtgate reapply` on `start`
# and `stop` and never fails UFW, like install.sh's. If hooks/ufw-after.init.sh exists, its block is used (with
# /usr/local/sbin/virtgate pointed at the binary under test, through a wrapper with the lab's VIRTGATE_* environment);
# otherwise the equivalent in cx_write_after_init_block.

CX_FIXTURES=$LAB_FIXTURES/coexistence
LAB_TOOLS="$LAB_TOOLS iptables-legacy"

# cx_paths: paths below $LAB_TMP (setup_file, and every test that loads this file).
cx_paths() {
    CX_WRAPPER=$LAB_TMP/sbin/virtgate
    CX_BLOCK=$LAB_TMP/after-init.block
    CX_DHOOKS=$LAB_TMP/doctor-hooks
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
}
if [ -n "${LAB_TMP:-}" ]; then cx_paths; fi

# ---------------------------------------------------------------------------------------------------------------
# Timing of recoveries

# cx_timed FAULT RESTORER COMMAND...: run COMMAND, record how long it took (a TAP comment, and a line of the table
# teardown_file prints); returns its status.
cx_timed() {
    local fault=$1 restorer=$2 t0 t1 rc=0 ms
    shift 2
    t0=$(date +%s%N)
    "$@" || rc=$?
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
    echo "# timing: $fault -> $restorer, $ms ms (exit $rc)" >&3
    printf '%s\t%s\t%s\n' "$fault" "$restorer" "$ms" >>"$LAB_TMP/timings"
    return "$rc"
}

cx_print_timings() {
    [ -s "${LAB_TMP:-}/timings" ] || return 0
    {
        echo "# --- recovery timings (restoring command only; probes excluded)"
        printf '# %-58s | %-52s | %8s\n' "fault" "what restored service" "ms"
        while IFS=$'\t' read -r fault restorer ms; do
            printf '# %-58s | %-52s | %8s\n' "$fault" "$restorer" "$ms"
        done <"$LAB_TMP/timings"
    } >&3
}

# ---------------------------------------------------------------------------------------------------------------
# UFW, libvirt and virtgate helpers

# cx_ufw DESCRIPTION ARGS...: ufw in vgt-host, checked to exit 0.
cx_ufw() {
    local desc=$1 rc=0
    shift
    lab_ufw "$@" >"$LAB_TMP/ufw.out" 2>&1 || rc=$?
    cx_check_ufw_rc "$desc" "$rc"
}

cx_ufw_quiet() {
    lab_ufw "$@" >"$LAB_TMP/ufw.out" 2>&1
}

# cx_check_ufw_rc DESCRIPTION STATUS: the last ufw command (output in ufw.out) exited 0.
cx_check_ufw_rc() {
    if [ "$2" -eq 0 ]; then
        lab_ok "$1"
    else
        lab_fail "$1 (exit $2)" <"$LAB_TMP/ufw.out"
    fi
}

# cx_ufw_timed FAULT RESTORER DESCRIPTION ARGS...: a timed ufw command, checked to exit 0.
cx_ufw_timed() {
    local fault=$1 restorer=$2 desc=$3 rc=0
    shift 3
    cx_timed "$fault" "$restorer" cx_ufw_quiet "$@" || rc=$?
    cx_check_ufw_rc "$desc" "$rc"
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
# Sets CX_BLOCK_SOURCE.
cx_write_after_init_block() {
    local snippet=$LAB_REPO/hooks/ufw-after.init.sh
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

# cx_after_init with-block|without-block: after.init = UFW's pristine file (+ the block), executable either way so
# that only the block differs. A line after the shebang (the admin's part of the file, outside the block) logs how UFW
# calls it.
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
    local spec t c j
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
        lab_ipt -t "$t" -F "$j" 2>/dev/null || true
        lab_ipt -t "$t" -X "$j" 2>/dev/null || true
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

# `virtgate reapply` as the admin (or after.init) runs it. Sets VG_RC; returns it.
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
        lab_fail "$1: virtgate reapply exits 0 (exit $VG_RC)" <"$VG_ERR"
    fi
}

# cx_reapply_timed FAULT TAG: a timed `virtgate reapply`, checked to exit 0.
cx_reapply_timed() {
    cx_timed "$1" "virtgate reapply" cx_reapply || true
    cx_check_reapply_rc "$2"
}

# cx_stop_guests: g1 and g2 stopped as libvirt does it.
cx_stop_guests() {
    local g
    for g in vgt-g1 vgt-g2; do
        vg_hook "$VG_XML/$g-stopped.xml" qemu "$g" stopped end -
        vg_hook "$LAB_FIXTURES/port-$g.xml" network vgtnet port-deleted begin -
        vg_hook "$VG_XML/$g-stopped.xml" qemu "$g" release end -
    done
}

# ---------------------------------------------------------------------------------------------------------------
# Verification after every event

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

# cx_check_ruleset DESCRIPTION EXPECTED_FILE: like helpers.bash's check_ruleset, chain order aside.
cx_check_ruleset() {
    local desc=$1 expected=$2 now=$LAB_TMP/ruleset.now
    lab_ruleset >"$now"
    if diff -u <(cx_normalise "$expected") <(cx_normalise "$now") >"$LAB_TMP/ruleset.diff"; then
        lab_ok "$desc"
    else
        { echo "diff expected -> observed (table, kind, chain, position; first 80 lines):"
          head -n 80 "$LAB_TMP/ruleset.diff"; } | lab_fail "$desc"
    fi
}

# Duplicate rule lines, per table (nat and mangle both have "-A POSTROUTING -j LIBVIRT_PRT").
cx_dups() {
    awk '/^\*/ { t = $0 } /^-A / { print t " " $0 }' "$1" | sort | uniq -d
}

cx_virtgate_lines() {
    grep -E 'VIRTGATE|VG[NDFSM]-' "$1" || true
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
    check_jump_positions "$tag"
    lab_ruleset >"$now"
    check_eq "$tag: no duplicate rule lines (beyond the lab's own)" "$(cat "$LAB_TMP/baseline.dups")" "$(cx_dups "$now")"
    if diff <(cx_normalise "$LAB_TMP/applied.rules" | cx_virtgate_lines -) <(cx_normalise "$now" | cx_virtgate_lines -) \
        >"$LAB_TMP/vg.diff"; then
        lab_ok "$tag: virtgate's rules are exactly those of the snapshot"
    else
        lab_fail "$tag: virtgate's rules are exactly those of the snapshot" <"$LAB_TMP/vg.diff"
    fi
    if [ "$mode" = full ]; then
        cx_check_ruleset "$tag: whole ruleset (filter, nat, mangle) identical to the snapshot" "$LAB_TMP/applied.rules"
    fi
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
        ) 3>&- 9>&- &
        pids="$pids $!"
    done
    for pid in $pids; do
        wait "$pid" || true
    done
    for i in $(seq "$#"); do
        rc=$(cat "$LAB_TMP/burst.$i.rc" 2>/dev/null || echo missing)
        if [ "$rc" != 0 ]; then
            failed=$((failed + 1))
            echo "#   concurrent run $i exited $rc:"
            sed 's/^/#   /' "$LAB_TMP/burst.$i.err" 2>/dev/null || true
        fi
        rm -f "$LAB_TMP/burst.$i.rc"
    done
    check_eq "$tag: all $# concurrent hook runs exit 0" 0 "$failed"
}

# ---------------------------------------------------------------------------------------------------------------
# Doctor

# cx_doctor: `virtgate doctor --json` in vgt-host with the lab's hooks dir and private UFW dir. Sets DOC_RC, DOC_IDS.
# doctor compares the hook links with the libvirt daemons it finds running: it runs in a PID namespace of its own,
# so that a libvirtd on this machine (another suite's, started at any time) is not taken for the lab's.
cx_doctor() {
    VG_OUT=$LAB_TMP/doctor.json
    VG_ERR=$LAB_TMP/doctor.err
    VG_EXTRA_ENV=(VIRTGATE_HOOKS_DIR="$CX_DHOOKS" VIRTGATE_UFW_DIR="$LAB_TMP/ufw/etc")
    vg_exec unshare /dev/null --pid --fork --mount-proc "$VIRTGATE" doctor --json
    VG_EXTRA_ENV=()
    DOC_RC=$VG_RC
    DOC_IDS=$(jq -r '.findings[].id' "$VG_OUT" 2>/dev/null | sort | tr '\n' ' ' | sed 's/ $//')
}

cx_doctor_healthy() {
    local tag=$1 healthy
    cx_doctor
    healthy=$(jq -r '.healthy' "$VG_OUT" 2>/dev/null || true)
    if [ "$DOC_RC" -eq 0 ] && [ "$healthy" = true ] && [ -z "$DOC_IDS" ]; then
        lab_ok "doctor $tag: exit 0, healthy, no findings"
    else
        cat "$VG_OUT" "$VG_ERR" |
            lab_fail "doctor $tag: exit 0, healthy, no findings (exit $DOC_RC, healthy=$healthy, findings: $DOC_IDS)"
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
    if [ "$DOC_RC" -eq 1 ] && [ -z "$missing" ] && [ "$(jq -r .healthy "$VG_OUT" 2>/dev/null || true)" = false ]; then
        lab_ok "doctor $tag: exit 1, reports $* (all findings: $DOC_IDS)"
    else
        cat "$VG_OUT" "$VG_ERR" |
            lab_fail "doctor $tag: exit 1, reports $* (exit $DOC_RC, missing:$missing, findings: $DOC_IDS)"
    fi
}

# ---------------------------------------------------------------------------------------------------------------
# Lab states. Every test starts from the state it needs (cx_need): "baseline" (nothing of virtgate's), "applied"
# (network vgtnet, g1 and g2 started through the hooks, UFW and libvirt's rules in place: the snapshot), or the
# middle of a scenario that takes several tests ("e4-broken", "e4-restored", "e5-reapplied", "e6-reapplied",
# "n-nftables"). cx_need also puts after.init with or without virtgate's block. In a whole run the tests move the lab
# from one state to the next in file order; a test run alone (--filter) first gets there through the same commands,
# checked as in the tests that make them. A test that fails half way leaves the state "dirty": the next one puts UFW,
# libvirt's rules and virtgate back (cx_recover) and checks that the ruleset is the baseline again.

cx_state() {
    cat "$LAB_TMP/cx-state" 2>/dev/null || echo dirty
}

cx_set_state() {
    echo "$1" >"$LAB_TMP/cx-state"
}

# cx_recover: what a failed test may have left (MANAGE_BUILTINS=yes, UFW disabled, reset or flushed, libvirt's rules
# doubled or gone, libvirt's nftables table and status file, ip_forward=0, a foreign rule, doctor's hook links
# changed), virtgate's rules on both backends removed, its state directory emptied; the ruleset must be the baseline.
cx_recover() {
    local b
    echo "# the lab was left $(cx_state) (a test failed half way, or ran alone): back to the baseline" >&3
    VG_EXTRA_ENV=()
    ip netns exec "$LAB_NS_HOST" nft delete table ip libvirt_network 2>/dev/null || true
    rm -f "$VG_NET_RUN/vgtnet.xml"
    ip netns exec "$LAB_NS_HOST" sysctl -qw net.ipv4.ip_forward=1
    while lab_ipt -D FORWARD -s 192.0.2.99/32 -j DROP 2>/dev/null; do :; done
    ln -sfn "$VIRTGATE" "$CX_DHOOKS/qemu"
    ln -sfn "$VIRTGATE" "$CX_DHOOKS/network"
    cx_set_manage_builtins no
    cx_after_init without-block
    for b in nft iptables; do VG_BACKEND=$b vg_run flush; done
    rm -rf "$VG_STATE"
    mkdir -p "$VG_STATE"
    lab_ufw disable >/dev/null 2>&1 || true
    lab_ufw --force enable >"$LAB_TMP/ufw.out" 2>&1 || true
    cx_libvirt_remove_iptables
    lab_add_libvirt_rules
    cx_check_ruleset "recovery: after a failed test, UFW, libvirt's rules and no virtgate: the ruleset equals the baseline" \
        "$LAB_TMP/baseline.rules"
    cx_set_state baseline
}

# cx_apply: from the baseline, `virsh net-start` and two `virsh start` through the hooks; the first time, the
# ruleset is the snapshot every later check compares with.
cx_apply() {
    local net=$LAB_FIXTURES/network-vgtnet.xml g
    cx_set_state dirty
    vg_hook "$net" network vgtnet start begin -
    vg_hook "$net" network vgtnet started begin -
    for g in vgt-g1 vgt-g2; do
        vg_hook "$VG_XML/$g-prepare.xml" qemu "$g" prepare begin -
        vg_hook "$LAB_FIXTURES/port-$g.xml" network vgtnet port-created begin -
        vg_hook "$LAB_FIXTURES/domain-$g.xml" qemu "$g" start begin -
        vg_hook "$LAB_FIXTURES/domain-$g.xml" qemu "$g" started begin -
    done
    if [ -f "$LAB_TMP/applied.rules" ]; then
        cx_check_ruleset "applied: network, g1 and g2 started: ruleset identical to the snapshot" "$LAB_TMP/applied.rules"
    else
        lab_ruleset >"$LAB_TMP/applied.rules"
    fi
    cx_set_state applied
}

# cx_need STATE [with-block|without-block]: bring the lab to STATE from wherever the last test left it, then
# after.init as asked.
cx_need() {
    local want=$1 block=${2:-} now
    now=$(cx_state)
    if [ "$now-$want" = e4-broken-e4-restored ]; then
        cx_e4_restore
        now=$want
    fi
    if [ "$now" != "$want" ]; then
        case $now in
            baseline | applied) ;;
            *) cx_recover; now=baseline ;;
        esac
        if [ "$now" = applied ] && [ "$want" = baseline ]; then
            cx_recover
            now=baseline
        fi
        if [ "$now" = baseline ] && [ "$want" != baseline ]; then
            cx_apply
        fi
        case $want in
            baseline | applied) ;;
            e4-broken) cx_e4_break ;;
            e4-restored) cx_e4_break; cx_e4_restore ;;
            e5-reapplied) cx_e5_flush_all; cx_e5_reapply ;;
            e6-reapplied) cx_e6_flush; cx_e6_reapply ;;
            n-nftables) cx_n_to_nftables; cx_n_network_hook ;;
            *) fail "cx_need: no way to state $want" ;;
        esac
    fi
    if [ -n "$block" ]; then cx_after_init "$block"; fi
}

# ---------------------------------------------------------------------------------------------------------------
# The events of the scenarios that take several tests (the tests check what happens in between)

# E4: MANAGE_BUILTINS=yes; without the block, ufw reload wipes virtgate's filter chains and every built-in chain's
# jumps, and nothing puts them back.
cx_e4_break() {
    cx_set_state dirty
    check "E4: MANAGE_BUILTINS=yes set in the private /etc/default/ufw" cx_set_manage_builtins yes
    cx_after_init without-block
    cx_ufw "E4: ufw reload (MANAGE_BUILTINS=yes, no block) exits 0" reload
    cx_set_state e4-broken
}

# E4: with the block, the same reload restores service.
cx_e4_restore() {
    cx_set_state dirty
    cx_after_init with-block
    : >"$LAB_TMP/after-init.log"
    : >"$LAB_TMP/reapply.err"
    cx_ufw_timed "MANAGE_BUILTINS=yes ufw reload wiped virtgate" "ufw reload with after.init block (reapply)" \
        "E4 block: ufw reload exits 0" reload
    cx_set_state e4-restored
}

# E5: ufw-init flush-all (the block in after.init runs on flush-all too).
cx_e5_flush_all() {
    local init=/usr/lib/ufw/ufw-init
    [ -x "$init" ] || init=/lib/ufw/ufw-init
    cx_set_state dirty
    cx_after_init with-block
    : >"$LAB_TMP/after-init.log"
    if ip netns exec "$LAB_NS_HOST" "$init" flush-all >"$LAB_TMP/ufw.out" 2>&1; then
        lab_ok "E5: $init flush-all exits 0"
    else
        lab_fail "E5: $init flush-all exits 0" <"$LAB_TMP/ufw.out"
    fi
}

cx_e5_reapply() {
    cx_reapply_timed "ufw-init flush-all" "E5"
    cx_set_state e5-reapplied
}

# E6: an admin's iptables -F FORWARD and -t nat -F.
cx_e6_flush() {
    cx_set_state dirty
    lab_ipt -F FORWARD
    lab_ipt -t nat -F
}

cx_e6_reapply() {
    cx_reapply_timed "iptables -F FORWARD; iptables -t nat -F" "E6"
    cx_set_state e6-reapplied
}

# N: a fresh host: virtgate's guests and network stopped, libvirt's iptables rules gone, libvirt 10's nftables table
# for the network and its status file.
cx_n_to_nftables() {
    cx_set_state dirty
    cx_after_init with-block
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
        lab_fail "N: table ip libvirt_network loaded" <"$LAB_TMP/nft.err"
    fi
    # libvirt keeps the running network's status XML; doctor reads it
    {
        echo "<networkstatus>"
        sed -e '/hookData>/d' "$LAB_FIXTURES/network-vgtnet.xml"
        echo "</networkstatus>"
    } >"$VG_NET_RUN/vgtnet.xml"
}

# N: the network's hooks on that host.
cx_n_network_hook() {
    vg_hook "$LAB_FIXTURES/network-vgtnet.xml" network vgtnet start begin -
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    cx_timed "libvirt nftables backend under UFW (egress dead)" "network started hook" \
        vg_exec "$VIRTGATE" "$LAB_FIXTURES/network-vgtnet.xml" hook network vgtnet started begin -
    check_eq "N: network started hook exits 0" 0 "$VG_RC"
    cx_set_state n-nftables
}
