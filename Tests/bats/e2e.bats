#!/usr/bin/env bats
# e2e.bats: end-to-end test of virtgate with a real libvirtd, a real NAT network (dnsmasq), real guest VMs
# (QEMU, TCG), real UFW and real traffic, all inside network namespaces vgt-e2e-* and this run's private mount
# namespace.
#
#   VIRTGATE=/path/to/virtgate VIRTGATE_BACKEND=nft|iptables \
#       unshare --mount --propagation private -- bats --tap Tests/bats/e2e.bats
#   VIRTGATE    the binary under test (default: .build/debug/virtgate; it is copied first)
#   VIRTGATE_BACKEND   nft (default) or iptables: the backend of the whole run (BACKEND= in virtgate.conf)
#   E2E_KEEP=1  keep the temp dir (hook.log, consoles, libvirtd.log, rulesets) after the run
#
# setup_file (as root, in a private mount namespace; it refuses otherwise, and a missing tool is a failure):
# builds the guest (cached in Tests/e2e/cache/, see Tests/e2e/build-guest.sh), stops what a killed run left,
# takes the machine's ruleset and files as the baseline, makes /etc an overlay whose writes land in the temp dir,
# /run a tmpfs (keeping the machine's /run/netns, so that `ip netns` works), /var/lib/libvirt, /var/log/libvirt,
# /var/cache/libvirt, /usr/local/sbin and /usr/lib/ufw private directories, creates the namespaces vgt-e2e-host
# and vgt-e2e-wan, installs virtgate with the real install.sh (default paths; the binary it installs is a
# logging shim around a copy of the binary under test, so every hook call is logged with argv and stdin),
# enables UFW in vgt-e2e-host and starts libvirtd there with virtgate as its qemu and network hooks.
#
# The tests run in file order and build on each other (state in $E2E_TMP/state): network start; guests A (DHCP
# reservation) and B (none) start; forwards from wan (tcp, udp, a range, a source-restricted one) and the client
# address the guest saw; non-forwarded and routed access blocked; guest egress; hairpin (B -> host address ->
# A); host-local; B's late binding (`virtgate reapply` run by the suite once the lease file has B's lease: in
# production virtgate-leases.path runs it); `virtgate forward add` on the running guest; `ufw reload`; `ufw
# disable` + `enable`; libvirtd restart with the guests running (reconnect hook; `virtgate reapply` while
# libvirtd is down); `virtgate sync` and `doctor` on a healthy host, then after virtgate's FORWARD jump was
# deleted by hand (doctor and status see it, sync repairs it); `virtgate forward remove`; field-report shapes
# (guest C with overlapping guest ports, guest D with a NIC of type='bridge' on a plain host bridge; traffic,
# hairpin, a second identical event writes nothing per the hook log and a dry run); destroy + net-destroy leave
# zero residue. `virtgate status --json` is compared with the expected states at each step. A failure the rest
# cannot go on from (a network or guest that does not start, libvirtd that does not come back) stops the run:
# the later tests are skipped with the reason.
#
# teardown_file (always, also when setup_file failed half way): on any failure prints the diagnostics (hook log,
# the ruleset at the failure of each failing test and now, libvirtd's log, the guests' serial consoles,
# install.sh's output), destroys the guests and the network, stops libvirtd, QEMU and dnsmasq by PID, deletes
# the namespaces, undoes the mounts and checks that the machine's ruleset (iptables, nft), /etc/libvirt,
# /etc/ufw, /etc/default/ufw, /usr/lib/ufw, /etc/systemd/system, /etc/virtgate, /usr/local/sbin and /run/virtgate
# are unchanged. Its last lines count the assertions.

bats_load_library bats-support
bats_load_library bats-assert
bats_load_library bats-file
load private_mount
load e2e_helpers

setup_file() {
    E2E_T0=$(date +%s%N)
    VIRTGATE=${VIRTGATE:-$E2E_REPO/.build/debug/virtgate}
    refuse_unless_ready
    take_lock
    remove_leftovers

    E2E_TMP=$(mktemp -d /tmp/vgt-e2e.XXXXXX)
    chmod 755 "$E2E_TMP"
    export E2E_TMP
    echo "tmp $E2E_TMP" >>"$E2E_PIDS"
    mkdir "$E2E_TMP/state" "$E2E_TMP/bin"
    : >"$E2E_TMP/assertions"
    export E2E_URI="qemu:///system?socket=$E2E_TMP/run-libvirt/libvirt-sock"
    export VIRTGATE_BACKEND=${VIRTGATE_BACKEND:-nft}
    cp "$VIRTGATE" "$E2E_TMP/bin/virtgate"
    state_set version "$("$E2E_TMP/bin/virtgate" --version 2>&1 || true)"

    local out t1 rc
    t1=$(date +%s%N)
    out=$(bash "$E2E_DIR/build-guest.sh" "$E2E_DIR/cache" 2>&1) || fail "guest image could not be built: $out"
    state_set guest-image "$out in $(ms_since "$t1") ms"

    # the machine as it is before the run
    root_ruleset >"$E2E_TMP/root-ruleset.before"
    machine_files_checksum >"$E2E_TMP/machine-files.before"

    setup_mounts || fail "private mounts failed (see the mounts above)"
    create_topology || fail "namespaces $E2E_NAMESPACES could not be created"
    setup_libvirt_config || fail "private libvirt configuration failed"
    setup_ufw_config || fail "private UFW configuration failed"

    # install.sh, in its own PID namespace too, so that its "SIGHUP every libvirtd" can only ever see ours (none
    # yet); the test "install" checks what it did
    write_shim "$E2E_TMP/bin/virtgate-shim" "$E2E_TMP/bin/virtgate" "$E2E_TMP/hook.log"
    rc=0
    unshare --pid --fork --mount-proc env VIRTGATE_SKIP_APT=1 VIRTGATE_BINARY="$E2E_TMP/bin/virtgate-shim" \
        bash "$E2E_REPO/install.sh" >"$E2E_TMP/install.log" 2>&1 </dev/null 3>&- 8>&- || rc=$?
    state_set install-rc "$rc"
    if [ -d /etc/virtgate ]; then
        # no syslog daemon here: virtgate's messages go to stderr, which the shim logs; the backend of the whole
        # run (hooks run by libvirt read only this file)
        printf 'SYSLOG=no\nBACKEND=%s\n' "$VIRTGATE_BACKEND" >>/etc/virtgate/virtgate.conf
    fi

    # UFW (the test "ufw" checks it), IP forwarding (libvirt sets it too when the nat network starts), and the
    # host namespace's ruleset before libvirtd starts, for the zero-residue check
    ufw_ --force enable >"$E2E_TMP/ufw-enable.log" 2>&1 || true
    hostns sysctl -qw net.ipv4.ip_forward=1
    ruleset >"$E2E_TMP/ruleset.baseline"

    # the wan listener for guest egress
    # shellcheck disable=SC2016  # $SOCAT_PEERADDR is socat's
    ip netns exec "$E2E_NS_WAN" socat "TCP-LISTEN:$E2E_WAN_PORT,fork,reuseaddr" SYSTEM:'echo WAN $SOCAT_PEERADDR' \
        </dev/null >/dev/null 2>&1 3>&- 8>&- &
    track wan-listener "$!"

    t1=$(date +%s%N)
    start_libvirtd || fail "libvirtd did not answer within 30 s (its log: $E2E_TMP/libvirtd.log)"
    state_set libvirtd-ms "$(ms_since "$t1")"
    track_namespaces
    info "backend: $VIRTGATE_BACKEND; setup took $(ms_since "$E2E_T0") ms"
}

teardown_file() {
    local status=0
    # refused up front: nothing was set up
    [ -n "${E2E_TMP:-}" ] && [ -d "$E2E_TMP" ] || return 0
    E2E_STEP="machine untouched"
    if [ -z "${BATS_SETUP_FILE_COMPLETED:-}" ] || [ -s "$E2E_TMP/failed-tests" ] ||
        grep -q '^not ok' "$E2E_TMP/assertions" 2>/dev/null; then
        print_diagnostics >&3
    fi

    stop_everything
    undo_mounts || { echo "# could not undo every private mount" >&3; status=1; }

    if [ -f "$E2E_TMP/machine-files.before" ]; then
        local left
        left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep '^vgt-e2e-' || true)
        check_eq "namespaces deleted, no process left in them" "" "$left" || status=1
        check_eq "the machine's own ruleset (iptables, nft) is unchanged" \
            "$(cat "$E2E_TMP/root-ruleset.before")" "$(root_ruleset)" || status=1
        check_eq "the machine's /etc/libvirt, /etc/ufw, /etc/default/ufw, /usr/lib/ufw, /etc/systemd/system, /etc/virtgate, /usr/local/sbin, /run/virtgate are unchanged" \
            "$(cat "$E2E_TMP/machine-files.before")" "$(machine_files_checksum)" || status=1
    fi
    echo "# assertions: $(grep -c '^ok' "$E2E_TMP/assertions") passed, $(grep -c '^not ok' "$E2E_TMP/assertions") failed" >&3
    [ -z "${E2E_T0:-}" ] || info "total time $(ms_since "$E2E_T0") ms"

    rm -f "$E2E_PIDS"
    if [ "${E2E_KEEP:-0}" = 1 ] || [ "$status" != 0 ]; then
        echo "# kept $E2E_TMP" >&3
    elif findmnt -rn -o TARGET | grep -q "^$E2E_TMP"; then
        echo "# kept $E2E_TMP: something is still mounted under it" >&3
        status=1
    else
        rm -rf --one-file-system "$E2E_TMP"
    fi
    flock -u 8 2>/dev/null || true
    exec 8>&-
    return "$status"
}

# A failing test leaves its name and the host namespace's ruleset at that moment for the diagnostics.
teardown() {
    if [ -z "${BATS_TEST_COMPLETED:-}" ] && [ -z "${BATS_TEST_SKIPPED:-}" ]; then
        echo "$BATS_TEST_DESCRIPTION" >>"$E2E_TMP/failed-tests"
        { echo "$BATS_TEST_DESCRIPTION"; ruleset; } >"$E2E_TMP/ruleset-at-failure.$(printf %02d "$BATS_TEST_NUMBER")" 2>&1
    fi
}

private_mounts_in_place() {
    local d
    [ "$(findmnt -n -o FSTYPE --mountpoint /etc | tail -n1)" = overlay ] || return 1
    [ "$(findmnt -n -o FSTYPE --mountpoint /run | tail -n1)" = tmpfs ] || return 1
    for d in /run/netns /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt /usr/local/sbin /usr/lib/ufw; do
        findmnt --mountpoint "$d" >/dev/null || return 1
    done
    ip netns list | awk '{print $1}' | grep -qx "$E2E_NS_HOST"
}

@test "setup: prerequisites, guest image, namespaces, private mounts" {
    step setup
    check "prerequisites: root, tools, binary ($(state_get version))" \
        eval '"$E2E_TMP/bin/virtgate" --version >/dev/null'
    check "guest image: $(state_get guest-image)" \
        test -s "$E2E_DIR/cache/guest/vmlinuz" -a -s "$E2E_DIR/cache/guest/initrd.img"
    check "namespaces $E2E_NAMESPACES created" \
        eval 'hostns ip link show vgt-e2e-hw >/dev/null && wanns ip link show vgt-e2e-wh >/dev/null'
    check "private /etc (overlay), /run, /var/lib/libvirt, /usr/local/sbin, /usr/lib/ufw" private_mounts_in_place
}

@test "install: install.sh links the hooks, adds its block to UFW's after.init, installs its config" {
    step install
    [ "$(state_get install-rc)" = 0 ] || cat "$E2E_TMP/install.log"
    check_eq "install.sh exits 0" 0 "$(state_get install-rc)"
    check_eq "install.sh linked /etc/libvirt/hooks/qemu to the binary" /usr/local/sbin/virtgate \
        "$(readlink /etc/libvirt/hooks/qemu)"
    check_eq "install.sh linked /etc/libvirt/hooks/network to the binary" /usr/local/sbin/virtgate \
        "$(readlink /etc/libvirt/hooks/network)"
    check "install.sh added its block to UFW's after.init, executable" \
        eval 'grep -q "^# BEGIN virtgate" /etc/ufw/after.init && [ -x /etc/ufw/after.init ]'
    check "install.sh installed /etc/virtgate/virtgate.conf" test -f /etc/virtgate/virtgate.conf
}

@test "ufw: enabled in vgt-e2e-host, FORWARD policy DROP" {
    step ufw
    cat "$E2E_TMP/ufw-enable.log"
    check "ufw enable in $E2E_NS_HOST" eval 'ufw_ status | grep -q "Status: active"'
    check_eq "FORWARD policy is DROP" "-P FORWARD DROP" "$(hostns iptables -w -S FORWARD | head -n1)"
}

@test "libvirtd: runs in vgt-e2e-host" {
    step libvirtd
    local pid
    pid=$(libvirtd_pid)
    check "libvirtd started in $E2E_NS_HOST (pid $pid) in $(state_get libvirtd-ms) ms" eval \
        'pid_alive "$pid" &&
         [ "$(stat -L -c %i "/proc/$pid/ns/net")" = "$(stat -L -c %i "/run/netns/$E2E_NS_HOST")" ] &&
         virsh_ version >/dev/null'
}

@test "network: start runs the network hook, which adds the network's chain" {
    step network
    local out
    network_xml >"$E2E_TMP/net.xml"
    if out=$(virsh_ net-define "$E2E_TMP/net.xml" 2>&1 && virsh_ net-start "$E2E_NET" 2>&1); then
        pass "network $E2E_NET defined and started"
    else
        fatal "network $E2E_NET did not start" "$out"
    fi
    track_namespaces
    check "network hook ran: network $E2E_NET started (exit 0)" \
        eval '[ -n "$(hook_calls "hooks/network $E2E_NET started begin - \(rc=0\)")" ]'
    check "network hook added the network chain VGN-$E2E_NET" eval 'ruleset | grep -q "^:VGN-$E2E_NET"'
    check_status "with the network only" "nets=$E2E_NET:in-place jumps=true orphans=0 "
}

@test "guests start: A (DHCP reservation) and B (none) run the qemu hook" {
    step guests-start
    needs network
    local out ev
    domain_xml "$E2E_A" A "$E2E_A_MAC" "$A_FORWARDS" >"$E2E_TMP/a.xml"
    domain_xml "$E2E_B" B "$E2E_B_MAC" "$B_FORWARDS" >"$E2E_TMP/b.xml"
    if ! out=$(virsh_ define "$E2E_TMP/a.xml" 2>&1 && virsh_ define "$E2E_TMP/b.xml" 2>&1); then
        fatal "guests could not be defined" "$out"
    fi
    state_set ta "$(date +%s%N)"
    out=$(virsh_ start "$E2E_A" 2>&1) || fatal "virsh start $E2E_A" "$out"
    pass "virsh start $E2E_A"
    state_set tb "$(date +%s%N)"
    out=$(virsh_ start "$E2E_B" 2>&1) || fatal "virsh start $E2E_B" "$out"
    pass "virsh start $E2E_B"
    track_namespaces
    for ev in "prepare begin" "start begin" "started begin"; do
        check "qemu hook ran for A and B: $ev (exit 0)" eval \
            '[ -n "$(hook_calls "hooks/qemu $E2E_A $ev - \(rc=0\)")" ] && [ -n "$(hook_calls "hooks/qemu $E2E_B $ev - \(rc=0\)")" ]'
    done
    # B has no reservation and has not booted yet: its forwards wait for a lease
    check_status "right after start (B without a lease: pending)" \
        "nets=$E2E_NET:in-place jumps=true orphans=0 $A_ACTIVE $E2E_B#1=pending $E2E_B#2=pending"
}

@test "guests boot: A answers on its reserved address, B on the address it leased" {
    step guests-boot
    needs guests-start
    local b_ip=""
    if wait_for 90 guest_up "$E2E_A_IP"; then
        pass "guest A answers on $E2E_A_IP"
        info "guest A: boot to services in $(ms_since "$(state_get ta)") ms"
    else
        fatal "guest A did not come up within 90 s"
    fi
    if wait_for 90 eval '[ -n "$(lease_ip "$E2E_B_MAC")" ]'; then
        b_ip=$(lease_ip "$E2E_B_MAC")
    fi
    if [ -n "$b_ip" ] && wait_for 30 guest_up "$b_ip"; then
        state_set b_ip "$b_ip"
        pass "guest B leased $b_ip and answers"
        info "guest B: boot to services in $(ms_since "$(state_get tb)") ms"
    else
        flunk "guest B got no lease or did not come up"
    fi
}

@test "forwards from wan: tcp, udp, a range, an allow-list, egress, hairpin, host-local; nothing else gets in" {
    step forwards-from-wan
    needs guests-boot
    traffic_round "first start"
    expect "non-forwarded: wan -> host:5000/tcp gets nothing" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 5000
    expect "non-forwarded: wan -> host:6002/udp gets nothing" "" probe "$E2E_NS_WAN" udp "$E2E_HOST_IP" 6002
    expect "routed: wan -> A:22 directly (not DNAT'ed) is blocked" "" probe "$E2E_NS_WAN" tcp "$E2E_A_IP" 22
    expect "routed: wan -> A:5000 directly is blocked" "" probe "$E2E_NS_WAN" tcp "$E2E_A_IP" 5000
    expect "B's forward host:2223 is not there before B is bound" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2223
    info "bridge-nf-call-iptables in $E2E_NS_HOST: $(hostns cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo 'n/a')"
}

@test "late binding of B: virtgate reapply once the lease file has B's lease" {
    step late-binding
    needs guests-boot
    local out rc=0
    [ -n "$(state_get b_ip)" ] || flunk "late binding not tested: B has no lease"
    echo "status with B's lease, before reapply: $(status_summary)"
    # In production virtgate-leases.path runs `virtgate reapply` when dnsmasq rewrites the lease file; there is no
    # systemd here, so the suite runs it once the lease file has B's lease.
    out=$(vg reapply 2>&1) || rc=$?
    echo "$out"
    state_set b_bound yes
    check_eq "virtgate reapply (run by the suite, in place of virtgate-leases.path) exits 0" 0 "$rc"
    expect "late binding: wan -> host:2223/tcp reaches B:22" "B 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2223
    expect "late binding: wan -> host:6001/udp reaches B:6000" "B 6000 $E2E_WAN_IP" probe "$E2E_NS_WAN" udp "$E2E_HOST_IP" 6001
    check_status "after reapply" "$(all_active)"
}

@test "forward add: on the running guest A, in effect at once and in its metadata" {
    step forward-add
    needs guests-boot
    local out rc=0
    out=$(vg forward add "$E2E_A" 5001:5000/tcp --connect "$E2E_URI" 2>&1) || rc=$?
    echo "$out"
    state_set added yes
    check_eq "virtgate forward add $E2E_A 5001:5000/tcp exits 0" 0 "$rc"
    expect "forward add applies at once: wan -> host:5001 reaches A:5000" "A 5000 $E2E_WAN_IP" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 5001
    check "the added forward is in A's live and persistent metadata" eval \
        'virsh_ metadata "$E2E_A" urn:virtgate:forwards:1 --live | grep -q "host-port=\"5001\"" &&
         virsh_ metadata "$E2E_A" urn:virtgate:forwards:1 --config | grep -q "host-port=\"5001\""'
    check_status "after forward add" "$(all_active)"
}

@test "ufw reload: every forward keeps working" {
    step ufw-reload
    needs guests-boot
    ufw_ reload 2>&1 || true
    check "ufw reload succeeds" eval 'ufw_ status | grep -q "Status: active"'
    traffic_round "after ufw reload"
    check_status "after ufw reload" "$(all_active)"
}

@test "ufw disable + enable: every forward keeps working" {
    step ufw-disable-enable
    needs guests-boot
    ufw_ disable 2>&1 || true
    check "ufw disable succeeds" eval '! ufw_ status | grep -q "Status: active"'
    ufw_ --force enable 2>&1 || true
    check "ufw enable succeeds (after.init with virtgate's block does not fail it)" \
        eval 'ufw_ status | grep -q "Status: active"'
    check_eq "FORWARD policy is DROP again" "-P FORWARD DROP" "$(hostns iptables -w -S FORWARD | head -n1)"
    traffic_round "after ufw disable+enable"
    check_status "after ufw disable+enable" "$(all_active)"
}

@test "libvirtd restart: the guests keep running, the qemu hook reconnects, reapply works while it is down" {
    step libvirtd-restart
    needs guests-boot
    local out rc=0 t1
    stop_libvirtd
    check "the guests keep running while libvirtd is down" eval 'guest_up "$E2E_A_IP"'
    out=$(vg reapply 2>&1) || rc=$?
    echo "$out"
    check_eq "virtgate reapply works while libvirtd is down (exit 0)" 0 "$rc"
    t1=$(date +%s%N)
    if start_libvirtd; then
        pass "libvirtd restarted (pid $(libvirtd_pid))"
        info "libvirtd restarted in $(ms_since "$t1") ms"
    else
        fatal "libvirtd did not come back within 30 s"
    fi
    track_namespaces
    check "qemu hook ran reconnect for A and B (exit 0)" wait_for 20 eval '[ "$(n_reconnect)" -ge 2 ]'
    check_eq "both guests still running" "running running" \
        "$(virsh_ domstate "$E2E_A" | head -n1) $(virsh_ domstate "$E2E_B" | head -n1)"
    traffic_round "after libvirtd restart"
    check_status "after libvirtd restart" "$(all_active)"
    check_eq "FORWARD's first rule is virtgate's jump" "-A FORWARD -j VIRTGATE-FWD" \
        "$(hostns iptables -w -S FORWARD | sed -n 2p)"
}

@test "sync and doctor: a healthy host, then virtgate's FORWARD jump deleted by hand" {
    step sync-doctor
    needs guests-boot
    local out rc=0
    out=$(vg sync --connect "$E2E_URI" 2>&1) || rc=$?
    echo "$out"
    check_eq "virtgate sync exits 0" 0 "$rc"
    check "virtgate sync finds hook-made rules already in sync" eval 'echo "$out" | grep -q "already in sync"'
    rc=0
    out=$(vg doctor 2>&1) || rc=$?
    echo "$out"
    check_eq "virtgate doctor reports a healthy host (exit 0)" 0 "$rc"
    # an admin removes virtgate's FORWARD jump: forwards die, doctor and status see it, sync repairs it
    hostns iptables -w -D FORWARD -j VIRTGATE-FWD
    expect "with virtgate's FORWARD jump removed by hand, wan -> host:2222 fails" "" \
        probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    rc=0
    out=$(vg doctor 2>&1) || rc=$?
    echo "$out"
    check_eq "virtgate doctor reports the missing jump (exit 1)" 1 "$rc"
    check_eq "status --json reports the jumps not in place" false \
        "$(vg status --connect "$E2E_URI" --json 2>/dev/null | jq -r .jumpsInPlace)"
    rc=0
    out=$(vg sync --connect "$E2E_URI" 2>&1) || rc=$?
    echo "$out"
    check_eq "virtgate sync repairs it (exit 0)" 0 "$rc"
    expect "after sync, wan -> host:2222 reaches A:22 again" "A 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    check_eq "FORWARD's first rule is virtgate's jump again" "-A FORWARD -j VIRTGATE-FWD" \
        "$(hostns iptables -w -S FORWARD | sed -n 2p)"
    check_status "after sync" "$(all_active)"
}

@test "forward remove: out of effect at once" {
    step forward-remove
    needs guests-boot
    local out rc=0
    out=$(vg forward remove "$E2E_A" 5001/tcp --connect "$E2E_URI" 2>&1) || rc=$?
    echo "$out"
    state_del added
    check_eq "virtgate forward remove $E2E_A 5001/tcp exits 0" 0 "$rc"
    expect "forward remove applies at once: wan -> host:5001 gets nothing" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 5001
    check_status "after forward remove" "$(all_active)"
}

@test "shapes: guest C (overlapping guest ports) and guest D (a NIC of type='bridge' on a plain bridge) start" {
    step shapes-start
    needs guests-boot
    local out g ev tc
    if shapes_bridge_up; then
        pass "plain bridge $E2E_BRIDGE2 ($E2E_GW2/24) with its own DHCP for D"
    else
        flunk "plain bridge $E2E_BRIDGE2 could not be set up"
    fi
    domain_xml "$E2E_C" C "$E2E_C_MAC" "$C_FORWARDS" >"$E2E_TMP/c.xml"
    domain_xml "$E2E_D" D "$E2E_D_MAC" "$D_FORWARDS" "$E2E_BRIDGE2" >"$E2E_TMP/d.xml"
    tc=$(date +%s%N)
    for g in "$E2E_C" "$E2E_D"; do
        if out=$(virsh_ define "$E2E_TMP/${g: -1}.xml" 2>&1 && virsh_ start "$g" 2>&1); then
            pass "virsh define + start $g"
        else
            flunk "virsh define + start $g" "$out"
        fi
    done
    track_namespaces
    for ev in "start begin" "started begin"; do
        check "qemu hook ran for C and D: $ev (exit 0)" eval \
            '[ -n "$(hook_calls "hooks/qemu $E2E_C $ev - \(rc=0\)")" ] && [ -n "$(hook_calls "hooks/qemu $E2E_D $ev - \(rc=0\)")" ]'
    done
    check "guest C answers on $E2E_C_IP" wait_for 90 guest_up "$E2E_C_IP"
    info "guest C: boot to services in $(ms_since "$tc") ms"
    check "guest D answers on $E2E_D_IP on $E2E_BRIDGE2" wait_for 60 guest_up "$E2E_D_IP"
    info "guest D: boot to services in $(ms_since "$tc") ms"
    # C serves tcp 81 too, for the range 8190-8191 -> 80-81
    # shellcheck disable=SC2016
    guest_run "$E2E_C_IP" "socat TCP-LISTEN:81,fork,reuseaddr SYSTEM:'echo C 81 \$SOCAT_PEERADDR' </dev/null >/dev/null 2>&1 &" >/dev/null || true
    check "guest C serves tcp 81" wait_for 5 eval '[ "$(probe "$E2E_NS_HOST" tcp "$E2E_C_IP" 81)" = "C 81 $E2E_GW" ]'
}

@test "shapes: traffic to C and D from wan and by hairpin; the allow-list; routed access to D blocked" {
    step shapes-traffic
    needs shapes-start
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
    check_status "with C and D" "$(all_active) $E2E_C#1=active $E2E_C#2=active $E2E_C#3=active $E2E_C#4=active $E2E_D#1=active"
}

@test "shapes: a second identical event writes nothing (hook log, dry run, ruleset)" {
    step shapes-idempotence
    needs shapes-start
    local out rc g live
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
        rc=0
        out=$(hostns /usr/local/sbin/virtgate hook --dry-run qemu "$g" start begin - <"$live" 2>&1) || rc=$?
        echo "$out" | head -n 30
        check "a second start of $g, dry run prints only '# …: no changes' (exit $rc): '$out'" eval \
            '[ "$rc" = 0 ] && echo "$out" | grep -q "no changes" && ! echo "$out" | grep -v "^# .*: no changes$" | grep -q .'
        virtgate_lines >"$E2E_TMP/shapes-before.rules"
        hostns nft list table inet virtgate >>"$E2E_TMP/shapes-before.rules" 2>/dev/null || true
        rc=0
        hostns /etc/libvirt/hooks/qemu "$g" start begin - <"$live" >/dev/null 2>&1 || rc=$?
        check_eq "a second start of $g through hooks/qemu exits 0" 0 "$rc"
        check_eq "hook log: of $g's two start calls, only the first applied anything" 1 \
            "$(hook_block_stderr "hooks/qemu $g start begin" | grep -c "applied" || true)"
        virtgate_lines >"$E2E_TMP/shapes-after.rules"
        hostns nft list table inet virtgate >>"$E2E_TMP/shapes-after.rules" 2>/dev/null || true
        check "the second start of $g left virtgate's rules and nft table as they were" \
            diff -u "$E2E_TMP/shapes-before.rules" "$E2E_TMP/shapes-after.rules"
    done
}

@test "shapes: C and D destroyed leave no rule; A's forwards stay" {
    step shapes-destroy
    needs shapes-start
    local g
    for g in "$E2E_C" "$E2E_D"; do
        virsh_ destroy "$g" 2>&1 || true
        check "virsh destroy $g" eval '[ "$(virsh_ domstate "$g" | head -n1)" = "shut off" ]'
        check "qemu hook ran for $g: release end (exit 0)" \
            wait_for 5 eval '[ -n "$(hook_calls "hooks/qemu $g release end - \(rc=0\)")" ]'
        virsh_ undefine "$g" >/dev/null 2>&1 || true
    done
    check_eq "C's and D's rules are gone" "" "$(virtgate_lines | grep -E -- "$E2E_C|$E2E_D|$E2E_BRIDGE2" || true)"
    check_eq "C's and D's nft elements are gone" "" \
        "$(hostns nft list table inet virtgate 2>/dev/null | grep -E -- "$E2E_C|$E2E_D" || true)"
    expect "C destroyed: wan -> host:8191 gets nothing" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 8191
    expect "D destroyed: wan -> host:2225 gets nothing" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2225
    expect "C and D gone: wan -> host:2222 still reaches A:22" "A 22 $E2E_WAN_IP" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    shapes_bridge_down
}

@test "teardown: destroying A runs the qemu hook and closes A's forwards" {
    step teardown-a
    needs guests-boot
    local ev
    virsh_ destroy "$E2E_A" 2>&1 || true
    check "virsh destroy $E2E_A" eval '[ "$(virsh_ domstate "$E2E_A" | head -n1)" = "shut off" ]'
    for ev in "stopped end" "release end"; do
        check "qemu hook ran for A: $ev (exit 0)" \
            wait_for 5 eval '[ -n "$(hook_calls "hooks/qemu $E2E_A $ev - \(rc=0\)")" ]'
    done
    check_eq "A's rules are gone" "" "$(virtgate_lines | grep -- "$E2E_A" || true)"
    expect "A's forward host:2222 is closed" "" probe "$E2E_NS_WAN" tcp "$E2E_HOST_IP" 2222
    check_status "with A destroyed" "nets=$E2E_NET:in-place jumps=true orphans=0 $E2E_B#1=active $E2E_B#2=active"
}

@test "teardown: destroying B and net-destroy leave zero residue" {
    step teardown-rest
    needs teardown-a
    virsh_ destroy "$E2E_B" 2>&1 || true
    check "virsh destroy $E2E_B" eval '[ "$(virsh_ domstate "$E2E_B" | head -n1)" = "shut off" ]'
    virsh_ net-destroy "$E2E_NET" 2>&1 || true
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
        "$E2E_TMP/ruleset.after" >"$E2E_TMP/ruleset.after.cmp" || true
    diff -u "$E2E_TMP/ruleset.baseline" "$E2E_TMP/ruleset.after.cmp" || true
    check "zero residue: iptables-save of $E2E_NS_HOST (filter, nat, mangle; counters stripped) equals the baseline taken before libvirtd started, libvirt's empty chains aside" \
        diff -q "$E2E_TMP/ruleset.baseline" "$E2E_TMP/ruleset.after.cmp"
    check_status "with everything stopped" "nets= jumps=true orphans=0 "
    check_eq "no hook call failed" "" "$(hook_calls 'hooks/.*\(rc=[1-9][0-9]*\)')"
    info "hook calls: $(hook_calls 'hooks/' | wc -l)"
    virsh_ undefine "$E2E_A" >/dev/null 2>&1 || true
    virsh_ undefine "$E2E_B" >/dev/null 2>&1 || true
    virsh_ net-undefine "$E2E_NET" >/dev/null 2>&1 || true
}
