#!/usr/bin/env bats
# install.bats: install.sh, confined to a private mount namespace, a private pid namespace and the network
# namespace vgt-inst. The real /etc/libvirt, /usr/local/sbin, /etc/virtgate, /etc/systemd/system,
# /etc/ufw, /run, services and firewall are never touched: every path install.sh uses is moved into a temp
# dir with the VIRTGATE_* variables, and in the namespaces install.sh runs in, /run, /usr/local/sbin,
# /usr/local/share, /etc/libvirt, /etc/virtgate, /etc/systemd/system and /etc/ufw are additionally covered
# with empty tmpfs mounts. systemctl is a stand-in on PATH that only records its arguments. teardown_file checks that those
# real paths and the root namespace's ruleset are unchanged.
#
# Run (as root, in a private mount namespace):
#   VIRTGATE=/path/to/virtgate unshare --mount --propagation private -- bats --tap Tests/bats/install.bats
#   VIRTGATE_INSTALL_BUILD=1 ...   also builds the release binary the way install.sh does (into
#                                  .build-install/; minutes)
# Tests run in file order and build on each other within a scenario; `--filter` runs one (with the
# scenario's earlier tests where it needs them, e.g. --filter 'fresh install').

bats_load_library bats-support
bats_load_library bats-assert
bats_load_library bats-file
load private_mount
load install_helpers

setup_file() {
    ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
    FIXTURES=$BATS_TEST_DIRNAME/fixtures/install
    INSTALL=$ROOT/install.sh
    SHIPPED_CONF=$ROOT/hooks/virtgate.conf
    export ROOT FIXTURES INSTALL SHIPPED_CONF

    [ "$(id -u)" -eq 0 ] || fail "run as root: sudo unshare --mount --propagation private -- bats Tests/bats/install.bats"
    in_private_mount_namespace \
        || fail "not in a private mount namespace: run unshare --mount --propagation private -- bats Tests/bats/install.bats"
    local tool missing=()
    for tool in $INSTALL_TOOLS; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] || fail "missing tools: ${missing[*]} (sudo bash Tests/run.sh --deps)"
    [ -f /usr/share/ufw/after.init ] || fail "missing /usr/share/ufw/after.init (ufw's template): apt-get install ufw"
    VIRTGATE_SOURCE=${VIRTGATE:-$ROOT/.build/debug/virtgate}
    [ -x "$VIRTGATE_SOURCE" ] || fail "$VIRTGATE_SOURCE is not an executable (swift build first, or set VIRTGATE=)"
    [ -f "$INSTALL" ] || fail "$INSTALL missing"
    [ -f "$SHIPPED_CONF" ] || fail "$SHIPPED_CONF missing"

    # The fixed namespace name: concurrent runs of this file wait for each other.
    exec 8>"$INSTALL_LOCK"
    flock -w 900 8 || fail "another install.bats run holds $INSTALL_LOCK"

    TMP=$(mktemp -d /tmp/vgt-inst.XXXXXX)
    chmod 0755 "$TMP"
    export TMP
    : >"$TMP/checks"
    : >"$TMP/deferred"
    # A private copy: a rebuild of .build/ during the run cannot swap the binary under the test.
    cp "$VIRTGATE_SOURCE" "$TMP/virtgate"
    VG_BIN=$TMP/virtgate
    export VG_BIN VIRTGATE_SOURCE

    if [ "${VIRTGATE_INSTALL_BUILD:-0}" = 1 ]; then
        # The build runs in the network namespace, without network: fetch the dependencies now.
        PATH=/opt/swift/usr/bin:$PATH swift package --package-path "$ROOT" --scratch-path "$ROOT/.build-install" \
            resolve >"$TMP/resolve.log" 2>&1 \
            || { cat "$TMP/resolve.log"; fail "prerequisite for VIRTGATE_INSTALL_BUILD=1: swift package resolve"; }
    fi

    real_state >"$TMP/real-before"

    start_holder
    export HOLDER UNSHARE_PID
    # The checks that the namespaces are what they should be run before /run is covered (the first test).
    inns readlink /proc/self/ns/net >"$TMP/holder-net"
    # Belt and braces: even a path install.sh got wrong cannot reach the real files or services.
    inns mount -t tmpfs -o size=16m tmpfs /run
    inns mount -t tmpfs -o size=1m tmpfs /usr/local/sbin
    local p
    for p in /etc/libvirt /etc/virtgate /etc/systemd/system /etc/ufw /usr/local/share; do
        if [ -d "$p" ]; then inns mount -t tmpfs -o size=1m tmpfs "$p"; fi
    done
    unset VIRTGATE_CONFIG VIRTGATE_STATE_DIR VIRTGATE_DRY_RUN VIRTGATE_ON_INVALID VIRTGATE_IPTABLES \
        VIRTGATE_MASQUERADE_ROUTED VIRTGATE_SYSLOG VIRTGATE_NETWORK_RUN_DIR VIRTGATE
}

teardown() {
    run_deferred
}

teardown_file() {
    local status=0
    [ -z "${TMP:-}" ] || run_deferred
    stop_holder
    if [ -n "${TMP:-}" ] && [ -f "$TMP/real-before" ]; then
        local after
        after=$(real_state)
        if [ "$(cat "$TMP/real-before")" != "$after" ]; then
            diff "$TMP/real-before" <(echo "$after") | head -20
            echo "real machine changed: /etc/libvirt/hooks, /usr/local/sbin, /usr/local/share, /etc/virtgate, /run/virtgate, /etc/systemd/system, /etc/ufw, root-namespace ruleset"
            status=1
        else
            echo ok >>"$TMP/checks"
        fi
        echo "# install.bats: $(wc -l <"$TMP/checks") checks passed (real machine untouched: $([ "$status" -eq 0 ] && echo yes || echo NO))" >&3
    fi
    [ -z "${TMP:-}" ] || rm -rf "$TMP"
    return "$status"
}

# -------------------------------------------------------------------------------------------------

@test "prerequisites: root, the binary, network namespace vgt-inst, a pid namespace of its own" {
    check "prerequisites: root, tools, $VIRTGATE_SOURCE" eval '[ "$(id -u)" -eq 0 ] && cmp -s "$VG_BIN" "$VIRTGATE_SOURCE"'
    check "inner: in network namespace $NS" \
        eval '[ "$(stat -L -c %i /run/netns/$NS)" = "$(inns stat -L -c %i /proc/self/ns/net)" ] && [ "$(cat "$TMP/holder-net")" = "$(inns readlink /proc/self/ns/net)" ]'
    check "inner: in a pid namespace (pidof sees no real libvirt daemon)" \
        eval '[ "$(inns readlink /proc/self/ns/pid)" != "$(readlink /proc/self/ns/pid)" ] && [ "$(inns sh -c "read -r p rest </proc/self/stat; [ \$p = \$\$ ] && echo own-proc")" = own-proc ] && [ -z "$(inns pidof libvirtd virtqemud virtnetworkd || true)" ]'
    check "inner: /run and /usr/local/sbin are empty tmpfs mounts there (the real ones hidden)" \
        eval 'inns mountpoint -q /run && inns mountpoint -q /usr/local/sbin && inns test ! -e /run/netns && [ -z "$(inns ls -A /usr/local/sbin)" ]'
}

@test "shipped config: documents every key, all comments, accepted as shipped and uncommented, a bad value rejected" {
    # The shipped config documents every key with its default, and virtgate accepts it as shipped and
    # with every line uncommented.
    local key missing=""
    for key in ON_INVALID=warn MASQUERADE_ROUTED=no DRY_RUN=no IPTABLES=auto SYSLOG=yes; do
        grep -qx "#$key" "$SHIPPED_CONF" || missing+=" $key"
    done
    check "hooks/virtgate.conf documents every key with its default (missing:${missing:- none})" test -z "$missing"
    check "hooks/virtgate.conf: every non-blank line is a comment" eval '! grep -vE "^(#|$)" "$SHIPPED_CONF" | grep -q .'
    mkdir -p "$TMP/conf"
    sed -E 's/^#([A-Z_]+=)/\1/' "$SHIPPED_CONF" >"$TMP/conf/uncommented.conf"
    local run=(inns env VIRTGATE_STATE_DIR="$TMP/conf/state" VIRTGATE_SYSLOG=0 "$VG_BIN" flush --dry-run)
    check "virtgate accepts hooks/virtgate.conf as shipped" eval 'VIRTGATE_CONFIG="$SHIPPED_CONF" "${run[@]}" >/dev/null 2>&1'
    check "virtgate accepts hooks/virtgate.conf with every default uncommented" \
        eval 'VIRTGATE_CONFIG="$TMP/conf/uncommented.conf" "${run[@]}" >/dev/null 2>&1'
    sed 's/^ON_INVALID=warn$/ON_INVALID=bogus/' "$TMP/conf/uncommented.conf" >"$TMP/conf/bad.conf"
    check "virtgate rejects a bad value in the config (the file is really read)" \
        eval '! VIRTGATE_CONFIG="$TMP/conf/bad.conf" "${run[@]}" >/dev/null 2>&1'
    check "hooks/README.md exists and names both files" \
        eval 'grep -q virtgate.conf "$ROOT/hooks/README.md" && grep -q README "$ROOT/hooks/README.md"'
}

# --- fresh: install into an empty root, again, uninstall, again ----------------------------------

@test "fresh install: hooks, binary, config, units installed; libvirt reloaded" {
    scenario fresh
    save before "$(listing "$S")"
    start_daemon
    installer
    installed_ok "fresh install: install.sh succeeds"
    check "fresh install: hooks/qemu is a symlink to the installed binary" link_is "$HOOKS/qemu" "$BIN"
    check "fresh install: hooks/network is a symlink to the installed binary" link_is "$HOOKS/network" "$BIN"
    check "fresh install: binary installed, mode 0755, same bytes as the source" \
        eval '[ "$(stat -c %a "$BIN" 2>/dev/null)" = 755 ] && cmp -s "$BIN" "$VG_BIN"'
    check "fresh install: config installed, equal to hooks/virtgate.conf" cmp -s "$CONF" "$SHIPPED_CONF"
    local version
    version=$(inns "$BIN" --version 2>&1) || true
    check "fresh install: installed binary answers --version ($version)" eval '[[ "$version" == virtgate\ * ]]'
    check "fresh install: libvirt told to re-read hooks (fake virtnetworkd got SIGHUP)" daemon_got_hup
    check "fresh install: output says the SIGHUP was sent" said "sent SIGHUP to virtnetworkd"
    check "fresh install: output says there is no running network or guest" said "no running libvirt network or guest"
    check "fresh install: the three systemd units are installed into \$VIRTGATE_SYSTEMD_DIR" \
        eval '[ -f "$SYSD/virtgate-leases.path" ] && [ -f "$SYSD/virtgate-reapply.service" ] && [ -f "$SYSD/virtgate-sync.service" ]'
    check "fresh install: systemd not running (pid namespace): says so, units not enabled" said "systemd is not running here"
    check "fresh install: no UFW directory: no after.init created, and it says so" \
        eval '[ ! -e "$UFW" ] && said "no after.init block"'
}

@test "fresh install: a second install changes nothing and reloads nothing" {
    scenario_vars fresh
    local second_before
    second_before=$(listing_full "$S")
    start_daemon
    installer
    installed_ok "second install: install.sh succeeds"
    same "second install: tree listing identical (paths, modes, links, checksums, mtimes, ctimes)" \
        "$second_before" "$(listing_full "$S")"
    check "second install: says nothing changed" said "nothing changed"
    check "second install: no reload (hooks unchanged), fake daemon not signalled" daemon_alive
    stop_daemon
}

@test "fresh install: --uninstall restores the tree exactly; a second --uninstall changes nothing" {
    scenario_vars fresh
    start_daemon
    installer --uninstall
    installed_ok "fresh: --uninstall succeeds"
    same "fresh: --uninstall restores the tree exactly (hooks dir and /etc/virtgate it created are gone)" \
        "$(saved before)" "$(listing "$S")"
    check "fresh: --uninstall makes libvirt re-read hooks (SIGHUP)" daemon_got_hup

    local again
    again=$(listing_full "$S")
    installer --uninstall
    installed_ok "fresh: second --uninstall succeeds"
    check "fresh: second --uninstall says nothing changed" said "nothing changed"
    same "fresh: second --uninstall changes nothing" "$again" "$(listing_full "$S")"
}

# --- foreign hooks --------------------------------------------------------------------------------

@test "foreign qemu hook: kept; virtgate goes into qemu.d/ and acts as the qemu hook there" {
    scenario foreign
    mkdir -p "$HOOKS"
    printf '#!/bin/sh\n# the admin'"'"'s GPU passthrough hook\nexit 0\n' >"$HOOKS/qemu"
    chmod 0750 "$HOOKS/qemu"
    local sum
    sum=$(sha256sum <"$HOOKS/qemu")
    save before "$(listing "$S")"
    installer
    installed_ok "foreign qemu hook: install succeeds"
    check "foreign qemu hook: still a regular file, same checksum and mode" \
        eval '[ -f "$HOOKS/qemu" ] && [ ! -L "$HOOKS/qemu" ] && [ "$(sha256sum <"$HOOKS/qemu")" = "$sum" ] && [ "$(stat -c %a "$HOOKS/qemu")" = 750 ]'
    check "foreign qemu hook: qemu.d/virtgate -> installed binary" link_is "$HOOKS/qemu.d/virtgate" "$BIN"
    check "foreign qemu hook: installer said so (qemu.d/virtgate, not virtgate's)" \
        eval 'said "$HOOKS/qemu.d/virtgate" && said "not virtgate'"'"'s"'
    check "foreign qemu hook: network hook linked normally" link_is "$HOOKS/network" "$BIN"
    check "foreign qemu hook: no network.d/ created" eval '[ ! -e "$HOOKS/network.d" ]'
    # libvirt runs qemu.d/virtgate by its path: virtgate must act as the qemu hook. (The guest's address
    # comes from the network's DHCP reservation in libvirt's status file.)
    mkdir -p "$RUNLV/network"
    defer "rm -rf '$RUNLV/network'"
    cp "$FIXTURES/networkstatus-vgtinst.xml" "$RUNLV/network/vgtinst.xml"
    local out
    out=$(HOOK_ENV="VIRTGATE_DRY_RUN=yes" hook_as_libvirt "$HOOKS/qemu.d/virtgate" vgti-web start begin - \
        <"$FIXTURES/domain-vgti-web.xml" 2>&1) || true
    ON_FAIL="eval echo \"\$out\" | head -5" check "foreign qemu hook: qemu.d/virtgate acts as the qemu hook (dry run prints the DNAT)" \
        eval '[[ "$out" == *"$G_DNAT_IPT"* || "$out" == *"$G_DNAT_NFT"* ]]'
}

@test "foreign qemu hook: a second install changes nothing; --uninstall keeps the foreign hook" {
    scenario_vars foreign
    local second
    second=$(listing_full "$S")
    installer
    same "foreign qemu hook: second install changes nothing" "$second" "$(listing_full "$S")"
    installer --uninstall
    installed_ok "foreign qemu hook: --uninstall succeeds"
    same "foreign qemu hook: --uninstall leaves the foreign hook and removes qemu.d/ it created" \
        "$(saved before)" "$(listing "$S")"
}

@test "foreign network link: untouched; virtgate goes into network.d/; --uninstall restores the tree" {
    scenario foreign-link
    mkdir -p "$HOOKS/qemu.d" "$S/opt/other"
    printf '#!/bin/sh\nexit 0\n' >"$S/opt/other/net-hook"
    printf '#!/bin/sh\nexit 0\n' >"$HOOKS/qemu.d/10-admin"
    chmod 0755 "$S/opt/other/net-hook" "$HOOKS/qemu.d/10-admin"
    ln -s "$S/opt/other/net-hook" "$HOOKS/network"
    local before
    before=$(listing "$S")
    installer
    installed_ok "foreign network link: install succeeds"
    check "foreign network link: the link is untouched" link_is "$HOOKS/network" "$S/opt/other/net-hook"
    check "foreign network link: network.d/virtgate -> installed binary" link_is "$HOOKS/network.d/virtgate" "$BIN"
    check "foreign network link: qemu linked as main hook; admin's qemu.d/ untouched" \
        eval 'link_is "$HOOKS/qemu" "$BIN" && [ "$(ls -A "$HOOKS/qemu.d")" = 10-admin ]'
    installer --uninstall
    installed_ok "foreign network link: --uninstall succeeds"
    same "foreign network link: --uninstall restores the tree (admin's qemu.d/ kept, network.d/ removed)" \
        "$before" "$(listing "$S")"
}

@test "hook slot freed: an earlier qemu.d/virtgate becomes the main hook" {
    # An earlier install went into qemu.d/ because of a foreign hook the admin has since removed.
    scenario moved
    mkdir -p "$HOOKS/qemu.d"
    ln -s "$BIN" "$HOOKS/qemu.d/virtgate"
    installer
    installed_ok "hook slot freed: install succeeds"
    check "hook slot freed: qemu linked as main hook, qemu.d/virtgate removed (no double run)" \
        eval 'link_is "$HOOKS/qemu" "$BIN" && [ ! -e "$HOOKS/qemu.d/virtgate" ] && [ ! -L "$HOOKS/qemu.d/virtgate" ]'
    check "hook slot freed: qemu.d/ (not created by install.sh) kept" test -d "$HOOKS/qemu.d"
}

# --- hooks: a running network and guest, the hooks as libvirt runs them, uninstall with rules ----

# The namespace's firewall is reset after each of these tests (left as found for the next scenario).
reset_netns_firewall() {
    defer "inns sh -c 'iptables -F; iptables -X; iptables -t nat -F; iptables -t nat -X; iptables -P FORWARD ACCEPT; nft delete table inet virtgate'"
}
# A host like libvirt's: FORWARD policy DROP (UFW), libvirt's chains in filter and nat.
libvirt_like_firewall() {
    inns sh -ec 'iptables -P FORWARD DROP
        iptables -N LIBVIRT_FWI; iptables -A FORWARD -j LIBVIRT_FWI
        iptables -A LIBVIRT_FWI -o vgti-br0 -j REJECT
        iptables -t nat -N LIBVIRT_PRT; iptables -t nat -A POSTROUTING -j LIBVIRT_PRT'
}

@test "hooks: install prints a dry run for the running network and guest, applies no rule" {
    scenario hooks
    mkdir -p "$HOOKS" "$RUNLV/network" "$RUNLV/qemu"
    printf '#!/bin/sh\nexit 0\n' >"$HOOKS/daemon"
    chmod 0700 "$HOOKS/daemon"
    cp "$FIXTURES/networkstatus-vgtinst.xml" "$RUNLV/network/vgtinst.xml"
    cp "$FIXTURES/domstatus-vgti-web.xml" "$RUNLV/qemu/vgti-web.xml"
    libvirt_like_firewall
    save baseline "$(rules)"
    save hooks_before "$(listing "$HOOKS")"
    save tree_before "$(listing "$S")"

    installer
    installed_ok "hooks: install succeeds"
    check "hooks: install prints a dry run for the running network" \
        eval 'said "dry run: network vgtinst" && said "-A VGN-vgtinst -s 10.231.0.0/24 -i vgti-br0 -j ACCEPT"'
    check "hooks: install prints a dry run for the running guest (domstatus)" \
        eval 'said "dry run: qemu vgti-web" && { said "$G_DNAT_IPT" || said "$G_DNAT_NFT"; }'
    same "hooks: install applies no rule by itself" "$(saved baseline)" "$(rules)"
    check "hooks: install (and its dry run) leaves no state dir" test ! -e "$STATE"
}

@test "hooks: the network and qemu hooks, run as libvirt runs them, apply the rules" {
    scenario_vars hooks
    local rc=0
    hook_as_libvirt "$HOOKS/network" vgtinst started begin - <"$FIXTURES/network-vgtinst.xml" >"$S.hooklog" 2>&1 || rc=$?
    ON_FAIL="cat $S.hooklog" check "hooks: \$HOOKS/network vgtinst started begin - exits 0" test "$rc" -eq 0
    check "hooks: the network hook created virtgate's rules (VGN-vgtinst, FORWARD jump at 1)" \
        eval 'rules | grep -q -- "-A VGN-vgtinst -s 10.231.0.0/24 -i vgti-br0 -j ACCEPT" && [ "$(inns iptables -S FORWARD | sed -n 2p)" = "-A FORWARD -j VIRTGATE-FWD" ]'
    rc=0
    hook_as_libvirt "$HOOKS/qemu" vgti-web start begin - <"$FIXTURES/domain-vgti-web.xml" >"$S.hooklog" 2>&1 || rc=$?
    ON_FAIL="cat $S.hooklog" check "hooks: \$HOOKS/qemu vgti-web start begin - exits 0" test "$rc" -eq 0
    check "hooks: the qemu hook created the guest's DNAT rules" \
        eval 'rules | grep -q -e "$G_DNAT_IPT" -e "$G_DNAT_NFT"'
}

@test "hooks: --uninstall --dry-run changes no file and no rule" {
    scenario_vars hooks
    local applied tree_applied
    applied=$(rules)
    tree_applied=$(listing_full "$S")
    installer --uninstall --dry-run
    installed_ok "hooks: --uninstall --dry-run succeeds"
    same "hooks: --uninstall --dry-run changes no file" "$tree_applied" "$(listing_full "$S")"
    same "hooks: --uninstall --dry-run changes no rule" "$applied" "$(rules)"
    check "hooks: --uninstall --dry-run shows the flush and each removal" \
        eval 'said "would remove every virtgate rule" && said "would remove hook $HOOKS/qemu" && said "would remove $BIN"'
}

@test "hooks: --uninstall removes the rules, hooks, binary, config and state; libvirt reloaded" {
    scenario_vars hooks
    reset_netns_firewall
    start_daemon
    installer --uninstall
    installed_ok "hooks: --uninstall succeeds"
    same "hooks: --uninstall leaves the hooks directory exactly as before install" "$(saved hooks_before)" "$(listing "$HOOKS")"
    same "hooks: --uninstall leaves the netns ruleset (counters stripped) equal to the baseline" "$(saved baseline)" "$(rules)"
    same "hooks: --uninstall removes binary, config, /run/virtgate (whole tree as before)" "$(saved tree_before)" "$(listing "$S")"
    check "hooks: --uninstall made libvirt re-read hooks (SIGHUP)" daemon_got_hup
}

# --- dry run and config ---------------------------------------------------------------------------

@test "dry run: changes nothing, not installed and installed" {
    scenario config
    local fresh
    fresh=$(listing_full "$S")
    installer --dry-run
    installed_ok "dry run (not installed): install.sh --dry-run succeeds"
    same "dry run (not installed): nothing changed" "$fresh" "$(listing_full "$S")"
    check "dry run (not installed): each step says what it would do" \
        eval 'said "would link $HOOKS/qemu -> $BIN" && said "would install $CONF" && said "would install $VG_BIN as $BIN"'

    installer
    installed_ok "config: install succeeds"
    local installed
    installed=$(listing_full "$S")
    installer --dry-run
    installed_ok "dry run (installed): succeeds"
    same "dry run (installed): nothing changed" "$installed" "$(listing_full "$S")"
    check "dry run (installed): says no change would be made" said "0 change(s) would be made"
}

@test "config: the admin's edit is read, and kept by a reinstall and by --uninstall" {
    scenario_vars config
    sed -i 's/^#ON_INVALID=warn$/ON_INVALID=refuse/' "$CONF"
    local admin_sum
    admin_sum=$(sha256sum <"$CONF")
    check "config: admin's edit is read by virtgate (ON_INVALID=refuse accepted)" \
        eval 'grep -qx "ON_INVALID=refuse" "$CONF" && inns env VIRTGATE_CONFIG="$CONF" VIRTGATE_STATE_DIR="$STATE" VIRTGATE_SYSLOG=0 "$BIN" flush --dry-run >/dev/null 2>&1'
    installer
    check "config: reinstall keeps the admin's config and says so" \
        eval '[ "$(sha256sum <"$CONF")" = "$admin_sum" ] && said "kept as it is"'
    installer --uninstall
    installed_ok "config: --uninstall succeeds"
    check "config: --uninstall keeps the admin-modified config (same checksum) and says so" \
        eval '[ "$(sha256sum <"$CONF")" = "$admin_sum" ] && said "kept, it was changed"'
    check "config: --uninstall removed hooks and binary; /etc/virtgate holds only the config" \
        eval '[ ! -e "$HOOKS" ] && [ ! -e "$BIN" ] && [ "$(ls -A "$ETC")" = virtgate.conf ]'
    installer
    check "config: a config present before install is not overwritten" \
        eval '[ "$RC" -eq 0 ] && [ "$(sha256sum <"$CONF")" = "$admin_sum" ]'
    installer --uninstall
    check "config: still kept after install+uninstall" eval '[ "$(sha256sum <"$CONF")" = "$admin_sum" ]'
}

# --- errors and packages --------------------------------------------------------------------------

@test "errors: unknown option, --help, bad VIRTGATE_BINARY, no swift, not root; nothing changed" {
    scenario errors
    local tree
    tree=$(listing_full "$S")
    installer --bogus
    ON_FAIL=show_run check "error: unknown option → non-zero, one clear line" eval '[ "$RC" -ne 0 ] && one_error_line'
    installer --help
    check "--help exits 0 and prints usage" eval '[ "$RC" -eq 0 ] && said "Usage:"'
    INSTALL_BINARY=$S/nonexistent installer
    ON_FAIL=show_run check "error: VIRTGATE_BINARY not a file → non-zero, one clear line" eval '[ "$RC" -ne 0 ] && one_error_line'
    # No Swift: hide /opt/swift (in the holder's mount namespace) and strip PATH.
    if [ -d /opt/swift ]; then
        inns mount -t tmpfs -o ro,size=1m tmpfs /opt/swift
        defer "inns umount /opt/swift"
    fi
    INSTALL_BINARY="" INSTALL_PATH=/usr/sbin:/usr/bin:/sbin:/bin installer
    ON_FAIL=show_run check "error: no swift and no VIRTGATE_BINARY → non-zero, one line naming swift" \
        eval '[ "$RC" -ne 0 ] && one_error_line && grep -q swift "$ERR"'
    local out rc=0
    out=$(inns sh -c 'cd "$1" && exec setpriv --reuid=65534 --regid=65534 --clear-groups bash "$2" 2>&1 >/dev/null' \
        not-root "$S" "$INSTALL") || rc=$?
    check "error: not root → non-zero, one line" eval '[ "$rc" -ne 0 ] && [ "$(printf "%s\n" "$out" | wc -l)" -eq 1 ] && [[ "$out" == *root* ]]'
    same "errors: nothing changed" "$tree" "$(listing_full "$S")"
}

@test "apt: installs only the missing packages, after apt-get update; --dry-run runs no apt-get" {
    # Step 1 with stand-ins for dpkg-query and apt-get (on PATH, in this test only): iptables is
    # installed, the other four are missing.
    scenario apt
    local stubs=$TMP/aptbin
    mkdir -p "$stubs"
    cat >"$stubs/dpkg-query" <<'STUB'
#!/bin/sh
for last; do :; done
[ "$last" = iptables ] && { printf 'install ok installed'; exit 0; }
exit 1
STUB
    printf '#!/bin/sh\necho "$*" >>"%s"\n' "$TMP/apt.calls" >"$stubs/apt-get"
    chmod 0755 "$stubs/dpkg-query" "$stubs/apt-get"
    : >"$TMP/apt.calls"
    INSTALL_SKIP_APT="" INSTALL_PATH="$stubs:$PATH" installer --dry-run
    ON_FAIL=show_run check "apt: --dry-run names the missing packages and runs no apt-get" \
        eval 'said "would run apt-get update and apt-get install libvirt-dev libexpat1-dev nettle-dev pkg-config" && [ ! -s "$TMP/apt.calls" ]'
    INSTALL_SKIP_APT="" INSTALL_PATH="$stubs:$PATH" installer
    ON_FAIL="eval show_run; cat $TMP/apt.calls" check "apt: runs apt-get update, then installs only the missing packages" \
        eval '[ "$(cat "$TMP/apt.calls")" = "$(printf "update -q\ninstall -y -q --no-install-recommends libvirt-dev libexpat1-dev nettle-dev pkg-config")" ]'
    installer --uninstall
}

# --- systemd units --------------------------------------------------------------------------------

@test "units: install --dry-run installs no unit and makes no systemctl change" {
    scenario units
    make_systemctl_standin
    systemd_here
    save tree_before "$(listing "$S")"
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer --dry-run
    installed_ok "units: install --dry-run succeeds"
    ON_FAIL="cat $SYSCALLS" check "units: --dry-run installs no unit and makes no systemctl change" \
        eval '[ ! -e "$SYSD/virtgate-leases.path" ] && ! changing_calls | grep -q .'
    ON_FAIL=show_run check "units: --dry-run names each unit and the systemctl commands it would run" \
        eval 'said "would install $SYSD/virtgate-leases.path" && said "would install $SYSD/virtgate-sync.service" && said "would install $SYSD/virtgate-reapply.service" && said "would run systemctl daemon-reload" && said "would run systemctl enable --now virtgate-leases.path" && said "would run systemctl enable virtgate-sync.service"'
}

@test "units: install installs the three units and enables them (the sync for the next boot)" {
    scenario_vars units
    systemd_here
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer
    installed_ok "units: install succeeds"
    local u
    for u in virtgate-leases.path virtgate-reapply.service virtgate-sync.service; do
        check "units: $u installed (mode 0644): hooks/$u with $BIN for /usr/local/sbin/virtgate" \
            eval '[ "$(stat -c %a "$SYSD/$u" 2>/dev/null)" = 644 ] && cmp -s <(rendered "$ROOT/hooks/$u") "$SYSD/$u"'
    done
    check "units: virtgate-leases.path watches /var/lib/libvirt/dnsmasq and starts virtgate-reapply.service" \
        eval 'unit_has virtgate-leases.path PathModified=/var/lib/libvirt/dnsmasq && unit_has virtgate-leases.path Unit=virtgate-reapply.service && unit_has virtgate-leases.path WantedBy=paths.target'
    check "units: virtgate-reapply.service is a oneshot running '$BIN reapply' after libvirt's daemons" \
        eval 'unit_has virtgate-reapply.service Type=oneshot && unit_has virtgate-reapply.service "ExecStart=$BIN reapply" && grep -q "^After=.*libvirtd.service" "$SYSD/virtgate-reapply.service" && grep -q "^After=.*virtnetworkd.service" "$SYSD/virtgate-reapply.service"'
    check "units: virtgate-sync.service: oneshot, RemainAfterExit, sync on start, reapply on reload" \
        eval 'unit_has virtgate-sync.service Type=oneshot && unit_has virtgate-sync.service RemainAfterExit=yes && unit_has virtgate-sync.service "ExecStart=$BIN sync" && unit_has virtgate-sync.service "ExecReload=$BIN reapply"'
    check "units: virtgate-sync.service: after UFW and libvirt's daemons, reload propagated from ufw.service, wanted by multi-user.target" \
        eval 'unit_has virtgate-sync.service "After=ufw.service libvirtd.service virtqemud.service virtnetworkd.service" && unit_has virtgate-sync.service ReloadPropagatedFrom=ufw.service && unit_has virtgate-sync.service WantedBy=multi-user.target'
    check "units: no unit pulls anything in or is stopped with UFW (no Wants=, Requires=, BindsTo=, PartOf=)" \
        eval '! grep -qE "^(Wants|Requires|Requisite|BindsTo|PartOf)=" "$SYSD"/virtgate-*'
    local verify
    verify=$(systemd-analyze verify "$SYSD/virtgate-leases.path" "$SYSD/virtgate-reapply.service" "$SYSD/virtgate-sync.service" 2>&1 \
        | grep -F "$SYSD" || true)
    ON_FAIL="eval echo \"\$verify\"" check "units: systemd-analyze verify finds nothing to say about them" test -z "$verify"
    same "units: systemctl calls: daemon-reload, enable --now virtgate-leases.path, enable virtgate-sync.service (sync not started)" \
        "$(printf 'daemon-reload\nenable --now virtgate-leases.path\nenable virtgate-sync.service')" "$(changing_calls)"
    check "units: install says the sync runs at boot, not now" said "virtgate-sync.service: enabled; it runs virtgate sync at boot"
}

@test "units: a second install changes no file and makes no systemctl change" {
    scenario_vars units
    systemd_here
    local second
    second=$(listing_full "$S")
    save second "$second"
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer
    installed_ok "units: second install succeeds"
    same "units: second install changes no file" "$second" "$(listing_full "$S")"
    same "units: second install makes no systemctl change (units already enabled)" "" "$(changing_calls)"
    check "units: second install says nothing changed" said "nothing changed"
}

@test "units: --uninstall --dry-run changes no file and makes no systemctl change" {
    scenario_vars units
    systemd_here
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer --uninstall --dry-run
    installed_ok "units: --uninstall --dry-run succeeds"
    same "units: --uninstall --dry-run changes no file" "$(saved second)" "$(listing_full "$S")"
    same "units: --uninstall --dry-run makes no systemctl change" "" "$(changing_calls)"
    check "units: --uninstall --dry-run says it would disable both and remove the files" \
        eval 'said "would run systemctl disable --now virtgate-leases.path" && said "would run systemctl disable --now virtgate-sync.service" && said "would remove $SYSD/virtgate-reapply.service"'
}

@test "units: --uninstall disables and removes the units; a second --uninstall makes no systemctl change" {
    scenario_vars units
    systemd_here
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer --uninstall
    installed_ok "units: --uninstall succeeds"
    check "units: --uninstall removed the three unit files" eval '! ls "$SYSD" | grep -q virtgate'
    same "units: --uninstall systemctl calls: disable --now the path, then the sync, then daemon-reload" \
        "$(printf 'disable --now virtgate-leases.path\ndisable --now virtgate-sync.service\ndaemon-reload')" "$(changing_calls)"
    same "units: --uninstall leaves the tree as before install" "$(saved tree_before)" "$(listing "$S")"
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer --uninstall
    same "units: a second --uninstall makes no systemctl change" "" "$(changing_calls)"
}

# --- the man page and the shell completions --------------------------------------------------------

# A man page as VIRTGATE_MANPAGE names it (install.sh --build generates the real one, in section 8).
test_manpage() {
    printf '.TH VIRTGATE 8\n.SH NAME\nvirtgate \\- a test page for install.bats\n' >"$TMP/virtgate.8"
    echo "$TMP/virtgate.8"
}
# generated_completion BINARY SHELL: the completion script BINARY generates for SHELL, as installed (the
# bash script is sourced, never run: without its #! line).
generated_completion() {
    if [ "$2" = bash ]; then
        inns "$1" --generate-completion-script bash | sed '1{/^#!/d}'
    else
        inns "$1" --generate-completion-script "$2"
    fi
}
# completion_is SHELL FILE: FILE (mode 0644) is what the binary under test generates for SHELL.
completion_is() {
    [ "$(stat -c %a "$2" 2>/dev/null)" = 644 ] && cmp -s "$2" <(generated_completion "$VG_BIN" "$1")
}

@test "docs: install --dry-run names the man page and the completions, installs none" {
    scenario docs
    save before "$(listing "$S")"
    INSTALL_MANPAGE=$(test_manpage) installer --dry-run
    installed_ok "docs: install --dry-run succeeds"
    ON_FAIL=show_run check "docs: --dry-run names the man page and the bash, zsh and fish completions below the share directory beside sbin" \
        eval 'said "would install $MAN_PAGE (man page)" && said "would install $BASH_COMPLETION (bash completion)" && said "would install $ZSH_COMPLETION (zsh completion)" && said "would install $FISH_COMPLETION (fish completion)"'
    check "docs: --dry-run installs none of them" test ! -e "$DATA"
}

@test "docs: install installs the man page and the bash, zsh and fish completions" {
    scenario_vars docs
    INSTALL_MANPAGE=$(test_manpage) installer
    installed_ok "docs: install succeeds"
    check "docs: the man page is VIRTGATE_MANPAGE, mode 0644, in man8/ below the share directory beside sbin" \
        eval '[ "$(stat -c %a "$MAN_PAGE" 2>/dev/null)" = 644 ] && cmp -s "$MAN_PAGE" "$TMP/virtgate.8"'
    check "docs: the bash completion is what the binary generates (mode 0644), in bash-completion/completions/" \
        completion_is bash "$BASH_COMPLETION"
    check "docs: the bash completion is valid bash (bash -n), without a #! line (it is sourced)" \
        eval 'bash -n "$BASH_COMPLETION" && ! head -n 1 "$BASH_COMPLETION" | grep -q "^#!"'
    check "docs: the zsh completion is what the binary generates (mode 0644), in zsh/site-functions/" \
        completion_is zsh "$ZSH_COMPLETION"
    check "docs: the fish completion is what the binary generates (mode 0644), in fish/vendor_completions.d/" \
        completion_is fish "$FISH_COMPLETION"
}

@test "docs: a second install changes nothing; --uninstall removes them and the directories it made" {
    scenario_vars docs
    local second
    second=$(listing_full "$S")
    INSTALL_MANPAGE=$(test_manpage) installer
    installed_ok "docs: second install succeeds"
    same "docs: second install changes nothing (man page and completions untouched)" "$second" "$(listing_full "$S")"
    installer --uninstall --dry-run
    same "docs: --uninstall --dry-run changes nothing" "$second" "$(listing_full "$S")"
    ON_FAIL=show_run check "docs: --uninstall --dry-run names the man page and each completion" \
        eval 'said "would remove $MAN_PAGE" && said "would remove $BASH_COMPLETION" && said "would remove $ZSH_COMPLETION" && said "would remove $FISH_COMPLETION"'
    installer --uninstall
    installed_ok "docs: --uninstall succeeds"
    check "docs: --uninstall removed the man page and the three completions" \
        eval '[ ! -e "$MAN_PAGE" ] && [ ! -e "$BASH_COMPLETION" ] && [ ! -e "$ZSH_COMPLETION" ] && [ ! -e "$FISH_COMPLETION" ]'
    same "docs: --uninstall leaves the tree as before install (the directories it made for them gone)" \
        "$(saved before)" "$(listing "$S")"
}

@test "docs: the admin's own files beside them are kept, and so are their directories" {
    scenario docs-admin
    mkdir -p "$DATA/man/man8" "$DATA/bash-completion/completions"
    printf '.TH OTHER 8\n' >"$DATA/man/man8/other.8"
    printf 'complete -W x other\n' >"$DATA/bash-completion/completions/other"
    local before
    before=$(listing "$S")
    INSTALL_MANPAGE=$(test_manpage) installer
    installed_ok "docs (the admin's files beside them): install succeeds"
    check "docs (the admin's files beside them): man page and bash completion installed next to them" \
        eval '[ -f "$MAN_PAGE" ] && completion_is bash "$BASH_COMPLETION"'
    installer --uninstall
    installed_ok "docs (the admin's files beside them): --uninstall succeeds"
    same "docs (the admin's files beside them): --uninstall removes only virtgate's files and the directories it made" \
        "$before" "$(listing "$S")"
}

# --- UFW's after.init -----------------------------------------------------------------------------

@test "after.init (none before): created with virtgate's block, mode 0755" {
    scenario ufw-new
    mkdir -p "$UFW"
    save before "$(listing "$S")"
    installer
    installed_ok "after.init (none before): install succeeds"
    check "after.init (none before): created with mode 0755, and the output says so" \
        eval '[ "$(stat -c %a "$UFW/after.init" 2>/dev/null)" = 755 ] && said "created $UFW/after.init"'
    check "after.init (none before): sh -n passes" sh -n "$UFW/after.init"
    check "after.init (none before): #!/bin/sh, case \"\$1\" in ... esac, the block once, exit 0 last" \
        eval '[ "$(head -n 1 "$UFW/after.init")" = "#!/bin/sh" ] && grep -qx "case \"\$1\" in" "$UFW/after.init" && grep -qx esac "$UFW/after.init" && [ "$(block_count)" = 1 ] && [ "$(tail -n 1 "$UFW/after.init")" = "exit 0" ]'
    check "after.init (none before): the block is hooks/ufw-after.init.sh with the installed binary's path" block_is_shipped
}

@test "after.init (none before): runs virtgate reapply on start, stop and flush-all; survives its failure" {
    scenario_vars ufw-new
    after_init_behaviour "after.init (none before)" "virtgate reapply"
}

@test "after.init (none before): a second install changes nothing; --uninstall removes the file it created" {
    scenario_vars ufw-new
    local second
    second=$(listing_full "$S")
    installer
    installed_ok "after.init (none before): second install succeeds"
    same "after.init (none before): second install leaves after.init (and all) identical" "$second" "$(listing_full "$S")"
    installer --uninstall
    installed_ok "after.init (none before): --uninstall succeeds"
    check "after.init (none before): --uninstall removed the file it created" \
        eval '[ ! -e "$UFW/after.init" ] && said "removed $UFW/after.init"'
    same "after.init (none before): --uninstall leaves the tree as before (UFW's directory kept)" "$(saved before)" "$(listing "$S")"
}

@test "after.init (created, then edited by the admin): --uninstall keeps the file and the admin's line" {
    # The admin added a line to the file install.sh created: uninstall removes only the block.
    scenario_vars ufw-new
    installer
    sed -i 's|^start)$|start)\n    echo admin >/dev/null|' "$UFW/after.init"
    installer --uninstall
    ON_FAIL=show_run check "after.init (created, then edited by the admin): --uninstall keeps the file, without the block, with the admin's line" \
        eval '[ -f "$UFW/after.init" ] && [ "$(block_count)" = 0 ] && grep -qx "    echo admin >/dev/null" "$UFW/after.init" && said "kept $UFW/after.init"'
    check "after.init (created, then edited): still valid (sh -n)" sh -n "$UFW/after.init"
}

@test "after.init (Debian's): the block added after the admin's commands, the file made executable" {
    # Debian 12's after.init as ufw 0.36.2 installs it (mode 0640: UFW does not run it), plus a line of
    # the admin's own in the start branch.
    scenario ufw-stock
    mkdir -p "$UFW"
    check "fixture ufw-after.init is this machine's /usr/share/ufw/after.init (ufw's template)" \
        cmp -s "$FIXTURES/ufw-after.init" /usr/share/ufw/after.init
    sed "s|^start)\$|start)\n    echo admin-start >>$ORDER_LOG|" "$FIXTURES/ufw-after.init" >"$UFW/after.init"
    chmod 0640 "$UFW/after.init"
    cp -p "$UFW/after.init" "$TMP/after.init.orig"
    save before "$(listing "$S")"
    installer
    installed_ok "after.init (Debian's): install succeeds"
    check "after.init (Debian's): the block was added once, and the output says so" \
        eval '[ "$(block_count)" = 1 ] && said "added virtgate'"'"'s block to $UFW/after.init"'
    check "after.init (Debian's): the block is hooks/ufw-after.init.sh with the installed binary's path" block_is_shipped
    check "after.init (Debian's): without the block, the file is byte for byte the original (admin's line kept)" \
        eval 'cmp -s <(sed "/^# BEGIN virtgate\$/,/^# END virtgate\$/d" "$UFW/after.init") "$TMP/after.init.orig"'
    check "after.init (Debian's): the block comes after the case ... esac (after the admin's commands)" \
        eval '[ "$(tail -n 1 "$UFW/after.init")" = "# END virtgate" ] && [ "$(grep -nx esac "$UFW/after.init" | head -n 1 | cut -d: -f1)" -lt "$(grep -nxF "# BEGIN virtgate" "$UFW/after.init" | cut -d: -f1)" ]'
    check "after.init (Debian's): made executable 0640 -> 0750 (UFW runs it only then), and the output says so" \
        eval '[ "$(stat -c %a "$UFW/after.init")" = 750 ] && said "made $UFW/after.init executable (640 -> 750)"'
    check "after.init (Debian's): sh -n passes" sh -n "$UFW/after.init"
    check "after.init (Debian's): dash -n passes" dash -n "$UFW/after.init"
}

@test "after.init (Debian's): runs the admin's commands, then virtgate reapply; survives its failure" {
    scenario_vars ufw-stock
    after_init_behaviour "after.init (Debian's)" "$(printf 'admin-start\nvirtgate reapply')"
}

@test "after.init (Debian's): a second install and --uninstall --dry-run change nothing" {
    scenario_vars ufw-stock
    local second
    second=$(listing_full "$S")
    installer
    installed_ok "after.init (Debian's): second install succeeds"
    same "after.init (Debian's): second install leaves the file identical (bytes, mode, times)" "$second" "$(listing_full "$S")"
    installer --uninstall --dry-run
    same "after.init (Debian's): --uninstall --dry-run changes nothing" "$second" "$(listing_full "$S")"
    check "after.init (Debian's): --uninstall --dry-run says it would remove the block and restore the mode" \
        eval 'said "would remove virtgate'"'"'s block from $UFW/after.init" && said "would restore the mode of $UFW/after.init (640)"'
}

@test "after.init (Debian's): --uninstall restores the original bytes and mode" {
    scenario_vars ufw-stock
    installer --uninstall
    installed_ok "after.init (Debian's): --uninstall succeeds"
    check "after.init (Debian's): --uninstall restores the original bytes exactly" cmp "$UFW/after.init" "$TMP/after.init.orig"
    check "after.init (Debian's): --uninstall restores mode 0640" eval '[ "$(stat -c %a "$UFW/after.init")" = 640 ]'
    same "after.init (Debian's): --uninstall leaves the tree as before" "$(saved before)" "$(listing "$S")"
}

@test "after.init (ends in exit 0, no final newline): the block before the exit; --uninstall restores it exactly" {
    scenario ufw-edges
    mkdir -p "$UFW"
    # An admin's executable after.init ending in "exit 0" and without a final newline.
    printf '#!/bin/sh\nset -eu\necho "$1" >/dev/null\nexit 0' >"$UFW/after.init"
    chmod 0755 "$UFW/after.init"
    cp -p "$UFW/after.init" "$TMP/after.init.edge"
    installer
    installed_ok "after.init (ends in exit 0, no final newline): install succeeds"
    check "after.init (ends in exit 0): the block goes before the final exit 0; sh -n passes; mode kept" \
        eval '[ "$(tail -n 1 "$UFW/after.init")" = "exit 0" ] && [ "$(block_count)" = 1 ] && sh -n "$UFW/after.init" && [ "$(stat -c %a "$UFW/after.init")" = 755 ]'
    virtgate_standin 0
    : >"$ORDER_LOG"
    run_after_init stop
    check "after.init (set -eu, ends in exit 0): 'after.init stop' runs virtgate reapply and exits 0" \
        eval '[ "$AI_RC" -eq 0 ] && grep -qx "virtgate reapply" "$ORDER_LOG"'
    install -m 0755 "$VG_BIN" "$BIN"
    installer --uninstall
    check "after.init (no final newline): --uninstall restores the original bytes exactly" cmp "$UFW/after.init" "$TMP/after.init.edge"
}

@test "after.init with a broken block: install refuses with one line and changes nothing" {
    # A broken block (BEGIN without END): install refuses with one clear line and changes nothing.
    scenario_vars ufw-edges
    printf '#!/bin/sh\n# BEGIN virtgate\nexit 0\n' >"$UFW/after.init"
    local tree
    tree=$(listing_full "$UFW")
    installer
    ON_FAIL=show_run check "after.init with a broken block: install fails with one error line naming it" \
        eval '[ "$RC" -ne 0 ] && one_error_line && grep -q "broken virtgate block" "$ERR"'
    same "after.init with a broken block: left untouched" "$tree" "$(listing_full "$UFW")"
    rm -f "$UFW/after.init"
    installer --uninstall
}

# --- the real build (VIRTGATE_INSTALL_BUILD=1) ---------------------------------------------------

@test "build: install.sh builds a static release binary and installs it (VIRTGATE_INSTALL_BUILD=1)" {
    [ "${VIRTGATE_INSTALL_BUILD:-0}" = 1 ] || skip "the real build runs with VIRTGATE_INSTALL_BUILD=1 (minutes)"
    # install.sh's real build path: a static release build (into .build-install/, git-ignored).
    scenario build
    INSTALL_BINARY="" VIRTGATE_BUILD_DIR=$ROOT/.build-install installer
    installed_ok "build: install.sh builds the release binary and installs it"
    check "build: installed binary answers --version" eval 'inns "$BIN" --version >/dev/null 2>&1'
    check "build: Swift runtime linked statically (no libswiftCore.so needed)" \
        eval '! ldd "$BIN" | grep -q libswiftCore'
    ON_FAIL="eval show_run; ls -lR $DATA" check "build: the man page generated with the build is installed (mode 0644), and man reads it" \
        eval '[ "$(stat -c %a "$MAN_PAGE" 2>/dev/null)" = 644 ] && man -l "$MAN_PAGE" 2>/dev/null | grep -q virtgate'
    check "build: the bash, zsh and fish completions are what the built binary generates" \
        eval 'cmp -s "$BASH_COMPLETION" <(generated_completion "$BIN" bash) && cmp -s "$ZSH_COMPLETION" <(generated_completion "$BIN" zsh) && cmp -s "$FISH_COMPLETION" <(generated_completion "$BIN" fish)'
    installer --uninstall
    installed_ok "build: --uninstall succeeds"
    check "build: --uninstall removes the binary, the man page and the completions" \
        eval '[ ! -e "$BIN" ] && [ ! -e "$MAN_PAGE" ] && [ ! -e "$BASH_COMPLETION" ] && [ ! -e "$ZSH_COMPLETION" ] && [ ! -e "$FISH_COMPLETION" ]'
}
