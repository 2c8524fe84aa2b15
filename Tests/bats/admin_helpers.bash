# shellcheck shell=bash
# admin_helpers.bash: what admin.bats needs beyond helpers.bash: a third guest (vgt-g3, for late binding), libvirt's
# test driver node files, running the admin commands and reading `status --json`, damaging the ruleset by hand, the
# lab states the tests start from.
#
# libvirt: the admin commands talk to libvirt's own test driver, `--connect test:///ABSOLUTE/PATH/node.xml`. Every
# connection starts afresh from that file, so a `forward add` persists only inside its own process (it still applies
# its rules to the kernel at once, which is what is tested); to see "what libvirt would have persisted", the tests
# derive node files that carry the added forward and use them for `forward list`, `forward remove` and `status`. The
# test driver reports no network DHCP leases; the guests that must be reachable have <host mac ip> reservations.
#
# Fixtures (fixtures/lab/admin/):
#   node.xml           network vgtnet = the lab (vgt-br0, 10.213.0.1/24, reservations g1 .11, g2 .12); running
#                      vgt-g1 (tcp 2222->22, udp 5353->53) and vgt-g2 (tcp 2223->22); shut off vgt-off (tcp 2230)
#   node-g2-gone.xml   the same without vgt-g2
#   node-conflict.xml  vgt-g2 also declares tcp 2222 (held by vgt-g1)
#   node-empty.xml     no network, no guest
#   domain-vgt-g3.xml  the third guest as libvirt hands it to the qemu hook (tcp 2240->22, no reservation)

ADMIN_FIXTURES=$LAB_FIXTURES/admin

# A third guest, for late binding: no reservation, address from the lease file only, and it moves.
LAB_NS_G3=vgt-g3
LAB_G3_MAC=52:54:00:00:00:13
LAB_G3_IP=10.213.0.113
LAB_G3_IP_MOVED=10.213.0.114
LAB_NAMESPACES="$LAB_NAMESPACES $LAB_NS_G3"

# Late binding: `virtgate reapply` re-binds remembered guests to the lease files.
REBIND=reapply

# admin_paths: the node files and outputs below $LAB_TMP (setup_file, and every test that loads this file).
admin_paths() {
    NODES=$LAB_TMP/nodes
    NODE=test://$NODES/node.xml
    NODE_G2_GONE=test://$NODES/node-g2-gone.xml
    NODE_CONFLICT=test://$NODES/node-conflict.xml
    NODE_EMPTY=test://$NODES/node-empty.xml
    NODE_G2_OFF=test://$NODES/node-g2-off.xml
    STATUS=$LAB_TMP/status.json
    VG_OUT=$LAB_TMP/vg.out
    VG_ERR=$LAB_TMP/vg.err
}
if [ -n "${LAB_TMP:-}" ]; then admin_paths; fi

# admin_add_g3: the third guest's namespace (created with the others: it is in LAB_NAMESPACES) on the bridge.
admin_add_g3() {
    lab_add_guest "$LAB_NS_G3" vgt-g3h "$LAB_G3_IP" "$LAB_G3_MAC"
}

# admin_prepare_env: node files copied to $LAB_TMP (derived ones sit next to them), an empty lease file, g3's
# unresolved XML shapes.
admin_prepare_env() {
    mkdir -p "$NODES" || return 1
    cp "$ADMIN_FIXTURES"/node*.xml "$NODES/" || return 1
    # g2 shut off instead of undefined (test:runstate 5 = VIR_DOMAIN_SHUTOFF)
    awk '/<name>vgt-g2<\/name>/ {g2=1} g2 && /<test:runstate>1</ {sub(/>1</, ">5<"); g2=0} {print}' \
        "$NODES/node.xml" >"$NODES/node-g2-off.xml" || return 1
    grep -q '<test:runstate>5</test:runstate>' "$NODES/node-g2-off.xml" || return 1
    # dnsmasq has started and has leased nothing yet
    echo "[]" >"$VG_DNSMASQ/$LAB_BRIDGE.status" || return 1
    lab_shape_unresolved "$ADMIN_FIXTURES/domain-vgt-g3.xml" "$VG_XML/vgt-g3-prepare.xml" keep-id || return 1
    lab_shape_unresolved "$ADMIN_FIXTURES/domain-vgt-g3.xml" "$VG_XML/vgt-g3-stopped.xml" || return 1
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

# ---------------------------------------------------------------------------------------------------------------
# Running virtgate's admin commands

# vg ARGS...: run virtgate with ARGS inside vgt-host (stdin /dev/null); VG_RC, $VG_OUT, $VG_ERR; no verdict.
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
        { echo "stderr:"; head -n 20 "$VG_ERR"; } | lab_fail "$desc (virtgate $* exits 0; exit $VG_RC)"
    fi
}

# vg_timed DESCRIPTION ARGS...: vg_ok, and the wall time as a TAP comment; LAST_MS.
vg_timed() {
    local desc=$1 t0 t1
    shift
    t0=$(date +%s%N)
    vg "$@"
    t1=$(date +%s%N)
    LAST_MS=$(((t1 - t0) / 1000000))
    echo "# timing: virtgate $* : ${LAST_MS} ms" >&3
    if [ "$VG_RC" -eq 0 ]; then
        lab_ok "$desc (virtgate $* exits 0)"
    else
        { echo "stderr:"; head -n 20 "$VG_ERR"; } | lab_fail "$desc (virtgate $* exits 0; exit $VG_RC)"
    fi
}

# vg_fails DESCRIPTION ARGS...: run virtgate, check a non-zero exit.
vg_fails() {
    local desc=$1
    shift
    vg "$@"
    if [ "$VG_RC" -ne 0 ]; then
        lab_ok "$desc (exit $VG_RC)"
    else
        { echo "virtgate $* exited 0; stdout:"; head -n 20 "$VG_OUT"; } | lab_fail "$desc"
    fi
}

# check_stdout_has DESCRIPTION FIXED-STRING...: every string is in the last run's stdout.
check_stdout_has() {
    local desc=$1 s missing=""
    shift
    for s in "$@"; do
        grep -qF -- "$s" "$VG_OUT" || missing="$missing '$s'"
    done
    if [ -z "$missing" ]; then
        lab_ok "$desc"
    else
        { echo "missing:$missing; stdout (first 40 lines):"; head -n 40 "$VG_OUT"; echo "stderr:"; head -n 10 "$VG_ERR"; } |
            lab_fail "$desc"
    fi
}

# check_stdout_lacks DESCRIPTION FIXED-STRING...: none of the strings is in the last run's stdout.
check_stdout_lacks() {
    local desc=$1 s found=""
    shift
    for s in "$@"; do
        if grep -qF -- "$s" "$VG_OUT"; then found="$found '$s'"; fi
    done
    if [ -z "$found" ]; then
        lab_ok "$desc"
    else
        echo "present:$found" | lab_fail "$desc"
    fi
}

# check_stdout_is DESCRIPTION TEXT: the last run's stdout is exactly TEXT.
check_stdout_is() {
    check_eq "$1" "$2" "$(cat "$VG_OUT")"
}

# expect_reply with the counters of virtgate's chains on failure (diagnostics for a lost datagram or connection)
expect_reply_diag() {
    if expect_reply "$@"; then
        return 0
    fi
    {
        echo "#   counters in $LAB_NS_HOST (nat VIRTGATE-DNAT/VGD-*, filter VIRTGATE-FWD/VGF-*):"
        ip netns exec "$LAB_NS_HOST" sh -c 'iptables-save -c -t nat; iptables-save -c -t filter' |
            grep -E 'VIRTGATE|VGD-|VGF-|^\[[0-9]+:[0-9]+\] -A (PREROUTING|FORWARD|ufw-before-forward|LIBVIRT)' | head -n 60
        echo "#   nft table inet virtgate:"
        ip netns exec "$LAB_NS_HOST" nft list table inet virtgate 2>/dev/null | head -n 60
        echo "#   udp listeners in $LAB_NS_G1: $(ip netns exec "$LAB_NS_G1" ss -Hlun | tr '\n' ' ')"
    } >&2 || true
    return 1
}

# The kernel's ruleset in vgt-host mentions / does not mention a pattern (grep -E).
rules_match() { lab_ruleset | grep -qE -- "$1"; }
rules_lack() { ! lab_ruleset | grep -qE -- "$1"; }

# The backend under test. Checks of iptables internals have an nft counterpart.
is_nft() { [ "$VG_BACKEND" = nft ]; }
# dnat_text IP PORT: how a DNAT to IP:PORT reads in the backend's dry-run output
dnat_text() { if is_nft; then echo ": $1 . $2"; else echo "--to-destination $1:$2"; fi; }
# nft_dnat_elements REGEX: DNAT map elements whose JSON line matches REGEX
nft_dnat_elements() { lab_nft_lines | grep -E '^nft fwd[46]' | grep -cE -- "$1" || true; }

# ---------------------------------------------------------------------------------------------------------------
# status --json

# status_json DESCRIPTION URI: run `status --json`, keep it in $STATUS; the run and the JSON are one check.
status_json() {
    local desc=$1 uri=$2
    vg status --json --connect "$uri"
    cp "$VG_OUT" "$STATUS"
    if [ "$VG_RC" -eq 0 ] && jq -e 'has("networks") and has("guests") and has("orphans") and has("jumpsInPlace")' \
        "$STATUS" >/dev/null 2>&1; then
        lab_ok "$desc: status --json exits 0 with networks, guests, orphans, jumpsInPlace"
    else
        { head -n 30 "$VG_OUT"; head -n 10 "$VG_ERR"; } |
            lab_fail "$desc: status --json exits 0 with networks, guests, orphans, jumpsInPlace (exit $VG_RC)"
    fi
}

# jq over the last status
sj() { jq -r "$@" "$STATUS" 2>/dev/null || true; }
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

# ---------------------------------------------------------------------------------------------------------------
# Damage by hand

# wipe_by_hand: delete virtgate's jumps from the built-in chains and flush/delete every VIRTGATE-* and VG?-* chain,
# by hand, in iptables and ip6tables; and virtgate's nftables table, if there is one.
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
                grep -E '^-A (INPUT|OUTPUT|FORWARD|PREROUTING|POSTROUTING) .*-j (VIRTGATE-|VG[A-Z]-)' || true)
            chains=$(ip netns exec "$LAB_NS_HOST" "$ipt" -w -t "$t" -S | sed -n -E 's/^-N ((VIRTGATE-|VG[A-Z]-)[^ ]*)$/\1/p')
            for c in $chains; do ip netns exec "$LAB_NS_HOST" "$ipt" -w -t "$t" -F "$c" || return 1; done
            for c in $chains; do ip netns exec "$LAB_NS_HOST" "$ipt" -w -t "$t" -X "$c" || return 1; done
        done
    done
    ip netns exec "$LAB_NS_HOST" nft delete table inet virtgate 2>/dev/null || true
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

# g3_address IP: g3's only IPv4 address is IP (the guest moved, or is back).
g3_address() {
    ip -n "$LAB_NS_G3" -4 addr flush dev eth0
    ip -n "$LAB_NS_G3" addr add "$1/24" dev eth0
    ip -n "$LAB_NS_G3" route replace default via "$LAB_GW"
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

# ---------------------------------------------------------------------------------------------------------------
# Lab states. Every test starts from the state it needs (admin_need): "baseline" (nothing of virtgate's), "synced"
# (`sync` with node.xml: g1 and g2's forwards), "g2-gone" (`sync` with node-g2-gone.xml), or one of late binding's
# steps ("g3-pending": g3 started through the hooks without a lease; "g3-bound": bound to its lease at .113;
# "g3-moved": re-bound at .114). In a whole run the tests move the lab from one state to the next in file order; a test
# run alone (--filter) first gets there through the same commands, checked as in the tests that make them. A test that
# fails half way leaves the state "dirty": the next one removes everything of virtgate's and of the failed test's
# (admin_recover) and checks that the ruleset is the baseline again.

admin_state() {
    cat "$LAB_TMP/admin-state" 2>/dev/null || echo dirty
}

admin_set_state() {
    echo "$1" >"$LAB_TMP/admin-state"
}

# admin_recover: what a failed test may have left (host services, g3's moved address or its lease, our duplicate of
# libvirt's jump, damaged or partial rules of either backend), virtgate's state directory emptied; the ruleset must
# be the baseline again.
admin_recover() {
    local pid
    echo "# the lab was left $(admin_state) (a test failed half way, or ran alone): back to the baseline" >&3
    if [ -f "$LAB_TMP/host-services" ]; then
        while read -r pid; do lab_stop_pid "$pid"; done <"$LAB_TMP/host-services"
        rm -f "$LAB_TMP/host-services"
    fi
    echo "[]" >"$VG_DNSMASQ/$LAB_BRIDGE.status"
    g3_address "$LAB_G3_IP"
    while [ "$(lab_ipt -S FORWARD | grep -c -- '^-A FORWARD -j LIBVIRT_FWX$')" -gt 1 ]; do
        lab_ipt -D FORWARD -j LIBVIRT_FWX || break
    done
    vg flush
    VG_BACKEND=iptables vg flush
    VG_BACKEND=nft vg flush
    wipe_by_hand || true
    rm -rf "$VG_STATE"
    mkdir -p "$VG_STATE"
    check_ruleset "recovery: after a failed test, virtgate's rules removed, the ruleset equals the baseline" \
        "$LAB_TMP/baseline.rules"
    admin_set_state baseline
}

# admin_sync_node: `sync` with node.xml, from the baseline; the first time, the synced ruleset is saved (scenario 1
# does this with all its checks).
admin_sync_node() {
    admin_set_state dirty
    vg_ok "sync" sync --connect "$NODE"
    if [ -f "$LAB_TMP/synced.rules" ]; then
        check_ruleset "sync: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    else
        lab_ruleset >"$LAB_TMP/synced.rules"
    fi
    admin_set_state synced
}

# admin_g3_start: g3 started through the hooks without a lease (from "synced"); the pending ruleset is saved the
# first time.
admin_g3_start() {
    admin_set_state dirty
    echo "[]" >"$VG_DNSMASQ/$LAB_BRIDGE.status"
    vg_hook "$VG_XML/vgt-g3-prepare.xml" qemu vgt-g3 prepare begin -
    vg_hook "$ADMIN_FIXTURES/domain-vgt-g3.xml" qemu vgt-g3 start begin -
    vg_hook "$ADMIN_FIXTURES/domain-vgt-g3.xml" qemu vgt-g3 started begin -
    [ -f "$LAB_TMP/pending.rules" ] || lab_ruleset >"$LAB_TMP/pending.rules"
    admin_set_state g3-pending
}

# admin_g3_bind: the lease at .113 and reapply (from "g3-pending"); the bound ruleset is saved the first time.
admin_g3_bind() {
    admin_set_state dirty
    lease_file "$LAB_G3_IP"
    vg_ok "lease: $REBIND" "$REBIND"
    [ -f "$LAB_TMP/bound.rules" ] || lab_ruleset >"$LAB_TMP/bound.rules"
    admin_set_state g3-bound
}

# admin_g3_move: g3 moves to .114, with its lease, and reapply (from "g3-bound").
admin_g3_move() {
    admin_set_state dirty
    g3_address "$LAB_G3_IP_MOVED"
    lease_file "$LAB_G3_IP_MOVED"
    vg_ok "move: $REBIND" "$REBIND"
    admin_set_state g3-moved
}

# admin_need STATE: bring the lab to STATE from wherever the last test left it (each step a simple command, so that
# a failed check stops the test).
admin_need() {
    local want=$1 now
    now=$(admin_state)
    [ "$now" = "$want" ] && return 0
    case $now in
        baseline | synced) ;;
        *) admin_recover; now=baseline ;;   # dirty, or one of the other states: start over from the baseline
    esac
    [ "$now" != "$want" ] || return 0
    case $want in
        baseline)
            vg_ok "flush" flush
            check_ruleset "flush: ruleset equals the baseline exactly" "$LAB_TMP/baseline.rules"
            admin_set_state baseline
            ;;
        synced)
            admin_sync_node
            ;;
        g2-gone)
            if [ "$now" = baseline ]; then admin_sync_node; fi
            admin_set_state dirty
            vg_ok "orphans: sync with g2 gone" sync --connect "$NODE_G2_GONE"
            admin_set_state g2-gone
            ;;
        g3-pending | g3-bound | g3-moved)
            if [ "$now" = baseline ]; then admin_sync_node; fi
            admin_g3_start
            if [ "$want" != g3-pending ]; then admin_g3_bind; fi
            if [ "$want" = g3-moved ]; then admin_g3_move; fi
            ;;
        *) fail "admin_need: no way from state $now to $want" ;;
    esac
}
