# BEGIN virtgate
# Added by virtgate's install.sh or its Debian package; `install.sh --uninstall`, or removing the
# package, removes everything from BEGIN to END.
# UFW runs this file with start (enable), stop (disable), stop then start (reload) and flush-all. With
# MANAGE_BUILTINS=yes, and on flush-all, UFW flushes the built-in chains and so removes virtgate's jumps:
# `virtgate reapply` puts virtgate's rules back (from /run/virtgate; it never calls libvirt). This block
# never fails UFW (a non-zero `after.init start` makes `ufw enable` fail): it always carries on, and
# a failure only goes to syslog (tag virtgate). virtgate logs what it does itself (SYSLOG=yes).
case "${1:-}" in
start|stop|flush-all)
    (
        vg=/usr/local/sbin/virtgate
        [ -x "$vg" ] || exit 0
        to=
        if command -v timeout >/dev/null 2>&1; then to="timeout 60"; fi
        rc=0
        out=$($to "$vg" reapply </dev/null 2>&1) || rc=$?
        if [ "$rc" -ne 0 ] && command -v logger >/dev/null 2>&1; then
            printf 'ufw after.init %s: virtgate reapply failed (exit %s)\n%s\n' "$1" "$rc" "$out" \
                | logger -t virtgate -p daemon.warning 2>/dev/null || :
        fi
        exit 0
    ) || :
    ;;
esac
# END virtgate
