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
#   VIRTGATE_SYSTEMD_DIR        default /etc/systemd/system
#   VIRTGATE_UFW_DIR            default /etc/ufw
set -euo pipefail

SRC_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOOKS_DIR=${VIRTGATE_HOOKS_DIR:-/etc/libvirt/hooks}
SBIN=${VIRTGATE_SBIN:-/usr/local/sbin}
ETC=${VIRTGATE_ETC:-/etc/virtgate}
RUN_LIBVIRT=${VIRTGATE_RUN_LIBVIRT:-/run/libvirt}
STATE_DIR=${VIRTGATE_STATE_DIR:-/run/virtgate}
SYSTEMD_DIR=${VIRTGATE_SYSTEMD_DIR:-/etc/systemd/system}
UFW_DIR=${VIRTGATE_UFW_DIR:-/etc/ufw}
BIN=$SBIN/virtgate
CONF=$ETC/virtgate.conf
# What this script created (directories it may remove again, the checksum of the config it shipped).
RECORD=$ETC/.installed
SHIPPED_CONF=$SRC_DIR/hooks/virtgate.conf
# systemd units (installed as they are, with /usr/local/sbin/virtgate replaced by $BIN) and the block
# for UFW's after.init.
UNITS=(virtgate-reapply.service virtgate-leases.path virtgate-sync.service)
AFTER_INIT=$UFW_DIR/after.init
SHIPPED_BLOCK=$SRC_DIR/hooks/ufw-after.init.sh
BLOCK_BEGIN="# BEGIN virtgate"
BLOCK_END="# END virtgate"
DRIVERS=(qemu network)
DAEMONS=(libvirtd virtqemud virtnetworkd)
PACKAGES=(libvirt-dev libexpat1-dev nettle-dev pkg-config iptables)

# The virtgate commands this script runs read the same files as the hooks.
export VIRTGATE_CONFIG=${VIRTGATE_CONFIG:-$CONF}
export VIRTGATE_STATE_DIR=$STATE_DIR
export VIRTGATE_NETWORK_RUN_DIR=${VIRTGATE_NETWORK_RUN_DIR:-$RUN_LIBVIRT/network}

DRY_RUN=no
MODE=install
CHANGED=0           # changes made (or, in --dry-run, that would be made)
HOOKS_CHANGED=no    # a hook link was added or removed: libvirt must re-read its hooks
UNITS_CHANGED=no    # a unit file was added, changed or removed: systemd must re-read them
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
$CONF unless one exists, the systemd units ${UNITS[*]}
in $SYSTEMD_DIR (virtgate-leases.path started, virtgate-sync.service enabled for the next
boot), a block in $AFTER_INIT that runs 'virtgate reapply' (when UFW is installed), a reload of
libvirt, and a dry run of the rules for the networks and guests running now. Running it again changes
nothing.

--uninstall  remove every virtgate rule, the units, the after.init block, virtgate's hook links, the
             binary, the config (only if unchanged) and $STATE_DIR; then reload libvirt.
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
for f in "$SHIPPED_CONF" "$SHIPPED_BLOCK" "${UNITS[@]/#/$SRC_DIR/hooks/}"; do
    [ -f "$f" ] || die "$f is missing: run install.sh from the virtgate source tree"
done

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

# render FILE: a shipped file as installed: the default binary path replaced by $BIN.
render() {
    local bin=$BIN
    bin=${bin//\\/\\\\}; bin=${bin//|/\\|}; bin=${bin//&/\\&}
    sed "s|/usr/local/sbin/virtgate|$bin|g" "$1"
}

# systemd_running: systemd is the init system of this machine (else systemctl is not run).
systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

# The after.init that install.sh creates when UFW has none (UFW's own template, shortened, plus
# "exit 0"); virtgate's block goes in before the "exit 0". Uninstall removes the file again while the
# rest of it is still exactly this.
after_init_skeleton() {
    cat <<'SKELETON'
#!/bin/sh
#
# after.init: if executable, called by ufw-init. See 'man ufw-framework' for
#             details. Created by virtgate's install.sh, because there was none.
#
set -e

case "$1" in
start)
    # typically required
    ;;
stop)
    # typically required
    ;;
status)
    # optional
    ;;
flush-all)
    # optional
    ;;
*)
    echo "'$1' not supported"
    echo "Usage: after.init {start|stop|flush-all|status}"
    ;;
esac

exit 0
SKELETON
}

# block_lines FILE: "BEGIN-line END-line" of virtgate's block; "none" without one; "bad" when the
# markers are not exactly one BEGIN followed by one END.
block_lines() {
    awk -v b="$BLOCK_BEGIN" -v e="$BLOCK_END" '
        $0 == b { nb++; bl = NR } $0 == e { ne++; el = NR }
        END {
            if (nb == 0 && ne == 0) print "none"
            else if (nb == 1 && ne == 1 && bl < el) print bl, el
            else print "bad"
        }' "$1"
}

# without_block FILE: FILE without virtgate's block (the BEGIN line to the END line).
without_block() {
    awk -v b="$BLOCK_BEGIN" -v e="$BLOCK_END" '$0 == b { skip = 1 } !skip { print } $0 == e { skip = 0 }' "$1"
}

# with_block FILE BLOCKFILE: FILE with the block, which replaces an existing block in place; else goes
# before a final top-level "exit" (followed only by blank or comment lines), else at the end, that
# is, after the admin's own commands. Prints the new content; adds a newline to a last line without one.
with_block() {
    awk -v b="$BLOCK_BEGIN" -v e="$BLOCK_END" -v blockfile="$2" '
        function block(   l) { while ((getline l < blockfile) > 0) print l; close(blockfile) }
        { line[NR] = $0 }
        $0 == b { has = 1 }
        END {
            at = NR + 1
            if (!has) {
                for (i = NR; i >= 1; i--) {
                    if (line[i] ~ /^[ \t]*(#.*)?$/) continue
                    if (line[i] ~ /^exit([ \t]+[0-9]+)?[ \t]*(;[ \t]*)?(#.*)?$/) at = i
                    break
                }
            }
            for (i = 1; i <= NR; i++) {
                if (has && line[i] == b) { block(); skip = 1 }
                if (!has && i == at) block()
                if (!skip) print line[i]
                if (line[i] == e) skip = 0
            }
            if (!has && at == NR + 1) block()
        }' "$1"
}

# replace_file PATH CONTENTFILE: gives PATH the bytes of CONTENTFILE, keeping its mode and owner, in
# one rename.
replace_file() {
    local tmp=$1.virtgate-new.$$
    cp "$2" "$tmp" && chmod --reference="$1" "$tmp" && chown --reference="$1" "$tmp" && mv -Tf "$tmp" "$1" \
        || { rm -f "$tmp"; return 1; }
}

# exec_mode MODE: MODE (octal) with x added wherever r is set (0640 -> 0750).
exec_mode() { printf '%o' $(( 8#$1 | ((8#$1 & 8#444) >> 2) )); }

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

# step_units: the systemd units (late binding of DHCP leases, the boot-time sync), then, when systemd
# runs, daemon-reload, virtgate-leases.path enabled and started, virtgate-sync.service enabled. The
# sync is not started here: install applies no rule by itself (the dry run below shows what it would).
step_units() {
    if [ ! -d "$SYSTEMD_DIR" ]; then
        say "systemd units: $SYSTEMD_DIR does not exist (no systemd?); not installed"
        return 0
    fi
    local u target rendered
    rendered=$(mktemp)
    for u in "${UNITS[@]}"; do
        target=$SYSTEMD_DIR/$u
        render "$SRC_DIR/hooks/$u" >"$rendered"
        if [ -f "$target" ] && [ ! -L "$target" ] && cmp -s "$rendered" "$target" \
            && [ "$(stat -c %a "$target")" = 644 ]; then
            say "unit $target: already installed"
            continue
        fi
        UNITS_CHANGED=yes
        local verb=installed
        { [ -e "$target" ] || [ -L "$target" ]; } && verb=updated
        act "install $target" "unit $target: $verb" install -m 0644 "$rendered" "$target"
    done
    rm -f "$rendered"
    if ! systemd_running; then
        say "systemd is not running here: units not enabled (on the host: systemctl daemon-reload; systemctl enable --now virtgate-leases.path; systemctl enable virtgate-sync.service)"
        return 0
    fi
    if [ "$UNITS_CHANGED" = yes ]; then
        act "run systemctl daemon-reload" "systemd: re-read its units (daemon-reload)" systemctl daemon-reload
    fi
    if systemctl is-enabled --quiet virtgate-leases.path 2>/dev/null \
        && systemctl is-active --quiet virtgate-leases.path 2>/dev/null; then
        say "virtgate-leases.path: already enabled and watching lease files"
    else
        act "run systemctl enable --now virtgate-leases.path (reapply whenever a lease file changes)" \
            "virtgate-leases.path: enabled and started (reapply whenever a lease file changes)" \
            systemctl enable --now virtgate-leases.path
    fi
    if systemctl is-enabled --quiet virtgate-sync.service 2>/dev/null; then
        say "virtgate-sync.service: already enabled"
    else
        act "run systemctl enable virtgate-sync.service (virtgate sync at boot, after UFW and libvirt)" \
            "virtgate-sync.service: enabled; it runs virtgate sync at boot (not now: run 'virtgate sync' to apply the running guests' rules at once)" \
            systemctl enable virtgate-sync.service
    fi
}

# step_after_init: virtgate's block in UFW's after.init, which UFW runs on enable, disable and reload.
step_after_init() {
    if [ ! -d "$UFW_DIR" ]; then
        say "UFW: $UFW_DIR does not exist; no after.init block (run install.sh again after installing UFW)"
        return 0
    fi
    local block new mode where
    block=$(mktemp); new=$(mktemp)
    render "$SHIPPED_BLOCK" >"$block"
    if [ ! -e "$AFTER_INIT" ] && [ ! -L "$AFTER_INIT" ]; then
        after_init_skeleton >"$new.skel"
        with_block "$new.skel" "$block" >"$new"
        rm -f "$new.skel"
        act "create $AFTER_INIT (mode 0755; UFW has none) with virtgate's block: virtgate reapply on start, stop and flush-all" \
            "ufw: created $AFTER_INIT (mode 0755; there was none) with virtgate's block" \
            install -m 0755 "$new" "$AFTER_INIT"
        record_add after-init created
        rm -f "$block" "$new"
        return 0
    fi
    [ -f "$AFTER_INIT" ] && [ ! -L "$AFTER_INIT" ] \
        || { rm -f "$block" "$new"; die "$AFTER_INIT is not a regular file: add the block in $SHIPPED_BLOCK yourself"; }
    where=$(block_lines "$AFTER_INIT")
    if [ "$where" = bad ]; then
        rm -f "$block" "$new"
        die "$AFTER_INIT has a broken virtgate block (the lines '$BLOCK_BEGIN' and '$BLOCK_END' must each appear once, in that order): fix it, then run install.sh again"
    fi
    with_block "$AFTER_INIT" "$block" >"$new"
    if cmp -s "$new" "$AFTER_INIT"; then
        say "ufw: $AFTER_INIT already has virtgate's block"
    elif [ "$where" = none ]; then
        # A last line without a newline gets one; uninstall takes it away again.
        if [ -s "$AFTER_INIT" ] && [ "$(tail -c 1 "$AFTER_INIT" | od -An -c | tr -d ' ')" != '\n' ]; then
            record_add after-init no-final-newline
        fi
        act "add virtgate's block to $AFTER_INIT (virtgate reapply on start, stop and flush-all; the rest is kept)" \
            "ufw: added virtgate's block to $AFTER_INIT (the rest is kept)" replace_file "$AFTER_INIT" "$new"
    else
        act "update virtgate's block in $AFTER_INIT" "ufw: updated virtgate's block in $AFTER_INIT" \
            replace_file "$AFTER_INIT" "$new"
    fi
    rm -f "$block" "$new"
    # UFW runs after.init only when it is executable; ufw's package installs it with mode 0640.
    mode=$(stat -c %a "$AFTER_INIT")
    if (( (8#$mode & 8#111) == 0 )); then
        act "make $AFTER_INIT executable ($mode -> $(exec_mode "$mode")): UFW runs it only then" \
            "ufw: made $AFTER_INIT executable ($mode -> $(exec_mode "$mode")): UFW runs it only then" \
            chmod "$(exec_mode "$mode")" "$AFTER_INIT"
        record_add after-init-mode "$mode"
    fi
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

# un_units: stops and disables the units, removes their files, and has systemd re-read its units.
un_units() {
    local u target any=no
    for u in "${UNITS[@]}"; do
        if [ -e "$SYSTEMD_DIR/$u" ] || [ -L "$SYSTEMD_DIR/$u" ]; then any=yes; fi
    done
    if [ "$any" = no ]; then
        say "systemd units: none of virtgate's in $SYSTEMD_DIR"
        return 0
    fi
    if systemd_running; then
        # The path unit first: no reapply may start while the rest goes.
        for u in virtgate-leases.path virtgate-sync.service; do
            if systemctl is-enabled --quiet "$u" 2>/dev/null || systemctl is-active --quiet "$u" 2>/dev/null; then
                act "run systemctl disable --now $u" "$u: disabled and stopped" systemctl disable --now "$u"
            fi
        done
        if systemctl is-active --quiet virtgate-reapply.service 2>/dev/null; then
            act "run systemctl stop virtgate-reapply.service" "virtgate-reapply.service: stopped" \
                systemctl stop virtgate-reapply.service
        fi
    else
        # Without a running systemd, the links "enable" made are removed by hand.
        for u in "${UNITS[@]}"; do
            for target in "$SYSTEMD_DIR"/*.wants/"$u"; do
                if [ -L "$target" ]; then act_remove "remove $target" "removed $target" "$target"; fi
            done
        done
    fi
    for u in "${UNITS[@]}"; do
        target=$SYSTEMD_DIR/$u
        if [ -e "$target" ] || [ -L "$target" ]; then
            UNITS_CHANGED=yes
            act_remove "remove $target" "removed unit $target" "$target"
        fi
    done
    if systemd_running; then
        act "run systemctl daemon-reload" "systemd: re-read its units (daemon-reload)" systemctl daemon-reload
    fi
    return 0
}

# un_after_init: removes exactly virtgate's block from UFW's after.init (and what install.sh changed
# besides: the mode, a final newline, or the whole file it created).
un_after_init() {
    local where rest mode
    if [ ! -f "$AFTER_INIT" ] || [ -L "$AFTER_INIT" ]; then
        say "ufw: no $AFTER_INIT"
        record_clear_after_init
        return 0
    fi
    where=$(block_lines "$AFTER_INIT")
    if [ "$where" = none ]; then
        say "ufw: $AFTER_INIT has no virtgate block"
        record_clear_after_init
        return 0
    fi
    [ "$where" = bad ] && die "$AFTER_INIT has a broken virtgate block (the lines '$BLOCK_BEGIN' and '$BLOCK_END' must each appear once, in that order): remove it by hand, then run install.sh --uninstall again"
    rest=$(mktemp)
    without_block "$AFTER_INIT" >"$rest"
    if record_has after-init created && cmp -s "$rest" <(after_init_skeleton); then
        [ "$DRY_RUN" = yes ] && WOULD_REMOVE+=("$AFTER_INIT")
        act "remove $AFTER_INIT (install.sh created it; nothing else was added)" \
            "ufw: removed $AFTER_INIT (install.sh created it; nothing else was added)" rm -f "$AFTER_INIT"
    else
        if record_has after-init no-final-newline && [ -s "$rest" ]; then
            truncate -s -1 "$rest"
        fi
        act "remove virtgate's block from $AFTER_INIT (the rest is kept)" \
            "ufw: removed virtgate's block from $AFTER_INIT (the rest is kept)" replace_file "$AFTER_INIT" "$rest"
        mode=$(record_get after-init-mode | tail -n 1)
        if [ -n "$mode" ] && [ "$(stat -c %a "$AFTER_INIT")" = "$(exec_mode "$mode")" ]; then
            act "restore the mode of $AFTER_INIT ($mode)" "ufw: $AFTER_INIT has mode $mode again" \
                chmod "$mode" "$AFTER_INIT"
        fi
        record_has after-init created && say "ufw: kept $AFTER_INIT: install.sh created it, but it was changed since"
    fi
    rm -f "$rest"
    record_clear_after_init
}
record_clear_after_init() {
    local mode
    record_del after-init created
    record_del after-init no-final-newline
    for mode in $(record_get after-init-mode); do record_del after-init-mode "$mode"; done
}

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
    step_units
    step_after_init
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
    # For the same reason the lease watcher and UFW's after.init block go before the flush.
    un_units
    un_after_init
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
