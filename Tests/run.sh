#!/usr/bin/env bash
# The project's test command (see README): installs what the tests need, then runs `swift test`, the fuzz
# smoke run and every bats suite, and ends with one line of totals. Run as root on Debian 12 or Ubuntu.
#
#   sudo bash Tests/run.sh                 everything
#   sudo bash Tests/run.sh --no-install    refuse (naming the command that installs them) instead of installing
#   sudo bash Tests/run.sh --deps          only install what the tests need
#
# The bats suites each run in a private mount namespace (they bind-mount private copies of UFW's and
# libvirt's files there); the namespace suites run once per backend. One of them alone:
#   sudo VIRTGATE_BACKEND=iptables unshare --mount --propagation private bats --filter 'NAME' Tests/bats/netns.bats
set -uo pipefail
cd "$(dirname "$0")/.."

mode=all
case ${1:-} in
    "") ;;
    --no-install) mode=no-install ;;
    --deps) mode=deps ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "Tests/run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    echo "Tests/run.sh: run as root (sudo bash Tests/run.sh): the tests create network namespaces and netfilter rules" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

# What the tests use, by Debian package. Build: the C modules' headers. Namespace suites: the real firewall
# tools, UFW and traffic tools. End-to-end: a real libvirtd, QEMU and dnsmasq, and what builds the tiny guest.
# Packaging: what dpkg-buildpackage and lintian need. Benchmarks: hyperfine, GNU time and Debian's python3.
# Tests: bats and its helper libraries.
PACKAGES=(
    libvirt-dev libexpat1-dev nettle-dev pkg-config
    iptables nftables ufw iproute2 socat netcat-openbsd jq util-linux procps kmod ca-certificates
    libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 dnsmasq-base busybox-static cpio
    debhelper dpkg-dev fakeroot lintian man-db bash-completion
    hyperfine time python3
    bats bats-assert bats-support bats-file
)

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f '${Status}\n' "$p" 2>/dev/null | grep -q ' installed$' || echo "$p"
    done
}

install_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$mode" = no-install ]; then
        echo "Tests/run.sh: missing packages: ${missing[*]}" >&2
        echo "Tests/run.sh: install them with: sudo bash Tests/run.sh --deps" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
    echo "# installing the packages the tests need: ${missing[*]}"
    # Installing libvirt must not start the machine's libvirtd (and its default network's firewall rules) in
    # the root namespace: the end-to-end suite runs its own private libvirtd. policy-rc.d keeps daemons from
    # starting during the install, and is removed afterwards unless it was there before.
    local made_policy=no
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        made_policy=yes
    fi
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    [ "$made_policy" = yes ] && rm -f /usr/sbin/policy-rc.d
    if [ "$rc" -ne 0 ]; then
        echo "Tests/run.sh: apt-get install failed (exit $rc)" >&2
        echo "0 passed, 1 failed"
        exit 1
    fi
}

install_packages
[ "$mode" = deps ] && exit 0

if [ -d /opt/swift/usr/bin ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
if ! command -v swift >/dev/null; then
    echo "Tests/run.sh: the Swift 6 toolchain is not on PATH nor in /opt/swift (https://www.swift.org/install/linux/)" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
# Root-only tests fail instead of skipping when this is set.
export VIRTGATE_REQUIRE_ROOT=1

log=$(mktemp -d /tmp/vgt-run.XXXXXX)
trap 'rm -rf "$log"' EXIT

passed=0
failed=0
suites=()
tally() { # NAME PASSED FAILED
    passed=$((passed + $2))
    failed=$((failed + $3))
    suites+=("$(printf '%-24s %5d passed, %d failed' "$1" "$2" "$3")")
}
tally_line() { # NAME FILE: adds the file's last "N passed, M failed" line (none: one failure)
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$2" | tail -n 1)
    if [ -z "$line" ]; then tally "$1" 0 1; return; fi
    tally "$1" "$(echo "$line" | cut -d' ' -f1)" "$(echo "$line" | cut -d' ' -f3)"
}
tally_tap() { # NAME FILE STATUS: counts a TAP stream's ok / not ok lines (none, or a failing bats: one failure)
    local ok not_ok
    ok=$(grep -cE '^ok [0-9]+' "$2")
    not_ok=$(grep -cE '^not ok [0-9]+' "$2")
    if [ "$3" -ne 0 ] && [ "$not_ok" -eq 0 ]; then not_ok=1; fi
    if [ "$ok" -eq 0 ] && [ "$not_ok" -eq 0 ]; then not_ok=1; fi
    tally "$1" "$ok" "$not_ok"
}

# SwiftPM leaves empty TemporaryDirectory.* directories in $TMPDIR: its builds and tests get one of their own,
# removed at the end.
swift_tmp=$(mktemp -d "${TMPDIR:-/tmp}/virtgate-swift.XXXXXX")
trap 'rm -rf "$log" "$swift_tmp"' EXIT
if ! TMPDIR=$swift_tmp swift build; then
    echo "build: 0 passed, 1 failed"
    exit 1
fi
export VIRTGATE=$PWD/.build/debug/virtgate

TMPDIR=$swift_tmp swift test 2>&1 | tee "$log/swift-test"
swift_status=${PIPESTATUS[0]}
tests=$(grep -oE 'Test run with [0-9]+ tests?' "$log/swift-test" | grep -oE '[0-9]+' | tail -n 1)
failing=$(grep -cE '^✘ Test .* (failed|recorded)' "$log/swift-test")
if [ "$swift_status" -ne 0 ] && [ "$failing" -eq 0 ]; then failing=1; fi
tally "swift test" "$(( ${tests:-0} - failing ))" "$failing"

# Coverage-guided fuzzing of every input parser, the planner and both renderers (a short run per target).
bash Fuzz/run.sh 2>&1 | tee "$log/fuzz"
tally_line "fuzz" "$log/fuzz"

# bats FILE [ENV...]: one suite in a private mount namespace of its own, TAP to stdout.
run_bats() {
    local file=$1 name=$2
    shift 2
    echo "# $name"
    env "$@" unshare --mount --propagation private -- bats --tap "Tests/bats/$file" 2>&1 | tee "$log/$name"
    tally_tap "$name" "$log/$name" "${PIPESTATUS[0]}"
}

run_bats install.bats install
run_bats package.bats package
# Both backends must give guests the same behaviour: the namespace suites and the end-to-end suite (a real
# libvirtd runs the hooks) run once per backend.
for suite in netns admin coexistence e2e; do
    for backend in iptables nft; do
        run_bats "$suite.bats" "$suite-$backend" VIRTGATE_BACKEND="$backend"
    done
done
# The benchmark suite as a smoke test (few runs, small sizes, the debug build): it must keep working; its
# figures are not quoted from here (see BENCHMARKS.md).
run_bats bench.bats bench

echo
printf '%s\n' "${suites[@]}"
echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
