#!/usr/bin/env bash
# The project's test command (see README): unit and golden-file tests, the root tests that push
# every golden ruleset through real iptables in a namespace, the installer test, and the namespace
# suite with real UFW, libvirt-style rules and real traffic. Run as root.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "Tests/run.sh: run as root: the tests create network namespaces and netfilter rules" >&2
    echo "0 passed, 1 failed"
    exit 1
fi
if [ -d /opt/swift/usr/bin ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi
# Root-only tests fail instead of skipping when this is set.
export VIRTGATE_REQUIRE_ROOT=1

log=$(mktemp -d /tmp/vgt-run.XXXXXX)
trap 'rm -rf "$log"' EXIT

passed=0
failed=0
count() { # file → adds its "N passed, M failed" closing line to the totals
    local line
    line=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$1" | tail -n 1)
    if [ -z "$line" ]; then failed=$((failed + 1)); return; fi
    passed=$((passed + $(echo "$line" | cut -d' ' -f1)))
    failed=$((failed + $(echo "$line" | cut -d' ' -f3)))
}

if ! swift build; then
    echo "build: 0 passed, 1 failed"
    exit 1
fi

swift test 2>&1 | tee "$log/swift-test"
swift_status=${PIPESTATUS[0]}
tests=$(grep -oE 'Test run with [0-9]+ tests?' "$log/swift-test" | grep -oE '[0-9]+' | tail -n 1)
failing=$(grep -cE '^✘ Test .* (failed|recorded)' "$log/swift-test")
if [ "$swift_status" -ne 0 ] && [ "$failing" -eq 0 ]; then failing=1; fi
echo "$(( ${tests:-0} - failing )) passed, $failing failed" > "$log/swift-summary"
count "$log/swift-summary"

# Coverage-guided fuzzing of every input parser, the planner and both renderers (a short run per target).
bash Fuzz/run.sh 2>&1 | tee "$log/fuzz"
count "$log/fuzz"

bash Tests/install/install-test.sh 2>&1 | tee "$log/install"
count "$log/install"

# The namespace suites and the end-to-end suite (a real libvirtd runs the hooks) run once per backend: both must
# give guests the same behaviour.
for suite in integration/netns integration/admin integration/coexistence e2e/e2e; do
    for backend in iptables nft; do
        name=$(basename "$suite")-$backend
        echo "# $name"
        VIRTGATE_BACKEND=$backend bash "Tests/$suite-test.sh" 2>&1 | tee "$log/$name"
        count "$log/$name"
    done
done

# The benchmark suite as a smoke test (few runs, small sizes, the debug build): it must keep working; its
# figures are not quoted from here (see BENCHMARKS.md).
bash Tests/bench/run.sh --quick --binary .build/debug/virtgate 2>&1 >/dev/null | tee "$log/bench"
count "$log/bench"

echo
echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
