#!/usr/bin/env bash
# install.sh: build virtgate and install it as libvirt's qemu and network hook (Debian/Ubuntu, as root).
#
#   ./install.sh              install, or bring an existing install up to date (idempotent)
#   ./install.sh --dry-run    print each step it would do; change nothing
#   ./install.sh --uninstall  remove virtgate's rules, hooks, binary, unchanged config and state
#   ./install.sh --build DIR  only build: the binary, its man page and shell completions into DIR (no root
#                             needed; debian/rules builds the Debian package with it)
#   ./install.sh --help
#
# Environment (mostly for tests):
#   VIRTGATE_BINARY=/path       install this binary instead of building one
#   VIRTGATE_MANPAGE=/path      with VIRTGATE_BINARY: its man page (without it, none is installed)
#   VIRTGATE_SKIP_APT=1         do not install packages
#   VIRTGATE_BUILD_DIR=/path    swift build --scratch-path (default: swift's own .build)
#   VIRTGATE_HOOKS_DIR          default /etc/libvirt/hooks
#   VIRTGATE_SBIN               default /usr/local/sbin
#   VIRTGATE_ETC                default /etc/virtgate
#   VIRTGATE_RUN_LIBVIRT        default /run/libvirt
#   VIRTGATE_STATE_DIR          default /run/virtgate
#   VIRTGATE_SYSTEMD_DIR        default /etc/systemd/system
#   VIRTGATE_UFW_DIR            default /etc/ufw
#   VIRTGATE_DATA_DIR           default /usr/local/share (the directory beside VIRTGATE_SBIN): the man
#                               page and the bash, zsh and fish completions go below it
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
PACKAGES=(libvirt-dev libexpat1-dev nettle-dev pkg-config iptables)
# The man page and the shell completions, where man, bash-completion, zsh and fish look by default for
# files below /usr/local/share.
DATA_DIR=${VIRTGATE_DATA_DIR:-${SBIN%/*}/share}
MAN_PAGE=$DATA_DIR/man/man8/virtgate.8
BASH_COMPLETION=$DATA_DIR/bash-completion/completions/virtgate
ZSH_COMPLETION=$DATA_DIR/zsh/site-functions/_virtgate
FISH_COMPLETION=$DATA_DIR/fish/vendor_completions.d/virtgate.fish

# The virtgate commands this script runs read the same files as the hooks.
export VIRTGATE_CONFIG=${VIRTGATE_CONFIG:-$CONF}
export VIRTGATE_STATE_DIR=$STATE_DIR
export VIRTGATE_NETWORK_RUN_DIR=${VIRTGATE_NETWORK_RUN_DIR:-$RUN_LIBVIRT/network}

DRY_RUN=no
MODE=install
BUILD_OUT=""        # --build DIR
CHANGED=0           # changes made (or, in --dry-run, that would be made)
HOOKS_CHANGED=no    # a hook link was added or removed: libvirt must re-read its hooks
UNITS_CHANGED=no    # a unit file was added, changed or removed: systemd must re-read them
WOULD_REMOVE=()     # --dry-run: paths that would be removed (to tell which directories would end up empty)
WOULD_CREATE=()     # --dry-run: directories that would be created (each named once)

# The steps both installers share (hook links, UFW's after.init, libvirt's reload, their removal):
# hooks/setup.sh, which the Debian package installs as /usr/share/virtgate/setup.sh.
[ -f "$SRC_DIR/hooks/setup.sh" ] \
    || { printf 'install.sh: error: %s\n' "$SRC_DIR/hooks/setup.sh is missing: run install.sh from the virtgate source tree" >&2; exit 1; }
PROG=install.sh
WHO=install.sh
CREATOR="virtgate's install.sh"
AGAIN="run install.sh again"
UNDO_AGAIN="run install.sh --uninstall again"
# shellcheck source=hooks/setup.sh
. "$SRC_DIR/hooks/setup.sh"

usage() {
    cat <<EOF
Usage: $0 [--dry-run] [--uninstall] [--build DIR] [--help]

Install (default): apt packages (${PACKAGES[*]}), a static release build of virtgate as
$BIN with its man page and bash, zsh and fish completions (below
$DATA_DIR), hook links in $HOOKS_DIR (qemu, network; an existing
hook that is not virtgate's is kept and virtgate goes into qemu.d/ or network.d/ instead), a commented
$CONF unless one exists, the systemd units ${UNITS[*]}
in $SYSTEMD_DIR (virtgate-leases.path started, virtgate-sync.service enabled for the next
boot), a block in $AFTER_INIT that runs 'virtgate reapply' (when UFW is installed), a reload of
libvirt, and a dry run of the rules for the networks and guests running now. Running it again changes
nothing.

--uninstall  remove every virtgate rule, the units, the after.init block, virtgate's hook links, the
             binary, its man page and completions, the config (only if unchanged) and $STATE_DIR;
             then reload libvirt.
--dry-run    print each step instead of doing it.
--build DIR  only build the release binary, its man page and its completions into DIR (virtgate,
             virtgate.8, completions/virtgate.bash, _virtgate, virtgate.fish); installs nothing and
             needs no root. debian/rules builds the Debian package with it.
EOF
}

while [ $# -gt 0 ]; do
    case $1 in
        --dry-run) DRY_RUN=yes ;;
        --uninstall) MODE=uninstall ;;
        --build)
            [ $# -ge 2 ] && [ -n "$2" ] || die "--build needs a directory"
            MODE=build BUILD_OUT=$2
            shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
    shift
done

if [ "$MODE" = build ]; then
    [ "$DRY_RUN" = no ] || die "--build and --dry-run do not go together"
elif [ "$(id -u)" -ne 0 ]; then
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

# step_build: sets SOURCE_BINARY, the binary to install, and SOURCE_MANPAGE, its man page (both empty
# in --dry-run without VIRTGATE_BINARY; SOURCE_MANPAGE empty with VIRTGATE_BINARY but no VIRTGATE_MANPAGE).
step_build() {
    SOURCE_BINARY=""
    SOURCE_MANPAGE=""
    if [ -n "${VIRTGATE_BINARY:-}" ]; then
        [ -f "$VIRTGATE_BINARY" ] && [ -x "$VIRTGATE_BINARY" ] \
            || die "VIRTGATE_BINARY=$VIRTGATE_BINARY is not an executable file"
        "$VIRTGATE_BINARY" --version >/dev/null 2>&1 || die "$VIRTGATE_BINARY does not run (--version failed)"
        SOURCE_BINARY=$VIRTGATE_BINARY
        if [ -n "${VIRTGATE_MANPAGE:-}" ]; then
            [ -f "$VIRTGATE_MANPAGE" ] || die "VIRTGATE_MANPAGE=$VIRTGATE_MANPAGE is not a file"
            SOURCE_MANPAGE=$VIRTGATE_MANPAGE
        elif [ "$MODE" = build ]; then
            die "--build with VIRTGATE_BINARY needs VIRTGATE_MANPAGE, its man page"
        fi
        say "build: skipped, installing $SOURCE_BINARY (VIRTGATE_BINARY)"
        return 0
    fi
    if [ -d /opt/swift/usr/bin ] && [[ ":$PATH:" != *":/opt/swift/usr/bin:"* ]]; then
        PATH=/opt/swift/usr/bin:$PATH
    fi
    command -v swift >/dev/null \
        || die "swift not found on PATH nor in /opt/swift/usr/bin: install the Swift 6 toolchain (https://www.swift.org/install/linux/), then run install.sh again"
    local args=(-c release --static-swift-stdlib --package-path "$SRC_DIR")
    # Package.swift sets this for virtgate's own modules; here it reaches the dependencies too. Their
    # specialisations of the standard library's generics (a [String: String]'s growth, say) otherwise
    # name types by mangled name, and the first such use in a hook run demangles it and scans every
    # protocol conformance of the binary: 0.3M of a 4.5M-instruction `start`.
    args+=(-Xswiftc -Xfrontend -Xswiftc -disable-concrete-type-metadata-mangled-name-accessors)
    # No $ORIGIN run path: the binary has no library of its own beside it, and with one the loader
    # looked for libexpat in ten subdirectories of the binary's directory on every run first.
    args+=(--disable-local-rpath)
    if [ -n "${VIRTGATE_BUILD_DIR:-}" ]; then args+=(--scratch-path "$VIRTGATE_BUILD_DIR"); fi
    if [ "$DRY_RUN" = yes ]; then
        say "would build: swift build ${args[*]}"
        return 0
    fi
    say "build: swift build ${args[*]} (minutes the first time)"
    local log
    log=$(mktemp /tmp/virtgate-build.XXXXXX)
    if ! swift_build "${args[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "swift build failed (full log: $log)"
    fi
    rm -f "$log"
    SOURCE_BINARY="$(swift_build "${args[@]}" --show-bin-path)/virtgate"
    [ -x "$SOURCE_BINARY" ] || die "swift build produced no $SOURCE_BINARY"
    "$SOURCE_BINARY" --version >/dev/null 2>&1 || die "$SOURCE_BINARY does not run (--version failed)"
    say "build: $SOURCE_BINARY"
    build_manual "${VIRTGATE_BUILD_DIR:-$SRC_DIR/.build}"
}

# swift_build ARGS...: `swift build` with the toolchain's temporary files in a directory of their own, removed
# afterwards: SwiftPM leaves empty TemporaryDirectory.* directories behind (six for a build with nothing to do).
swift_build() {
    local scratch status=0
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/virtgate-swift.XXXXXX")
    TMPDIR=$scratch swift build "$@" || status=$?
    rm -rf "$scratch"
    return "$status"
}

# build_manual SCRATCH: sets SOURCE_MANPAGE to the man page of SOURCE_BINARY, written by
# swift-argument-parser's generate-manual (the tool behind its plugin, `swift package plugin
# generate-manual`), built from the checkout in SCRATCH and run on the binary just built, in section 8
# (an administrator's command in /usr/sbin or /usr/local/sbin). The plugin itself would build every
# product once more, without --static-swift-stdlib: a second release build.
# The page's date is SOURCE_DATE_EPOCH's (set by dpkg-buildpackage), else the last commit's, else today.
build_manual() {
    local scratch=$1 sap tool date log out
    sap=$scratch/checkouts/swift-argument-parser
    [ -f "$sap/Package.swift" ] \
        || die "no swift-argument-parser checkout in $scratch/checkouts: the man page cannot be generated"
    local args=(--package-path "$sap" --scratch-path "$scratch/generate-manual" --product generate-manual)
    log=$(mktemp /tmp/virtgate-build.XXXXXX)
    if ! swift_build "${args[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "building swift-argument-parser's generate-manual failed (full log: $log)"
    fi
    rm -f "$log"
    tool="$(swift_build "${args[@]}" --show-bin-path)/generate-manual"
    if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
        date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)
    else
        date=$(git -C "$SRC_DIR" log -1 --format=%cs 2>/dev/null || true)
        [ -n "$date" ] || date=$(date -u +%F)
    fi
    out=$scratch/manual
    rm -rf "$out" && mkdir -p "$out"
    "$tool" "$SOURCE_BINARY" --date "$date" --section 8 --output-directory "$out" >/dev/null \
        || die "generate-manual failed on $SOURCE_BINARY"
    SOURCE_MANPAGE=$out/virtgate.8
    [ -s "$SOURCE_MANPAGE" ] || die "generate-manual wrote no $SOURCE_MANPAGE"
    say "build: $SOURCE_MANPAGE (generate-manual)"
}

# completions BINARY DIR: the bash, zsh and fish completion scripts the binary generates (swift-argument-
# parser's --generate-completion-script), as DIR/virtgate.bash, DIR/_virtgate and DIR/virtgate.fish. The
# bash script is sourced, never run: its "#!/bin/bash" line goes.
completions() {
    "$1" --generate-completion-script bash | sed '1{/^#!/d}' >"$2/virtgate.bash" \
        && "$1" --generate-completion-script zsh >"$2/_virtgate" \
        && "$1" --generate-completion-script fish >"$2/virtgate.fish" \
        && [ -s "$2/virtgate.bash" ] && [ -s "$2/_virtgate" ] && [ -s "$2/virtgate.fish" ] \
        || die "$1 --generate-completion-script failed"
}

# build_only DIR: --build: the binary, its man page and completions into DIR.
build_only() {
    mkdir -p "$1/completions" || die "cannot create $1/completions"
    install -m 0755 "$SOURCE_BINARY" "$1/virtgate" || die "cannot write $1/virtgate"
    install -m 0644 "$SOURCE_MANPAGE" "$1/virtgate.8" || die "cannot write $1/virtgate.8"
    completions "$1/virtgate" "$1/completions"
    say "built into $1: virtgate ($("$1/virtgate" --version 2>&1)), virtgate.8, completions/virtgate.bash, completions/_virtgate, completions/virtgate.fish"
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

# make_dirs DIR: make_dir for DIR and each missing directory above it, top down (each recorded). In
# --dry-run, a directory it would create is named once.
make_dirs() {
    if [ -z "$1" ] || [ -d "$1" ]; then return 0; fi
    local d
    for d in "${WOULD_CREATE[@]}"; do [ "$d" = "$1" ] && return 0; done
    make_dirs "${1%/*}"
    make_dir "$1"
    [ "$DRY_RUN" = no ] || WOULD_CREATE+=("$1")
}

# install_doc FILE TARGET WHAT: installs FILE as TARGET (mode 0644) unless it is there already.
install_doc() {
    if [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2" && [ "$(stat -c %a "$2")" = 644 ]; then
        say "$3 $2: already installed"
        return 0
    fi
    make_dirs "${2%/*}"
    local verb=installed
    { [ -e "$2" ] || [ -L "$2" ]; } && verb=updated
    act "install $2 ($3)" "$3 $2: $verb" install -m 0644 "$1" "$2"
}

# step_docs: the man page (man virtgate) and the shell completions (virtgate <TAB>).
step_docs() {
    if [ -z "$SOURCE_BINARY" ]; then
        CHANGED=$((CHANGED + 1))
        say "would install the man page $MAN_PAGE and the completions $BASH_COMPLETION, $ZSH_COMPLETION, $FISH_COMPLETION"
        return 0
    fi
    if [ -n "$SOURCE_MANPAGE" ]; then
        install_doc "$SOURCE_MANPAGE" "$MAN_PAGE" "man page"
    else
        say "man page: not installed (VIRTGATE_BINARY without VIRTGATE_MANPAGE)"
    fi
    local tmp
    tmp=$(mktemp -d)
    completions "$SOURCE_BINARY" "$tmp"
    install_doc "$tmp/virtgate.bash" "$BASH_COMPLETION" "bash completion"
    install_doc "$tmp/_virtgate" "$ZSH_COMPLETION" "zsh completion"
    install_doc "$tmp/virtgate.fish" "$FISH_COMPLETION" "fish completion"
    rm -rf "$tmp"
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
un_binary() {
    if [ -e "$BIN" ] || [ -L "$BIN" ]; then
        act_remove "remove $BIN" "removed $BIN" "$BIN"
    else
        say "binary $BIN: not installed"
    fi
    [ -d "$SBIN" ] && remove_dir_if_ours "$SBIN"
    return 0
}

# un_docs: the man page and the completions, and the directories install.sh made for them once empty.
un_docs() {
    local f d any=no
    for f in "$MAN_PAGE" "$BASH_COMPLETION" "$ZSH_COMPLETION" "$FISH_COMPLETION"; do
        if [ -e "$f" ] || [ -L "$f" ]; then
            any=yes
            act_remove "remove $f" "removed $f" "$f"
        fi
    done
    [ "$any" = yes ] || say "man page and completions: not installed"
    for d in man/man8 man bash-completion/completions bash-completion zsh/site-functions zsh \
        fish/vendor_completions.d fish; do
        remove_dir_if_ours "$DATA_DIR/$d"
    done
    remove_dir_if_ours "$DATA_DIR"
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

# ---------------------------------------------------------------------------------------------------

[ "$DRY_RUN" = yes ] && say "dry run: nothing is changed; each step says what it would do"

if [ "$MODE" = build ]; then
    step_build
    build_only "$BUILD_OUT"
elif [ "$MODE" = install ]; then
    step_packages
    step_build
    step_binary
    step_docs
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
    un_docs
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
