#!/usr/bin/env bash
# install.sh: build virtgate and install it as libvirt's qemu and network hook (Debian/Ubuntu, as root).
#
#   ./install.sh              install, or bring an existing install up to date (idempotent)
#   ./install.sh --dry-run    print each step it would do; change nothing
#   ./install.sh --uninstall  remove virtgate's rules, hooks, binary, unchanged config and state
#   ./install.sh --help
#
# Environment (mostly for tests):
#   VIRTGATE_BINARY=/path       install this binary instead of building one
#   VIRTGATE_SKIP_APT=1         do not install packages
#   VIRTGATE_BUILD_DIR=/path    swift build --scratch-path (default: swift's own .build)
#   VIRTGATE_HOOKS_DIR          default /etc/libvirt/hooks
#   VIRTGATE_SBIN               default /usr/local/sbin
#   VIRTGATE_ETC                default /etc/virtgate
#   VIRTGATE_RUN_LIBVIRT        default /run/libvirt
#   VIRTGATE_STATE_DIR          default /run/virtgate
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOOKS_DIR=${VIRTGATE_HOOKS_DIR:-/etc/libvirt/hooks}
SBIN=${VIRTGATE_SBIN:-/usr/local/sbin}
ETC=${VIRTGATE_ETC:-/etc/virtgate}
RUN_LIBVIRT=${VIRTGATE_RUN_LIBVIRT:-/run/libvirt}
STATE_DIR=${VIRTGATE_STATE_DIR:-/run/virtgate}
BIN=$SBIN/virtgate
CONF=$ETC/virtgate.conf
# What this script created (directories it may remove again, the checksum of the config it shipped).
RECORD=$ETC/.installed
SHIPPED_CONF=$SRC_DIR/hooks/virtgate.conf
DRIVERS=(qemu network)
DAEMONS=(libvirtd virtqemud virtnetworkd)
PACKAGES=(libvirt-dev libxml2-dev pkg-config iptables)

# The virtgate commands this script runs read the same files as the hooks.
export VIRTGATE_CONFIG=${VIRTGATE_CONFIG:-$CONF}
export VIRTGATE_STATE_DIR=$STATE_DIR
export VIRTGATE_NETWORK_RUN_DIR=${VIRTGATE_NETWORK_RUN_DIR:-$RUN_LIBVIRT/network}

DRY_RUN=no
MODE=install
CHANGED=0           # changes made (or, in --dry-run, that would be made)
HOOKS_CHANGED=no    # a hook link was added or removed: libvirt must re-read its hooks
WOULD_REMOVE=()     # --dry-run: paths that would be removed (to tell which directories would end up empty)

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
# act "would-text" "done-text" command...: runs the command and says what was done, or, in --dry-run,
# only says what it would do.
act() {
    local would=$1 done=$2; shift 2
    CHANGED=$((CHANGED + 1))
    if [ "$DRY_RUN" = yes ]; then
        say "would $would"
    else
        "$@" || die "$would: failed"
        say "$done"
    fi
}
# act_remove "would-text" "done-text" PATH: rm -f PATH (or, in --dry-run, remember that it would go).
act_remove() {
    [ "$DRY_RUN" = yes ] && WOULD_REMOVE+=("$3")
    act "$1" "$2" rm -f "$3"
}
indent() { sed 's/^/    /'; }

usage() {
    cat <<EOF
Usage: $0 [--dry-run] [--uninstall] [--help]

Install (default): apt packages (${PACKAGES[*]}), a static release build of virtgate as
$BIN, hook links in $HOOKS_DIR (qemu, network; an existing
hook that is not virtgate's is kept and virtgate goes into qemu.d/ or network.d/ instead), a commented
$CONF unless one exists, a reload of libvirt, and a dry run of the rules for the
networks and guests running now. Running it again changes nothing.

--uninstall  remove every virtgate rule, virtgate's hook links, the binary, the config (only if
             unchanged) and $STATE_DIR; then reload libvirt.
--dry-run    print each step instead of doing it.
EOF
}

for arg in "$@"; do
    case $arg in
        --dry-run) DRY_RUN=yes ;;
        --uninstall) MODE=uninstall ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$arg' (try --help)" ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    if [ "$DRY_RUN" = yes ]; then
        say "note: not root; the dry run may not be able to read every file or the firewall"
    else
        die "run as root (sudo $0 $*)"
    fi
fi
[ -f "$SHIPPED_CONF" ] || die "$SHIPPED_CONF is missing: run install.sh from the virtgate source tree"

# ---------------------------------------------------------------------------------------------------
# helpers

sha() { sha256sum "$1" | cut -d' ' -f1; }

# is_ours PATH: PATH is a symlink to the installed virtgate binary.
is_ours() {
    [ -L "$1" ] || return 1
    [ "$(readlink "$1")" = "$BIN" ] && return 0
    [ -e "$BIN" ] && [ "$1" -ef "$BIN" ]
}

# The record ($ETC/.installed) lists what install.sh created, one "KEY VALUE" a line:
# "dir PATH" (a directory it may remove again once empty), "config-sha256 HASH" (the config it shipped).
record_get() { # KEY → the values recorded under KEY
    [ -f "$RECORD" ] || return 0
    sed -n "s|^$1 ||p" "$RECORD"
}
record_has() { # KEY VALUE
    [ -f "$RECORD" ] && grep -qxF "$1 $2" "$RECORD"
}
record_add() { # KEY VALUE
    [ "$DRY_RUN" = yes ] && return 0
    record_has "$1" "$2" && return 0
    [ -d "$ETC" ] || make_dir "$ETC"
    printf '%s %s\n' "$1" "$2" >>"$RECORD"
}
record_del() { # KEY VALUE
    [ "$DRY_RUN" = yes ] && return 0
    [ -f "$RECORD" ] || return 0
    { grep -vxF "$1 $2" "$RECORD" || true; } >"$RECORD.new"
    mv -f "$RECORD.new" "$RECORD"
}

# make_dir DIR: creates DIR, and records that install.sh did, so that uninstall may remove it when empty.
make_dir() {
    [ -d "$1" ] && return 0
    [ -e "$1" ] && die "$1 exists and is not a directory"
    act "create $1/" "created $1/" mkdir -p "$1"
    record_add dir "$1"
}

# empty_after_removals DIR: DIR is empty, or (--dry-run) holds only paths that would be removed.
empty_after_removals() {
    local entry gone p
    while IFS= read -r entry; do
        [ -n "$entry" ] || continue
        gone=no
        for p in "${WOULD_REMOVE[@]}"; do [ "$p" = "$1/$entry" ] && gone=yes; done
        [ "$gone" = yes ] || return 1
    done < <(ls -A "$1")
}

# remove_dir_if_ours DIR: removes DIR if install.sh created it and it is (or would be) empty.
remove_dir_if_ours() {
    record_has dir "$1" || return 0
    if [ ! -d "$1" ]; then record_del dir "$1"; return 0; fi
    if ! empty_after_removals "$1"; then
        say "kept $1/: install.sh created it, but it is not empty"
        return 0
    fi
    [ "$DRY_RUN" = yes ] && WOULD_REMOVE+=("$1")
    act "remove $1/ (created by install.sh, now empty)" "removed $1/ (created by install.sh, now empty)" rmdir "$1"
    record_del dir "$1"
}

# new_link HOOK: makes HOOK a symlink to the binary; replaces an existing link in one rename.
new_link() {
    local tmp=$1.virtgate-new.$$
    ln -s "$BIN" "$tmp" && mv -Tf "$tmp" "$1"
}

# virtgate_bin: the binary for the flush and the dry run: the installed one, else VIRTGATE_BINARY.
virtgate_bin() {
    if [ -x "$BIN" ]; then echo "$BIN"
    elif [ -n "${VIRTGATE_BINARY:-}" ] && [ -x "$VIRTGATE_BINARY" ]; then echo "$VIRTGATE_BINARY"
    fi
}

# libvirt_version: the libvirt version the binary reports (e.g. 9.0.0); empty when unknown.
libvirt_version() {
    local bin
    bin=$(virtgate_bin)
    [ -n "$bin" ] || return 0
    "$bin" --version 2>/dev/null | sed -n 's/.*(libvirt \([0-9][0-9.]*\)).*/\1/p'
}

# ---------------------------------------------------------------------------------------------------
# install steps

step_packages() {
    if [ "${VIRTGATE_SKIP_APT:-0}" = 1 ]; then
        say "packages: skipped (VIRTGATE_SKIP_APT=1)"
        return 0
    fi
    command -v apt-get >/dev/null && command -v dpkg-query >/dev/null \
        || die "apt-get not found: install.sh is for Debian and Ubuntu (install ${PACKAGES[*]} yourself and set VIRTGATE_SKIP_APT=1)"
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "packages: ${PACKAGES[*]} already installed"
        return 0
    fi
    act "run apt-get update and apt-get install ${missing[*]}" "packages: installed ${missing[*]}" apt_install "${missing[@]}"
}
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null \
        || die "apt-get install $* failed"
}

# step_build: sets SOURCE_BINARY, the binary to install (empty in --dry-run without VIRTGATE_BINARY).
step_build() {
    SOURCE_BINARY=""
    if [ -n "${VIRTGATE_BINARY:-}" ]; then
        [ -f "$VIRTGATE_BINARY" ] && [ -x "$VIRTGATE_BINARY" ] \
            || die "VIRTGATE_BINARY=$VIRTGATE_BINARY is not an executable file"
        "$VIRTGATE_BINARY" --version >/dev/null 2>&1 || die "$VIRTGATE_BINARY does not run (--version failed)"
        SOURCE_BINARY=$VIRTGATE_BINARY
        say "build: skipped, installing $SOURCE_BINARY (VIRTGATE_BINARY)"
        return 0
    fi
    if [ -d /opt/swift/usr/bin ] && [[ ":$PATH:" != *":/opt/swift/usr/bin:"* ]]; then
        PATH=/opt/swift/usr/bin:$PATH
    fi
    command -v swift >/dev/null \
        || die "swift not found on PATH nor in /opt/swift/usr/bin: install the Swift 6 toolchain (https://www.swift.org/install/linux/), then run install.sh again"
    local args=(-c release --static-swift-stdlib --package-path "$SRC_DIR")
    if [ -n "${VIRTGATE_BUILD_DIR:-}" ]; then args+=(--scratch-path "$VIRTGATE_BUILD_DIR"); fi
    if [ "$DRY_RUN" = yes ]; then
        say "would build: swift build ${args[*]}"
        return 0
    fi
    say "build: swift build ${args[*]} (minutes the first time)"
    local log
    log=$(mktemp /tmp/virtgate-build.XXXXXX)
    if ! swift build "${args[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "swift build failed (full log: $log)"
    fi
    rm -f "$log"
    SOURCE_BINARY="$(swift build "${args[@]}" --show-bin-path)/virtgate"
    [ -x "$SOURCE_BINARY" ] || die "swift build produced no $SOURCE_BINARY"
    "$SOURCE_BINARY" --version >/dev/null 2>&1 || die "$SOURCE_BINARY does not run (--version failed)"
    say "build: $SOURCE_BINARY"
}

step_binary() {
    make_dir "$SBIN"
    if [ -z "$SOURCE_BINARY" ]; then
        CHANGED=$((CHANGED + 1))
        say "would install the built binary as $BIN (mode 0755)"
        return 0
    fi
    if [ -f "$BIN" ] && [ ! -L "$BIN" ] && cmp -s "$SOURCE_BINARY" "$BIN" \
        && [ "$(stat -c %a "$BIN")" = 755 ]; then
        say "binary $BIN: already up to date ($("$BIN" --version 2>&1))"
        return 0
    fi
    local verb=installed
    { [ -e "$BIN" ] || [ -L "$BIN" ]; } && verb=replaced
    act "install $SOURCE_BINARY as $BIN (mode 0755)" "binary $BIN: $verb" install_binary
    [ "$DRY_RUN" = yes ] || say "binary $BIN: $("$BIN" --version 2>&1)"
}
install_binary() {
    # A new file, then one rename: a hook that starts meanwhile runs either the old or the new binary.
    local tmp=$SBIN/.virtgate.new.$$
    install -m 0755 "$SOURCE_BINARY" "$tmp" || return 1
    mv -Tf "$tmp" "$BIN" || { rm -f "$tmp"; return 1; }
}

step_hooks() {
    make_dir "$HOOKS_DIR"
    local d hook dir version
    for d in "${DRIVERS[@]}"; do
        hook=$HOOKS_DIR/$d
        dir=$HOOKS_DIR/$d.d
        if { [ ! -e "$hook" ] && [ ! -L "$hook" ]; } || is_ours "$hook"; then
            if is_ours "$hook" && [ "$(readlink "$hook")" = "$BIN" ]; then
                say "hook $hook: already linked to $BIN"
            else
                HOOKS_CHANGED=yes
                act "link $hook -> $BIN" "hook $hook -> $BIN: linked" new_link "$hook"
            fi
            # virtgate is the main hook now: a link left in <d>.d/ by an earlier install would run it twice.
            if is_ours "$dir/virtgate"; then
                HOOKS_CHANGED=yes
                act_remove "remove $dir/virtgate (virtgate is the main $d hook now)" \
                    "removed $dir/virtgate (virtgate is the main $d hook now)" "$dir/virtgate"
                remove_dir_if_ours "$dir"
            fi
            continue
        fi
        if [ -L "$hook" ]; then
            say "hook $hook: not virtgate's (a link to $(readlink "$hook")), left untouched"
        else
            say "hook $hook: not virtgate's, left untouched"
        fi
        make_dir "$dir"
        if is_ours "$dir/virtgate"; then
            say "hook $dir/virtgate: already linked to $BIN"
        elif [ -e "$dir/virtgate" ] || [ -L "$dir/virtgate" ]; then
            die "$dir/virtgate exists and is not a link to $BIN: move it away, then run install.sh again"
        else
            HOOKS_CHANGED=yes
            act "link $dir/virtgate -> $BIN (libvirt runs it after the existing $d hook)" \
                "hook $dir/virtgate -> $BIN: linked, because $hook is not virtgate's (libvirt runs it after that hook)" \
                ln -s "$BIN" "$dir/virtgate"
        fi
        version=$(libvirt_version)
        if [ -n "$version" ] && ! printf '%s\n' 6.5.0 "$version" | sort -V -C; then
            say "warning: libvirt $version does not run hooks in $d.d/ (6.5 and later do): call $BIN from $hook yourself"
        fi
    done
}

step_config() {
    if [ -e "$CONF" ] || [ -L "$CONF" ]; then
        if cmp -s "$CONF" "$SHIPPED_CONF"; then
            say "config $CONF: already installed"
        else
            say "config $CONF: kept as it is (the admin's)"
        fi
        return 0
    fi
    make_dir "$ETC"
    act "install $CONF (defaults, all commented)" "config $CONF: installed (defaults, all commented)" \
        install -m 0644 "$SHIPPED_CONF" "$CONF"
    record_add config-sha256 "$(sha "$SHIPPED_CONF")"
}

# step_reload: makes libvirt re-read its hooks. It caches which hooks exist when it starts, and again
# on SIGHUP (systemctl reload sends that).
step_reload() {
    if [ "$HOOKS_CHANGED" = no ]; then
        say "libvirt: hooks unchanged, no reload needed"
        return 0
    fi
    local found=no svc pid pids
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
        for svc in "${DAEMONS[@]}"; do
            systemctl is-active --quiet "$svc.service" 2>/dev/null || continue
            found=yes
            if [ "$DRY_RUN" = yes ]; then
                say "would reload $svc (systemctl reload), so that it re-reads its hooks"
            elif systemctl reload "$svc.service" 2>/dev/null; then
                say "reloaded $svc (systemctl reload): it re-read its hooks"
            else
                pid=$(systemctl show -p MainPID --value "$svc.service" 2>/dev/null || true)
                if [ "${pid:-0}" -gt 0 ] 2>/dev/null && kill -HUP "$pid"; then
                    say "sent SIGHUP to $svc (pid $pid): it re-read its hooks"
                else
                    die "cannot reload $svc: run 'systemctl restart $svc' so that it sees the hooks"
                fi
            fi
        done
    else
        for svc in "${DAEMONS[@]}"; do
            pids=$(pidof "$svc" 2>/dev/null || true)
            for pid in $pids; do
                found=yes
                if [ "$DRY_RUN" = yes ]; then
                    say "would send SIGHUP to $svc (pid $pid), so that it re-reads its hooks"
                else
                    kill -HUP "$pid" || die "cannot send SIGHUP to $svc (pid $pid): restart it so that it sees the hooks"
                    say "sent SIGHUP to $svc (pid $pid): it re-read its hooks"
                fi
            done
        done
    fi
    if [ "$found" = no ]; then
        say "libvirt: no libvirtd, virtqemud or virtnetworkd running; it reads the hooks when it starts"
    fi
}

# step_preview: prints what virtgate would apply now for the running networks and guests.
step_preview() {
    local bin nets doms f name driver out status
    bin=$(virtgate_bin)
    shopt -s nullglob
    nets=("$RUN_LIBVIRT"/network/*.xml)
    doms=("$RUN_LIBVIRT"/qemu/*.xml)
    shopt -u nullglob
    if [ ${#nets[@]} -eq 0 ] && [ ${#doms[@]} -eq 0 ]; then
        say "dry run: no running libvirt network or guest (nothing in $RUN_LIBVIRT/network or $RUN_LIBVIRT/qemu)"
        return 0
    fi
    if [ -z "$bin" ]; then
        say "would print a dry run for ${#nets[@]} running network(s) and ${#doms[@]} running guest(s)"
        return 0
    fi
    for f in "${nets[@]}" "${doms[@]}"; do
        name=$(basename "$f" .xml)
        driver=network
        case $f in "$RUN_LIBVIRT"/qemu/*) driver=qemu ;; esac
        say "dry run: $driver $name, what virtgate would apply now:"
        status=0
        # A preview is no event: it is not written to syslog (VIRTGATE_SYSLOG=no) unless asked for.
        out=$(VIRTGATE_SYSLOG=${VIRTGATE_SYSLOG:-no} "$bin" hook --dry-run "$driver" "$name" started begin - <"$f" 2>&1) \
            || status=$?
        [ -z "$out" ] || printf '%s\n' "$out" | indent
        [ "$status" -eq 0 ] || say "    (virtgate exited with status $status)"
    done
}

# ---------------------------------------------------------------------------------------------------
# uninstall steps

un_hooks() {
    local d hook dir any=no
    for d in "${DRIVERS[@]}"; do
        hook=$HOOKS_DIR/$d
        dir=$HOOKS_DIR/$d.d
        if is_ours "$hook"; then
            any=yes
            act_remove "remove hook $hook" "removed hook $hook" "$hook"
        elif [ -e "$hook" ] || [ -L "$hook" ]; then
            say "hook $hook: not virtgate's, left untouched"
        fi
        if is_ours "$dir/virtgate"; then
            any=yes
            act_remove "remove hook $dir/virtgate" "removed hook $dir/virtgate" "$dir/virtgate"
        fi
        [ -d "$dir" ] && remove_dir_if_ours "$dir"
    done
    if [ "$any" = yes ]; then HOOKS_CHANGED=yes; else say "hooks: no virtgate hook in $HOOKS_DIR"; fi
    [ -d "$HOOKS_DIR" ] && remove_dir_if_ours "$HOOKS_DIR"
    return 0
}

un_rules() {
    local bin out
    bin=$(virtgate_bin)
    if [ -z "$bin" ]; then
        if iptables-save 2>/dev/null | grep -qE '^:(VIRTGATE-|VG[NMFDS]-)'; then
            die "virtgate chains are present, but there is no virtgate binary at $BIN to remove them: install, then uninstall again"
        fi
        say "rules: no virtgate binary and no virtgate chain; nothing to remove"
        return 0
    fi
    out=$("$bin" flush --dry-run 2>&1) || die "virtgate flush --dry-run failed: $(printf '%s' "$out" | tail -n 1)"
    if [ "$out" = "# nothing to remove" ]; then
        say "rules: no virtgate rule present"
        return 0
    fi
    if [ "$DRY_RUN" = yes ]; then
        CHANGED=$((CHANGED + 1))
        say "would remove every virtgate rule and chain (virtgate flush):"
        printf '%s\n' "$out" | indent
        return 0
    fi
    out=$("$bin" flush 2>&1) || die "virtgate flush failed: $(printf '%s' "$out" | tail -n 1)"
    CHANGED=$((CHANGED + 1))
    say "rules: removed every virtgate rule and chain (virtgate flush)"
}

un_binary() {
    if [ -e "$BIN" ] || [ -L "$BIN" ]; then
        act_remove "remove $BIN" "removed $BIN" "$BIN"
    else
        say "binary $BIN: not installed"
    fi
    [ -d "$SBIN" ] && remove_dir_if_ours "$SBIN"
    return 0
}

un_config() {
    if [ -e "$CONF" ] || [ -L "$CONF" ]; then
        local current recorded
        current=$(sha "$CONF")
        recorded=$(record_get config-sha256)
        if [ "$current" = "$(sha "$SHIPPED_CONF")" ] || printf '%s\n' "$recorded" | grep -qxF "$current"; then
            act_remove "remove $CONF (the unchanged default)" "removed $CONF (the unchanged default)" "$CONF"
        else
            say "config $CONF: kept, it was changed (delete it yourself when no longer needed)"
        fi
    fi
    # The record goes; a directory it still lists is not empty (it was kept above) and stays.
    if [ -f "$RECORD" ]; then
        act_remove "remove $RECORD" "removed $RECORD (install.sh's list of what it created)" "$RECORD"
    fi
    if [ -d "$ETC" ] && empty_after_removals "$ETC"; then
        [ "$DRY_RUN" = yes ] && WOULD_REMOVE+=("$ETC")
        act "remove $ETC/ (empty)" "removed $ETC/ (empty)" rmdir "$ETC"
    fi
    return 0
}

un_state() {
    if [ -e "$STATE_DIR" ]; then
        act "remove $STATE_DIR/" "removed $STATE_DIR/" rm -rf "$STATE_DIR"
    else
        say "state $STATE_DIR/: not present"
    fi
}

# ---------------------------------------------------------------------------------------------------

[ "$DRY_RUN" = yes ] && say "dry run: nothing is changed; each step says what it would do"

if [ "$MODE" = install ]; then
    step_packages
    step_build
    step_binary
    step_hooks
    step_config
    step_reload
    step_preview
    if [ "$DRY_RUN" = yes ]; then
        say "dry run done: $CHANGED change(s) would be made"
    elif [ "$CHANGED" -eq 0 ]; then
        say "done: virtgate was already installed; nothing changed"
    else
        say "done: virtgate is installed ($CHANGED change(s))"
    fi
else
    # Hooks first: a hook running between the flush and the unlinking would re-add rules. libvirt
    # (6.5+) checks that a hook it has cached still exists before running it, so a removed link is skipped.
    un_hooks
    un_rules
    un_binary
    un_config
    un_state
    step_reload
    if [ "$DRY_RUN" = yes ]; then
        say "dry run done: $CHANGED change(s) would be made"
    elif [ "$CHANGED" -eq 0 ]; then
        say "done: virtgate was not installed; nothing changed"
    else
        say "done: virtgate is uninstalled ($CHANGED change(s))"
    fi
fi
