#!/usr/bin/env bats
# admin.bats: virtgate's admin commands (sync, status, forward add/remove/list, reapply, flush) against real
# iptables/nftables, real UFW and real traffic, confined to network namespaces named vgt-* (the lab of helpers.bash,
# which also says how to run this file, the whole of it or one test, plus a third guest namespace vgt-g3 for late
# binding). The admin commands talk to libvirt's test driver (test:///…/node.xml, see admin_helpers.bash); every
# virtgate and iptables call runs inside vgt-host, with virtgate's directories in the lab's temp directory.
#
# Tests are named "<scenario> <topic>: ...", so that `bats --filter '^6 '` runs one scenario. Scenarios (in file
# order): 0 lab and baseline; 1 sync --dry-run, sync, traffic, idempotence, status; 2 rules wiped or edited by hand:
# status missing/drift/jumps, sync repairs; 3 orphans (guest gone or shut off): status lists them, sync removes them;
# 4 conflicts: status names the holder, forward add refused; 5 forward add/list/remove, --source; 6 late binding:
# hook-started guest without reservation is pending, lease file + reapply binds it, moved lease re-binds it; 7
# teardown: sync with no libvirt objects and flush both return to the baseline exactly; 8 timing of sync for 100
# guests x 5 forwards (dry-run and apply), back to the baseline.
#
# State across tests: every test starts from the state it needs (admin_need, see admin_helpers.bash); in a whole run
# the tests move the lab from one state to the next in file order, and a test run alone first gets there through the
# same commands.

load helpers
load admin_helpers

setup_file() {
    lab_begin || return 1
    echo yes >"$LAB_TMP/namespaces-created"
    if ! lab_create_topology; then
        lab_fail "lab: create namespaces, links and addresses" </dev/null
        return 1
    fi
    # lab_create_topology created every namespace of LAB_NAMESPACES, vgt-g3 included; it wires up g1 and g2 only
    if ! admin_add_g3; then
        lab_fail "lab: third guest namespace $LAB_NS_G3" </dev/null
        return 1
    fi
    lab_ok "lab: namespaces $LAB_NAMESPACES created"
    lab_firewall_up || return 1
    admin_paths
    if ! lab_prepare_virtgate_env || ! admin_prepare_env; then
        lab_fail "lab: virtgate directories, config, node files" </dev/null
        return 1
    fi
    local ok=yes
    lab_serve "$LAB_NS_G1" tcp 22 g1-22 || ok=no
    lab_serve "$LAB_NS_G1" tcp 80 g1-80 || ok=no
    lab_serve "$LAB_NS_G1" udp 53 g1-53-udp || ok=no
    lab_serve "$LAB_NS_G2" tcp 22 g2-22 || ok=no
    lab_serve "$LAB_NS_G3" tcp 22 g3-22 || ok=no
    lab_serve "$LAB_NS_WAN" tcp 7000 wan-7000 || ok=no
    check "lab: socat services listening in $LAB_NS_G1, $LAB_NS_G2, $LAB_NS_G3, $LAB_NS_WAN" test "$ok" = yes
    # the ruleset before virtgate runs (scenario 0 checks it)
    lab_ruleset >"$LAB_TMP/baseline.rules"
    admin_set_state baseline
}

teardown_file() {
    lab_teardown_file
}

# =================================================================================================================
# 0. The lab without virtgate, baseline

@test "0 lab: UFW's FORWARD DROP, egress works, nothing forwarded before virtgate, baseline saved" {
    admin_need baseline
    check_eq "lab: FORWARD policy is DROP (UFW)" "-P FORWARD DROP" "$(lab_ipt -S FORWARD | sed -n 1p)"
    expect_reply "lab: g1 egress to wan works (libvirt rules)" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    expect_no_reply "lab: wan -> 198.18.0.1:2222 gets nothing before virtgate" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_no_reply "lab: wan routed straight to g3 10.213.0.113:22 is blocked" "$LAB_NS_WAN" tcp "$LAB_G3_IP" 22
    check "baseline: ruleset of $LAB_NS_HOST saved, has libvirt's and UFW's chains, no virtgate chain" \
        sh -c "grep -q LIBVIRT_FWI '$LAB_TMP/baseline.rules' && grep -q ufw-before-forward '$LAB_TMP/baseline.rules' &&
               ! grep -qE 'VIRTGATE|VG[A-Z]-' '$LAB_TMP/baseline.rules'"
}

# =================================================================================================================
# 1. sync --dry-run, sync, idempotence, status

@test "1 sync --dry-run: prints the three forwards, changes neither the ruleset nor the state directory" {
    admin_need baseline
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
}

@test "1 sync: applies the forwards; wan, hairpin and egress work, routed access stays blocked, jumps first" {
    admin_need baseline
    admin_set_state dirty
    vg_timed "sync: apply" sync --connect "$NODE"
    # The log line says how long libvirt's own calls took (loading libvirt alone is milliseconds).
    check "sync: its log line names libvirt's share of the run" \
        grep -qE "sync: applied .*; libvirt's calls took [1-9][0-9]* ms\)$" "$VG_ERR"
    lab_ruleset >"$LAB_TMP/synced.rules"
    admin_set_state synced
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
    echo "# virtgate's rules after sync:"
    grep -E 'VIRTGATE|VG[A-Z]-' "$LAB_TMP/synced.rules" | sed 's/^/#   /' || true
    lab_info "state directory after sync: $(cd "$VG_STATE" && find . -type f | sort | tr '\n' ' ')"
}

@test "1 idempotence: a second sync --dry-run has no changes, a second sync changes nothing" {
    admin_need synced
    vg_ok "idempotence: second sync --dry-run" sync --dry-run --connect "$NODE"
    check_stdout_is "idempotence: second sync --dry-run prints exactly '# sync: no changes'" "# sync: no changes"
    vg_ok "idempotence: second sync" sync --connect "$NODE"
    check "idempotence: second sync says so, with libvirt's share of the run" \
        grep -qE "sync: already in sync \(libvirt's calls took [1-9][0-9]* ms\)$" "$VG_ERR"
    check_ruleset "idempotence: second sync leaves the ruleset identical" "$LAB_TMP/synced.rules"
}

@test "1 status: every forward active, bound to its reservation; the table form; nothing changed" {
    admin_need synced
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
}

@test "1 status: a host process listening on a forwarded port gets a warning; the forward still wins" {
    admin_need synced
    local pid
    admin_set_state dirty
    lab_serve "$LAB_NS_HOST" tcp 2222 host-2222
    pid=$(lab_last_pid)
    echo "$pid" >>"$LAB_TMP/host-services"
    status_json "status with a host listener on 2222" "$NODE"
    check "status: warning on vgt-g1 tcp 2222 while a host process listens on tcp 2222" \
        sh -c "jq -e '.guests[] | select(.name == \"vgt-g1\") | .forwards[] | select(.hostPorts == \"2222\") |
               .warnings | length > 0' '$STATUS' >/dev/null"
    check_eq "status: still active with the warning" active "$(fwd state vgt-g1 tcp 2222)"
    check_eq "status: no warning on vgt-g2 tcp 2223" "" "$(fwd 'warnings | join(",")' vgt-g2 tcp 2223)"
    expect_reply "status: wan -> 198.18.0.1:2222 still reaches g1-22, not the host listener" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    lab_stop_pid "$pid"
    rm -f "$LAB_TMP/host-services"
    admin_set_state synced
}

# =================================================================================================================
# 2. Rules wiped or edited by hand; status reports, sync repairs

@test "2 repair: rules wiped by hand: status says missing and drift, sync repairs them" {
    admin_need synced
    admin_set_state dirty
    check "wipe: jumps deleted, VIRTGATE-*/VG?-* chains flushed and deleted with iptables in $LAB_NS_HOST" wipe_by_hand
    check_ruleset "wipe: ruleset is back to the baseline" "$LAB_TMP/baseline.rules"
    expect_no_reply "wipe: wan -> 198.18.0.1:2222 fails" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    expect_no_reply "wipe: wan -> 198.18.0.1:5353/udp fails" "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353
    expect_no_reply "wipe: wan -> 198.18.0.1:2223 fails" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223
    status_json "status after wipe" "$NODE"
    check_eq "wipe: status: network vgtnet rules missing" missing "$(net_rules vgtnet)"
    check_eq "wipe: status: vgt-g1 tcp 2222 drift" drift "$(fwd state vgt-g1 tcp 2222)"
    check_eq "wipe: status: vgt-g1 udp 5353 drift" drift "$(fwd state vgt-g1 udp 5353)"
    check_eq "wipe: status: vgt-g2 tcp 2223 drift" drift "$(fwd state vgt-g2 tcp 2223)"
    check "wipe: status: drift detail says what to do" \
        sh -c "[ -n \"\$(jq -r '.guests[0].forwards[0].detail // empty' '$STATUS')\" ]"
    check_eq "wipe: status: jumpsInPlace false (all four jumps are missing)" false "$(jumps)"
    echo "# status --json after the wipe (summary): $(sj -c '{networks: [.networks[] | {name, rules}],
        forwards: [.guests[] | .name as $g | .forwards[] | {guest: $g, hostPorts, state}], orphans, jumpsInPlace}')"
    check_eq "wipe: status: no orphans" "" "$(orphans)"
    vg_ok "repair: sync" sync --connect "$NODE"
    check_ruleset "repair: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    admin_set_state synced
    expect_reply "repair: wan -> 198.18.0.1:2222 reaches g1-22 again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply_diag "repair: wan -> 198.18.0.1:5353/udp reaches g1-53-udp again" \
        "$LAB_NS_WAN" udp "$LAB_HOST_WAN_IP" 5353 "g1-53-udp *"
    expect_reply "repair: wan -> 198.18.0.1:2223 reaches g2-22 again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    status_json "status after repair" "$NODE"
    check_status_all_good "repair"
}

@test "2 repair: partial damage (an accept, a network rule, a jump gone, a stray DNAT, libvirt above us): status says drift, sync repairs" {
    admin_need synced
    admin_set_state dirty
    # One accept deleted from g1's chain, one network rule deleted, a stray DNAT added to g1's chain, libvirt's jump
    # re-inserted above ours.
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
    # (the nft backend masquerades in its own table: there is no VIRTGATE-POST jump to delete)
    if ! is_nft; then lab_ipt -t nat -D POSTROUTING -j VIRTGATE-POST; fi
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
    admin_set_state synced
    expect_reply "damage: wan -> 198.18.0.1:2222 reaches g1-22 again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    status_json "status after damage repaired" "$NODE"
    check_status_all_good "damage repaired"
}

# =================================================================================================================
# 3. A guest gone or shut off: orphans; sync removes them

# g2's chains as `status` lists them as orphans
g2_orphans() { if is_nft; then echo nft/vgt-g2; else echo "filter/VGF-vgt-g2 nat/VGD-vgt-g2 nat/VGS-vgt-g2"; fi; }

# the synced ruleset without any line of g2's: what is left with g2 gone or shut off
g1only_expected() {
    grep -vE 'vgt-g2|10\.213\.0\.12' "$LAB_TMP/synced.rules" >"$LAB_TMP/g1only.expected" || true
}

@test "3 orphans: g2 gone: status lists exactly g2's chains, sync --dry-run removes only them" {
    admin_need synced
    local g2_orphans
    g2_orphans=$(g2_orphans)
    status_json "g2 gone, before sync" "$NODE_G2_GONE"
    check_eq "orphans: status lists exactly g2's chains" "$g2_orphans" "$(orphans)"
    check_eq "orphans: vgt-g2 not among the guests" "" "$(sj '.guests[] | select(.name == "vgt-g2") | .name')"
    check_eq "orphans: vgt-g1 tcp 2222 still active" active "$(fwd state vgt-g1 tcp 2222)"
    vg_ok "orphans: status table" status --connect "$NODE_G2_GONE"
    check_stdout_has "orphans: status table names the orphaned chains" orphan "${g2_orphans%% *}"
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
}

@test "3 orphans: g2 gone: sync removes g2's rules and nothing else" {
    admin_need synced
    admin_set_state dirty
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
    g1only_expected
    check_ruleset "orphans: ruleset = the synced one minus every g2 line" "$LAB_TMP/g1only.expected"
    admin_set_state g2-gone
    vg_ok "orphans: second sync --dry-run with g2 gone" sync --dry-run --connect "$NODE_G2_GONE"
    check_stdout_is "orphans: second sync --dry-run: no changes" "# sync: no changes"
}

@test "3 orphans: g2 back, then shut off: a shut-off guest's rules are orphans too" {
    admin_need g2-gone
    admin_set_state dirty
    g1only_expected
    vg_ok "orphans: sync with g2 running again" sync --connect "$NODE"
    check_ruleset "orphans: g2 back: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    expect_reply "orphans: g2 back: wan -> 198.18.0.1:2223 reaches g2-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
    status_json "g2 shut off, before sync" "$NODE_G2_OFF"
    check_eq "orphans: g2 shut off: status lists g2's chains" "$(g2_orphans)" "$(orphans)"
    vg_ok "orphans: sync with g2 shut off" sync --connect "$NODE_G2_OFF"
    check_ruleset "orphans: g2 shut off: same ruleset as with g2 gone" "$LAB_TMP/g1only.expected"
    expect_no_reply "orphans: g2 shut off: wan -> 198.18.0.1:2223 closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223
    vg_ok "orphans: sync with g2 running again" sync --connect "$NODE"
    check_ruleset "orphans: restored: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    admin_set_state synced
}

# =================================================================================================================
# 4. Conflicts

@test "4 conflict: status names the holder, sync skips the conflicting forward and says so" {
    admin_need synced
    local detail
    status_json "conflict" "$NODE_CONFLICT"
    check_eq "conflict: status: vgt-g2 tcp 2222 is conflict" conflict "$(fwd state vgt-g2 tcp 2222)"
    detail=$(fwd detail vgt-g2 tcp 2222)
    check "conflict: status detail names the holder vgt-g1 ('$detail')" grep -q 'vgt-g1' <<<"$detail"
    check_eq "conflict: status: vgt-g1 tcp 2222 stays active" active "$(fwd state vgt-g1 tcp 2222)"
    check_eq "conflict: status: vgt-g2 tcp 2223 stays active" active "$(fwd state vgt-g2 tcp 2223)"
    vg_ok "conflict: sync --dry-run" sync --dry-run --connect "$NODE_CONFLICT"
    check_stdout_is "conflict: sync --dry-run: no changes (the conflicting forward is skipped)" "# sync: no changes"
    admin_set_state dirty
    vg_ok "conflict: sync" sync --connect "$NODE_CONFLICT"
    check_ruleset "conflict: sync: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    admin_set_state synced
    check "conflict: sync logged a line naming both guests" \
        sh -c "grep 'vgt-g2' '$VG_ERR' | grep -q 'vgt-g1'"
    expect_reply "conflict: wan -> 198.18.0.1:2222 still reaches g1-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
}

@test "4 conflict: forward add onto a port another guest or the guest itself holds is refused, nothing changes" {
    admin_need synced
    local spec
    admin_set_state dirty
    for spec in 2222:22/tcp 198.18.0.5:2222:22/tcp 2215-2222/tcp; do
        vg_fails "conflict: forward add vgt-g2 $spec is refused" forward add vgt-g2 "$spec" --connect "$NODE"
        if [ "$(grep -c . "$VG_ERR")" -eq 1 ] && grep -q 'vgt-g2' "$VG_ERR" && grep -q 'vgt-g1' "$VG_ERR"; then
            lab_ok "conflict: forward add vgt-g2 $spec: one line naming vgt-g2 and vgt-g1 ($(head -c 200 "$VG_ERR"))"
        else
            lab_fail "conflict: forward add vgt-g2 $spec: one line naming vgt-g2 and vgt-g1" <"$VG_ERR"
        fi
        check_ruleset "conflict: forward add vgt-g2 $spec: ruleset unchanged" "$LAB_TMP/synced.rules"
    done
    # the port of a guest's own forward
    vg_fails "conflict: forward add vgt-g1 2222:23/tcp (overlaps its own #1) is refused" \
        forward add vgt-g1 2222:23/tcp --connect "$NODE"
    check "conflict: ... with a line naming vgt-g1" grep -q 'vgt-g1' "$VG_ERR"
    check_ruleset "conflict: ... ruleset unchanged" "$LAB_TMP/synced.rules"
    admin_set_state synced
    expect_reply "conflict: wan -> 198.18.0.1:2222 still reaches g1-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222 "g1-22 *"
    expect_reply "conflict: wan -> 198.18.0.1:2223 still reaches g2-22" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2223 "g2-22 *"
}

# =================================================================================================================
# 5. forward add / list / remove

@test "5 forward list: one guest, all guests (the shut-off one too)" {
    admin_need synced
    vg_ok "list: forward list vgt-g1" forward list vgt-g1 --connect "$NODE"
    check_stdout_has "list: shows vgt-g1 running with 2222 and 5353" vgt-g1 running 2222 5353
    check_stdout_lacks "list: no 8080 yet" 8080
    vg_ok "list: forward list (all guests)" forward list --connect "$NODE"
    check_stdout_has "list: all guests: vgt-g1, vgt-g2, and the shut-off vgt-off" vgt-g1 vgt-g2 vgt-off 2223 2230
}

@test "5 forward add and remove: 8080 works at once, as sync would make it; remove restores the synced ruleset" {
    admin_need synced
    local node8080
    node8080=$(node_with_g1_forward node-g1-8080.xml '<vg:forward proto="tcp" host-port="8080" guest-port="80"/>')
    expect_no_reply "add: wan -> 198.18.0.1:8080 closed before" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080
    admin_set_state dirty
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
    check_stdout_is "add: what forward add applied is exactly what sync would make" "# sync: no changes"
    status_json "after forward add" "$node8080"
    check_eq "add: status: vgt-g1 tcp 8080 active" active "$(fwd state vgt-g1 tcp 8080)"

    vg_ok "remove: forward remove vgt-g1 8080/tcp" forward remove vgt-g1 8080/tcp --connect "$node8080"
    expect_no_reply "remove: wan -> 198.18.0.1:8080 closed again" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080
    check_ruleset "remove: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    admin_set_state synced
    vg_fails "remove: removing a forward the guest does not have fails" forward remove vgt-g1 8080/tcp --connect "$NODE"
    check_ruleset "remove: ... ruleset unchanged" "$LAB_TMP/synced.rules"
}

@test "5 forward add --source: only the listed sources reach the forward, as sync would make it" {
    admin_need synced
    local node_src node_src2
    node_src=$(node_with_g1_forward node-g1-8080-src.xml \
        '<vg:forward proto="tcp" host-port="8080" guest-port="80" source="192.0.2.0/24"/>')
    node_src2=$(node_with_g1_forward node-g1-8080-src2.xml \
        '<vg:forward proto="tcp" host-port="8080" guest-port="80" source="192.0.2.0/24 198.18.0.2/32"/>')
    admin_set_state dirty
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
    check_stdout_is "source: what forward add applied is exactly what sync would make" "# sync: no changes"
    vg_ok "source: forward add vgt-g1 8080:80/tcp --source 192.0.2.0/24 --source 198.18.0.2/32" \
        forward add vgt-g1 8080:80/tcp --source 192.0.2.0/24 --source 198.18.0.2/32 --connect "$NODE"
    expect_reply "source: wan (198.18.0.2, now included) -> 198.18.0.1:8080 reaches g1-80" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080 "g1-80 $LAB_WAN_IP"
    vg_ok "source: forward list shows both sources" forward list vgt-g1 --connect "$node_src2"
    check_stdout_has "source: listing has 192.0.2.0/24 and 198.18.0.2/32" 192.0.2.0/24 198.18.0.2/32
    vg_ok "source: forward remove vgt-g1 8080/tcp" forward remove vgt-g1 8080/tcp --connect "$node_src2"
    expect_no_reply "source: wan -> 198.18.0.1:8080 closed after remove" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 8080
    check_ruleset "source: after remove, ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    admin_set_state synced
}

@test "5 forward add: an invalid value, an unknown guest and a shut-off guest change nothing" {
    admin_need synced
    admin_set_state dirty
    vg_fails "invalid: forward add vgt-g1 70000:80/tcp fails" forward add vgt-g1 70000:80/tcp --connect "$NODE"
    check "invalid: ... the message names the value 70000" grep -q 70000 "$VG_ERR"
    check_ruleset "invalid: ... ruleset unchanged" "$LAB_TMP/synced.rules"
    vg_fails "invalid: forward add to an unknown guest fails" forward add vgt-nosuch 8080:80/tcp --connect "$NODE"
    check_ruleset "invalid: ... ruleset unchanged" "$LAB_TMP/synced.rules"
    vg_ok "shut off: forward add vgt-off 8081:80/tcp" forward add vgt-off 8081:80/tcp --connect "$NODE"
    check_stdout_has "shut off: says it applies when the guest starts" "not running"
    check_ruleset "shut off: ruleset unchanged" "$LAB_TMP/synced.rules"
    admin_set_state synced
}

# =================================================================================================================
# 6. Late binding: a guest without reservation, the lease file, virtgate reapply

@test "6 late binding: without a lease g3's forward is pending, and reapply leaves it so" {
    admin_need synced
    admin_set_state dirty
    echo "[]" >"$VG_DNSMASQ/$LAB_BRIDGE.status"
    vg_hook "$VG_XML/vgt-g3-prepare.xml" qemu vgt-g3 prepare begin -
    vg_hook "$ADMIN_FIXTURES/domain-vgt-g3.xml" qemu vgt-g3 start begin -
    check "pending: start logs the forward as pending" grep -qi pending "$VG_ERR"
    vg_hook "$ADMIN_FIXTURES/domain-vgt-g3.xml" qemu vgt-g3 started begin -
    check "pending: no DNAT for 2240 in the kernel" rules_lack '--dport 2240 '
    expect_no_reply "pending: wan -> 198.18.0.1:2240 closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2240
    check "pending: the hook remembered vgt-g3 in VIRTGATE_STATE_DIR/guests" test -f "$VG_STATE/guests/vgt-g3.xml"
    lab_ruleset >"$LAB_TMP/pending.rules"
    vg_ok "pending: $REBIND --dry-run without a lease" "$REBIND" --dry-run
    check_stdout_lacks "pending: $REBIND --dry-run without a lease has nothing for 2240" 'dport 2240' '10.213.0.113'
    vg_ok "pending: $REBIND without a lease" "$REBIND"
    check_ruleset "pending: $REBIND without a lease changes nothing" "$LAB_TMP/pending.rules"
    check "pending: $REBIND logs the forward as pending" grep -qi pending "$VG_ERR"
    admin_set_state g3-pending
}

@test "6 late binding: a lease for g3 and reapply bind its forward; a second reapply changes nothing" {
    admin_need g3-pending
    admin_set_state dirty
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
    admin_set_state g3-bound
}

@test "6 late binding: g3 moves to a new lease; reapply re-binds its forward, nothing left at the old address" {
    admin_need g3-bound
    admin_set_state dirty
    g3_address "$LAB_G3_IP_MOVED"
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
    admin_set_state g3-moved
}

@test "6 late binding: the lease expires: reapply makes the forward pending again; the lease back binds it again" {
    admin_need g3-moved
    admin_set_state dirty
    # the lease goes away: the forward is pending again, and not left pointing at a stale address
    echo "[]" >"$VG_DNSMASQ/$LAB_BRIDGE.status"
    vg_ok "expired: $REBIND with the lease gone" "$REBIND"
    check "expired: no DNAT for 2240 any more" rules_lack '--dport 2240 |"tcp", ?2240'
    check_ruleset "expired: ruleset equals the pending one" "$LAB_TMP/pending.rules"
    lease_file "$LAB_G3_IP_MOVED"
    vg_ok "expired: $REBIND with the lease back" "$REBIND"
    expect_reply "expired: lease back: wan -> 198.18.0.1:2240 reaches g3-22" \
        "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2240 "g3-22 *"
    admin_set_state g3-moved
}

@test "6 late binding: g3 stopped: its rules are gone and reapply does not bring them back" {
    admin_need g3-moved
    admin_set_state dirty
    vg_hook "$VG_XML/vgt-g3-stopped.xml" qemu vgt-g3 stopped end -
    vg_hook "$VG_XML/vgt-g3-stopped.xml" qemu vgt-g3 release end -
    check "stopped: no rule for vgt-g3" rules_lack 'vgt-g3|--dport 2240 |"tcp", ?2240'
    check_ruleset "stopped: ruleset identical to the first sync's" "$LAB_TMP/synced.rules"
    vg_ok "stopped: $REBIND after g3 stopped" "$REBIND"
    check_ruleset "stopped: $REBIND does not bring g3 back" "$LAB_TMP/synced.rules"
    # g3 back at its first address, with no lease, for whatever runs next
    g3_address "$LAB_G3_IP"
    echo "[]" >"$VG_DNSMASQ/$LAB_BRIDGE.status"
    admin_set_state synced
}

# =================================================================================================================
# 7. Teardown: sync with nothing running, flush

@test "7 teardown: sync with no network and no guest returns to the baseline exactly" {
    admin_need synced
    vg_ok "teardown: sync --dry-run with no network and no guest" sync --dry-run --connect "$NODE_EMPTY"
    check_stdout_has "teardown: dry-run removes the dispatch chains and jumps" '-X VIRTGATE-FWD' '-D FORWARD'
    check_ruleset "teardown: dry-run changed nothing" "$LAB_TMP/synced.rules"
    admin_set_state dirty
    vg_ok "teardown: sync with no network and no guest" sync --connect "$NODE_EMPTY"
    check_ruleset "teardown: sync with nothing: ruleset equals the baseline exactly" "$LAB_TMP/baseline.rules"
    admin_set_state baseline
    expect_no_reply "teardown: wan -> 198.18.0.1:2222 closed" "$LAB_NS_WAN" tcp "$LAB_HOST_WAN_IP" 2222
    status_json "teardown: nothing running" "$NODE_EMPTY"
    check_eq "teardown: status: no networks, no guests, no orphans" "0 0 0" \
        "$(sj '"\(.networks | length) \(.guests | length) \(.orphans | length)"')"
}

@test "7 teardown: flush returns to the baseline exactly; libvirt's and UFW's rules intact" {
    admin_need baseline
    admin_set_state dirty
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
    admin_set_state baseline
    vg_ok "teardown: flush --dry-run after flush" flush --dry-run
    check_stdout_has "teardown: second flush --dry-run: nothing to remove" 'nothing to remove'
    expect_reply "teardown: g1 egress still works (libvirt + UFW intact)" "$LAB_NS_G1" tcp "$LAB_WAN_IP" 7000 "wan-7000 *"
    expect_no_reply "teardown: wan routed straight to 10.213.0.11:22 still blocked" "$LAB_NS_WAN" tcp "$LAB_G1_IP" 22
}

# =================================================================================================================
# 8. Timing: 100 running guests x 5 forwards

@test "8 timing: sync of 100 guests x 5 forwards (dry-run, apply, in sync, status), back to the baseline" {
    admin_need baseline
    local big=$NODES/node-big.xml uri dnats t_dry t_apply t_dry2 t_apply2 t_status t_remove
    generate_big_node "$big" 100
    uri=test://$big
    check_eq "timing: generated node has 100 running guests and 500 forwards" "100 500" \
        "$(grep -c '<test:runstate>1<' "$big") $(grep -c '<vg:forward ' "$big")"
    check_ruleset "timing: starts from the baseline" "$LAB_TMP/baseline.rules"
    vg_timed "timing: sync --dry-run (100x5, from nothing)" sync --dry-run --connect "$uri"
    t_dry=$LAST_MS
    # one DNAT per forward, two for the one with two sources
    if is_nft; then
        # one element per host port and source: 22, 80, 443 x 2 sources, 53, and a 3-port range = 8 per guest
        dnats=$(grep '^add element inet virtgate fwd4' "$VG_OUT" | grep -o ': 10\.214\.[0-9.]* \. [0-9]*' | wc -l)
        check_eq "timing: dry-run adds 800 DNAT elements (500 forwards: sources and range ports one each)" 800 "$dnats"
    else
        dnats=$(grep -c -- '-j DNAT' "$VG_OUT" || true)
        check_eq "timing: dry-run prints 600 DNAT rules (500 forwards, one with 2 sources)" 600 "$dnats"
    fi
    check_ruleset "timing: dry-run changed nothing" "$LAB_TMP/baseline.rules"
    admin_set_state dirty
    vg_timed "timing: sync (100x5, apply)" sync --connect "$uri"
    t_apply=$LAST_MS
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
    t_dry2=$LAST_MS
    check_stdout_is "timing: second dry-run: no changes" "# sync: no changes"
    vg_timed "timing: sync (100x5, in sync)" sync --connect "$uri"
    t_apply2=$LAST_MS
    check_ruleset "timing: second sync: ruleset identical" "$LAB_TMP/big.rules"
    vg_timed "timing: status --json (100x5)" status --json --connect "$uri"
    t_status=$LAST_MS
    check_eq "timing: status: 500 forwards active" 500 \
        "$(jq '[.guests[].forwards[] | select(.state == "active")] | length' "$VG_OUT")"
    vg_timed "timing: sync back to nothing" sync --connect "$NODE_EMPTY"
    t_remove=$LAST_MS
    check_ruleset "timing: back to the baseline exactly" "$LAB_TMP/baseline.rules"
    admin_set_state baseline
    echo "# timing summary (ms; debug build): dry-run ${t_dry}, apply ${t_apply}, dry-run in sync ${t_dry2}," \
        "apply in sync ${t_apply2}, status ${t_status}, remove all ${t_remove}" >&3
}
