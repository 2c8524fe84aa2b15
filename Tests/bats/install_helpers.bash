# install_helpers.bash: helpers for install.bats, the test of install.sh.
#
# install.sh runs in the network namespace vgt-inst and in a private pid namespace with its own /proc,
# entered through a holder process (`inns COMMAND...`), so that pidof sees only this test's processes and
# no real libvirt daemon can get a signal. Every path install.sh uses is moved into a temp dir ($TMP) with
# the VIRTGATE_* variables; in the holder's mount namespace /run, /usr/local/sbin, /etc/libvirt,
# /etc/virtgate, /etc/systemd/system, /etc/ufw and /usr/local/share are additionally covered with empty
# tmpfs mounts.
# systemctl is a stand-in on PATH that only records its arguments.

NS=vgt-inst
LIBVIRT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
INSTALL_LOCK=/tmp/vgt-inst.lock
# The guest's forward to 10.231.0.11:22, as either backend writes it (iptables DNAT, or an nft map element).
G_DNAT_IPT="--to-destination 10.231.0.11:22"
G_DNAT_NFT=": 10.231.0.11 . 22"
INSTALL_TOOLS="ip unshare nsenter iptables iptables-save ip6tables-save nft sha256sum find setpriv pidof cmp install
    sed sort flock mountpoint dash systemd-analyze"

# -------------------------------------------------------------------------------------------------
# Checks. Each one is an assertion that fails the test with the old check's description; ON_FAIL names a
# command that prints diagnostics first (e.g. ON_FAIL=show_run check ...).

check() { # check "description" command...: the command succeeds
    local what=$1
    shift
    if "$@"; then
        echo ok >>"$TMP/checks"
        return 0
    fi
    if [ -n "${ON_FAIL:-}" ]; then $ON_FAIL 2>&1 | sed 's/^/# /' >&2 || true; fi
    fail "$what"
}
same() { # same "description" A B: A and B are equal; shows the difference otherwise
    if [ "$2" = "$3" ]; then
        echo ok >>"$TMP/checks"
        return 0
    fi
    diff <(echo "$2") <(echo "$3") | head -20 | sed 's/^/# /' >&2 || true
    fail "$1"
}
installed_ok() { # the last install.sh run succeeded; else shows its transcript
    ON_FAIL=show_run check "$1" test "$RC" -eq 0
}

# -------------------------------------------------------------------------------------------------
# The namespaces.

# inns, start_holder, stop_holder: holder.bash.
load holder

# real_state: what must stay the same on the real machine (paths, the root namespace's ruleset).
real_state() {
    local p
    for p in /etc/libvirt/hooks /usr/local/sbin /usr/local/share /etc/virtgate /run/virtgate /etc/systemd/system /etc/ufw; do
        if [ -e "$p" ]; then find "$p" -printf '%p %y %l %m %s %T@\n' 2>/dev/null | sort; else echo "$p absent"; fi
    done
    iptables-save 2>/dev/null | sed -e 's/\[[0-9]*:[0-9]*\]//' -e '/^#/d'
}

# defer COMMAND: run by teardown after this test, whether it passed or not (undoes what the test changed
# outside its scenario tree: namespaced rules, mounts, daemons, the real binary back in place).
defer() { printf '%s\n' "$*" >>"$TMP/deferred"; }
run_deferred() {
    [ -s "$TMP/deferred" ] || return 0
    local cmd
    while IFS= read -r cmd; do eval "$cmd" >/dev/null 2>&1 || true; done <"$TMP/deferred"
    : >"$TMP/deferred"
}

# -------------------------------------------------------------------------------------------------
# Scenarios: a fake root $S per scenario, with the paths install.sh is told to use.

scenario_vars() { # NAME: sets the scenario's paths (the tree may exist already)
    S=$TMP/$1
    HOOKS=$S/etc/libvirt/hooks
    SBIN=$S/usr/local/sbin
    ETC=$S/etc/virtgate
    RUNLV=$S/run/libvirt
    STATE=$S/run/virtgate
    BIN=$SBIN/virtgate
    CONF=$ETC/virtgate.conf
    SYSD=$S/etc/systemd/system
    UFW=$S/etc/ufw
    # The man page and the completions: below the share directory beside sbin.
    DATA=$S/usr/local/share
    MAN_PAGE=$DATA/man/man8/virtgate.8
    BASH_COMPLETION=$DATA/bash-completion/completions/virtgate
    ZSH_COMPLETION=$DATA/zsh/site-functions/_virtgate
    FISH_COMPLETION=$DATA/fish/vendor_completions.d/virtgate.fish
}
scenario() { # NAME: a fresh fake root
    scenario_vars "$1"
    rm -rf "$S"
    mkdir -p "$S/etc/libvirt" "$S/usr/local/sbin" "$S/run/libvirt" "$TMP/logs"
    # As on a Debian host, the systemd unit directory exists; UFW's directory only where a scenario
    # creates it.
    mkdir -p "$SYSD"
}
save() { mkdir -p "$TMP/saved"; printf '%s' "$2" >"$TMP/saved/${S##*/}.$1"; }  # save KEY VALUE
saved() { cat "$TMP/saved/${S##*/}.$1"; }                                        # saved KEY

# installer ARGS...: runs install.sh for the current scenario, in the namespaces; sets OUT, ERR (transcript
# files, kept outside the scenario tree, which is compared before and after) and RC.
installer() {
    OUT=$(mktemp "$TMP/logs/${S##*/}.out.XXXXXX")
    ERR=${OUT/.out./.err.}
    RC=0
    inns env VIRTGATE_HOOKS_DIR="$HOOKS" VIRTGATE_SBIN="$SBIN" VIRTGATE_ETC="$ETC" VIRTGATE_RUN_LIBVIRT="$RUNLV" \
        VIRTGATE_STATE_DIR="$STATE" VIRTGATE_SYSTEMD_DIR="$SYSD" VIRTGATE_UFW_DIR="$UFW" \
        VIRTGATE_SKIP_APT="${INSTALL_SKIP_APT-1}" VIRTGATE_BINARY="${INSTALL_BINARY-$VG_BIN}" \
        VIRTGATE_MANPAGE="${INSTALL_MANPAGE:-}" \
        VIRTGATE_SYSLOG=no PATH="${INSTALL_PATH:-$PATH}" \
        bash "$INSTALL" "$@" >"$OUT" 2>"$ERR" </dev/null || RC=$?
}
show_run() { echo "install.sh exit $RC; stdout:"; cat "$OUT"; echo "stderr:"; cat "$ERR"; }
said() { grep -qF -- "$1" "$OUT"; }
one_error_line() { [ "$(wc -l <"$ERR")" -eq 1 ] && grep -q '^install.sh: error: ' "$ERR"; }
link_is() { [ -L "$1" ] && [ "$(readlink "$1")" = "$2" ]; }

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

# rules: the namespace's ruleset, counters stripped.
rules() {
    inns sh -c '{ iptables-save; ip6tables-save; nft list table inet virtgate 2>/dev/null; }' \
        | sed -e 's/\[[0-9]*:[0-9]*\]//' -e '/^#/d'
}

# hook_as_libvirt PATH ARGS... < xml: runs a hook with the scrubbed environment libvirt gives hooks, plus
# the variables that move virtgate's files into the scenario.
hook_as_libvirt() {
    # shellcheck disable=SC2086 # HOOK_ENV is a list of assignments
    inns env -i PATH="$LIBVIRT_PATH" LC_ALL=C HOME=/ USER=root LOGNAME=root \
        VIRTGATE_CONFIG="$CONF" VIRTGATE_STATE_DIR="$STATE" VIRTGATE_SYSLOG=0 \
        VIRTGATE_NETWORK_RUN_DIR="$RUNLV/network" VIRTGATE_NETWORK_ETC_DIR="$S/etc/libvirt/qemu/networks" \
        VIRTGATE_DNSMASQ_DIR="$S/var/lib/libvirt/dnsmasq" ${HOOK_ENV:-} "$@"
}

# -------------------------------------------------------------------------------------------------
# Fake libvirt daemons: a copy of sleep named virtnetworkd in the pid namespace, so that pidof finds it
# (only there). SIGHUP kills it with status 129; a wrapper shell records that status in a file. DAEMON is
# its pid in the pid namespace.
start_daemon() {
    mkdir -p "$TMP/bin"
    [ -x "$TMP/bin/virtnetworkd" ] || cp /bin/sleep "$TMP/bin/virtnetworkd"
    DAEMON_DIR=$(mktemp -d "$TMP/daemon.XXXXXX")
    # SIGHUP at its default action whatever this test was started with (under nohup, an ignored
    # SIGHUP would be inherited, and no signal install.sh sends could end the daemon).
    inns bash -c 'env --default-signal=HUP "$1" 900 & echo $! >"$2/pid"; wait $!; echo $? >"$2/status"' daemon \
        "$TMP/bin/virtnetworkd" "$DAEMON_DIR" </dev/null >/dev/null 2>&1 3>&- 8>&- &
    local i
    for i in $(seq 100); do [ -s "$DAEMON_DIR/pid" ] && break; sleep 0.05; done
    DAEMON=$(cat "$DAEMON_DIR/pid")
    defer "inns kill $DAEMON"
    # The pid is known once bash has forked, before the child runs as virtnetworkd: until then
    # pidof (what install.sh asks) does not find it.
    for i in $(seq 100); do inns pidof virtnetworkd 2>/dev/null | grep -qw -- "$DAEMON" && return 0; sleep 0.05; done
    echo "# the fake virtnetworkd (pid $DAEMON) did not show up under its name" >&2
    return 1
}
# daemon_got_hup: the fake daemon died of SIGHUP (waits up to 3 s); otherwise it is stopped.
daemon_got_hup() {
    local i
    for i in $(seq 30); do [ -s "$DAEMON_DIR/status" ] && break; sleep 0.1; done
    if [ ! -s "$DAEMON_DIR/status" ]; then stop_daemon; return 1; fi
    [ "$(cat "$DAEMON_DIR/status")" = 129 ]
}
daemon_alive() { inns kill -0 "$DAEMON" 2>/dev/null; }
stop_daemon() {
    inns kill "$DAEMON" 2>/dev/null || true
    local i
    for i in $(seq 30); do [ -s "$DAEMON_DIR/status" ] && break; sleep 0.1; done
    return 0
}

# -------------------------------------------------------------------------------------------------
# systemd units and UFW's after.init

# A stand-in systemctl (first on PATH): appends its arguments to $SYSCALLS and keeps the enabled/active
# state of units as files, so that is-enabled/is-active answer like systemd would.
SYSBIN=${TMP:-}/sysbin
SYSCALLS=${TMP:-}/systemctl.calls
make_systemctl_standin() {
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
# systemd_here: "systemd is running", as install.sh tests it, only in the holder's private /run.
systemd_here() {
    inns mkdir -p /run/systemd/system
    defer "inns rm -rf /run/systemd"
}
# changing_calls: the recorded systemctl calls, without the queries (is-enabled, is-active).
changing_calls() { grep -v '^is-' "$SYSCALLS" 2>/dev/null || true; }
# rendered FILE: the shipped file as install.sh installs it for this scenario's $BIN.
rendered() { sed "s|/usr/local/sbin/virtgate|$BIN|g" "$1"; }
unit_has() { grep -qxF -- "$2" "$SYSD/$1"; }

ORDER_LOG=${TMP:-}/order.log
# Stand-ins for the installed binary: virtgate_standin EXIT writes a $BIN that appends "virtgate ARGS" to
# $ORDER_LOG, says something on stderr and exits EXIT. A stand-in logger records what it is sent.
virtgate_standin() {
    rm -f "$BIN"
    printf '#!/bin/sh\necho "virtgate $*" >>"%s"\necho "stand-in virtgate says: failing on purpose" >&2\nexit %s\n' \
        "$ORDER_LOG" "$1" >"$BIN"
    chmod 0755 "$BIN"
    # The real binary goes back after the test, whatever happens in it.
    defer "install -m 0755 '$VG_BIN' '$BIN'"
}
logger_standin() {
    LOGBIN=$TMP/logbin
    mkdir -p "$LOGBIN"
    printf '#!/bin/sh\n{ echo "logger $*"; cat; } >>"%s"\n' "$TMP/logger.log" >"$LOGBIN/logger"
    chmod 0755 "$LOGBIN/logger"
}
# run_after_init ARG: runs $UFW/after.init ARG as ufw-init does (executed directly); sets AI_RC.
run_after_init() {
    AI_RC=0
    inns env -i PATH="${LOGBIN:-$TMP/none}:$LIBVIRT_PATH" "$UFW/after.init" "$1" >"$TMP/after-init.out" 2>&1 || AI_RC=$?
}
block_count() { grep -cxF '# BEGIN virtgate' "$UFW/after.init" || true; }
# block_is_shipped: the block in after.init is hooks/ufw-after.init.sh for this scenario's $BIN.
block_is_shipped() {
    cmp -s <(sed -n '/^# BEGIN virtgate$/,/^# END virtgate$/p' "$UFW/after.init") <(rendered "$ROOT/hooks/ufw-after.init.sh")
}

# after_init_behaviour WHAT EXPECTED-ORDER: the installed after.init runs virtgate reapply on start, stop
# and flush-all, not on status; exits 0 when virtgate fails or is missing; logs a failure. EXPECTED-ORDER
# is what a start must leave in $ORDER_LOG. Puts the real binary back afterwards.
after_init_behaviour() {
    local what=$1 order=$2 arg
    logger_standin
    : >"$TMP/logger.log"
    virtgate_standin 3
    for arg in start stop flush-all; do
        : >"$ORDER_LOG"
        run_after_init "$arg"
        ON_FAIL="cat $TMP/after-init.out" check "$what: 'after.init $arg' exits 0 although virtgate fails (exit 3)" \
            test "$AI_RC" -eq 0
        check "$what: 'after.init $arg' ran virtgate reapply" grep -qx "virtgate reapply" "$ORDER_LOG"
    done
    ON_FAIL="cat $TMP/logger.log" check "$what: the failure went to syslog: logger -t virtgate, with virtgate's message" \
        eval 'grep -q "^logger -t virtgate" "$TMP/logger.log" && grep -q "virtgate reapply failed (exit 3)" "$TMP/logger.log" && grep -q "failing on purpose" "$TMP/logger.log"'
    : >"$ORDER_LOG"
    run_after_init status
    check "$what: 'after.init status' exits 0 and does not run virtgate" eval '[ "$AI_RC" -eq 0 ] && [ ! -s "$ORDER_LOG" ]'
    virtgate_standin 0
    : >"$ORDER_LOG"
    : >"$TMP/logger.log"
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
