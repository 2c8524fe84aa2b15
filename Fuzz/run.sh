#!/usr/bin/env bash
# Builds the libFuzzer targets (Fuzz/Package.swift) with the fuzzer and address sanitizers and runs
# each one: a short bounded run by default (the test command's smoke run), at least a million
# executions with --long. Ends with "N passed, M failed", one per target. See Fuzz/README.md.
#
#   bash Fuzz/run.sh [--long] [--runs N] [--time S] [--target domain|network|hook]
set -uo pipefail
cd "$(dirname "$0")"
if [ -d /opt/swift/usr/bin ]; then
    export PATH="/opt/swift/usr/bin:$PATH"
fi

long=0
runs=""
seconds=""
targets="domain network hook"
while [ $# -gt 0 ]; do
    case "$1" in
        --long) long=1 ;;
        --runs) runs="$2"; shift ;;
        --time) seconds="$2"; shift ;;
        --target) targets="$2"; shift ;;
        *) echo "usage: $0 [--long] [--runs N] [--time S] [--target domain|network|hook]" >&2; exit 2 ;;
    esac
    shift
done
if [ "$long" -eq 1 ]; then
    runs=${runs:-1000000}
elif [ -z "$runs" ]; then
    seconds=${seconds:-15}
fi

# Release with sanitizers: four times the executions per second of a debug build, same checks
# (the invariants are explicit checks, not assertions). SwiftPM's `--sanitize` flags set up the
# link (libFuzzer's main), but reach the compiler as two `-sanitize=` flags of which it keeps only
# the last, in an order that varies from build to build: a build had either no coverage or no ASan.
# The one `-sanitize=fuzzer,address` after them is what each compile uses.
# SwiftPM leaves empty TemporaryDirectory.* directories in $TMPDIR: its builds get one of their own, removed at exit.
swift_tmp=$(mktemp -d "${TMPDIR:-/tmp}/virtgate-swift.XXXXXX")
trap 'rm -rf "$swift_tmp"' EXIT
build=(env "TMPDIR=$swift_tmp" swift build --package-path . --scratch-path .build -c release --sanitize fuzzer --sanitize address
       -Xswiftc -sanitize=fuzzer,address)
mkdir -p .work
# An incremental build of this package (which depends on virtgate's by path) keeps the module graph
# it planned: a source file added to virtgate since was missing from it ("cannot find ... in
# scope"). The list of virtgate's sources decides whether .build is still usable.
sources=$(cd .. && find Sources -name '*.swift' | LC_ALL=C sort | sha256sum | cut -d' ' -f1)
if [ -d .build ] && [ "$(cat .build/virtgate-sources 2>/dev/null)" != "$sources" ]; then
    rm -rf .build
fi
mkdir -p .build
echo "$sources" > .build/virtgate-sources
"${build[@]}" > .work/build.log 2>&1
build_status=$?
grep -v "Cannot export local symbol" .work/build.log | tail -n 20
if [ "$build_status" -ne 0 ]; then
    echo "fuzz: build failed (Fuzz/.work/build.log)"
    echo "0 passed, 1 failed"
    exit 1
fi
bin=$("${build[@]}" --show-bin-path)

# Swift's crash handler reads the crashed process's memory, which AddressSanitizer reports as an
# overflow of its own: libFuzzer's report and the input are what matter.
export SWIFT_BACKTRACE=enable=no
passed=0
failed=0
for target in $targets; do
    name="fuzz-$target"
    work=".work/corpus/$name"   # what this machine's runs found (git-ignored)
    crashes="crashes/$name"     # crash, timeout and out-of-memory inputs (git-ignored)
    mkdir -p "$work" "$crashes"
    log=".work/$name.log"
    flags=(-dict=xml.dict -max_len=16384 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
           "-artifact_prefix=$crashes/")
    [ -n "$runs" ] && flags+=("-runs=$runs")
    [ -n "$seconds" ] && flags+=("-max_total_time=$seconds")
    before=$(ls "$crashes" | wc -l)
    echo "# $name ${flags[*]}"
    "$bin/$name" "${flags[@]}" "$work" "corpus/$name" > "$log" 2>&1
    status=$?
    executions=$(grep -oE '^stat::number_of_executed_units: [0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
    rate=$(grep -oE '^stat::average_exec_per_sec: +[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -n 1)
    inputs=$(ls "$work" | wc -l)
    size=$(du -sk --apparent-size "$work" | cut -f1)
    found=$(( $(ls "$crashes" | wc -l) - before ))
    echo "$name: ${executions:-0} executions (${rate:-0}/s), corpus $inputs inputs (${size} KiB), crashes $found"
    grep -m 1 -E '^NOTE' "$log"
    if [ "$status" -eq 0 ]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        grep -m 3 -E 'INVARIANT VIOLATED|ERROR: (libFuzzer|AddressSanitizer)|Fatal error' "$log" | cut -c1-600
        grep -A 12 -m 1 -E '^==[0-9]+==ERROR' "$log" | grep -E '^ +#' | head -n 8
        for file in $(ls -t "$crashes" | head -n "$(( found > 0 ? found : 1 ))"); do
            echo "  input: Fuzz/$crashes/$file"
            echo "  reproduce: SWIFT_BACKTRACE=enable=no $bin/$name Fuzz/$crashes/$file"
        done
        echo "  log: Fuzz/$log"
    fi
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
