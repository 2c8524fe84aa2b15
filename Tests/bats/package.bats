#!/usr/bin/env bats
# package.bats: the Debian package's lifecycle, with its maintainer scripts run for real by dpkg, and the
# man page and completions of both installers.
#
# dpkg runs in the network namespace vgt-pkg and in a private pid namespace (no real libvirt daemon can
# get a signal, and `virtgate flush` in prerm acts on that namespace's firewall only), in a mount namespace
# of its own where /etc, /usr and /var are overlays (the real directories the lower, never written; every
# change lands in this test's temp dir) and /run is an empty tmpfs holding /run/systemd/system, so that
# the systemd parts of the maintainer scripts run: systemctl is a stand-in that records its calls
# (and calls libvirtd.service active, to see libvirt's reload) and policy-rc.d allows them. teardown_file
# checks that the real files, the real dpkg database and the root namespace's ruleset are unchanged.
#
# Run (as root, in a private mount namespace):
#   VIRTGATE_DEB=/path/virtgate_<version>_amd64.deb unshare --mount --propagation private -- bats --tap Tests/bats/package.bats
# Without VIRTGATE_DEB, setup_file builds the package first: dpkg-buildpackage -us -uc -b on a copy of the
# work tree in .build-deb/ (SwiftPM's scratch directory kept there for the next run; minutes).
# The previous version for the upgrade is the same package repacked with dpkg-deb as <version>~previous,
# with an older after.init block (one comment line less), which the upgrade must replace in place.
# Tests run in file order and build on each other.

bats_load_library bats-support
bats_load_library bats-assert
bats_load_library bats-file
load private_mount
load holder

NS=vgt-pkg
PKG_LOCK=/tmp/vgt-pkg.lock
PKG_TOOLS="dpkg dpkg-deb dpkg-query dpkg-reconfigure lintian ip unshare nsenter flock mount findmnt iptables-save ip6tables-save nft
    man gzip cmp sha256sum find stat tar git bash file ldd systemctl"
SYSTEM_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
SUBCOMMANDS="hook plan sync status forward reapply doctor flush"

# --------------------------------------------------------------------------------------------------
# The namespaces and the overlays.

# inns, start_holder, stop_holder: holder.bash.

# overlays: /etc, /usr and /var as overlays in the holder, /run an empty tmpfs; the stand-ins.
overlays() {
    local top
    for top in etc usr var; do
        mkdir -p "$TMP/ov/$top/up" "$TMP/ov/$top/work"
        inns mount -t overlay overlay \
            -o "lowerdir=/$top,upperdir=$TMP/ov/$top/up,workdir=$TMP/ov/$top/work" "/$top"
    done
    inns mount -t tmpfs -o size=16m,mode=0755 tmpfs /run
    inns mkdir -p /run/systemd/system /run/libvirt/network /run/lock
    # Nothing a hook or the flush logs reaches the real syslog.
    if [ -e /dev/log ]; then
        : >"$TMP/devlog"
        inns mount --bind "$TMP/devlog" /dev/log
    fi
    mkdir -p "$TMP/sysstate"
    : >"$SYSCALLS"
    touch "$TMP/sysstate/active.libvirtd.service"
    cat >"$TMP/systemctl" <<STUB
#!/bin/sh
# A stand-in for systemctl: records its arguments; a unit is enabled while a .wants/ link to it exists in
# /etc/systemd/system, active while a state file says so. What works on files only (--root=, as
# deb-systemd-helper's "preset" on a first install) is the real systemctl's, on the overlays.
echo "\$*" >>"$SYSCALLS"
case " \$* " in *" --root="*) exec "$TMP/systemctl.real" "\$@" ;; esac
cmd=; units=
for a; do
    case \$a in
        -*) ;;
        *) if [ -z "\$cmd" ]; then cmd=\$a; else units="\$units \$a"; fi ;;
    esac
done
st=$TMP/sysstate
for u in \$units; do
    case \$cmd in
        is-enabled)
            if ls /etc/systemd/system/*.wants/"\$u" >/dev/null 2>&1; then echo enabled; else echo disabled; exit 1; fi ;;
        is-active) [ -e "\$st/active.\$u" ] || exit 3 ;;
        start|restart|reload) touch "\$st/active.\$u" ;;
        stop) rm -f "\$st/active.\$u" ;;
    esac
done
exit 0
STUB
    chmod 0755 "$TMP/systemctl"
    cp /usr/bin/systemctl "$TMP/systemctl.real"
    inns install -m 0755 "$TMP/systemctl" /usr/bin/systemctl
    printf '#!/bin/sh\nexit 0\n' >"$TMP/policy-rc.d"
    inns install -m 0755 "$TMP/policy-rc.d" /usr/sbin/policy-rc.d
}

# --------------------------------------------------------------------------------------------------
# Running dpkg and looking at the host it changes.

# pkg ARGS...: dpkg ARGS in the holder with a plain root environment; sets RC, and OUT (its transcript).
pkg() {
    OUT=$(mktemp "$TMP/logs/dpkg.XXXXXX")
    RC=0
    inns env -i PATH="$SYSTEM_PATH" LC_ALL=C HOME=/root DEBIAN_FRONTEND=noninteractive \
        dpkg "$@" >"$OUT" 2>&1 </dev/null || RC=$?
}
dpkg_ok() { # dpkg_ok DESCRIPTION: the last pkg run succeeded; else shows its transcript
    if [ "$RC" -ne 0 ]; then
        sed 's/^/# /' "$OUT" >&2
        fail "$1 (dpkg exit $RC)"
    fi
}
said() { grep -qF -- "$1" "$OUT"; }

# calls_since MARK: the systemctl calls recorded since MARK (a line count), queries left out.
calls_mark() { wc -l <"$SYSCALLS"; }
calls_since() { tail -n +"$(($1 + 1))" "$SYSCALLS" | grep -vE '(^| )(is-enabled|is-active|--version)( |$)' || true; }

# upper_changes: every path the overlays hold that differs from the real file below it, as "KIND PATH":
# a whiteout (a removed real file), a new path, a changed type, mode, owner, content or link target. dpkg's
# own database and logs, and the caches its triggers rebuild (man-db's index), are left out.
upper_changes() {
    local top up rel p u
    for top in etc usr var; do
        up=$TMP/ov/$top/up
        while IFS= read -r rel; do
            p=/$top/$rel
            u=$up/$rel
            case $p in /var/lib/dpkg|/var/lib/dpkg/*|/var/log|/var/log/*|/var/cache|/var/cache/*) continue ;; esac
            if [ -c "$u" ] && [ "$(stat -c %t:%T "$u")" = 0:0 ]; then echo "removed $p"; continue; fi
            if [ ! -e "$p" ] && [ ! -L "$p" ]; then echo "new $p ($(stat -c '%F %a' "$u"))"; continue; fi
            if [ "$(stat -c '%F %a %u %g' "$u")" != "$(stat -c '%F %a %u %g' "$p")" ]; then
                echo "changed $p ($(stat -c '%F %a %u:%g' "$p") -> $(stat -c '%F %a %u:%g' "$u"))"
            elif [ -L "$u" ]; then
                [ "$(readlink "$u")" = "$(readlink "$p")" ] || echo "changed $p (link)"
            elif [ -f "$u" ]; then
                cmp -s "$u" "$p" || echo "changed $p (content)"
            fi
        done < <(cd "$up" && find . -mindepth 1 -printf '%P\n' | sort)
    done
}

# host_listing: what the package may touch, as the holder sees it: paths, types, link targets, modes
# and checksums (no times), and the whole of /etc without checksums.
host_listing() {
    inns sh -c '
        for d in /etc/libvirt /etc/virtgate /etc/ufw /etc/systemd/system /usr/sbin/virtgate /lib/systemd/system/virtgate-sync.service \
            /lib/systemd/system/virtgate-leases.path /lib/systemd/system/virtgate-reapply.service /usr/share/virtgate \
            /usr/share/doc/virtgate /usr/share/man/man8/virtgate.8.gz /usr/share/bash-completion/completions/virtgate \
            /usr/share/zsh/vendor-completions/_virtgate /usr/share/fish/vendor_completions.d/virtgate.fish \
            /var/lib/virtgate /var/lib/systemd/deb-systemd-helper-enabled /var/lib/systemd/deb-systemd-helper-masked \
            /run/virtgate /run/systemd; do
            if [ ! -e "$d" ] && [ ! -L "$d" ]; then echo "$d absent"; continue; fi
            find "$d" -printf "%p %y %l %m %U:%G\n" | sort
            find "$d" -type f -exec sha256sum {} + | sort -k2
        done
        find /etc -xdev -printf "%p %y %l %m\n" | sort'
}

# times PATH...: modification and change times (a rewrite with the same bytes shows here).
times() { inns stat -c '%n %Y %Z' "$@" 2>&1; }

# rules: the namespace's ruleset, counters stripped.
rules() {
    inns sh -c '{ iptables-save; ip6tables-save; nft list ruleset; } 2>/dev/null' | sed -e 's/\[[0-9]*:[0-9]*\]//' -e '/^#/d'
}

# network_hook: libvirt's network hook for the network vgtpkg, run as libvirt runs it.
network_hook() {
    inns env -i PATH="$SYSTEM_PATH" LC_ALL=C HOME=/ /etc/libvirt/hooks/network vgtpkg started begin - \
        <"$TMP/network-vgtpkg.xml" >"$TMP/logs/hook.out" 2>&1
}

# real_state: what must stay the same on the real machine.
real_state() {
    local p
    for p in /etc/libvirt /etc/virtgate /etc/ufw /etc/systemd/system /usr/sbin/virtgate /usr/share/virtgate \
        /lib/systemd/system/virtgate-sync.service /var/lib/virtgate /run/virtgate /usr/bin/systemctl /usr/sbin/policy-rc.d; do
        if [ -e "$p" ] || [ -L "$p" ]; then
            find "$p" -printf '%p %y %l %m %s %T@\n' 2>/dev/null | sort
            find "$p" -type f -exec sha256sum {} + 2>/dev/null | sort -k2
        else
            echo "$p absent"
        fi
    done
    dpkg-query -W -f='${Package} ${Status}\n' virtgate 2>&1 || true
    ls /var/lib/dpkg/info/ | grep '^virtgate' || true
    { iptables-save; ip6tables-save; nft list ruleset; } 2>/dev/null | sed -e 's/\[[0-9]*:[0-9]*\]//' -e '/^#/d'
}

# bash_completes LOAD WORDS...: the completions bash offers for "virtgate WORDS... <TAB>", after LOAD (a
# bash command that defines the completion), in the holder.
bash_completes() {
    local load=$1
    shift
    # shellcheck disable=SC2016 # expanded by the inner bash
    inns env -i PATH="$SYSTEM_PATH" HOME=/root bash -c '
        . /usr/share/bash-completion/bash_completion
        eval "$1"
        shift
        COMP_WORDS=(virtgate "$@" "")
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMP_LINE="${COMP_WORDS[*]}"
        COMP_POINT=${#COMP_LINE}
        spec=$(complete -p virtgate) || exit 1
        fn=${spec##*-F }
        fn=${fn%% *}
        "$fn" virtgate "" "${COMP_WORDS[COMP_CWORD - 1]}"
        printf "%s\n" "${COMPREPLY[@]}"' bash "$load" "$@"
}
# offers_all WANTED OFFERED: every word of WANTED is a line of OFFERED.
offers_all() {
    local w
    for w in $1; do grep -qxF -- "$w" <<<"$2" || return 1; done
}

# --------------------------------------------------------------------------------------------------

# build_deb: dpkg-buildpackage on a copy of the work tree (tracked and new files, not ignored ones) in
# .build-deb/src; SwiftPM's scratch directory stays in .build-deb/swift for the next run.
build_deb() {
    local build=$ROOT/.build-deb
    rm -rf "$build/src" "$build"/virtgate*.deb "$build"/virtgate_*
    mkdir -p "$build/src"
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -xf - -C "$build/src"
    (cd "$build/src" && VIRTGATE_BUILD_DIR=$build/swift nice -n 10 dpkg-buildpackage -us -uc -b) \
        >"$build/build.log" 2>&1 || { tail -n 30 "$build/build.log"; return 1; }
    DEB=$(ls "$build"/virtgate_*.deb | head -n 1)
}

setup_file() {
    ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
    export ROOT
    [ "$(id -u)" -eq 0 ] || fail "run as root: sudo unshare --mount --propagation private -- bats Tests/bats/package.bats"
    in_private_mount_namespace \
        || fail "not in a private mount namespace: run unshare --mount --propagation private -- bats Tests/bats/package.bats"
    local tool missing=()
    for tool in $PKG_TOOLS; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ -z "${VIRTGATE_DEB:-}" ] && ! command -v dpkg-buildpackage >/dev/null && missing+=(dpkg-buildpackage)
    [ -f /usr/share/bash-completion/bash_completion ] || missing+=(bash-completion)
    [ -f /etc/ufw/after.init ] || missing+=("ufw (/etc/ufw/after.init)")
    [ ${#missing[@]} -eq 0 ] || fail "missing tools: ${missing[*]} (sudo bash Tests/run.sh --deps)"

    # The fixed namespace name: concurrent runs of this file wait for each other.
    exec 8>"$PKG_LOCK"
    flock -w 900 8 || fail "another package.bats run holds $PKG_LOCK"

    TMP=$(mktemp -d /tmp/vgt-pkgtest.XXXXXX)
    chmod 0755 "$TMP"
    mkdir -p "$TMP/logs"
    SYSCALLS=$TMP/systemctl.calls
    export TMP SYSCALLS
    real_state >"$TMP/real-before"

    if [ -n "${VIRTGATE_DEB:-}" ]; then
        [ -f "$VIRTGATE_DEB" ] || fail "VIRTGATE_DEB=$VIRTGATE_DEB is not a file"
        DEB=$VIRTGATE_DEB
    else
        build_deb || fail "dpkg-buildpackage failed (log: $ROOT/.build-deb/build.log)"
    fi
    # Private copies: a rebuild during the run cannot swap the package under the test.
    cp "$DEB" "$TMP/new.deb"
    NEW_VERSION=$(dpkg-deb -f "$TMP/new.deb" Version)
    OLD_VERSION=$NEW_VERSION~previous
    # The previous version: the same files, an older after.init block (its second comment line missing).
    dpkg-deb -R "$TMP/new.deb" "$TMP/old"
    sed -i "s/^Version: .*/Version: $OLD_VERSION/" "$TMP/old/DEBIAN/control"
    sed -i '3d' "$TMP/old/usr/share/virtgate/ufw-after.init.sh"
    (cd "$TMP/old" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
    dpkg-deb --root-owner-group -b "$TMP/old" "$TMP/old.deb" >/dev/null
    rm -rf "$TMP/old"
    dpkg-deb -x "$TMP/new.deb" "$TMP/x"
    export DEB NEW_VERSION OLD_VERSION

    cat >"$TMP/network-vgtpkg.xml" <<'XML'
<hookData>
  <network>
    <name>vgtpkg</name>
    <uuid>7c1d2e3f-4a5b-4c6d-8e7f-000000000232</uuid>
    <forward mode='nat'/>
    <bridge name='vgtp-br0' stp='on' delay='0'/>
    <ip address='10.232.0.1' netmask='255.255.255.0'/>
  </network>
</hookData>
XML

    start_holder
    export HOLDER UNSHARE_PID
    inns readlink /proc/self/ns/net >"$TMP/holder-net"
    overlays
    # The host as the admin had it: a foreign qemu hook, UFW's after.init with an admin's line.
    inns mkdir -p /etc/libvirt/hooks
    printf '#!/bin/sh\n# the admin'"'"'s own qemu hook\nexit 0\n' >"$TMP/foreign-hook"
    inns install -m 0750 "$TMP/foreign-hook" /etc/libvirt/hooks/qemu
    inns sh -c 'printf "# the admin'"'"'s line\n" >>/etc/ufw/after.init'
}

teardown_file() {
    local status=0
    stop_holder
    if [ -n "${TMP:-}" ] && [ -f "$TMP/real-before" ]; then
        local after
        after=$(real_state)
        if [ "$(cat "$TMP/real-before")" != "$after" ]; then
            diff "$TMP/real-before" <(echo "$after") | head -20
            echo "real machine changed: /etc/libvirt, /etc/virtgate, /etc/ufw, /etc/systemd/system, virtgate's files, the dpkg database, the root-namespace ruleset"
            status=1
        fi
    fi
    [ -z "${TMP:-}" ] || rm -rf "$TMP"
    return "$status"
}

# --------------------------------------------------------------------------------------------------

@test "prerequisites: network namespace vgt-pkg, a pid namespace, overlays on /etc /usr /var, the stand-ins" {
    assert_equal "$(inns readlink /proc/self/ns/net)" "$(cat "$TMP/holder-net")"
    assert_equal "$(stat -L -c %i /run/netns/$NS)" "$(inns stat -L -c %i /proc/self/ns/net)"
    [ "$(inns readlink /proc/self/ns/pid)" != "$(readlink /proc/self/ns/pid)" ] || fail "dpkg would run in the real pid namespace"
    run inns pidof libvirtd virtqemud virtnetworkd
    assert_output ""
    local top
    for top in etc usr var; do
        [ "$(inns findmnt -n -o FSTYPE "/$top")" = overlay ] || fail "/$top is no overlay in the holder"
    done
    [ "$(inns findmnt -n -o FSTYPE /run)" = tmpfs ] || fail "/run is no tmpfs in the holder"
    inns cmp -s /usr/bin/systemctl "$TMP/systemctl" || fail "systemctl is not the stand-in in the holder"
    cmp -s /usr/bin/systemctl "$TMP/systemctl" && fail "the real systemctl was replaced"
    run inns dpkg-query -W -f='${Status}' virtgate
    refute_output --partial "installed"
}

@test "the package: its files, the conffile, one version, the units and the block for /usr/sbin/virtgate" {
    run dpkg-deb -c "$TMP/new.deb"
    assert_success
    local f
    for f in ./usr/sbin/virtgate ./etc/virtgate/virtgate.conf ./lib/systemd/system/virtgate-sync.service \
        ./lib/systemd/system/virtgate-leases.path ./lib/systemd/system/virtgate-reapply.service \
        ./usr/share/virtgate/setup.sh ./usr/share/virtgate/ufw-after.init.sh ./usr/share/man/man8/virtgate.8.gz \
        ./usr/share/bash-completion/completions/virtgate ./usr/share/zsh/vendor-completions/_virtgate \
        ./usr/share/fish/vendor_completions.d/virtgate.fish ./usr/share/doc/virtgate/copyright; do
        assert_line --regexp " $f\$"
    done
    refute_output --partial "/usr/local"
    assert_equal "$(dpkg-deb --ctrl-tarfile "$TMP/new.deb" | tar -xOf - ./conffiles)" "/etc/virtgate/virtgate.conf"
    # debian/changelog's version is the binary's.
    run "$TMP/x/usr/sbin/virtgate" --version
    assert_success
    assert_output --regexp "^virtgate $NEW_VERSION \("
    assert_equal "$(dpkg-deb -f "$TMP/new.deb" Package)" virtgate
    # The units and the after.init block run the package's binary; the config is the shipped default.
    for f in virtgate-sync.service virtgate-reapply.service; do
        assert_file_contains "$TMP/x/lib/systemd/system/$f" "^ExecStart=/usr/sbin/virtgate "
        run grep -F /usr/local/sbin "$TMP/x/lib/systemd/system/$f"
        assert_failure
    done
    assert_file_contains "$TMP/x/usr/share/virtgate/ufw-after.init.sh" "^        vg=/usr/sbin/virtgate$"
    run cmp "$TMP/x/etc/virtgate/virtgate.conf" "$ROOT/hooks/virtgate.conf"
    assert_success
    run cmp "$TMP/x/usr/share/virtgate/setup.sh" "$ROOT/hooks/setup.sh"
    assert_success
    # Stripped, and linked with nothing of the Swift toolchain.
    run file -L "$TMP/x/usr/sbin/virtgate"
    assert_output --partial "stripped"
    refute_output --partial "not stripped"
    run ldd "$TMP/x/usr/sbin/virtgate"
    refute_output --partial "swift"
    refute_output --partial "not found"
}

@test "lintian: no error, warning, info or pedantic tag that is not overridden with its reason" {
    # lintian leaves a Berkeley DB file (mldbm-elf-*) in $TMPDIR on every run: it gets the test's own.
    mkdir -p "$TMP/lintian"
    TMPDIR=$TMP/lintian run lintian --pedantic --display-info "$TMP/new.deb"
    assert_success
    refute_line --regexp '^[EWIPX]: '
    TMPDIR=$TMP/lintian run lintian --pedantic --display-info --show-overrides "$TMP/new.deb"
    # Each override has its reason (an N: line before the O: line).
    local overridden reasons
    overridden=$(grep -c '^O: ' <<<"$output" || true)
    [ "$overridden" -gt 0 ] || fail "no override listed: lintian --show-overrides"
    reasons=$(grep -c '^N: ' <<<"$output" || true)
    [ "$reasons" -ge "$overridden" ] || fail "an override without a reason ($overridden overrides, $reasons reason lines)"
}

@test "install the previous version: hooks next to the foreign one, the block, the units, config, docs" {
    host_listing >"$TMP/host-before"
    upper_changes >"$TMP/upper-before"
    inns cat /etc/ufw/after.init >"$TMP/after-init-before"
    inns stat -c %a /etc/ufw/after.init >"$TMP/after-init-mode-before"
    local mark
    mark=$(calls_mark)
    pkg -i "$TMP/old.deb"
    dpkg_ok "dpkg -i the previous version ($OLD_VERSION)"
    run inns dpkg-query -W -f='${Version} ${Status}' virtgate
    assert_output "$OLD_VERSION install ok installed"
    # The hooks: network is virtgate; the admin's qemu hook kept, virtgate in qemu.d/.
    run inns readlink /etc/libvirt/hooks/network
    assert_output /usr/sbin/virtgate
    run inns cmp /etc/libvirt/hooks/qemu "$TMP/foreign-hook"
    assert_success
    assert_equal "$(inns stat -c %a /etc/libvirt/hooks/qemu)" 750
    run inns readlink /etc/libvirt/hooks/qemu.d/virtgate
    assert_output /usr/sbin/virtgate
    assert said "hook /etc/libvirt/hooks/qemu: not virtgate's"
    # UFW's after.init: the old block once, for /usr/sbin/virtgate, after the admin's line; executable.
    assert_equal "$(inns grep -cxF '# BEGIN virtgate' /etc/ufw/after.init)" 1
    inns grep -qxF '        vg=/usr/sbin/virtgate' /etc/ufw/after.init || fail "the block does not run /usr/sbin/virtgate"
    inns grep -qxF "# the admin's line" /etc/ufw/after.init || fail "the admin's line in after.init is gone"
    [ $((8#$(inns stat -c %a /etc/ufw/after.init) & 8#100)) -ne 0 ] || fail "after.init is not executable"
    # The config, as a conffile; the record of what the package created.
    run inns cmp /etc/virtgate/virtgate.conf "$ROOT/hooks/virtgate.conf"
    assert_success
    run inns dpkg-query -W -f='${Conffiles}' virtgate
    assert_output --partial "/etc/virtgate/virtgate.conf"
    run inns cat /var/lib/virtgate/installed
    assert_output --partial "dir /etc/libvirt/hooks/qemu.d"
    # The units: enabled (the path unit for paths.target, the sync for boot); the path unit started, the
    # sync not run; libvirt reloaded; no unit of virtgate's started besides.
    run inns readlink /etc/systemd/system/multi-user.target.wants/virtgate-sync.service
    assert_output /lib/systemd/system/virtgate-sync.service
    run inns readlink /etc/systemd/system/paths.target.wants/virtgate-leases.path
    assert_output /lib/systemd/system/virtgate-leases.path
    run calls_since "$mark"
    assert_line --regexp '(^| )preset virtgate-leases\.path$'
    assert_line --regexp '(^| )preset virtgate-sync\.service$'
    assert_line --regexp '(^| )daemon-reload$'
    assert_line --regexp '(^| )start virtgate-leases\.path$'
    assert_line "reload libvirtd.service"
    refute_line --regexp '(start|restart|reload|stop) .*virtgate-(sync|reapply)\.service'
    refute_output --partial "virtgate-reapply.service"
    # The man page, the completions; no state, no rule.
    run inns test -f /usr/share/man/man8/virtgate.8.gz
    assert_success
    run inns test -e /run/virtgate
    assert_failure
    run rules
    refute_output --partial "virtgate"
    refute_output --regexp "VG[NMFDS]-"
    # What purge must undo shows in the overlays (so that their comparison below means something).
    run upper_changes
    assert_line --partial "new /usr/sbin/virtgate "
    assert_line --partial "new /etc/virtgate "
    assert_line --partial "new /etc/libvirt/hooks/qemu.d "
}

@test "man virtgate and virtgate <TAB> work (the package's)" {
    run inns env -i PATH="$SYSTEM_PATH" LC_ALL=C MANPAGER=cat MANWIDTH=100 man virtgate
    assert_success
    assert_output --regexp "virtgate .* Keep KVM guests reachable behind a host firewall"
    local s
    for s in $SUBCOMMANDS; do assert_line --regexp "^ +$s( |$)"; done
    run inns env -i PATH="$SYSTEM_PATH" LC_ALL=C MANPAGER=cat man -w virtgate
    assert_output /usr/share/man/man8/virtgate.8.gz
    # bash-completion's loader finds the completion by the command's name.
    run bash_completes '_completion_loader virtgate'
    assert_success
    offers_all "$SUBCOMMANDS help" "$output" || fail "virtgate <TAB> does not offer every subcommand: $output"
    run bash_completes '_completion_loader virtgate' forward
    offers_all "add remove list" "$output" || fail "virtgate forward <TAB> does not offer add, remove, list: $output"
    run inns head -n 1 /usr/share/zsh/vendor-completions/_virtgate
    assert_output "#compdef virtgate"
    run inns cat /usr/share/fish/vendor_completions.d/virtgate.fish
    for s in $SUBCOMMANDS; do
        assert_line --regexp "^complete -c 'virtgate' .* -fa '$s' "
    done
}

@test "the hooks, run as libvirt runs them, apply the rules (with the admin's edited config)" {
    # The admin's edit: no syslog. dpkg keeps it over the upgrade below.
    inns sed -i 's/^#SYSLOG=yes$/SYSLOG=no/' /etc/virtgate/virtgate.conf
    inns grep -qx 'SYSLOG=no' /etc/virtgate/virtgate.conf || fail "the config has no #SYSLOG=yes line to edit"
    network_hook || { cat "$TMP/logs/hook.out" >&2; fail "/etc/libvirt/hooks/network vgtpkg started begin - failed"; }
    run rules
    assert_output --partial "-A VGN-vgtpkg -s 10.232.0.0/24 -i vgtp-br0 -j ACCEPT"
    rules >"$TMP/rules-applied"
}

@test "reinstall the previous version: nothing changes, no rule goes, libvirt not reloaded" {
    local before times_before mark
    before=$(host_listing)
    times_before=$(times /etc/ufw/after.init /etc/libvirt/hooks/network /etc/libvirt/hooks/qemu.d/virtgate /etc/libvirt/hooks/qemu)
    mark=$(calls_mark)
    pkg -i "$TMP/old.deb"
    dpkg_ok "dpkg -i the previous version again"
    assert_equal "$(host_listing)" "$before"
    assert_equal "$(times /etc/ufw/after.init /etc/libvirt/hooks/network /etc/libvirt/hooks/qemu.d/virtgate /etc/libvirt/hooks/qemu)" "$times_before"
    assert_equal "$(rules)" "$(cat "$TMP/rules-applied")"
    run calls_since "$mark"
    refute_output --partial "libvirtd"
    refute_line --regexp '(start|restart|reload|stop) .*virtgate-(sync|reapply)\.service'
    refute_output --partial "stop"
    assert said "already linked to /usr/sbin/virtgate"
}

@test "upgrade to the new version: the block updated in place, the admin's config and every rule kept" {
    local mark
    mark=$(calls_mark)
    pkg -i "$TMP/new.deb"
    dpkg_ok "dpkg -i $NEW_VERSION over $OLD_VERSION"
    run inns dpkg-query -W -f='${Version} ${Status}' virtgate
    assert_output "$NEW_VERSION install ok installed"
    refute said "conffile"
    # The block is the new version's, once, where the old one was; the admin's line kept.
    assert_equal "$(inns grep -cxF '# BEGIN virtgate' /etc/ufw/after.init)" 1
    run inns sh -c "sed -n '/^# BEGIN virtgate\$/,/^# END virtgate\$/p' /etc/ufw/after.init"
    assert_equal "$output" "$(cat "$TMP/x/usr/share/virtgate/ufw-after.init.sh")"
    inns grep -qxF "# the admin's line" /etc/ufw/after.init || fail "the admin's line in after.init is gone"
    assert said "updated virtgate's block in /etc/ufw/after.init"
    inns grep -qx 'SYSLOG=no' /etc/virtgate/virtgate.conf || fail "the upgrade lost the admin's edit of the config"
    run inns readlink /etc/libvirt/hooks/network
    assert_output /usr/sbin/virtgate
    run inns readlink /etc/libvirt/hooks/qemu.d/virtgate
    assert_output /usr/sbin/virtgate
    # An upgrade flushes nothing: the guests keep their rules.
    assert_equal "$(rules)" "$(cat "$TMP/rules-applied")"
    # The lease watcher restarted; the sync neither stopped nor run again.
    run calls_since "$mark"
    assert_line --regexp '(^| )restart virtgate-leases\.path$'
    refute_line --regexp '(start|restart|reload|stop) .*virtgate-(sync|reapply)\.service'
    refute_output --partial "stop"
    run inns cmp /usr/sbin/virtgate "$TMP/x/usr/sbin/virtgate"
    assert_success
}

@test "reinstall the new version: nothing changes" {
    local before
    before=$(host_listing)
    pkg -i "$TMP/new.deb"
    dpkg_ok "dpkg -i $NEW_VERSION again"
    assert_equal "$(host_listing)" "$before"
    assert_equal "$(rules)" "$(cat "$TMP/rules-applied")"
}

@test "remove: units stopped, block and hooks gone (the foreign hook kept), every rule flushed; config kept" {
    local mark
    mark=$(calls_mark)
    pkg -r virtgate
    dpkg_ok "dpkg -r virtgate"
    run inns dpkg-query -W -f='${Status}' virtgate
    assert_output "deinstall ok config-files"
    # prerm: the flush ran in the namespace, and removed every virtgate rule.
    assert said "rules: removed every virtgate rule and chain (virtgate flush)"
    run rules
    refute_output --partial "vgtpkg"
    refute_output --regexp "VG[NMFDS]-|VIRTGATE"
    run inns test -e /run/virtgate
    assert_failure
    # The hooks: virtgate's links gone, qemu.d/ (the package made it) gone, the admin's hook as it was.
    run inns test -e /etc/libvirt/hooks/network -o -L /etc/libvirt/hooks/network
    assert_failure
    run inns test -e /etc/libvirt/hooks/qemu.d
    assert_failure
    run inns cmp /etc/libvirt/hooks/qemu "$TMP/foreign-hook"
    assert_success
    # after.init: byte for byte and mode as before the install.
    assert_equal "$(inns cat /etc/ufw/after.init)" "$(cat "$TMP/after-init-before")"
    assert_equal "$(inns stat -c %a /etc/ufw/after.init)" "$(cat "$TMP/after-init-mode-before")"
    # The units stopped (the path unit first), systemd re-read its units, libvirt reloaded.
    run calls_since "$mark"
    assert_line --regexp '(^| )stop virtgate-leases\.path$'
    assert_line --regexp '(^| )stop virtgate-sync\.service virtgate-reapply\.service$'
    assert_line --regexp '(^| )daemon-reload$'
    assert_line "reload libvirtd.service"
    [ "$(grep -n 'virtgate-leases.path' <<<"$output" | head -n 1 | cut -d: -f1)" -lt \
        "$(grep -n 'virtgate-sync.service' <<<"$output" | head -n 1 | cut -d: -f1)" ] || fail "the path unit was not stopped first"
    # The files are gone, the admin's config stays until purge.
    for f in /usr/sbin/virtgate /usr/share/man/man8/virtgate.8.gz /usr/share/bash-completion/completions/virtgate \
        /lib/systemd/system/virtgate-sync.service /usr/share/virtgate; do
        run inns test -e "$f"
        assert_failure
    done
    inns grep -qx 'SYSLOG=no' /etc/virtgate/virtgate.conf || fail "remove took the admin's config"
}

@test "purge: the host as it was before the install" {
    pkg -P virtgate
    dpkg_ok "dpkg -P virtgate"
    run inns dpkg-query -W -f='${Status}' virtgate
    refute_output --partial "installed"
    refute_output --partial "config-files"
    run inns sh -c 'ls /var/lib/dpkg/info | grep "^virtgate\." || true'
    assert_output ""
    assert_equal "$(host_listing)" "$(cat "$TMP/host-before")"
    assert_equal "$(upper_changes)" "$(cat "$TMP/upper-before")"
}

@test "a host without after.init and without hooks: created, then purged away" {
    inns rm -f /etc/ufw/after.init /etc/libvirt/hooks/qemu
    local before upper_before
    before=$(host_listing)
    upper_before=$(upper_changes)
    pkg -i "$TMP/new.deb"
    dpkg_ok "dpkg -i $NEW_VERSION on a host without after.init"
    run inns readlink /etc/libvirt/hooks/qemu
    assert_output /usr/sbin/virtgate
    run inns readlink /etc/libvirt/hooks/network
    assert_output /usr/sbin/virtgate
    run inns test -e /etc/libvirt/hooks/qemu.d
    assert_failure
    assert_equal "$(inns stat -c %a /etc/ufw/after.init)" 755
    inns grep -qF "Created by virtgate's Debian package, because there was none." /etc/ufw/after.init \
        || fail "after.init is not the skeleton the package creates"
    assert_equal "$(inns grep -cxF '# BEGIN virtgate' /etc/ufw/after.init)" 1
    pkg -P virtgate
    dpkg_ok "dpkg -P virtgate"
    assert said "removed /etc/ufw/after.init"
    assert_equal "$(host_listing)" "$before"
    assert_equal "$(upper_changes)" "$upper_before"
}

@test "UFW installed after the package: the install says so, dpkg-reconfigure virtgate adds the block" {
    local before
    before=$(host_listing)
    inns mv /etc/ufw /etc/ufw.away
    pkg -i "$TMP/new.deb"
    dpkg_ok "dpkg -i $NEW_VERSION on a host without UFW"
    assert said "UFW: /etc/ufw does not exist; no after.init block (run dpkg-reconfigure virtgate after installing UFW)"
    inns mv /etc/ufw.away /etc/ufw
    run inns env -i PATH="$SYSTEM_PATH" LC_ALL=C HOME=/root DEBIAN_FRONTEND=noninteractive dpkg-reconfigure virtgate
    assert_success
    assert_output --partial "ufw: created /etc/ufw/after.init"
    assert_equal "$(inns grep -cxF '# BEGIN virtgate' /etc/ufw/after.init)" 1
    pkg -P virtgate
    dpkg_ok "dpkg -P virtgate"
    assert_equal "$(host_listing)" "$before"
}

@test "install.sh's hooks are taken over by the package, never kept as foreign" {
    inns ln -s /usr/local/sbin/virtgate /etc/libvirt/hooks/qemu
    inns ln -s /usr/local/sbin/virtgate /etc/libvirt/hooks/network
    pkg -i "$TMP/new.deb"
    dpkg_ok "dpkg -i $NEW_VERSION next to install.sh's hook links"
    run inns readlink /etc/libvirt/hooks/qemu
    assert_output /usr/sbin/virtgate
    run inns readlink /etc/libvirt/hooks/network
    assert_output /usr/sbin/virtgate
    run inns test -e /etc/libvirt/hooks/qemu.d
    assert_failure
    assert said "the other installer's"
    pkg -P virtgate
    dpkg_ok "dpkg -P virtgate"
    run inns test -e /etc/libvirt/hooks/qemu -o -L /etc/libvirt/hooks/qemu
    assert_failure
}

@test "install.sh installs the man page and the completions too, and --uninstall removes them" {
    local r=$TMP/isroot
    mkdir -p "$r/usr/local/sbin" "$r/etc/systemd/system" "$r/etc/libvirt" "$r/run/libvirt"
    gzip -dc "$TMP/x/usr/share/man/man8/virtgate.8.gz" >"$TMP/virtgate.8"
    local before
    before=$(find "$r" -printf '%p %y %m\n' | sort)
    local env=(env VIRTGATE_HOOKS_DIR="$r/etc/libvirt/hooks" VIRTGATE_SBIN="$r/usr/local/sbin"
        VIRTGATE_ETC="$r/etc/virtgate" VIRTGATE_RUN_LIBVIRT="$r/run/libvirt" VIRTGATE_STATE_DIR="$r/run/virtgate"
        VIRTGATE_SYSTEMD_DIR="$r/etc/systemd/system" VIRTGATE_UFW_DIR="$r/etc/ufw" VIRTGATE_SKIP_APT=1
        VIRTGATE_BINARY="$TMP/x/usr/sbin/virtgate" VIRTGATE_MANPAGE="$TMP/virtgate.8" VIRTGATE_SYSLOG=no
        PATH="$SYSTEM_PATH")
    run inns "${env[@]}" bash "$ROOT/install.sh"
    assert_success
    local share=$r/usr/local/share
    run cmp "$share/man/man8/virtgate.8" "$TMP/virtgate.8"
    assert_success
    # The same completions as the package's, where bash-completion, zsh and fish look below /usr/local/share.
    run cmp "$share/bash-completion/completions/virtgate" "$TMP/x/usr/share/bash-completion/completions/virtgate"
    assert_success
    run cmp "$share/zsh/site-functions/_virtgate" "$TMP/x/usr/share/zsh/vendor-completions/_virtgate"
    assert_success
    run cmp "$share/fish/vendor_completions.d/virtgate.fish" "$TMP/x/usr/share/fish/vendor_completions.d/virtgate.fish"
    assert_success
    run inns env -i PATH="$SYSTEM_PATH" LC_ALL=C MANPAGER=cat MANWIDTH=100 MANPATH="$share/man" man virtgate
    assert_success
    assert_output --regexp "virtgate .* Keep KVM guests reachable behind a host firewall"
    run bash_completes ". '$share/bash-completion/completions/virtgate'"
    offers_all "$SUBCOMMANDS help" "$output" || fail "install.sh's bash completion does not offer every subcommand: $output"
    run inns "${env[@]}" bash "$ROOT/install.sh" --uninstall
    assert_success
    assert_output --partial "removed $share/man/man8/virtgate.8"
    assert_equal "$(find "$r" -printf '%p %y %m\n' | sort)" "$before"
}
