#!/usr/bin/env bash
# install-test.sh: root-only test of install.sh, confined to a private mount namespace, a private pid
# namespace and the network namespace vgt-inst. The real /etc/libvirt, /usr/local/sbin, /etc/virtgate,
# /etc/systemd/system, /etc/ufw, /run, services and firewall are never touched: every path install.sh
# uses is moved into a temp dir with the VIRTGATE_* variables, and inside the namespaces /run,
# /usr/local/sbin, /etc/libvirt, /etc/virtgate, /etc/systemd/system and /etc/ufw are additionally
# covered with empty tmpfs mounts. systemctl is a stand-in on PATH that only records its arguments.
#
# Usage (as root):
#   bash Tests/install/install-test.sh                 # installs .build/debug/virtgate (or $VIRTGATE)
#   VIRTGATE=/path/to/virtgate bash Tests/install/install-test.sh
#   bash Tests/install/install-test.sh --with-build    # also builds the release binary the way install.sh
#                                                      # does (into .build-install/; minutes)
#
# Output: one `ok - ...` / `not ok - ...` line per check, `# ...` diagnostics, and as the last line
# `N passed, M failed`. Exit status 0 only if nothing failed. A missing prerequisite is a failure.
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
FIXTURES=$HERE/../bats/fixtures/install
INSTALL=$ROOT/install.sh
SHIPPED_CONF=$ROOT/hooks/virtgate.conf
NS=vgt-inst
LIBVIRT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

ok() { echo "ok - $*"; echo ok >>"$RESULTS"; }
not_ok() { echo "not ok - $*"; echo fail >>"$RESULTS"; }
check() { # check "description" command...: ok when the command succeeds
    local what=$1; shift
    if "$@"; then ok "$what"; else not_ok "$what"; return 1; fi
}
diag() { sed 's/^/# /'; }

# =================================================================================================
# Outer part: prerequisites, the network namespace, the final checks on the real machine, summary.

ns_exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qxF "$NS"; }

outer_cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "${INNER_PID:-}" ] && kill -0 "$INNER_PID" 2>/dev/null; then
        # unshare ignores SIGTERM while it waits; SIGKILL makes it (--kill-child) kill the inner part,
        # and with it the pid namespace. Its mounts and temp files go with the namespaces and $TMP.
        kill -KILL "$INNER_PID" 2>/dev/null
        wait "$INNER_PID" 2>/dev/null
    fi
    if ns_exists; then ip netns del "$NS" 2>/dev/null; fi
    local passed failed
    passed=$(grep -c '^ok$' "$RESULTS" 2>/dev/null)
    failed=$(grep -c '^fail$' "$RESULTS" 2>/dev/null)
    rm -rf "$TMP"
    echo "${passed:-0} passed, ${failed:-0} failed"
    if [ "${failed:-0}" -ne 0 ] || [ "${passed:-0}" -eq 0 ] || [ "$status" -ne 0 ]; then exit 1; fi
    exit 0
}

# real_state: what must stay the same on the real machine (paths, the root namespace's ruleset).
real_state() {
    local p
    for p in /etc/libvirt/hooks /usr/local/sbin /etc/virtgate /run/virtgate /etc/systemd/system /etc/ufw; do
        if [ -e "$p" ]; then find "$p" -printf '%p %y %l %m %s %T@\n' 2>/dev/null | sort; else echo "$p absent"; fi
    done
    iptables-save 2>/dev/null | sed -e 's/\[[0-9]*:[0-9]*\]//' -e '/^#/d'
}

main_outer() {
    TMP=$(mktemp -d /tmp/vgt-inst.XXXXXX) || { echo "not ok - mktemp"; echo "0 passed, 1 failed"; exit 1; }
    chmod 0755 "$TMP"
    RESULTS=$TMP/results
    : >"$RESULTS"
    export TMP RESULTS
    trap outer_cleanup EXIT
    trap 'echo "# interrupted"; not_ok "run interrupted"; exit 1' INT TERM

    local missing=()
    if [ "$(id -u)" -ne 0 ]; then
        not_ok "prerequisite: run as root (network, mount and pid namespaces)"
        exit 1
    fi
    local tool
    for tool in ip unshare iptables iptables-save sha256sum find setpriv pidof cmp install sed sort; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    if [ ${#missing[@]} -ne 0 ]; then
        not_ok "prerequisite: missing tools: ${missing[*]}"
        exit 1
    fi
    VG_BIN=${VIRTGATE:-$ROOT/.build/debug/virtgate}
    if [ ! -x "$VG_BIN" ]; then
        not_ok "prerequisite: $VG_BIN is not an executable (swift build first, or set VIRTGATE=)"
        exit 1
    fi
    [ -f "$INSTALL" ] || { not_ok "prerequisite: $INSTALL missing"; exit 1; }
    [ -f "$SHIPPED_CONF" ] || { not_ok "prerequisite: $SHIPPED_CONF missing"; exit 1; }
    # A private copy: a rebuild of .build/ during the run cannot swap the binary under the test.
    cp "$VG_BIN" "$TMP/virtgate" || { not_ok "copy $VG_BIN"; exit 1; }
    VG_BIN=$TMP/virtgate
    ok "prerequisites: root, tools, ${VIRTGATE:-$ROOT/.build/debug/virtgate}"

    if [ "${WITH_BUILD:-no}" = yes ]; then
        # The build runs in the netns, without network: fetch the dependencies now.
        if ! PATH=/opt/swift/usr/bin:$PATH swift package --package-path "$ROOT" --scratch-path "$ROOT/.build-install" \
            resolve >"$TMP/resolve.log" 2>&1; then
            not_ok "prerequisite for --with-build: swift package resolve"
            diag <"$TMP/resolve.log"
            exit 1
        fi
    fi

    local before after
    before=$(real_state)

    if ns_exists; then ip netns del "$NS"; fi
    if ! ip netns add "$NS"; then not_ok "create network namespace $NS"; exit 1; fi
    ip netns exec "$NS" ip link set lo up

    # Inner part: the same file, in the netns, a private mount namespace and a pid namespace (so that
    # pidof sees only this test's processes and no real libvirtd can get a signal).
    ip netns exec "$NS" unshare --mount --propagation private --pid --fork --kill-child --mount-proc \
        env -u VIRTGATE VG_BIN="$VG_BIN" WITH_BUILD="${WITH_BUILD:-no}" \
        bash "${BASH_SOURCE[0]}" --inner &
    INNER_PID=$!
    wait "$INNER_PID"
    local inner_status=$?
    INNER_PID=""
    [ "$inner_status" -eq 0 ] || echo "# inner part exited with status $inner_status"
    if ! grep -q . "$TMP/inner-done" 2>/dev/null; then not_ok "inner part ran to the end"; fi

    ip netns del "$NS"
    after=$(real_state)
    if [ "$before" = "$after" ]; then
        ok "real machine untouched: /etc/libvirt/hooks, /usr/local/sbin, /etc/virtgate, /run/virtgate, /etc/systemd/system, /etc/ufw, root-namespace ruleset"
    else
        not_ok "real machine untouched"
        diff <(echo "$before") <(echo "$after") | head -20 | diag
    fi
}

# =================================================================================================
# Inner part

inner_cleanup() {
    # Everything lives in $TMP (removed by the outer part) and in namespaces that die with us; stop
    # the fake daemons this part started.
    local pid
    for pid in "${DAEMONS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null
    done
}

# listing DIR...: paths, types, link targets, modes, and the checksum of every file (no times).
listing() {
    local d
    for d in "$@"; do
        if [ ! -e "$d" ] && [ ! -L "$d" ]; then echo "$d absent"; continue; fi
        find "$d" -printf '%p %y %l %m\n' | sort
        find "$d" -type f -exec sha256sum {} + | sort -k2
    done
}
# listing_full DIR...: the same plus sizes, modification and change times (any rewrite shows).
listing_full() {
    local d
    for d in "$@"; do
        if [ ! -e "$d" ] && [ ! -L "$d" ]; then echo "$d absent"; continue; fi
        find "$d" -printf '%p %y %l %m %s %T@ %C@\n' | sort
        find "$d" -type f -exec sha256sum {} + | sort -k2
    done
}
same() { # same "what" A B: A and B are equal; prints the difference otherwise
    if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1"; diff <(echo "$2") <(echo "$3") | head -20 | diag; return 1; fi
}

rules() {
    { iptables-save; ip6tables-save; nft list table inet virtgate 2>/dev/null; } | sed -e 's/\[[0-9]*:[0-9]*\]//' -e '/^#/d'
}
# The guest's forward to 10.231.0.11:22, as either backend writes it (iptables DNAT, or an nft map element).
G_DNAT_IPT="--to-destination 10.231.0.11:22"
G_DNAT_NFT=": 10.231.0.11 . 22"

# scenario NAME: a fresh fake root $S, with the paths install.sh is told to use.
scenario() {
    S=$TMP/$1
    mkdir -p "$S/etc/libvirt" "$S/usr/local/sbin" "$S/run/libvirt" "$TMP/logs"
    HOOKS=$S/etc/libvirt/hooks
    SBIN=$S/usr/local/sbin
    ETC=$S/etc/virtgate
    RUNLV=$S/run/libvirt
    STATE=$S/run/virtgate
    BIN=$SBIN/virtgate
    CONF=$ETC/virtgate.conf
    # As on a Debian host, the systemd unit directory exists; UFW's directory only where a scenario
    # creates it.
    SYSD=$S/etc/systemd/system
    UFW=$S/etc/ufw
    mkdir -p "$SYSD"
    RUNS=0
    echo "# scenario $1"
}

# installer ARGS...: runs install.sh for the current scenario; sets OUT, ERR (transcript files, kept
# outside the scenario tree, which is compared before and after) and RC.
installer() {
    RUNS=$((RUNS + 1))
    OUT=$TMP/logs/${S##*/}.out.$RUNS
    ERR=$TMP/logs/${S##*/}.err.$RUNS
    env VIRTGATE_HOOKS_DIR="$HOOKS" VIRTGATE_SBIN="$SBIN" VIRTGATE_ETC="$ETC" VIRTGATE_RUN_LIBVIRT="$RUNLV" \
        VIRTGATE_STATE_DIR="$STATE" VIRTGATE_SYSTEMD_DIR="$SYSD" VIRTGATE_UFW_DIR="$UFW" VIRTGATE_SKIP_APT="${INSTALL_SKIP_APT-1}" VIRTGATE_BINARY="${INSTALL_BINARY-$VG_BIN}" \
        VIRTGATE_SYSLOG=no PATH="${INSTALL_PATH:-$PATH}" \
        bash "$INSTALL" "$@" >"$OUT" 2>"$ERR" </dev/null
    RC=$?
}
show_run() { { echo "install.sh exit $RC; stdout:"; cat "$OUT"; echo "stderr:"; cat "$ERR"; } | diag; }
installed_ok() { # the last install.sh run succeeded; else print its transcript
    if [ "$RC" -eq 0 ]; then ok "$1"; else not_ok "$1"; show_run; return 1; fi
}
said() { grep -qF -- "$1" "$OUT"; }

# hook_as_libvirt PATH ARGS... < xml: runs a hook with the scrubbed environment libvirt gives hooks,
# plus the variables that move virtgate's files into the scenario.
hook_as_libvirt() {
    env -i PATH="$LIBVIRT_PATH" LC_ALL=C HOME=/ USER=root LOGNAME=root \
        VIRTGATE_CONFIG="$CONF" VIRTGATE_STATE_DIR="$STATE" VIRTGATE_SYSLOG=0 \
        VIRTGATE_NETWORK_RUN_DIR="$RUNLV/network" VIRTGATE_NETWORK_ETC_DIR="$S/etc/libvirt/qemu/networks" \
        VIRTGATE_DNSMASQ_DIR="$S/var/lib/libvirt/dnsmasq" ${HOOK_ENV:-} "$@"
}

# Fake libvirt daemons: a copy of sleep named virtnetworkd, so that pidof finds it (only in our pid
# namespace). SIGHUP kills it with status 129. A wrapper subshell records that status in a file (and
# keeps bash from reporting the "Hangup").
DAEMONS=()
start_daemon() {
    mkdir -p "$TMP/bin"
    [ -x "$TMP/bin/virtnetworkd" ] || cp /bin/sleep "$TMP/bin/virtnetworkd"
    DAEMON_DIR=$(mktemp -d "$TMP/daemon.XXXXXX")
    (
        "$TMP/bin/virtnetworkd" 900 &
        echo $! >"$DAEMON_DIR/pid"
        wait $!
        echo $? >"$DAEMON_DIR/status"
    ) 2>/dev/null &
    local i
    for i in $(seq 50); do [ -s "$DAEMON_DIR/pid" ] && break; sleep 0.05; done
    DAEMON=$(cat "$DAEMON_DIR/pid")
    DAEMONS+=("$DAEMON")
}
# daemon_got_hup: the fake daemon died of SIGHUP (waits up to 3 s); otherwise it is stopped.
daemon_got_hup() {
    local i
    for i in $(seq 30); do [ -s "$DAEMON_DIR/status" ] && break; sleep 0.1; done
    if [ ! -s "$DAEMON_DIR/status" ]; then stop_daemon; return 1; fi
    [ "$(cat "$DAEMON_DIR/status")" = 129 ]
}
daemon_alive() { kill -0 "$DAEMON" 2>/dev/null; }
stop_daemon() {
    kill "$DAEMON" 2>/dev/null
    local i
    for i in $(seq 30); do [ -s "$DAEMON_DIR/status" ] && break; sleep 0.1; done
    return 0
}

link_is() { [ -L "$1" ] && [ "$(readlink "$1")" = "$2" ]; }
one_error_line() { [ "$(wc -l <"$ERR")" -eq 1 ] && grep -q '^install.sh: error: ' "$ERR"; }

# -------------------------------------------------------------------------------------------------

t_fresh() {
    scenario fresh
    local before second_before
    before=$(listing "$S")
    start_daemon
    installer
    installed_ok "fresh install: install.sh succeeds"
    check "fresh install: hooks/qemu is a symlink to the installed binary" link_is "$HOOKS/qemu" "$BIN"
    check "fresh install: hooks/network is a symlink to the installed binary" link_is "$HOOKS/network" "$BIN"
    check "fresh install: binary installed, mode 0755, same bytes as the source" \
        eval '[ "$(stat -c %a "$BIN" 2>/dev/null)" = 755 ] && cmp -s "$BIN" "$VG_BIN"'
    check "fresh install: config installed, equal to hooks/virtgate.conf" cmp -s "$CONF" "$SHIPPED_CONF"
    local version
    version=$("$BIN" --version 2>&1)
    check "fresh install: installed binary answers --version ($version)" eval '[[ "$version" == virtgate\ * ]]'
    check "fresh install: libvirt told to re-read hooks (fake virtnetworkd got SIGHUP)" daemon_got_hup
    check "fresh install: output says the SIGHUP was sent" said "sent SIGHUP to virtnetworkd"
    check "fresh install: output says there is no running network or guest" said "no running libvirt network or guest"
    check "fresh install: the three systemd units are installed into \$VIRTGATE_SYSTEMD_DIR" \
        eval '[ -f "$SYSD/virtgate-leases.path" ] && [ -f "$SYSD/virtgate-reapply.service" ] && [ -f "$SYSD/virtgate-sync.service" ]'
    check "fresh install: systemd not running (pid namespace): says so, units not enabled" said "systemd is not running here"
    check "fresh install: no UFW directory: no after.init created, and it says so" \
        eval '[ ! -e "$UFW" ] && said "no after.init block"'

    second_before=$(listing_full "$S")
    start_daemon
    installer
    installed_ok "second install: install.sh succeeds"
    same "second install: tree listing identical (paths, modes, links, checksums, mtimes, ctimes)" \
        "$second_before" "$(listing_full "$S")"
    check "second install: says nothing changed" said "nothing changed"
    check "second install: no reload (hooks unchanged), fake daemon not signalled" daemon_alive
    stop_daemon

    start_daemon
    installer --uninstall
    installed_ok "fresh: --uninstall succeeds"
    same "fresh: --uninstall restores the tree exactly (hooks dir and /etc/virtgate it created are gone)" \
        "$before" "$(listing "$S")"
    check "fresh: --uninstall makes libvirt re-read hooks (SIGHUP)" daemon_got_hup

    local again
    again=$(listing_full "$S")
    installer --uninstall
    installed_ok "fresh: second --uninstall succeeds"
    check "fresh: second --uninstall says nothing changed" said "nothing changed"
    same "fresh: second --uninstall changes nothing" "$again" "$(listing_full "$S")"
}

t_foreign() {
    scenario foreign
    mkdir -p "$HOOKS"
    printf '#!/bin/sh\n# the admin'"'"'s GPU passthrough hook\nexit 0\n' >"$HOOKS/qemu"
    chmod 0750 "$HOOKS/qemu"
    local sum before
    sum=$(sha256sum <"$HOOKS/qemu")
    before=$(listing "$S")
    installer
    installed_ok "foreign qemu hook: install succeeds"
    check "foreign qemu hook: still a regular file, same checksum and mode" \
        eval '[ -f "$HOOKS/qemu" ] && [ ! -L "$HOOKS/qemu" ] && [ "$(sha256sum <"$HOOKS/qemu")" = "$sum" ] && [ "$(stat -c %a "$HOOKS/qemu")" = 750 ]'
    check "foreign qemu hook: qemu.d/virtgate -> installed binary" link_is "$HOOKS/qemu.d/virtgate" "$BIN"
    check "foreign qemu hook: installer said so (qemu.d/virtgate, not virtgate's)" \
        eval 'said "$HOOKS/qemu.d/virtgate" && said "not virtgate'"'"'s"'
    check "foreign qemu hook: network hook linked normally" link_is "$HOOKS/network" "$BIN"
    check "foreign qemu hook: no network.d/ created" eval '[ ! -e "$HOOKS/network.d" ]'
    # libvirt runs qemu.d/virtgate by its path: virtgate must act as the qemu hook. (The guest's
    # address comes from the network's DHCP reservation in libvirt's status file.)
    mkdir -p "$RUNLV/network"
    cp "$FIXTURES/networkstatus-vgtinst.xml" "$RUNLV/network/vgtinst.xml"
    local out
    out=$(HOOK_ENV="VIRTGATE_DRY_RUN=yes" hook_as_libvirt "$HOOKS/qemu.d/virtgate" vgti-web start begin - \
        <"$FIXTURES/domain-vgti-web.xml" 2>&1)
    check "foreign qemu hook: qemu.d/virtgate acts as the qemu hook (dry run prints the DNAT)" \
        eval '[[ "$out" == *"$G_DNAT_IPT"* || "$out" == *"$G_DNAT_NFT"* ]]' \
        || echo "$out" | head -5 | diag
    rm -r "$RUNLV/network"
    local second
    second=$(listing_full "$S")
    installer
    same "foreign qemu hook: second install changes nothing" "$second" "$(listing_full "$S")"
    installer --uninstall
    installed_ok "foreign qemu hook: --uninstall succeeds"
    same "foreign qemu hook: --uninstall leaves the foreign hook and removes qemu.d/ it created" \
        "$before" "$(listing "$S")"
}

t_foreign_link() {
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

t_moved() {
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

t_hooks_and_uninstall() {
    scenario hooks
    mkdir -p "$HOOKS" "$RUNLV/network" "$RUNLV/qemu"
    printf '#!/bin/sh\nexit 0\n' >"$HOOKS/daemon"
    chmod 0700 "$HOOKS/daemon"
    cp "$FIXTURES/networkstatus-vgtinst.xml" "$RUNLV/network/vgtinst.xml"
    cp "$FIXTURES/domstatus-vgti-web.xml" "$RUNLV/qemu/vgti-web.xml"
    # A host like libvirt's: FORWARD policy DROP (UFW), libvirt's chains in filter and nat.
    iptables -P FORWARD DROP
    iptables -N LIBVIRT_FWI && iptables -A FORWARD -j LIBVIRT_FWI
    iptables -A LIBVIRT_FWI -o vgti-br0 -j REJECT
    iptables -t nat -N LIBVIRT_PRT && iptables -t nat -A POSTROUTING -j LIBVIRT_PRT
    local baseline hooks_before tree_before
    baseline=$(rules)
    hooks_before=$(listing "$HOOKS")
    tree_before=$(listing "$S")

    installer
    installed_ok "hooks: install succeeds"
    check "hooks: install prints a dry run for the running network" \
        eval 'said "dry run: network vgtinst" && said "-A VGN-vgtinst -s 10.231.0.0/24 -i vgti-br0 -j ACCEPT"'
    check "hooks: install prints a dry run for the running guest (domstatus)" \
        eval 'said "dry run: qemu vgti-web" && { said "$G_DNAT_IPT" || said "$G_DNAT_NFT"; }'
    same "hooks: install applies no rule by itself" "$baseline" "$(rules)"
    check "hooks: install (and its dry run) leaves no state dir" test ! -e "$STATE"

    local rc
    hook_as_libvirt "$HOOKS/network" vgtinst started begin - <"$FIXTURES/network-vgtinst.xml" >"$S.hooklog" 2>&1
    rc=$?
    check "hooks: \$HOOKS/network vgtinst started begin - exits 0" test "$rc" -eq 0 || diag <"$S.hooklog"
    check "hooks: the network hook created virtgate's rules (VGN-vgtinst, FORWARD jump at 1)" \
        eval 'rules | grep -q -- "-A VGN-vgtinst -s 10.231.0.0/24 -i vgti-br0 -j ACCEPT" && [ "$(iptables -S FORWARD | sed -n 2p)" = "-A FORWARD -j VIRTGATE-FWD" ]'
    hook_as_libvirt "$HOOKS/qemu" vgti-web start begin - <"$FIXTURES/domain-vgti-web.xml" >"$S.hooklog" 2>&1
    rc=$?
    check "hooks: \$HOOKS/qemu vgti-web start begin - exits 0" test "$rc" -eq 0 || diag <"$S.hooklog"
    check "hooks: the qemu hook created the guest's DNAT rules" \
        eval 'rules | grep -q -e "$G_DNAT_IPT" -e "$G_DNAT_NFT"'

    local applied tree_applied
    applied=$(rules)
    tree_applied=$(listing_full "$S")
    installer --uninstall --dry-run
    installed_ok "hooks: --uninstall --dry-run succeeds"
    same "hooks: --uninstall --dry-run changes no file" "$tree_applied" "$(listing_full "$S")"
    same "hooks: --uninstall --dry-run changes no rule" "$applied" "$(rules)"
    check "hooks: --uninstall --dry-run shows the flush and each removal" \
        eval 'said "would remove every virtgate rule" && said "would remove hook $HOOKS/qemu" && said "would remove $BIN"'

    start_daemon
    installer --uninstall
    installed_ok "hooks: --uninstall succeeds"
    same "hooks: --uninstall leaves the hooks directory exactly as before install" "$hooks_before" "$(listing "$HOOKS")"
    same "hooks: --uninstall leaves the netns ruleset (counters stripped) equal to the baseline" "$baseline" "$(rules)"
    same "hooks: --uninstall removes binary, config, /run/virtgate (whole tree as before)" "$tree_before" "$(listing "$S")"
    check "hooks: --uninstall made libvirt re-read hooks (SIGHUP)" daemon_got_hup

    # Left as found for the next scenario.
    iptables -F; iptables -X; iptables -t nat -F; iptables -t nat -X; iptables -P FORWARD ACCEPT
}

t_config_and_dry_run() {
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

    sed -i 's/^#ON_INVALID=warn$/ON_INVALID=refuse/' "$CONF"
    local admin_sum
    admin_sum=$(sha256sum <"$CONF")
    check "config: admin's edit is read by virtgate (ON_INVALID=refuse accepted)" \
        eval 'grep -qx "ON_INVALID=refuse" "$CONF" && VIRTGATE_CONFIG="$CONF" VIRTGATE_STATE_DIR="$STATE" VIRTGATE_SYSLOG=0 "$BIN" flush --dry-run >/dev/null 2>&1'
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

t_shipped_config() {
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
    local run=(env VIRTGATE_STATE_DIR="$TMP/conf/state" VIRTGATE_SYSLOG=0 "$VG_BIN" flush --dry-run)
    check "virtgate accepts hooks/virtgate.conf as shipped" eval 'VIRTGATE_CONFIG="$SHIPPED_CONF" "${run[@]}" >/dev/null 2>&1'
    check "virtgate accepts hooks/virtgate.conf with every default uncommented" \
        eval 'VIRTGATE_CONFIG="$TMP/conf/uncommented.conf" "${run[@]}" >/dev/null 2>&1'
    sed 's/^ON_INVALID=warn$/ON_INVALID=bogus/' "$TMP/conf/uncommented.conf" >"$TMP/conf/bad.conf"
    check "virtgate rejects a bad value in the config (the file is really read)" \
        eval '! VIRTGATE_CONFIG="$TMP/conf/bad.conf" "${run[@]}" >/dev/null 2>&1'
    check "hooks/README.md exists and names both files" \
        eval 'grep -q virtgate.conf "$ROOT/hooks/README.md" && grep -q README "$ROOT/hooks/README.md"'
}

t_errors() {
    scenario errors
    local tree
    tree=$(listing_full "$S")
    installer --bogus
    check "error: unknown option → non-zero, one clear line" eval '[ "$RC" -ne 0 ] && one_error_line' || show_run
    installer --help
    check "--help exits 0 and prints usage" eval '[ "$RC" -eq 0 ] && said "Usage:"'
    INSTALL_BINARY=$S/nonexistent installer
    check "error: VIRTGATE_BINARY not a file → non-zero, one clear line" eval '[ "$RC" -ne 0 ] && one_error_line' || show_run
    # No Swift: hide /opt/swift (private mount namespace) and strip PATH.
    if [ -d /opt/swift ]; then mount -t tmpfs -o ro,size=1m tmpfs /opt/swift; fi
    INSTALL_BINARY="" INSTALL_PATH=/usr/sbin:/usr/bin:/sbin:/bin installer
    check "error: no swift and no VIRTGATE_BINARY → non-zero, one line naming swift" \
        eval '[ "$RC" -ne 0 ] && one_error_line && grep -q swift "$ERR"' || show_run
    if mountpoint -q /opt/swift; then umount /opt/swift; fi
    local out rc
    out=$(cd "$S" && setpriv --reuid=65534 --regid=65534 --clear-groups bash "$INSTALL" 2>&1 >/dev/null); rc=$?
    check "error: not root → non-zero, one line" eval '[ "$rc" -ne 0 ] && [ "$(printf "%s\n" "$out" | wc -l)" -eq 1 ] && [[ "$out" == *root* ]]'
    same "errors: nothing changed" "$tree" "$(listing_full "$S")"
}

t_apt() {
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
    check "apt: --dry-run names the missing packages and runs no apt-get" \
        eval 'said "would run apt-get update and apt-get install libvirt-dev libexpat1-dev nettle-dev pkg-config" && [ ! -s "$TMP/apt.calls" ]' \
        || show_run
    INSTALL_SKIP_APT="" INSTALL_PATH="$stubs:$PATH" installer
    check "apt: runs apt-get update, then installs only the missing packages" \
        eval '[ "$(cat "$TMP/apt.calls")" = "$(printf "update -q\ninstall -y -q --no-install-recommends libvirt-dev libexpat1-dev nettle-dev pkg-config")" ]' \
        || { show_run; diag <"$TMP/apt.calls"; }
    installer --uninstall
}

# -------------------------------------------------------------------------------------------------
# systemd units and UFW's after.init

# A stand-in systemctl (first on PATH): appends its arguments to $TMP/systemctl.calls and keeps the
# enabled/active state of units as files, so that is-enabled/is-active answer like systemd would.
make_systemctl_standin() {
    SYSBIN=$TMP/sysbin
    SYSCALLS=$TMP/systemctl.calls
    mkdir -p "$SYSBIN" "$TMP/systemctl.state"
    cat >"$SYSBIN/systemctl" <<STUB
#!/bin/sh
echo "\$*" >>"$SYSCALLS"
st=$TMP/systemctl.state
cmd=\$1; shift
now=; units=
for a; do case \$a in --quiet|-q) ;; --now) now=1 ;; *) units="\$units \$a" ;; esac; done
for u in \$units; do
    case \$cmd in
        is-enabled) [ -e "\$st/enabled.\$u" ] || exit 1 ;;
        is-active) [ -e "\$st/active.\$u" ] || exit 3 ;;
        enable) touch "\$st/enabled.\$u"; [ -z "\$now" ] || touch "\$st/active.\$u" ;;
        disable) rm -f "\$st/enabled.\$u"; [ -z "\$now" ] || rm -f "\$st/active.\$u" ;;
        start) touch "\$st/active.\$u" ;;
        stop) rm -f "\$st/active.\$u" ;;
    esac
done
exit 0
STUB
    chmod 0755 "$SYSBIN/systemctl"
}
# changing_calls: the recorded systemctl calls, without the queries (is-enabled, is-active).
changing_calls() { grep -v '^is-' "$SYSCALLS" 2>/dev/null; }
# rendered FILE: the shipped file as install.sh installs it for this scenario's $BIN.
rendered() { sed "s|/usr/local/sbin/virtgate|$BIN|g" "$1"; }
unit_has() { grep -qxF -- "$2" "$SYSD/$1"; }

t_units() {
    scenario units
    make_systemctl_standin
    # "systemd is running", as install.sh tests it, only in this mount namespace's private /run.
    mkdir -p /run/systemd/system
    local tree_before u
    tree_before=$(listing "$S")
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer --dry-run
    installed_ok "units: install --dry-run succeeds"
    check "units: --dry-run installs no unit and makes no systemctl change" \
        eval '[ ! -e "$SYSD/virtgate-leases.path" ] && ! changing_calls | grep -q .' || diag <"$SYSCALLS"
    check "units: --dry-run names each unit and the systemctl commands it would run" \
        eval 'said "would install $SYSD/virtgate-leases.path" && said "would install $SYSD/virtgate-sync.service" && said "would install $SYSD/virtgate-reapply.service" && said "would run systemctl daemon-reload" && said "would run systemctl enable --now virtgate-leases.path" && said "would run systemctl enable virtgate-sync.service"' \
        || show_run

    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer
    installed_ok "units: install succeeds"
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
    if command -v systemd-analyze >/dev/null; then
        local verify
        verify=$(systemd-analyze verify "$SYSD/virtgate-leases.path" "$SYSD/virtgate-reapply.service" "$SYSD/virtgate-sync.service" 2>&1 \
            | grep -F "$SYSD" || true)
        check "units: systemd-analyze verify finds nothing to say about them" test -z "$verify" || echo "$verify" | diag
    fi
    same "units: systemctl calls: daemon-reload, enable --now virtgate-leases.path, enable virtgate-sync.service (sync not started)" \
        "$(printf 'daemon-reload\nenable --now virtgate-leases.path\nenable virtgate-sync.service')" "$(changing_calls)"
    check "units: install says the sync runs at boot, not now" said "virtgate-sync.service: enabled; it runs virtgate sync at boot"

    local second
    second=$(listing_full "$S")
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer
    installed_ok "units: second install succeeds"
    same "units: second install changes no file" "$second" "$(listing_full "$S")"
    same "units: second install makes no systemctl change (units already enabled)" "" "$(changing_calls)"
    check "units: second install says nothing changed" said "nothing changed"

    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer --uninstall --dry-run
    installed_ok "units: --uninstall --dry-run succeeds"
    same "units: --uninstall --dry-run changes no file" "$second" "$(listing_full "$S")"
    same "units: --uninstall --dry-run makes no systemctl change" "" "$(changing_calls)"
    check "units: --uninstall --dry-run says it would disable both and remove the files" \
        eval 'said "would run systemctl disable --now virtgate-leases.path" && said "would run systemctl disable --now virtgate-sync.service" && said "would remove $SYSD/virtgate-reapply.service"'

    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer --uninstall
    installed_ok "units: --uninstall succeeds"
    check "units: --uninstall removed the three unit files" eval '! ls "$SYSD" | grep -q virtgate'
    same "units: --uninstall systemctl calls: disable --now the path, then the sync, then daemon-reload" \
        "$(printf 'disable --now virtgate-leases.path\ndisable --now virtgate-sync.service\ndaemon-reload')" "$(changing_calls)"
    same "units: --uninstall leaves the tree as before install" "$tree_before" "$(listing "$S")"
    : >"$SYSCALLS"
    INSTALL_PATH="$SYSBIN:$PATH" installer --uninstall
    same "units: a second --uninstall makes no systemctl change" "" "$(changing_calls)"
    rm -r /run/systemd
}

# Stand-ins for the installed binary: virtgate_standin EXIT writes a $BIN that appends "virtgate ARGS"
# to $ORDER_LOG, says something on stderr and exits EXIT. A stand-in logger records what it is sent.
virtgate_standin() {
    rm -f "$BIN"
    printf '#!/bin/sh\necho "virtgate $*" >>"%s"\necho "stand-in virtgate says: failing on purpose" >&2\nexit %s\n' \
        "$ORDER_LOG" "$1" >"$BIN"
    chmod 0755 "$BIN"
}
logger_standin() {
    LOGBIN=$TMP/logbin
    mkdir -p "$LOGBIN"
    printf '#!/bin/sh\n{ echo "logger $*"; cat; } >>"%s"\n' "$TMP/logger.log" >"$LOGBIN/logger"
    chmod 0755 "$LOGBIN/logger"
}
# run_after_init ARG: runs $UFW/after.init ARG as ufw-init does (executed directly); sets AI_RC.
run_after_init() {
    env -i PATH="${LOGBIN:-$TMP/none}:$LIBVIRT_PATH" "$UFW/after.init" "$1" >"$TMP/after-init.out" 2>&1
    AI_RC=$?
}
block_count() { grep -cxF '# BEGIN virtgate' "$UFW/after.init"; }
# block_is_shipped: the block in after.init is hooks/ufw-after.init.sh for this scenario's $BIN.
block_is_shipped() {
    cmp -s <(sed -n '/^# BEGIN virtgate$/,/^# END virtgate$/p' "$UFW/after.init") <(rendered "$ROOT/hooks/ufw-after.init.sh")
}

# after_init_behaviour WHAT EXPECTED-ORDER: the installed after.init runs virtgate reapply on start,
# stop and flush-all, not on status; exits 0 when virtgate fails or is missing; logs a failure.
# EXPECTED-ORDER is what a start must leave in $ORDER_LOG. Puts the real binary back afterwards.
after_init_behaviour() {
    local what=$1 order=$2 arg
    logger_standin
    : >"$TMP/logger.log"
    virtgate_standin 3
    for arg in start stop flush-all; do
        : >"$ORDER_LOG"
        run_after_init "$arg"
        check "$what: 'after.init $arg' exits 0 although virtgate fails (exit 3)" test "$AI_RC" -eq 0 \
            || diag <"$TMP/after-init.out"
        check "$what: 'after.init $arg' ran virtgate reapply" grep -qx "virtgate reapply" "$ORDER_LOG"
    done
    check "$what: the failure went to syslog: logger -t virtgate, with virtgate's message" \
        eval 'grep -q "^logger -t virtgate" "$TMP/logger.log" && grep -q "virtgate reapply failed (exit 3)" "$TMP/logger.log" && grep -q "failing on purpose" "$TMP/logger.log"' \
        || diag <"$TMP/logger.log"
    : >"$ORDER_LOG"
    run_after_init status
    check "$what: 'after.init status' exits 0 and does not run virtgate" eval '[ "$AI_RC" -eq 0 ] && [ ! -s "$ORDER_LOG" ]'
    virtgate_standin 0
    : >"$ORDER_LOG"; : >"$TMP/logger.log"
    run_after_init start
    same "$what: 'after.init start' with a recording virtgate: runs (in this order)" "$order" "$(cat "$ORDER_LOG")"
    check "$what: a successful reapply logs nothing extra" test ! -s "$TMP/logger.log"
    rm -f "$BIN"
    LOGBIN=$TMP/none
    run_after_init start
    check "$what: 'after.init start' exits 0 when the binary is missing" test "$AI_RC" -eq 0
    unset LOGBIN
    install -m 0755 "$VG_BIN" "$BIN"
}

t_after_init_created() {
    scenario ufw-new
    mkdir -p "$UFW"
    ORDER_LOG=$TMP/order.log
    local before
    before=$(listing "$S")
    installer
    installed_ok "after.init (none before): install succeeds"
    check "after.init (none before): created with mode 0755, and the output says so" \
        eval '[ "$(stat -c %a "$UFW/after.init" 2>/dev/null)" = 755 ] && said "created $UFW/after.init"'
    check "after.init (none before): sh -n passes" sh -n "$UFW/after.init"
    check "after.init (none before): #!/bin/sh, case \"\$1\" in ... esac, the block once, exit 0 last" \
        eval '[ "$(head -n 1 "$UFW/after.init")" = "#!/bin/sh" ] && grep -qx "case \"\$1\" in" "$UFW/after.init" && grep -qx esac "$UFW/after.init" && [ "$(block_count)" = 1 ] && [ "$(tail -n 1 "$UFW/after.init")" = "exit 0" ]'
    check "after.init (none before): the block is hooks/ufw-after.init.sh with the installed binary's path" block_is_shipped
    after_init_behaviour "after.init (none before)" "virtgate reapply"
    local second
    second=$(listing_full "$S")
    installer
    installed_ok "after.init (none before): second install succeeds"
    same "after.init (none before): second install leaves after.init (and all) identical" "$second" "$(listing_full "$S")"
    installer --uninstall
    installed_ok "after.init (none before): --uninstall succeeds"
    check "after.init (none before): --uninstall removed the file it created" \
        eval '[ ! -e "$UFW/after.init" ] && said "removed $UFW/after.init"'
    same "after.init (none before): --uninstall leaves the tree as before (UFW's directory kept)" "$before" "$(listing "$S")"

    # The admin added a line to the file install.sh created: uninstall removes only the block.
    installer
    sed -i 's|^start)$|start)\n    echo admin >/dev/null|' "$UFW/after.init"
    installer --uninstall
    check "after.init (created, then edited by the admin): --uninstall keeps the file, without the block, with the admin's line" \
        eval '[ -f "$UFW/after.init" ] && [ "$(block_count)" = 0 ] && grep -qx "    echo admin >/dev/null" "$UFW/after.init" && said "kept $UFW/after.init"' \
        || show_run
    check "after.init (created, then edited): still valid (sh -n)" sh -n "$UFW/after.init"
}

t_after_init_stock() {
    # Debian 12's after.init as ufw 0.36.2 installs it (mode 0640: UFW does not run it), plus a line of
    # the admin's own in the start branch.
    scenario ufw-stock
    mkdir -p "$UFW"
    ORDER_LOG=$TMP/order.log
    if [ -f /usr/share/ufw/after.init ]; then
        check "fixture ufw-after.init is this machine's /usr/share/ufw/after.init (ufw's template)" \
            cmp -s "$FIXTURES/ufw-after.init" /usr/share/ufw/after.init
    fi
    sed "s|^start)\$|start)\n    echo admin-start >>$ORDER_LOG|" "$FIXTURES/ufw-after.init" >"$UFW/after.init"
    chmod 0640 "$UFW/after.init"
    cp -p "$UFW/after.init" "$TMP/after.init.orig"
    local before
    before=$(listing "$S")
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
    if command -v dash >/dev/null; then check "after.init (Debian's): dash -n passes" dash -n "$UFW/after.init"; fi
    after_init_behaviour "after.init (Debian's)" "$(printf 'admin-start\nvirtgate reapply')"

    local second
    second=$(listing_full "$S")
    installer
    installed_ok "after.init (Debian's): second install succeeds"
    same "after.init (Debian's): second install leaves the file identical (bytes, mode, times)" "$second" "$(listing_full "$S")"
    installer --uninstall --dry-run
    same "after.init (Debian's): --uninstall --dry-run changes nothing" "$second" "$(listing_full "$S")"
    check "after.init (Debian's): --uninstall --dry-run says it would remove the block and restore the mode" \
        eval 'said "would remove virtgate'"'"'s block from $UFW/after.init" && said "would restore the mode of $UFW/after.init (640)"'
    installer --uninstall
    installed_ok "after.init (Debian's): --uninstall succeeds"
    check "after.init (Debian's): --uninstall restores the original bytes exactly" cmp "$UFW/after.init" "$TMP/after.init.orig"
    check "after.init (Debian's): --uninstall restores mode 0640" eval '[ "$(stat -c %a "$UFW/after.init")" = 640 ]'
    same "after.init (Debian's): --uninstall leaves the tree as before" "$before" "$(listing "$S")"
}

t_after_init_edges() {
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
    ORDER_LOG=$TMP/order.log
    virtgate_standin 0
    : >"$ORDER_LOG"
    run_after_init stop
    check "after.init (set -eu, ends in exit 0): 'after.init stop' runs virtgate reapply and exits 0" \
        eval '[ "$AI_RC" -eq 0 ] && grep -qx "virtgate reapply" "$ORDER_LOG"'
    install -m 0755 "$VG_BIN" "$BIN"
    installer --uninstall
    check "after.init (no final newline): --uninstall restores the original bytes exactly" cmp "$UFW/after.init" "$TMP/after.init.edge"

    # A broken block (BEGIN without END): install refuses with one clear line and changes nothing.
    printf '#!/bin/sh\n# BEGIN virtgate\nexit 0\n' >"$UFW/after.init"
    local tree
    tree=$(listing_full "$UFW")
    installer
    check "after.init with a broken block: install fails with one error line naming it" \
        eval '[ "$RC" -ne 0 ] && one_error_line && grep -q "broken virtgate block" "$ERR"' || show_run
    same "after.init with a broken block: left untouched" "$tree" "$(listing_full "$UFW")"
    rm -f "$UFW/after.init"
    installer --uninstall
}

t_build() {
    # install.sh's real build path: a static release build (into .build-install/, git-ignored).
    scenario build
    INSTALL_BINARY="" VIRTGATE_BUILD_DIR=$ROOT/.build-install installer
    installed_ok "build: install.sh builds the release binary and installs it" || true
    check "build: installed binary answers --version" eval '"$BIN" --version >/dev/null 2>&1'
    check "build: Swift runtime linked statically (no libswiftCore.so needed)" \
        eval '! ldd "$BIN" | grep -q libswiftCore'
}

main_inner() {
    trap inner_cleanup EXIT
    trap 'not_ok "inner part interrupted"; exit 1' INT TERM
    check "inner: in network namespace $NS" eval '[ "$(ip netns identify $$)" = "$NS" ]'
    check "inner: in a pid namespace (pidof sees no real libvirt daemon)" \
        eval '[ $$ -eq 1 ] && [ -z "$(pidof libvirtd virtqemud virtnetworkd)" ]'
    # Belt and braces: even a path install.sh got wrong cannot reach the real files or services.
    mount -t tmpfs -o size=16m tmpfs /run || { not_ok "tmpfs over /run in the private mount namespace"; exit 1; }
    mount -t tmpfs -o size=1m tmpfs /usr/local/sbin || { not_ok "tmpfs over /usr/local/sbin"; exit 1; }
    local p
    for p in /etc/libvirt /etc/virtgate /etc/systemd/system /etc/ufw; do
        if [ -d "$p" ]; then mount -t tmpfs -o size=1m tmpfs "$p" || { not_ok "tmpfs over $p"; exit 1; }; fi
    done
    unset VIRTGATE_CONFIG VIRTGATE_STATE_DIR VIRTGATE_DRY_RUN VIRTGATE_ON_INVALID VIRTGATE_IPTABLES \
        VIRTGATE_MASQUERADE_ROUTED VIRTGATE_SYSLOG VIRTGATE_NETWORK_RUN_DIR

    t_shipped_config
    t_fresh
    t_foreign
    t_foreign_link
    t_moved
    t_hooks_and_uninstall
    t_config_and_dry_run
    t_errors
    t_apt
    t_units
    t_after_init_created
    t_after_init_stock
    t_after_init_edges
    if [ "$WITH_BUILD" = yes ]; then t_build; fi
    echo done >"$TMP/inner-done"
}

case ${1:-} in
    --inner) main_inner ;;
    --with-build) WITH_BUILD=yes; export WITH_BUILD; main_outer ;;
    "") main_outer ;;
    *) echo "usage: $0 [--with-build]" >&2; echo "0 passed, 1 failed"; exit 1 ;;
esac
