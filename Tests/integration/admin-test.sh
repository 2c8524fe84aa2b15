#!/bin/bash
# admin-test.sh: root-only integration test of virtgate's admin commands (sync, status, forward add/remove/list,
# reapply, flush) against real iptables, real UFW and real traffic, confined to network namespaces named vgt-*
# (the lab of lab.sh, plus a third guest namespace vgt-g3 for late binding).
#
# Usage (as root):
#   bash Tests/integration/admin-test.sh
#   VIRTGATE=/path/to/virtgate bash Tests/integration/admin-test.sh
#
# Output: one `ok - ...` / `not ok - ...` line per check, `# ...` diagnostics and timings, and as the last line
# `N passed, M failed`. Exit status 0 only if nothing failed. Not root or a tool missing: a failure, not a skip.
#
# libvirt: admin commands talk to libvirt's own test driver, `--connect test:///ABSOLUTE/PATH/node.xml`. Every
# connection starts afresh from that file, so a `forward add` persists only inside its own process (it still applies
# its rules to the kernel at once, which is what is tested); to see "what libvirt would have persisted", the test
# derives node files that carry the added forward and uses them for `forward list`, `forward remove` and `status`.
# The test driver reports no network DHCP leases; the guests that must be reachable have <host mac ip> reservations.
# Every virtgate and iptables call runs inside vgt-host (`ip netns exec vgt-host`), with VIRTGATE_STATE_DIR,
# VIRTGATE_DNSMASQ_DIR, VIRTGATE_NETWORK_RUN_DIR and VIRTGATE_NETWORK_ETC_DIR in a temp directory.
#
# Fixtures (fixtures/admin/):
#   node.xml           network vgtnet = the lab (vgt-br0, 10.213.0.1/24, reservations g1 .11, g2 .12); running
#                      vgt-g1 (tcp 2222->22, udp 5353->53) and vgt-g2 (tcp 2223->22); shut off vgt-off (tcp 2230)
#   node-g2-gone.xml   the same without vgt-g2
#   node-conflict.xml  vgt-g2 also declares tcp 2222 (held by vgt-g1)
#   node-empty.xml     no network, no guest
#   domain-vgt-g3.xml  the third guest as libvirt hands it to the qemu hook (tcp 2240->22, no reservation)
#
# Scenarios: 0 lab and baseline; 1 sync --dry-run, sync, traffic, idempotence, status; 2 rules wiped or edited by
# hand: status missing/drift/jumps, sync repairs; 3 orphans (guest gone or shut off): status lists them, sync removes
# them; 4 conflicts: status names the holder, forward add refused; 5 forward add/list/remove, --source; 6 late
# binding: hook-started guest without reservation is pending, lease file + reapply binds it, moved lease re-binds it;
# 7 teardown: sync with no libvirt objects and flush both return to the baseline exactly; 8 timing of sync for 100
# guests x 5 forwards (dry-run and apply), back to the baseline.

set -u

LAB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_FIXTURES=$LAB_DIR/../bats/fixtures/lab
ADMIN_FIXTURES=$LAB_FIXTURES/admin
# shellcheck source=lab.sh
. "$LAB_DIR/lab.sh"

# A third guest, for late binding: no reservation, address from the lease file only, and it moves.
LAB_NS_G3=vgt-g3
LAB_G3_MAC=52:54:00:00:00:13
LAB_G3_IP=10.213.0.113
LAB_G3_IP_MOVED=10.213.0.114
LAB_NAMESPACES="$LAB_NAMESPACES $LAB_NS_G3"
LAB_TOOLS="$LAB_TOOLS jq"

VIRTGATE=${VIRTGATE:-$(cd "$LAB_DIR/../.." && pwd)/.build/debug/virtgate}
export VIRTGATE

# =================================================================================================================
# Outer part (same shape as netns-test.sh)

LAB_CREATED=no
LAB_SUMMARY_DONE=no

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

LAB_INNER_PID=""

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
    LAB_TMP=$(mktemp -d /tmp/vgt-admin.XXXXXX) || exit 1
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
    local f
    for f in node.xml node-g2-gone.xml node-conflict.xml node-empty.xml domain-vgt-g3.xml; do
        if [ ! -f "$ADMIN_FIXTURES/$f" ]; then
            lab_not_ok "prerequisite: fixture $ADMIN_FIXTURES/$f exists"
            exit 1
        fi
    done
    echo "# virtgate under test: $VIRTGATE ($(stat -c '%y' "$VIRTGATE"), sha256 $(sha256sum <"$VIRTGATE" | cut -c1-16))"
    cp "$VIRTGATE" "$LAB_TMP/virtgate" || exit 1
    VIRTGATE=$LAB_TMP/virtgate

    lab_take_lock || exit 1

    local ufw_sum_before root_rules_before root_forward_before
    ufw_sum_before=$(lab_ufw_checksum)
    root_rules_before=$(lab_root_ruleset)
    root_forward_before=$(sysctl -n net.ipv4.ip_forward)

    lab_delete_namespaces

    LAB_CREATED=yes
    if ! lab_create_topology; then
        lab_not_ok "lab: create namespaces, links and addresses"
        exit 1
    fi
    # lab_create_topology created every namespace of LAB_NAMESPACES, vgt-g3 included; it wires up g1 and g2 only
    if ! lab_add_guest "$LAB_NS_G3" vgt-g3h "$LAB_G3_IP" "$LAB_G3_MAC"; then
        lab_not_ok "lab: third guest namespace $LAB_NS_G3"
        exit 1
    fi
    lab_ok "lab: namespaces $LAB_NAMESPACES created"

    unshare --mount --propagation private -- bash "$LAB_DIR/admin-test.sh" --inner 9>&- &
    LAB_INNER_PID=$!
    wait "$LAB_INNER_PID"
    local inner_rc=$?
    LAB_INNER_PID=""
    if [ "$inner_rc" -ne 0 ] && [ "$(lab_count 'not ok')" -eq 0 ]; then
        lab_not_ok "inner test run ended with status $inner_rc before recording a failure"
    fi

    lab_delete_namespaces
    LAB_CREATED=no

    # only this suite's namespaces: other suites (the installer test) may run their own vgt-* at the same time
    check_eq "machine: none of this run's namespaces ($LAB_NAMESPACES) left" "" \
        "$(lab_namespaces_left | grep -xF "$(echo "$LAB_NAMESPACES" | tr ' ' '\n')" || true)"
    check_eq "machine: UFW's real files (/etc/ufw, /etc/default/ufw, /usr/lib/ufw) unchanged" \
        "$ufw_sum_before" "$(lab_ufw_checksum)"
    check_eq "machine: root namespace ip_forward unchanged" "$root_forward_before" "$(sysctl -n net.ipv4.ip_forward)"
    if [ "$root_rules_before" = "$(lab_root_ruleset)" ]; then
        lab_ok "machine: root namespace iptables ruleset unchanged"
    else
        lab_not_ok "machine: root namespace iptables ruleset unchanged"
        diff <(echo "$root_rules_before") <(lab_root_ruleset) | lab_diag
    fi
    exit 0
}

# =================================================================================================================
# Inner part: private mount namespace; UFW, libvirt rules, services, scenarios.

inner_cleanup() {
    lab_stop_services
}

lab_setup_inner() {
    if lab_mount_private_ufw; then
        lab_ok "lab: private copies of UFW's files mounted"
    else
        lab_not_ok "lab: private copies of UFW's files mounted"
        return 1
    fi
    if lab_ufw --force enable >"$LAB_TMP/ufw.out" 2>&1; then
        lab_ok "lab: ufw --force enable in $LAB_NS_HOST"
    else
        lab_not_ok "lab: ufw --force enable in $LAB_NS_HOST"
        lab_diag "$LAB_TMP/ufw.out"
        return 1
    fi
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
    lab_serve "$LAB_NS_G1" udp 53 g1-53-udp || ok=no
    lab_serve "$LAB_NS_G2" tcp 22 g2-22 || ok=no
    lab_serve "$LAB_NS_G3" tcp 22 g3-22 || ok=no
    lab_serve "$LAB_NS_WAN" tcp 7000 wan-7000 || ok=no
    if [ "$ok" = yes ]; then
        lab_ok "lab: socat services listening in $LAB_NS_G1, $LAB_NS_G2, $LAB_NS_G3, $LAB_NS_WAN"
    else
        lab_not_ok "lab: socat services listening"
        return 1
    fi
    return 0
}

# Directories and node files for virtgate. Node files are copied to $LAB_TMP so that derived ones sit next to them.
admin_prepare_env() {
    VG_STATE=$LAB_TMP/state
    VG_NET_RUN=$LAB_TMP/network-run
    VG_NET_ETC=$LAB_TMP/network-etc
    VG_DNSMASQ=$LAB_TMP/dnsmasq
    VG_XML=$LAB_TMP/xml
    NODES=$LAB_TMP/nodes
    mkdir -p "$VG_STATE" "$VG_NET_RUN" "$VG_NET_ETC" "$VG_DNSMASQ" "$VG_XML" "$NODES" || return 1
    VG_CONFIG=$LAB_TMP/virtgate.conf
    echo "ON_INVALID=warn" >"$VG_CONFIG" || return 1
    cp "$ADMIN_FIXTURES"/node*.xml "$NODES/" || return 1
    NODE=test://$NODES/node.xml
    NODE_G2_GONE=test://$NODES/node-g2-gone.xml
    NODE_CONFLICT=test://$NODES/node-conflict.xml
    NODE_EMPTY=test://$NODES/node-empty.xml
    # g2 shut off instead of undefined (test:runstate 5 = VIR_DOMAIN_SHUTOFF)
    awk '/<name>vgt-g2<\/name>/ {g2=1} g2 && /<test:runstate>1</ {sub(/>1</, ">5<"); g2=0} {print}' \
        "$NODES/node.xml" >"$NODES/node-g2-off.xml" || return 1
    NODE_G2_OFF=test://$NODES/node-g2-off.xml
    grep -q '<test:runstate>5</test:runstate>' "$NODES/node-g2-off.xml" || return 1
    # dnsmasq has started and has leased nothing yet
    echo "[]" >"$VG_DNSMASQ/$LAB_BRIDGE.status" || return 1
    lab_shape_unresolved "$ADMIN_FIXTURES/domain-vgt-g3.xml" "$VG_XML/vgt-g3-prepare.xml" keep-id || return 1
    lab_shape_unresolved "$ADMIN_FIXTURES/domain-vgt-g3.xml" "$VG_XML/vgt-g3-stopped.xml" || return 1

    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    # Late binding: `virtgate reapply` re-binds remembered guests to the lease files.
    REBIND=reapply
    return 0
}

# node_with_g1_forward OUT FORWARD-ELEMENT: node.xml with one more forward in vgt-g1's metadata, i.e. what libvirt
# would have persisted after `forward add`.
node_with_g1_forward() {
    local out=$1 element=$2
    awk -v el="$element" '
        /<name>vgt-g1<\/name>/ { g1 = 1 }
        g1 && /<\/vg:forwards>/ { print "        " el; g1 = 0 }
        { print }' "$NODES/node.xml" >"$NODES/$out"
    echo "test://$NODES/$out"
}

# vg ARGS...: run virtgate with ARGS inside vgt-host (stdin /dev/null); VG_RC, $VG_OUT, $VG_ERR.
vg() {
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    vg_exec "$VIRTGATE" /dev/null "$@"
}

# vg_ok DESCRIPTION ARGS...: run virtgate, check exit 0.
vg_ok() {
    local desc=$1
    shift
    vg "$@"
    if [ "$VG_RC" -eq 0 ]; then
        lab_ok "$desc (virtgate $* exits 0)"
    else
        lab_not_ok "$desc (virtgate $* exits 0; exit $VG_RC)"
        echo "#   stderr:"
        head -n 20 "$VG_ERR" | lab_diag
    fi
}

# vg_timed DESCRIPTION ARGS...: vg_ok, and print the wall time.
vg_timed() {
    local desc=$1 t0 t1
    shift
    t0=$(date +%s%N)
    vg_ok "$desc" "$@"
    t1=$(date +%s%N)
    LAST_MS=$(((t1 - t0) / 1000000))
    echo "# timing: virtgate $* : ${LAST_MS} ms"
}

# vg_hook_file XML ARGS...: the hook, as libvirt runs it, checked to exit 0.
vg_hook_file() {
    local stdin=$1
    shift
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
    vg_exec "$VIRTGATE" "$stdin" hook "$@"
    if [ "$VG_RC" -eq 0 ]; then
        lab_ok "virtgate hook $* exits 0"
    else
        lab_not_ok "virtgate hook $* exits 0 (exit $VG_RC)"
        lab_diag "$VG_ERR"
    fi
}

# check_stdout_has DESCRIPTION FIXED-STRING...
check_stdout_has() {
    local desc=$1 s missing=""
    shift
    for s in "$@"; do
        grep -qF -- "$s" "$VG_OUT" || missing="$missing '$s'"
    done
    if [ -z "$missing" ]; then
        lab_ok "$desc"
    else
        lab_not_ok "$desc"
        echo "#   missing:$missing; stdout (first 40 lines):"
        head -n 40 "$VG_OUT" | lab_diag
        echo "#   stderr:"
        head -n 10 "$VG_ERR" | lab_diag
    fi
}

check_stdout_lacks() {
    local desc=$1 s found=""
    shift
    for s in "$@"; do
        grep -qF -- "$s" "$VG_OUT" && found="$found '$s'"
    done
    if [ -z "$found" ]; then
        lab_ok "$desc"
    else
        lab_not_ok "$desc"
        echo "#   present:$found"
    fi
}

# expect_reply with counters of virtgate's chains on failure (diagnostics for a lost datagram or connection)
expect_reply_diag() {
    local before
    before=$(lab_count 'not ok')
    expect_reply "$@"
    if [ "$(lab_count 'not ok')" != "$before" ]; then
        echo "#   counters in $LAB_NS_HOST (nat VIRTGATE-DNAT/VGD-*, filter VIRTGATE-FWD/VGF-*):"
        ip netns exec "$LAB_NS_HOST" sh -c 'iptables-save -c -t nat; iptables-save -c -t filter' |
            grep -E 'VIRTGATE|VGD-|VGF-|^\[[0-9]+:[0-9]+\] -A (PREROUTING|FORWARD|ufw-before-forward|LIBVIRT)' | head -n 40 | lab_diag
        echo "#   listeners in $2's guest: $(ip netns exec "$LAB_NS_G1" ss -Hlun | tr '\n' ' ')"
    fi
}

# The kernel's ruleset in vgt-host mentions / does not mention a pattern (grep -E).
rules_match() { lab_ruleset | grep -qE -- "$1"; }
rules_lack() { ! lab_ruleset | grep -qE -- "$1"; }

# The backend under test (VIRTGATE_BACKEND, see lab.sh). Checks of iptables internals have an nft counterpart.
is_nft() { [ "$VG_BACKEND" = nft ]; }
# dnat_text IP PORT: how a DNAT to IP:PORT reads in the backend's dry-run output
dnat_text() { if is_nft; then echo ": $1 . $2"; else echo "--to-destination $1:$2"; fi; }
# nft_dnat_elements REGEX: DNAT map elements whose JSON line matches REGEX
nft_dnat_elements() { lab_nft_lines | grep -E '^nft fwd[46]' | grep -cE -- "$1"; }

check_jump_positions() {
    local tag=$1 rule
    check_eq "$tag: first rule of filter FORWARD is the VIRTGATE-FWD jump" "-A FORWARD -j VIRTGATE-FWD" \
        "$(lab_first_rule filter FORWARD)"
    if is_nft; then
        lab_check_nft_hooks "$tag"
        return
    fi
    rule=$(lab_first_rule nat PREROUTING)
    check "$tag: first rule of nat PREROUTING jumps to VIRTGATE-DNAT ('$rule')" \
        sh -c "echo '$rule' | grep -q -- '-j VIRTGATE-DNAT'"
    rule=$(lab_first_rule nat OUTPUT)
    check "$tag: first rule of nat OUTPUT jumps to VIRTGATE-DNAT ('$rule')" \
        sh -c "echo '$rule' | grep -q -- '-j VIRTGATE-DNAT'"
    check_eq "$tag: first rule of nat POSTROUTING is the VIRTGATE-POST jump" "-A POSTROUTING -j VIRTGATE-POST" \
        "$(lab_first_rule nat POSTROUTING)"
}

state_digest() {
    find "$VG_STATE" -type f ! -name '*lock*' -print0 | sort -z | xargs -0 -r sha256sum
}

# ---------------------------------------------------------------------------------------------------------------
# status --json

# status_json DESCRIPTION URI: run `status --json`, keep it in $STATUS; the run and the JSON are one check.
STATUS=""
status_json() {
    local desc=$1 uri=$2
    STATUS=$LAB_TMP/status.json
    vg status --json --connect "$uri"
    cp "$VG_OUT" "$STATUS"
    if [ "$VG_RC" -eq 0 ] && jq -e 'has("networks") and has("guests") and has("orphans") and has("jumpsInPlace")' \
        "$STATUS" >/dev/null 2>&1; then
        lab_ok "$desc: status --json exits 0 with networks, guests, orphans, jumpsInPlace"
    else
        lab_not_ok "$desc: status --json exits 0 with networks, guests, orphans, jumpsInPlace (exit $VG_RC)"
        head -n 30 "$VG_OUT" | lab_diag
        head -n 10 "$VG_ERR" | lab_diag
    fi
}

# jq over the last status
sj() { jq -r "$@" "$STATUS" 2>/dev/null; }
net_rules() { sj --arg n "$1" '.networks[] | select(.name == $n) | .rules'; }
# fwd FIELD GUEST PROTO HOST-PORTS
fwd() {
    sj --arg g "$2" --arg p "$3" --arg h "$4" \
        ".guests[] | select(.name == \$g) | .forwards[] | select(.proto == \$p and .hostPorts == \$h) | .$1 // \"\""
}
orphans() { sj '.orphans | join(" ")'; }
jumps() { sj '.jumpsInPlace'; }

check_status_all_good() {
    local tag=$1
    check_eq "$tag: status: network vgtnet rules in-place" in-place "$(net_rules vgtnet)"
    check_eq "$tag: status: vgt-g1 tcp 2222 active" active "$(fwd state vgt-g1 tcp 2222)"
    check_eq "$tag: status: vgt-g1 udp 5353 active" active "$(fwd state vgt-g1 udp 5353)"
    check_eq "$tag: status: vgt-g2 tcp 2223 active" active "$(fwd state vgt-g2 tcp 2223)"
    check_eq "$tag: status: jumpsInPlace true" true "$(jumps)"
    check_eq "$tag: status: no orphans" "" "$(orphans)"
}

# Delete virtgate's jumps from the built-in chains and flush/delete every VIRTGATE-* and VG?-* chain, by hand, in
# iptables and ip6tables.
wipe_by_hand() {
    local t line c chains ipt
    local -a words
    for ipt in iptables ip6tables; do
        for t in filter nat mangle; do
            while read -r line; do
                [ -n "$line" ] || continue
                read -ra words <<<"$line"
                words[0]=-D
                ip netns exec "$LAB_NS_HOST" "$ipt" -w -t "$t" "${words[@]}" || return 1
            done < <(ip netns exec "$LAB_NS_HOST" "$ipt" -w -t "$t" -S |
                grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (VIRTGATE-|VG[A-Z]-)')
            chains=$(ip netns exec "$LAB_NS_HOST" "$ipt" -w -t "$t" -S | sed -n -E 's/^-N ((VIRTGATE-|VG[A-Z]-)[^ ]*)$/\1/p')
            for c in $chains; do ip netns exec "$LAB_NS_HOST" "$ipt" -w -t "$t" -F "$c" || return 1; done
            for c in $chains; do ip netns exec "$LAB_NS_HOST" "$ipt" -w -t "$t" -X "$c" || return 1; done
        done
    done
    # and virtgate's nftables table, if there is one
    ip netns exec "$LAB_NS_HOST" nft delete table inet virtgate 2>/dev/null
    return 0
}

# delete_rule_matching TABLE CHAIN FIXED-STRING: delete the first rule of CHAIN that contains the string.
delete_rule_matching() {
    local t=$1 chain=$2 pattern=$3 line
    local -a words
    line=$(lab_ipt -t "$t" -S "$chain" | grep -F -- "$pattern" | head -n1)
    [ -n "$line" ] || return 1
    read -ra words <<<"$line"
    words[0]=-D
    lab_ipt -t "$t" "${words[@]}"
}

# ---------------------------------------------------------------------------------------------------------------
# Scenarios

scenario_baseline() {
    echo "# --- 0. the lab without virtgate, baseline"
    check_eq "lab: FORWARD policy is DROP (UFW)" "-P FORWARD DROP" "$(lab_ipt -S FORWARD | sed -n 1p)"
    expect_reply "lab: g1 egress to wan works (libvirt rules)" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    expect_no_reply "lab: wan -> 198.18.0.1:2222 gets nothing before virtgate" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_no_reply "lab: wan routed straight to g3 10.213.0.113:22 is blocked" "$LAB_NS_WAN" tcp "$LAB_G3_IP" 22
    lab_ruleset >"$LAB_TMP/baseline.rules"
    check "baseline: ruleset of $LAB_NS_HOST saved, has libvirt's and UFW's chains, no virtgate chain" \
        sh -c "grep -q LIBVIRT_FWI '$LAB_TMP/baseline.rules' && grep -q ufw-before-forward '$LAB_TMP/baseline.rules' &&
               ! grep -qE 'VIRTGATE|VG[A-Z]-' '$LAB_TMP/baseline.rules'"
}

scenario_sync() {
    echo "# --- 1. sync --dry-run, sync, idempotence, status"
    local before
    before=$(state_digest)
    vg_ok "dry-run: sync --dry-run" sync --dry-run --connect "$NODE"
    if is_nft; then
        check_stdout_has "dry-run: prints the nft script with the three forwards and the iptables network rules" \
            'table inet virtgate {' "$(dnat_text 10.213.0.11 22)" "$(dnat_text 10.213.0.11 53)" \
            "$(dnat_text 10.213.0.12 22)" '*filter' 'COMMIT' ':VGN-vgtnet' '-j VIRTGATE-FWD' '-m connmark --mark'
    else
        check_stdout_has "dry-run: prints an iptables-restore transaction with the three forwards" \
            '*nat' '*filter' 'COMMIT' '--to-destination 10.213.0.11:22' '--to-destination 10.213.0.11:53' \
            '--to-destination 10.213.0.12:22' ':VGN-vgtnet' '-j VIRTGATE-FWD'
    fi
    check_stdout_lacks "dry-run: nothing for the shut-off guest vgt-off (2230)" 'vgt-off' '2230'
    check_ruleset "dry-run: ruleset unchanged (baseline)" "$LAB_TMP/baseline.rules"
    check_eq "dry-run: state directory unchanged" "$before" "$(state_digest)"
    expect_no_reply "dry-run: wan -> 198.18.0.1:2222 stays closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222

    vg_timed "sync: apply" sync --connect "$NODE"
    expect_reply "sync: wan -> 198.18.0.1:2222 reaches g1-22, source unchanged" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 $LAB_WAN_IP"
    expect_reply_diag "sync: wan -> 198.18.0.1:5353/udp reaches g1-53-udp" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353 "g1-53-udp $LAB_WAN_IP"
    expect_reply "sync: wan -> 198.18.0.1:2223 reaches g2-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 $LAB_WAN_IP"
    expect_reply "sync: g1 egress to wan works" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    expect_reply "sync: g2 egress to wan works" "$LAB_NS_G2" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    expect_reply "sync: hairpin g2 -> 198.18.0.1:2222 reaches g1-22" "$LAB_NS_G2" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_no_reply "sync: wan routed straight to 10.213.0.11:22 stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 22
    expect_no_reply "sync: wan -> 198.18.0.1:22 (guest port, not forwarded) refused" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 22
    expect_no_reply "sync: wan -> 198.18.0.1:2230 (shut-off guest's forward) refused" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2230
    check "sync: no chain or rule for the shut-off guest vgt-off" rules_lack 'vgt-off|2230'
    check_jump_positions "sync"
    lab_ruleset >"$LAB_TMP/synced.rules"
    echo "# virtgate's rules after sync:"
    grep -E 'VIRTGATE|VG[A-Z]-' "$LAB_TMP/synced.rules" | lab_diag
    lab_info "state directory after sync: $(cd "$VG_STATE" && find . -type f | sort | tr '\n' ' ')"

    vg_ok "idempotence: second sync --dry-run" sync --dry-run --connect "$NODE"
    check_eq "idempotence: second sync --dry-run prints exactly '# sync: no changes'" "# sync: no changes" \
        "$(cat "$VG_OUT")"
    vg_ok "idempotence: second sync" sync --connect "$NODE"
    check_ruleset "idempotence: second sync leaves the ruleset identical" "$LAB_TMP/synced.rules"

    status_json "status after sync" "$NODE"
    check_status_all_good "after sync"
    check_eq "status: vgt-g1 tcp 2222 bound to 10.213.0.11 (reservation)" 10.213.0.11 \
        "$(fwd guestAddress vgt-g1 tcp 2222)"
    check_eq "status: vgt-g2 tcp 2223 bound to 10.213.0.12 (reservation)" 10.213.0.12 \
        "$(fwd guestAddress vgt-g2 tcp 2223)"
    check_eq "status: the shut-off guest vgt-off is not listed" "" "$(sj '.guests[] | select(.name == "vgt-off") | .name')"
    check_eq "status: no warnings while no host process listens on 2222" "" "$(fwd 'warnings | join(",")' vgt-g1 tcp 2222)"
    vg_ok "status: table form" status --connect "$NODE"
    check_stdout_has "status: table lists vgtnet in-place and the forwards active" vgtnet in-place active vgt-g1 vgt-g2
    check_ruleset "status: changed nothing" "$LAB_TMP/synced.rules"

    # a host process listening on a forwarded port: the forward hides it; status warns
    local pid
    lab_serve "$LAB_NS_HOST" tcp 2222 host-2222
    pid=${LAB_PIDS##* }
    status_json "status with a host listener on 2222" "$NODE"
    check "status: warning on vgt-g1 tcp 2222 while a host process listens on tcp 2222" \
        sh -c "jq -e '.guests[] | select(.name == \"vgt-g1\") | .forwards[] | select(.hostPorts == \"2222\") |
               .warnings | length > 0' '$STATUS' >/dev/null"
    check_eq "status: still active with the warning" active "$(fwd state vgt-g1 tcp 2222)"
    check_eq "status: no warning on vgt-g2 tcp 2223" "" "$(fwd 'warnings | join(",")' vgt-g2 tcp 2223)"
    expect_reply "status: wan -> 198.18.0.1:2222 still reaches g1-22, not the host listener" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    kill "$pid" 2>/dev/null
    LAB_PIDS=${LAB_PIDS% *}
}

scenario_repair() {
    echo "# --- 2. rules wiped or edited by hand; status reports, sync repairs"
    if wipe_by_hand; then
        lab_ok "wipe: jumps deleted, VIRTGATE-*/VG?-* chains flushed and deleted with iptables in $LAB_NS_HOST"
    else
        lab_not_ok "wipe: jumps deleted, VIRTGATE-*/VG?-* chains flushed and deleted with iptables in $LAB_NS_HOST"
    fi
    check_ruleset "wipe: ruleset is back to the baseline" "$LAB_TMP/baseline.rules"
    expect_no_reply "wipe: wan -> 198.18.0.1:2222 fails" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_no_reply "wipe: wan -> 198.18.0.1:5353/udp fails" "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353
    expect_no_reply "wipe: wan -> 198.18.0.1:2223 fails" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223
    status_json "status after wipe" "$NODE"
    check_eq "wipe: status: network vgtnet rules missing" missing "$(net_rules vgtnet)"
    check_eq "wipe: status: vgt-g1 tcp 2222 drift" drift "$(fwd state vgt-g1 tcp 2222)"
    check_eq "wipe: status: vgt-g1 udp 5353 drift" drift "$(fwd state vgt-g1 udp 5353)"
    check_eq "wipe: status: vgt-g2 tcp 2223 drift" drift "$(fwd state vgt-g2 tcp 2223)"
    check "wipe: status: drift detail says what to do" sh -c "[ -n \"\$(jq -r '.guests[0].forwards[0].detail // empty' '$STATUS')\" ]"
    check_eq "wipe: status: jumpsInPlace false (all four jumps are missing)" false "$(jumps)"
    echo "# status --json after the wipe (summary): $(sj -c '{networks: [.networks[] | {name, rules}],
        forwards: [.guests[] | .name as $g | .forwards[] | {guest: $g, hostPorts, state}], orphans, jumpsInPlace}')"
    check_eq "wipe: status: no orphans" "" "$(orphans)"
    vg_ok "repair: sync" sync --connect "$NODE"
    check_ruleset "repair: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    expect_reply "repair: wan -> 198.18.0.1:2222 reaches g1-22 again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply_diag "repair: wan -> 198.18.0.1:5353/udp reaches g1-53-udp again" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353 "g1-53-udp *"
    expect_reply "repair: wan -> 198.18.0.1:2223 reaches g2-22 again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    status_json "status after repair" "$NODE"
    check_status_all_good "repair"

    # Partial damage: one accept deleted from g1's chain, one network rule deleted, a stray DNAT added to g1's chain,
    # libvirt's jump re-inserted above ours.
    if is_nft; then
        # the nft counterparts: g1's 2222 element deleted, a stray element for g1 added
        ip netns exec "$LAB_NS_HOST" nft delete element inet virtgate fwd4any '{ tcp . 2222 }'
        ip netns exec "$LAB_NS_HOST" nft add element inet virtgate fwd4any '{ tcp . 2299 comment "vgt-g1" : 10.213.0.11 . 22 }'
    else
        delete_rule_matching filter VGF-vgt-g1 '--dport 22 '
        lab_ipt -t nat -A VGD-vgt-g1 -p tcp -m tcp --dport 2299 -j DNAT --to-destination 10.213.0.11:22
    fi
    lab_ipt -D VGN-vgtnet 1
    lab_ipt -I FORWARD 1 -j LIBVIRT_FWX
    lab_ipt -t nat -D POSTROUTING -j VIRTGATE-POST
    status_json "status after partial damage" "$NODE"
    check_eq "damage: status: network vgtnet rules drift" drift "$(net_rules vgtnet)"
    check_eq "damage: status: vgt-g1 tcp 2222 drift (its accept is gone)" drift "$(fwd state vgt-g1 tcp 2222)"
    check_eq "damage: status: vgt-g1 udp 5353 still active" active "$(fwd state vgt-g1 udp 5353)"
    check "damage: status: an undeclared rule in vgt-g1's chains is reported as drift" \
        sh -c "jq -e '.guests[] | select(.name == \"vgt-g1\") | .forwards[] | select(.state == \"drift\" and .position == 0)' \
               '$STATUS' >/dev/null"
    check_eq "damage: status: vgt-g2 tcp 2223 still active" active "$(fwd state vgt-g2 tcp 2223)"
    check_eq "damage: status: jumpsInPlace false (LIBVIRT_FWX above VIRTGATE-FWD, VIRTGATE-POST jump deleted)" false "$(jumps)"
    expect_no_reply "damage: wan -> 198.18.0.1:2222 fails" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    vg_ok "damage: sync" sync --connect "$NODE"
    check_jump_positions "damage repaired"
    check "damage: the stray DNAT on 2299 is gone" rules_lack '--dport 2299|"tcp", 2299|"tcp",2299'
    lab_ipt -D FORWARD -j LIBVIRT_FWX   # our duplicate of libvirt's jump
    check_ruleset "damage: with our duplicate libvirt jump removed, ruleset identical to the first sync's" \
        "$LAB_TMP/synced.rules"
    expect_reply "damage: wan -> 198.18.0.1:2222 reaches g1-22 again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    status_json "status after damage repaired" "$NODE"
    check_status_all_good "damage repaired"
}

scenario_orphans() {
    echo "# --- 3. guest gone: orphans, sync removes them"
    local G2_ORPHANS="filter/VGF-vgt-g2 nat/VGD-vgt-g2 nat/VGS-vgt-g2"
    is_nft && G2_ORPHANS="nft/vgt-g2"
    status_json "g2 gone, before sync" "$NODE_G2_GONE"
    check_eq "orphans: status lists exactly g2's chains" "$G2_ORPHANS" "$(orphans)"
    check_eq "orphans: vgt-g2 not among the guests" "" "$(sj '.guests[] | select(.name == "vgt-g2") | .name')"
    check_eq "orphans: vgt-g1 tcp 2222 still active" active "$(fwd state vgt-g1 tcp 2222)"
    vg_ok "orphans: status table" status --connect "$NODE_G2_GONE"
    check_stdout_has "orphans: status table names the orphaned chains" orphan "${G2_ORPHANS%% *}"
    check_ruleset "orphans: status changed nothing" "$LAB_TMP/synced.rules"
    vg_ok "orphans: sync --dry-run" sync --dry-run --connect "$NODE_G2_GONE"
    if is_nft; then
        check_stdout_has "orphans: dry-run removes g2's elements" 'delete element inet virtgate fwd4any { 6 . 2223 }'
        check_stdout_lacks "orphans: dry-run leaves g1's elements alone" '6 . 2222 ' 'add element'
    else
        check_stdout_has "orphans: dry-run removes g2's chains" '-X VGD-vgt-g2' '-X VGF-vgt-g2' '-X VGS-vgt-g2'
        check_stdout_lacks "orphans: dry-run leaves g1's chains alone" '-X VGD-vgt-g1' '-F VGD-vgt-g1'
    fi
    check_ruleset "orphans: dry-run changed nothing" "$LAB_TMP/synced.rules"

    vg_ok "orphans: sync with g2 gone" sync --connect "$NODE_G2_GONE"
    check "orphans: nat VGD-vgt-g2 removed" lab_chain_absent nat VGD-vgt-g2
    check "orphans: filter VGF-vgt-g2 removed" lab_chain_absent filter VGF-vgt-g2
    check "orphans: nat VGS-vgt-g2 removed" lab_chain_absent nat VGS-vgt-g2
    check_eq "orphans: no nft element of vgt-g2" 0 "$(lab_nft_owner_elements vgt-g2)"
    check "orphans: no rule mentions 10.213.0.12 or vgt-g2" rules_lack '10\.213\.0\.12|vgt-g2'
    expect_no_reply "orphans: wan -> 198.18.0.1:2223 (g2) closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223
    expect_reply "orphans: wan -> 198.18.0.1:2222 still reaches g1-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply_diag "orphans: wan -> 198.18.0.1:5353/udp still reaches g1" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353 "g1-53-udp *"
    check_jump_positions "orphans"
    status_json "g2 gone, after sync" "$NODE_G2_GONE"
    check_eq "orphans: none left after sync" "" "$(orphans)"
    check_eq "orphans: vgtnet in-place" in-place "$(net_rules vgtnet)"
    check_eq "orphans: jumpsInPlace true" true "$(jumps)"
    grep -vE 'vgt-g2|10\.213\.0\.12' "$LAB_TMP/synced.rules" >"$LAB_TMP/g1only.expected"
    check_ruleset "orphans: ruleset = the synced one minus every g2 line" "$LAB_TMP/g1only.expected"
    vg_ok "orphans: second sync --dry-run with g2 gone" sync --dry-run --connect "$NODE_G2_GONE"
    check_eq "orphans: second sync --dry-run: no changes" "# sync: no changes" "$(cat "$VG_OUT")"

    # g2 comes back, then is shut off (still defined)
    vg_ok "orphans: sync with g2 running again" sync --connect "$NODE"
    check_ruleset "orphans: g2 back: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    expect_reply "orphans: g2 back: wan -> 198.18.0.1:2223 reaches g2-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    status_json "g2 shut off, before sync" "$NODE_G2_OFF"
    check_eq "orphans: g2 shut off: status lists g2's chains" "$G2_ORPHANS" "$(orphans)"
    vg_ok "orphans: sync with g2 shut off" sync --connect "$NODE_G2_OFF"
    check_ruleset "orphans: g2 shut off: same ruleset as with g2 gone" "$LAB_TMP/g1only.expected"
    expect_no_reply "orphans: g2 shut off: wan -> 198.18.0.1:2223 closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223
    vg_ok "orphans: sync with g2 running again" sync --connect "$NODE"
    check_ruleset "orphans: restored: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
}

scenario_conflict() {
    echo "# --- 4. conflicts"
    status_json "conflict" "$NODE_CONFLICT"
    check_eq "conflict: status: vgt-g2 tcp 2222 is conflict" conflict "$(fwd state vgt-g2 tcp 2222)"
    local detail
    detail=$(fwd detail vgt-g2 tcp 2222)
    check "conflict: status detail names the holder vgt-g1 ('$detail')" grep -q 'vgt-g1' <<<"$detail"
    check_eq "conflict: status: vgt-g1 tcp 2222 stays active" active "$(fwd state vgt-g1 tcp 2222)"
    check_eq "conflict: status: vgt-g2 tcp 2223 stays active" active "$(fwd state vgt-g2 tcp 2223)"
    vg_ok "conflict: sync --dry-run" sync --dry-run --connect "$NODE_CONFLICT"
    check_eq "conflict: sync --dry-run: no changes (the conflicting forward is skipped)" "# sync: no changes" \
        "$(cat "$VG_OUT")"
    vg_ok "conflict: sync" sync --connect "$NODE_CONFLICT"
    check_ruleset "conflict: sync: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    check "conflict: sync logged a line naming both guests" \
        sh -c "grep 'vgt-g2' '$VG_ERR' | grep -q 'vgt-g1'"
    expect_reply "conflict: wan -> 198.18.0.1:2222 still reaches g1-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"

    local spec
    for spec in 2222:22/tcp 198.18.0.5:2222:22/tcp 2215-2222/tcp; do
        vg forward add vgt-g2 "$spec" --connect "$NODE"
        if [ "$VG_RC" -ne 0 ]; then
            lab_ok "conflict: forward add vgt-g2 $spec is refused (exit $VG_RC)"
        else
            lab_not_ok "conflict: forward add vgt-g2 $spec is refused"
            lab_diag "$VG_OUT"
        fi
        if [ "$(grep -c . "$VG_ERR")" -eq 1 ] && grep -q 'vgt-g2' "$VG_ERR" && grep -q 'vgt-g1' "$VG_ERR"; then
            lab_ok "conflict: forward add vgt-g2 $spec: one line naming vgt-g2 and vgt-g1 ($(head -c 200 "$VG_ERR"))"
        else
            lab_not_ok "conflict: forward add vgt-g2 $spec: one line naming vgt-g2 and vgt-g1"
            lab_diag "$VG_ERR"
        fi
        check_ruleset "conflict: forward add vgt-g2 $spec: ruleset unchanged" "$LAB_TMP/synced.rules"
    done
    # the port of a guest's own forward
    vg forward add vgt-g1 2222:23/tcp --connect "$NODE"
    check "conflict: forward add vgt-g1 2222:23/tcp (overlaps its own #1) is refused" test "$VG_RC" -ne 0
    check "conflict: ... with a line naming vgt-g1" grep -q 'vgt-g1' "$VG_ERR"
    check_ruleset "conflict: ... ruleset unchanged" "$LAB_TMP/synced.rules"
    expect_reply "conflict: wan -> 198.18.0.1:2222 still reaches g1-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply "conflict: wan -> 198.18.0.1:2223 still reaches g2-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
}

scenario_forward_edit() {
    echo "# --- 5. forward add / list / remove"
    local node8080 node_src node_src2
    node8080=$(node_with_g1_forward node-g1-8080.xml '<vg:forward proto="tcp" host-port="8080" guest-port="80"/>')
    node_src=$(node_with_g1_forward node-g1-8080-src.xml \
        '<vg:forward proto="tcp" host-port="8080" guest-port="80" source="192.0.2.0/24"/>')
    node_src2=$(node_with_g1_forward node-g1-8080-src2.xml \
        '<vg:forward proto="tcp" host-port="8080" guest-port="80" source="192.0.2.0/24 198.18.0.2/32"/>')

    vg_ok "list: forward list vgt-g1" forward list vgt-g1 --connect "$NODE"
    check_stdout_has "list: shows vgt-g1 running with 2222 and 5353" vgt-g1 running 2222 5353
    check_stdout_lacks "list: no 8080 yet" 8080
    vg_ok "list: forward list (all guests)" forward list --connect "$NODE"
    check_stdout_has "list: all guests: vgt-g1, vgt-g2, and the shut-off vgt-off" vgt-g1 vgt-g2 vgt-off 2223 2230

    expect_no_reply "add: wan -> 198.18.0.1:8080 closed before" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080
    vg_ok "add: forward add vgt-g1 8080:80/tcp" forward add vgt-g1 8080:80/tcp --connect "$NODE"
    check_stdout_has "add: says it applied to the running guest" applied
    expect_reply "add: wan -> 198.18.0.1:8080 reaches g1-80 at once" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 $LAB_WAN_IP"
    expect_reply "add: wan -> 198.18.0.1:2222 still reaches g1-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply "add: wan -> 198.18.0.1:2223 (g2) still works" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    expect_no_reply "add: wan routed straight to 10.213.0.11:80 stays blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 80
    lab_ruleset >"$LAB_TMP/add.rules"
    check_eq "add: the ruleset only gained lines about 8080/80" "" \
        "$(diff "$LAB_TMP/synced.rules" "$LAB_TMP/add.rules" | grep '^[<>]' | grep -vE '^> .*(8080|--dport 80 |"tcp", 80\]|"tcp",80\])')"
    if is_nft; then
        # One map element: the nft DNAT sets the mark the network's existing accept admits.
        check "add: the ruleset gained the forward's map element" \
            sh -c "diff '$LAB_TMP/synced.rules' '$LAB_TMP/add.rules' | grep -q '^> .*fwd4any.*8080'"
    else
        check "add: the ruleset gained at least a DNAT and an accept" \
            sh -c "[ \$(diff '$LAB_TMP/synced.rules' '$LAB_TMP/add.rules' | grep -c '^>') -ge 2 ]"
    fi
    # what libvirt would have persisted (the test driver keeps it only inside the adding process)
    vg_ok "list: forward list vgt-g1 (with the added forward persisted)" forward list vgt-g1 --connect "$node8080"
    check_stdout_has "list: shows 8080 -> 80 between add and remove" 8080 2222 5353
    vg_ok "add: sync --dry-run with the added forward persisted" sync --dry-run --connect "$node8080"
    check_eq "add: what forward add applied is exactly what sync would make" "# sync: no changes" "$(cat "$VG_OUT")"
    status_json "after forward add" "$node8080"
    check_eq "add: status: vgt-g1 tcp 8080 active" active "$(fwd state vgt-g1 tcp 8080)"

    vg_ok "remove: forward remove vgt-g1 8080/tcp" forward remove vgt-g1 8080/tcp --connect "$node8080"
    expect_no_reply "remove: wan -> 198.18.0.1:8080 closed again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080
    check_ruleset "remove: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    vg forward remove vgt-g1 8080/tcp --connect "$NODE"
    check "remove: removing a forward the guest does not have fails" test "$VG_RC" -ne 0
    check_ruleset "remove: ... ruleset unchanged" "$LAB_TMP/synced.rules"

    # --source
    vg_ok "source: forward add vgt-g1 8080:80/tcp --source 192.0.2.0/24 (excludes wan)" \
        forward add vgt-g1 8080:80/tcp --source 192.0.2.0/24 --connect "$NODE"
    expect_no_reply "source: wan (198.18.0.2) -> 198.18.0.1:8080 not reachable" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080
    if is_nft; then
        check_eq "source: the DNAT for 8080 is one element, restricted to 192.0.2.0/24" "1 1" \
            "$(nft_dnat_elements '8080') $(nft_dnat_elements '^nft fwd4srcany .*192\.0\.2\.0.*8080')"
    else
        check "source: the DNAT for 8080 is restricted to -s 192.0.2.0/24" rules_match '-s 192\.0\.2\.0/24 .*--dport 8080 '
        check "source: no unrestricted DNAT for 8080" sh -c "! ip netns exec $LAB_NS_HOST iptables-save -t nat |
            grep -- '--dport 8080 ' | grep -v -- '-s 192.0.2.0/24' | grep -q DNAT"
    fi
    vg_ok "source: sync --dry-run with that forward persisted" sync --dry-run --connect "$node_src"
    check_eq "source: what forward add applied is exactly what sync would make" "# sync: no changes" "$(cat "$VG_OUT")"
    vg_ok "source: forward add vgt-g1 8080:80/tcp --source 192.0.2.0/24 --source 198.18.0.2/32" \
        forward add vgt-g1 8080:80/tcp --source 192.0.2.0/24 --source 198.18.0.2/32 --connect "$NODE"
    expect_reply "source: wan (198.18.0.2, now included) -> 198.18.0.1:8080 reaches g1-80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 $LAB_WAN_IP"
    vg_ok "source: forward list shows both sources" forward list vgt-g1 --connect "$node_src2"
    check_stdout_has "source: listing has 192.0.2.0/24 and 198.18.0.2/32" 192.0.2.0/24 198.18.0.2/32
    vg_ok "source: forward remove vgt-g1 8080/tcp" forward remove vgt-g1 8080/tcp --connect "$node_src2"
    expect_no_reply "source: wan -> 198.18.0.1:8080 closed after remove" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080
    check_ruleset "source: after remove, ruleset identical to the first sync's" "$LAB_TMP/synced.rules"

    # bad input and a shut-off guest
    vg forward add vgt-g1 70000:80/tcp --connect "$NODE"
    check "invalid: forward add vgt-g1 70000:80/tcp fails" test "$VG_RC" -ne 0
    check "invalid: ... the message names the value 70000" grep -q 70000 "$VG_ERR"
    check_ruleset "invalid: ... ruleset unchanged" "$LAB_TMP/synced.rules"
    vg forward add vgt-nosuch 8080:80/tcp --connect "$NODE"
    check "invalid: forward add to an unknown guest fails" test "$VG_RC" -ne 0
    check_ruleset "invalid: ... ruleset unchanged" "$LAB_TMP/synced.rules"
    vg_ok "shut off: forward add vgt-off 8081:80/tcp" forward add vgt-off 8081:80/tcp --connect "$NODE"
    check_stdout_has "shut off: says it applies when the guest starts" "not running"
    check_ruleset "shut off: ruleset unchanged" "$LAB_TMP/synced.rules"
}

# lease_file IP: dnsmasq's status file for vgt-br0 with g3's lease (written atomically, as leaseshelper does)
lease_file() {
    cat >"$VG_DNSMASQ/$LAB_BRIDGE.status.tmp" <<LEASES
[
  {
    "ip-address": "$1",
    "mac-address": "$LAB_G3_MAC",
    "hostname": "vgt-g3",
    "expiry-time": $(($(date +%s) + 3600))
  }
]
LEASES
    mv "$VG_DNSMASQ/$LAB_BRIDGE.status.tmp" "$VG_DNSMASQ/$LAB_BRIDGE.status"
}

scenario_late_binding() {
    echo "# --- 6. late binding: a guest without reservation, lease file, virtgate $REBIND"
    if [ -z "$REBIND" ]; then
        lab_not_ok "late binding: no rebind/reapply command to test"
        return
    fi
    vg_hook_file "$VG_XML/vgt-g3-prepare.xml" qemu vgt-g3 prepare begin -
    vg_hook_file "$ADMIN_FIXTURES/domain-vgt-g3.xml" qemu vgt-g3 start begin -
    check "pending: start logs the forward as pending" grep -qi pending "$VG_ERR"
    vg_hook_file "$ADMIN_FIXTURES/domain-vgt-g3.xml" qemu vgt-g3 started begin -
    check "pending: no DNAT for 2240 in the kernel" rules_lack '--dport 2240 '
    expect_no_reply "pending: wan -> 198.18.0.1:2240 closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2240
    check "pending: the hook remembered vgt-g3 in VIRTGATE_STATE_DIR/guests" test -f "$VG_STATE/guests/vgt-g3.xml"
    lab_ruleset >"$LAB_TMP/pending.rules"
    vg_ok "pending: $REBIND --dry-run without a lease" "$REBIND" --dry-run
    check_stdout_lacks "pending: $REBIND --dry-run without a lease has nothing for 2240" 'dport 2240' '10.213.0.113'
    vg_ok "pending: $REBIND without a lease" "$REBIND"
    check_ruleset "pending: $REBIND without a lease changes nothing" "$LAB_TMP/pending.rules"
    check "pending: $REBIND logs the forward as pending" grep -qi pending "$VG_ERR"

    lease_file "$LAB_G3_IP"
    vg_ok "lease: $REBIND --dry-run" "$REBIND" --dry-run
    check_stdout_has "lease: $REBIND --dry-run binds 2240 to 10.213.0.113:22" "$(dnat_text 10.213.0.113 22)"
    check_ruleset "lease: $REBIND --dry-run changed nothing" "$LAB_TMP/pending.rules"
    expect_no_reply "lease: wan -> 198.18.0.1:2240 still closed before $REBIND" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2240
    vg_ok "lease: $REBIND" "$REBIND"
    expect_reply "lease: wan -> 198.18.0.1:2240 reaches g3-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2240 "g3-22 $LAB_WAN_IP"
    expect_reply "lease: g1's forward 2222 still works" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply "lease: g2's forward 2223 still works" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    expect_no_reply "lease: wan routed straight to 10.213.0.113:22 stays blocked" "$LAB_NS_WAN" tcp "$LAB_G3_IP" 22
    vg_ok "lease: second $REBIND --dry-run" "$REBIND" --dry-run
    check "lease: second $REBIND --dry-run: no changes" sh -c "grep -q 'no changes' '$VG_OUT' && ! grep -q COMMIT '$VG_OUT'"
    lab_ruleset >"$LAB_TMP/bound.rules"
    vg_ok "lease: second $REBIND" "$REBIND"
    check_ruleset "lease: second $REBIND leaves the ruleset identical" "$LAB_TMP/bound.rules"

    # the guest moves (a new lease)
    ip -n "$LAB_NS_G3" addr del "$LAB_G3_IP/24" dev eth0
    ip -n "$LAB_NS_G3" addr add "$LAB_G3_IP_MOVED/24" dev eth0
    ip -n "$LAB_NS_G3" route replace default via "$LAB_GW"
    check "move: g3 now has 10.213.0.114 only" sh -c "ip -n $LAB_NS_G3 -4 addr show dev eth0 |
        grep -q '$LAB_G3_IP_MOVED/' && ! ip -n $LAB_NS_G3 -4 addr show dev eth0 | grep -q '$LAB_G3_IP/'"
    lease_file "$LAB_G3_IP_MOVED"
    expect_no_reply "move: before $REBIND, wan -> 198.18.0.1:2240 fails (DNAT to the old address)" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2240
    vg_ok "move: $REBIND" "$REBIND"
    expect_reply "move: wan -> 198.18.0.1:2240 reaches g3-22 at its new address" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2240 "g3-22 $LAB_WAN_IP"
    check "move: no rule mentions the old address 10.213.0.113" rules_lack '10\.213\.0\.113'
    if is_nft; then
        check_eq "move: exactly one DNAT for 2240, to 10.213.0.114:22" "1 1" \
            "$(nft_dnat_elements '2240') $(nft_dnat_elements '"tcp", ?2240.*"10\.213\.0\.114", ?22\]')"
    else
        check_eq "move: exactly one DNAT for 2240, to 10.213.0.114:22" \
            "-A VGD-vgt-g3 -p tcp -m tcp --dport 2240 -j DNAT --to-destination 10.213.0.114:22" \
            "$(ip netns exec "$LAB_NS_HOST" iptables-save -t nat | grep -- '--dport 2240 ' | grep DNAT)"
    fi
    check_eq "move: the ruleset differs from the bound one only in the address" "" \
        "$(diff <(sed 's/10\.213\.0\.113/10.213.0.114/g' "$LAB_TMP/bound.rules") <(lab_ruleset))"

    # the lease goes away: the forward is pending again, and not left pointing at a stale address
    echo "[]" >"$VG_DNSMASQ/$LAB_BRIDGE.status"
    vg_ok "expired: $REBIND with the lease gone" "$REBIND"
    check "expired: no DNAT for 2240 any more" rules_lack '--dport 2240 |"tcp", ?2240'
    check_ruleset "expired: ruleset equals the pending one" "$LAB_TMP/pending.rules"
    lease_file "$LAB_G3_IP_MOVED"
    vg_ok "expired: $REBIND with the lease back" "$REBIND"
    expect_reply "expired: lease back: wan -> 198.18.0.1:2240 reaches g3-22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2240 "g3-22 *"

    vg_hook_file "$VG_XML/vgt-g3-stopped.xml" qemu vgt-g3 stopped end -
    vg_hook_file "$VG_XML/vgt-g3-stopped.xml" qemu vgt-g3 release end -
    check "stopped: no rule for vgt-g3" rules_lack 'vgt-g3|--dport 2240 |"tcp", ?2240'
    check_ruleset "stopped: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    vg_ok "stopped: $REBIND after g3 stopped" "$REBIND"
    check_ruleset "stopped: $REBIND does not bring g3 back" "$LAB_TMP/synced.rules"
}

scenario_teardown() {
    echo "# --- 7. teardown: sync with nothing running, flush"
    vg_ok "teardown: sync --dry-run with no network and no guest" sync --dry-run --connect "$NODE_EMPTY"
    check_stdout_has "teardown: dry-run removes the dispatch chains and jumps" '-X VIRTGATE-FWD' '-D FORWARD'
    check_ruleset "teardown: dry-run changed nothing" "$LAB_TMP/synced.rules"
    vg_ok "teardown: sync with no network and no guest" sync --connect "$NODE_EMPTY"
    check_ruleset "teardown: sync with nothing: ruleset equals the baseline exactly" "$LAB_TMP/baseline.rules"
    expect_no_reply "teardown: wan -> 198.18.0.1:2222 closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    status_json "teardown: nothing running" "$NODE_EMPTY"
    check_eq "teardown: status: no networks, no guests, no orphans" "0 0 0" \
        "$(sj '"\(.networks | length) \(.guests | length) \(.orphans | length)"')"

    vg_ok "teardown: sync again" sync --connect "$NODE"
    check_ruleset "teardown: synced again: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    vg_ok "teardown: flush --dry-run" flush --dry-run
    if is_nft; then
        check_stdout_has "teardown: flush --dry-run prints the removal" '-X VIRTGATE-FWD' 'delete table inet virtgate'
    else
        check_stdout_has "teardown: flush --dry-run prints the removal" '-X VIRTGATE-FWD' '-X VGD-vgt-g1'
    fi
    check_ruleset "teardown: flush --dry-run changed nothing" "$LAB_TMP/synced.rules"
    vg_ok "teardown: flush" flush
    check_ruleset "teardown: flush: ruleset equals the baseline exactly" "$LAB_TMP/baseline.rules"
    vg_ok "teardown: flush --dry-run after flush" flush --dry-run
    check_stdout_has "teardown: second flush --dry-run: nothing to remove" 'nothing to remove'
    expect_reply "teardown: g1 egress still works (libvirt + UFW intact)" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    expect_no_reply "teardown: wan routed straight to 10.213.0.11:22 still blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 22
}

# A node file with one network and GUESTS running guests x 5 forwards, each with a reservation.
generate_big_node() {
    local out=$1 guests=$2 i a b mac base
    {
        echo '<?xml version="1.0"?>'
        echo '<node>'
        echo '  <network>'
        echo '    <name>vgtbig</name>'
        echo '    <uuid>6a2b3c4d-5e6f-4a1b-8c2d-000000000214</uuid>'
        echo '    <forward mode="nat"/>'
        echo '    <bridge name="vgt-big0" stp="on" delay="0"/>'
        echo '    <ip address="10.214.0.1" netmask="255.255.0.0">'
        echo '      <dhcp>'
        echo '        <range start="10.214.200.1" end="10.214.200.254"/>'
        for i in $(seq 1 "$guests"); do
            a=$((i / 256))
            b=$((i % 256))
            printf '        <host mac="52:54:00:21:%02x:%02x" name="big%03d" ip="10.214.%d.%d"/>\n' "$a" "$b" "$i" \
                $((a + 1)) "$b"
        done
        echo '      </dhcp>'
        echo '    </ip>'
        echo '  </network>'
        for i in $(seq 1 "$guests"); do
            a=$((i / 256))
            b=$((i % 256))
            mac=$(printf '52:54:00:21:%02x:%02x' "$a" "$b")
            base=$((20000 + i * 10))
            cat <<DOMAIN
  <domain type="test" xmlns:test="http://libvirt.org/schemas/domain/test/1.0">
    <name>$(printf 'big%03d' "$i")</name>
    <uuid>$(printf '8c1f2e9a-1b2c-4d3e-8f40-%012d' "$i")</uuid>
    <metadata>
      <vg:forwards xmlns:vg="urn:virtgate:forwards:1">
        <vg:forward proto="tcp" host-port="$base" guest-port="22"/>
        <vg:forward proto="tcp" host-port="$((base + 1))" guest-port="80"/>
        <vg:forward proto="tcp" host-port="$((base + 2))" guest-port="443" source="192.0.2.0/24 198.51.100.0/24"/>
        <vg:forward proto="udp" host-port="$((base + 3))" guest-port="53"/>
        <vg:forward proto="tcp" host-port="$((base + 4))-$((base + 6))" guest-port="9000-9002"/>
      </vg:forwards>
    </metadata>
    <memory>131072</memory>
    <vcpu>1</vcpu>
    <os><type>hvm</type></os>
    <devices>
      <interface type="network">
        <mac address="$mac"/>
        <source network="vgtbig"/>
      </interface>
    </devices>
    <test:runstate>1</test:runstate>
  </domain>
DOMAIN
        done
        echo '</node>'
    } >"$out"
}

scenario_timing() {
    echo "# --- 8. timing: 100 running guests x 5 forwards"
    local big=$NODES/node-big.xml uri dnats
    generate_big_node "$big" 100
    uri=test://$big
    check_eq "timing: generated node has 100 running guests and 500 forwards" "100 500" \
        "$(grep -c '<test:runstate>1<' "$big") $(grep -c '<vg:forward ' "$big")"
    check_ruleset "timing: starts from the baseline" "$LAB_TMP/baseline.rules"
    vg_timed "timing: sync --dry-run (100x5, from nothing)" sync --dry-run --connect "$uri"
    local t_dry=$LAST_MS
    # one DNAT per forward, two for the one with two sources
    if is_nft; then
        # one element per host port and source: 22, 80, 443 x 2 sources, 53, and a 3-port range = 8 per guest
        dnats=$(grep '^add element inet virtgate fwd4' "$VG_OUT" | grep -o ': 10\.214\.[0-9.]* \. [0-9]*' | wc -l)
        check_eq "timing: dry-run adds 800 DNAT elements (500 forwards: sources and range ports one each)" 800 "$dnats"
    else
        dnats=$(grep -c -- '-j DNAT' "$VG_OUT")
        check_eq "timing: dry-run prints 600 DNAT rules (500 forwards, one with 2 sources)" 600 "$dnats"
    fi
    check_ruleset "timing: dry-run changed nothing" "$LAB_TMP/baseline.rules"
    vg_timed "timing: sync (100x5, apply)" sync --connect "$uri"
    local t_apply=$LAST_MS
    if is_nft; then
        check_eq "timing: kernel has 800 DNAT elements to 10.214.x.x" 800 "$(nft_dnat_elements '"10\.214\.')"
        check_eq "timing: the elements belong to 100 guests" 100 \
            "$(lab_nft_lines | grep -E '^nft fwd4' | grep -o '"comment": *"big[0-9]*"' | sort -u | wc -l)"
    else
        check_eq "timing: kernel has 600 DNAT rules to 10.214.x.x" 600 \
            "$(ip netns exec "$LAB_NS_HOST" iptables-save -t nat | grep -c -- '-j DNAT --to-destination 10\.214\.')"
        check_eq "timing: kernel has 100 VGD- chains" 100 \
            "$(ip netns exec "$LAB_NS_HOST" iptables-save -t nat | grep -c '^:VGD-big')"
    fi
    lab_ruleset >"$LAB_TMP/big.rules"
    vg_timed "timing: sync --dry-run (100x5, in sync)" sync --dry-run --connect "$uri"
    local t_dry2=$LAST_MS
    check_eq "timing: second dry-run: no changes" "# sync: no changes" "$(cat "$VG_OUT")"
    vg_timed "timing: sync (100x5, in sync)" sync --connect "$uri"
    local t_apply2=$LAST_MS
    check_ruleset "timing: second sync: ruleset identical" "$LAB_TMP/big.rules"
    vg_timed "timing: status --json (100x5)" status --json --connect "$uri"
    local t_status=$LAST_MS
    check_eq "timing: status: 500 forwards active" 500 \
        "$(jq '[.guests[].forwards[] | select(.state == "active")] | length' "$VG_OUT")"
    vg_timed "timing: sync back to nothing" sync --connect "$NODE_EMPTY"
    local t_remove=$LAST_MS
    check_ruleset "timing: back to the baseline exactly" "$LAB_TMP/baseline.rules"
    echo "# timing summary (ms; debug build): dry-run ${t_dry}, apply ${t_apply}, dry-run in sync ${t_dry2}," \
        "apply in sync ${t_apply2}, status ${t_status}, remove all ${t_remove}"
}

main_inner() {
    trap inner_cleanup EXIT
    trap 'exit 1' INT TERM
    if ! lab_setup_inner; then
        exit 1
    fi
    if ! admin_prepare_env; then
        lab_not_ok "lab: virtgate directories, config, node files"
        exit 1
    fi
    scenario_baseline
    scenario_sync
    scenario_repair
    scenario_orphans
    scenario_conflict
    scenario_forward_edit
    scenario_late_binding
    scenario_teardown
    scenario_timing
    exit 0
}

if [ "${1:-}" = --inner ]; then
    shift
    main_inner "$@"
else
    main_outer "$@"
fi
