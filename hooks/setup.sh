# setup.sh: what virtgate's two installers share, sourced by install.sh and, installed as
# /usr/share/virtgate/setup.sh, by the Debian package's maintainer scripts: the hook links (a hook that
# is not virtgate's is kept; virtgate then goes into qemu.d/ or network.d/), virtgate's block in UFW's
# after.init, libvirt's reload, and their removal with every virtgate rule (virtgate flush).
#
# The caller sets, before it calls a step (each a path unless said otherwise):
#   BIN            the installed binary the hooks link to (/usr/local/sbin/virtgate, /usr/sbin/virtgate)
#   HOOKS_DIR      libvirt's hook directory (/etc/libvirt/hooks)
#   UFW_DIR        /etc/ufw
#   STATE_DIR      virtgate's state (/run/virtgate)
#   RUN_LIBVIRT    /run/libvirt
#   RECORD         the file listing what this installer created ("KEY VALUE" lines, see record_get)
#   SHIPPED_BLOCK  hooks/ufw-after.init.sh as shipped
#   DRY_RUN        yes or no
#   WHO            who created something, in messages: "install.sh", "the virtgate package"
#   AGAIN          how to run this installer again: "run install.sh again"
#   UNDO_AGAIN     how to run the removal again: "run install.sh --uninstall again"
#   PROG           the prefix of error messages ("install.sh")
#   CREATOR        names the creator in an after.init made from scratch ("virtgate's install.sh")
# and reads CHANGED (a count), HOOKS_CHANGED (yes/no) and WOULD_REMOVE (an array) back.
# Other virtgate binaries' paths (OTHER_BINS) count as virtgate's when a hook is linked: the hook of
# one installer is taken over by the other rather than kept as a foreign hook.

BLOCK_BEGIN="# BEGIN virtgate"
BLOCK_END="# END virtgate"
DRIVERS=(qemu network)
DAEMONS=(libvirtd virtqemud virtnetworkd)
OTHER_BINS=(/usr/local/sbin/virtgate /usr/sbin/virtgate)
CHANGED=${CHANGED:-0}
HOOKS_CHANGED=${HOOKS_CHANGED:-no}
WOULD_REMOVE=()

say() { printf '%s\n' "$*"; }
die() { printf '%s: error: %s\n' "${PROG:-virtgate}" "$*" >&2; exit 1; }
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

# ---------------------------------------------------------------------------------------------------
# helpers

sha() { sha256sum "$1" | cut -d' ' -f1; }

# is_ours PATH: PATH is a symlink to the installed virtgate binary.
is_ours() {
    [ -L "$1" ] || return 1
    [ "$(readlink "$1")" = "$BIN" ] && return 0
    [ -e "$BIN" ] && [ "$1" -ef "$BIN" ]
}

# is_virtgate PATH: PATH is a symlink to this binary or to virtgate as the other installer puts it
# (install.sh's /usr/local/sbin/virtgate, the package's /usr/sbin/virtgate). Only linking takes such a
# hook over; removal removes only this installer's own links (is_ours).
is_virtgate() {
    is_ours "$1" && return 0
    [ -L "$1" ] || return 1
    local target other
    target=$(readlink "$1")
    for other in "${OTHER_BINS[@]}"; do [ "$target" = "$other" ] && return 0; done
    return 1
}

# The record ($RECORD) lists what this installer created, one "KEY VALUE" a line:
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
    [ -d "${RECORD%/*}" ] || make_dir "${RECORD%/*}"
    printf '%s %s\n' "$1" "$2" >>"$RECORD"
}
record_del() { # KEY VALUE
    [ "$DRY_RUN" = yes ] && return 0
    [ -f "$RECORD" ] || return 0
    { grep -vxF "$1 $2" "$RECORD" || true; } >"$RECORD.new"
    mv -f "$RECORD.new" "$RECORD"
}

# make_dir DIR: creates DIR, and records that this installer did, so that uninstall may remove it when empty.
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

# remove_dir_if_ours DIR: removes DIR if this installer created it and it is (or would be) empty.
remove_dir_if_ours() {
    record_has dir "$1" || return 0
    if [ ! -d "$1" ]; then record_del dir "$1"; return 0; fi
    if ! empty_after_removals "$1"; then
        say "kept $1/: $WHO created it, but it is not empty"
        return 0
    fi
    [ "$DRY_RUN" = yes ] && WOULD_REMOVE+=("$1")
    act "remove $1/ (created by $WHO, now empty)" "removed $1/ (created by $WHO, now empty)" rmdir "$1"
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

# The after.init that virtgate creates when UFW has none (UFW's own template, shortened, plus
# "exit 0"); virtgate's block goes in before the "exit 0". Uninstall removes the file again while the
# rest of it is still exactly this.
after_init_skeleton() {
    sed "s|@CREATOR@|$CREATOR|" <<'SKELETON'
#!/bin/sh
#
# after.init: if executable, called by ufw-init. See 'man ufw-framework' for
#             details. Created by @CREATOR@, because there was none.
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

step_hooks() {
    make_dir "$HOOKS_DIR"
    local d hook dir version
    for d in "${DRIVERS[@]}"; do
        hook=$HOOKS_DIR/$d
        dir=$HOOKS_DIR/$d.d
        if { [ ! -e "$hook" ] && [ ! -L "$hook" ]; } || is_virtgate "$hook"; then
            if is_ours "$hook" && [ "$(readlink "$hook")" = "$BIN" ]; then
                say "hook $hook: already linked to $BIN"
            else
                if ! is_ours "$hook" && [ -L "$hook" ]; then
                    say "hook $hook: was virtgate at $(readlink "$hook"), the other installer's; $BIN takes it over"
                fi
                HOOKS_CHANGED=yes
                act "link $hook -> $BIN" "hook $hook -> $BIN: linked" new_link "$hook"
            fi
            # virtgate is the main hook now: a link left in <d>.d/ by an earlier install would run it twice.
            if is_virtgate "$dir/virtgate"; then
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
        elif is_virtgate "$dir/virtgate"; then
            HOOKS_CHANGED=yes
            act "link $dir/virtgate -> $BIN (it was $(readlink "$dir/virtgate"))" \
                "hook $dir/virtgate -> $BIN: linked (it was $(readlink "$dir/virtgate"))" new_link "$dir/virtgate"
        elif [ -e "$dir/virtgate" ] || [ -L "$dir/virtgate" ]; then
            die "$dir/virtgate exists and is not a link to $BIN: move it away, then $AGAIN"
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

# step_after_init: virtgate's block in UFW's after.init, which UFW runs on enable, disable and reload.
step_after_init() {
    if [ ! -d "$UFW_DIR" ]; then
        say "UFW: $UFW_DIR does not exist; no after.init block ($AGAIN after installing UFW)"
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
        die "$AFTER_INIT has a broken virtgate block (the lines '$BLOCK_BEGIN' and '$BLOCK_END' must each appear once, in that order): fix it, then $AGAIN"
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

# ---------------------------------------------------------------------------------------------------
# removal steps

# un_after_init: removes exactly virtgate's block from UFW's after.init (and what this installer changed
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
    [ "$where" = bad ] && die "$AFTER_INIT has a broken virtgate block (the lines '$BLOCK_BEGIN' and '$BLOCK_END' must each appear once, in that order): remove it by hand, then $UNDO_AGAIN"
    rest=$(mktemp)
    without_block "$AFTER_INIT" >"$rest"
    if record_has after-init created && cmp -s "$rest" <(after_init_skeleton); then
        [ "$DRY_RUN" = yes ] && WOULD_REMOVE+=("$AFTER_INIT")
        act "remove $AFTER_INIT ($WHO created it; nothing else was added)" \
            "ufw: removed $AFTER_INIT ($WHO created it; nothing else was added)" rm -f "$AFTER_INIT"
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
        record_has after-init created && say "ufw: kept $AFTER_INIT: $WHO created it, but it was changed since"
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

un_state() {
    if [ -e "$STATE_DIR" ]; then
        act "remove $STATE_DIR/" "removed $STATE_DIR/" rm -rf "$STATE_DIR"
    else
        say "state $STATE_DIR/: not present"
    fi
}


# ---------------------------------------------------------------------------------------------------
# The Debian package's maintainer scripts: postinst runs package_configure, prerm package_remove.

# package_settings: the package's paths and words. The environment moves none of them: whatever
# VIRTGATE_* variables the admin's shell has, the binary acts on the system's config and state.
package_settings() {
    local v
    for v in $(compgen -e); do
        case $v in VIRTGATE_*) unset "$v" ;; esac
    done
    BIN=/usr/sbin/virtgate
    HOOKS_DIR=/etc/libvirt/hooks
    UFW_DIR=/etc/ufw
    AFTER_INIT=$UFW_DIR/after.init
    STATE_DIR=/run/virtgate
    RUN_LIBVIRT=/run/libvirt
    RECORD=/var/lib/virtgate/installed
    SHIPPED_BLOCK=/usr/share/virtgate/ufw-after.init.sh
    DRY_RUN=no
    PROG=virtgate
    WHO="the virtgate package"
    CREATOR="virtgate's Debian package"
    AGAIN="run dpkg-reconfigure virtgate"
    UNDO_AGAIN="remove the package again"
    export VIRTGATE_CONFIG=/etc/virtgate/virtgate.conf
    export VIRTGATE_STATE_DIR=$STATE_DIR
    export VIRTGATE_NETWORK_RUN_DIR=$RUN_LIBVIRT/network
}

# package_configure: the hook links, the after.init block, libvirt's reload (postinst configure).
package_configure() {
    package_settings
    mkdir -p "${RECORD%/*}"
    step_hooks
    step_after_init
    step_reload
    if [ -e /usr/local/sbin/virtgate ]; then
        say "warning: install.sh's virtgate is installed too (/usr/local/sbin/virtgate; its units in /etc/systemd/system override the package's): run install.sh --uninstall from the source tree, then dpkg-reconfigure virtgate"
    fi
}

# package_remove: as install.sh --uninstall, but for what the package made by hand: the after.init block
# and the hook links first (no hook may re-add rules after the flush), every virtgate rule (virtgate
# flush), the state, libvirt's reload (prerm remove; debhelper's part has stopped the units before).
package_remove() {
    package_settings
    un_after_init
    un_hooks
    un_rules
    un_state
    step_reload
}
