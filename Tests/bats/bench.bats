#!/usr/bin/env bats
# bench.bats: the benchmark suite (Tests/bench/run.sh) as a smoke test. setup_file runs
# `run.sh --quick` once (few runs, small sizes, both backends; about two minutes) with --figures; each test
# then checks one group of figures: measured (a number > 0, from at least one sample), its baseline
# measured in the same run, for both backends. A missed target is a finding of the report, not a failure
# here; the figures of a quick run are not quoted anywhere (BENCHMARKS.md comes from a full run).
#
# Run (as root, in a private mount namespace):
#   VIRTGATE=/path/to/virtgate unshare --mount --propagation private -- bats --tap Tests/bats/bench.bats

bats_load_library bats-support
bats_load_library bats-assert
bats_load_library bats-file
load private_mount

BENCH_TOOLS="hyperfine ip iptables-save iptables-restore nft virsh which"

setup_file() {
    ROOT=$(cd "$BATS_TEST_DIRNAME/../.." && pwd)
    [ "$(id -u)" -eq 0 ] || fail "run as root: sudo unshare --mount --propagation private -- bats Tests/bats/bench.bats"
    in_private_mount_namespace \
        || fail "not in a private mount namespace: run unshare --mount --propagation private -- bats Tests/bats/bench.bats"
    local tool missing=()
    for tool in $BENCH_TOOLS; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ -x /usr/bin/python3 ] || missing+=(python3)
    [ -x /usr/bin/time ] || missing+=(time)
    [ ${#missing[@]} -eq 0 ] || fail "missing tools: ${missing[*]} (sudo bash Tests/run.sh --deps)"
    local source=${VIRTGATE:-$ROOT/.build/debug/virtgate}
    [ -x "$source" ] || fail "$source is not an executable (swift build first, or set VIRTGATE=)"

    BENCH=$BATS_FILE_TMPDIR
    export ROOT BENCH
    : >"$BENCH/checks"
    # A private copy: a rebuild of .build/ during the run cannot swap the binary under the test.
    cp "$source" "$BENCH/virtgate"
    root_ruleset >"$BENCH/ruleset-before"

    local start=$SECONDS
    BENCH_RC=0
    bash "$ROOT/Tests/bench/run.sh" --quick --binary "$BENCH/virtgate" --output "$BENCH/report.md" \
        --figures "$BENCH/figures.tsv" >"$BENCH/stdout" 2>"$BENCH/stderr" </dev/null 3>&- &
    BENCH_PID=$!
    wait "$BENCH_PID" || BENCH_RC=$?
    export BENCH_RC BENCH_PID
    echo "# run.sh --quick: exit $BENCH_RC after $((SECONDS - start)) s" >&3
}

teardown_file() {
    [ -n "${BENCH:-}" ] && [ -f "$BENCH/ruleset-before" ] || return 0
    local status=0 ns
    # run.sh removes its namespaces (vgt-b...-PID) on exit, also on failure.
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        case $ns in
            vgt-b*-"$BENCH_PID")
                echo "run.sh left the network namespace $ns"
                ip netns del "$ns"
                status=1
                ;;
        esac
    done
    if ! cmp -s "$BENCH/ruleset-before" <(root_ruleset); then
        diff "$BENCH/ruleset-before" <(root_ruleset) | head -20
        echo "the root namespace's ruleset changed"
        status=1
    else
        echo ok >>"$BENCH/checks"
    fi
    echo "# bench.bats: $(wc -l <"$BENCH/checks") checks passed" >&3
    return "$status"
}

# root_ruleset: the root namespace's ruleset (both tools' views), counters stripped.
root_ruleset() {
    iptables-save 2>/dev/null | sed -e 's/\[[0-9]*:[0-9]*\]//' -e '/^#/d'
    nft list ruleset 2>/dev/null | sed -e 's/counter packets [0-9]* bytes [0-9]*/counter/'
}

# -------------------------------------------------------------------------------------------------
# The figures: one line each in $BENCH/figures.tsv, tab-separated: group figure backend value unit
# samples note (backend "-" for a baseline).

ok() { echo ok >>"$BENCH/checks"; }
field() { # GROUP FIGURE BACKEND COLUMN: that column of the figure's line (empty when there is none)
    awk -F'\t' -v g="$1" -v f="$2" -v b="$3" -v c="$4" '$1 == g && $2 == f && $3 == b { print $c; exit }' \
        "$BENCH/figures.tsv"
}
is_number() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ ]]; }
positive() { is_number "$1" && awk -v v="$1" 'BEGIN { exit !(v + 0 > 0) }'; }
what() { # GROUP FIGURE BACKEND: how a figure is named in a failure
    if [ "$3" = - ]; then echo "$1 $2 (baseline)"; else echo "$1 $2 ($3 backend)"; fi
}
# measured GROUP FIGURE BACKEND [MIN]: the figure is a number > MIN (default 0; "0=" for ≥ 0) from at least
# one sample.
measured() {
    local value samples min=${4:-0}
    value=$(field "$1" "$2" "$3" 4)
    samples=$(field "$1" "$2" "$3" 6)
    if [ "$min" = "0=" ]; then
        is_number "$value" || fail "$(what "$@"): not measured (value '$value')"
    else
        positive "$value" || fail "$(what "$@"): not measured, or not a number > 0 (value '$value')"
    fi
    # Timings and memory come from at least one sample; counts and ratios name none.
    [ -z "$samples" ] || positive "$samples" || fail "$(what "$@"): no samples ($samples)"
    ok
}
# below GROUP FIGURE BACKEND MAX: the figure is below MAX (a sanity bound)
below() {
    local value
    value=$(field "$1" "$2" "$3" 4)
    awk -v v="$value" -v m="$4" 'BEGIN { exit !(v + 0 < m + 0) }' \
        || fail "$(what "$1" "$2" "$3"): $value is not below $4 ${5:-}"
    ok
}
run_list() { # NAME: the run's sizes (run sync-sizes / conn-sizes), one a line
    field run "$1" - 4 | tr ' ' '\n' | grep .
}
backend_measured() { # BACKEND: the run did not skip the backend
    local reasons
    reasons=$(awk -F'\t' -v b="$1" '$1 == "skip" && $3 == b { print $2 ": " $7 }' "$BENCH/figures.tsv")
    [ -z "$reasons" ] || fail "$1 backend skipped: $reasons"
    ok
}

@test "run: run.sh --quick exits 0 with the Markdown report and every figure, both backends" {
    if [ "$BENCH_RC" -ne 0 ]; then
        tail -n 20 "$BENCH/stderr"
        fail "run.sh --quick exited $BENCH_RC"
    fi
    ok
    assert_file_exists "$BENCH/report.md"
    assert_file_exists "$BENCH/figures.tsv"
    cmp -s "$BENCH/stdout" "$BENCH/report.md" || fail "the report on stdout is the one --output wrote"
    ok
    local heading
    for heading in "# virtgate benchmarks" "> **Quick mode**" "## Machine" "## 1. Hook latency" \
        "## 2. Peak memory of a hook run" '## 3. `virtgate sync`' "## 4. A new connection through a DNAT" \
        "## Summary against the targets"; do
        grep -qF -- "$heading" "$BENCH/report.md" || fail "the report has no '$heading'"
        ok
    done
    assert_equal "$(head -n 1 "$BENCH/figures.tsv")" "$(printf 'group\tfigure\tbackend\tvalue\tunit\tsamples\tnote')"
    ok
    assert_equal "$(field run quick - 4)" 1
    ok
    backend_measured iptables
    backend_measured nft
}

@test "hook latency: the baselines (/bin/true, the Python hook pattern) measured" {
    local key
    measured hook true -
    for key in noop start1 start5 start20 stopped20; do measured hook "python-$key" -; done
}

@test "hook latency: the Swift floors (a program that only exits; the same with the runtime modules of virtgate's dependencies) measured" {
    measured hook swift-floor -
    measured hook swift-floor-modules -
}

# hook_latency BACKEND: every lifecycle event measured, next to its baseline from the same run.
hook_latency() {
    local b=$1 key
    backend_measured "$b"
    measured hook true -
    for key in floor prepare start started stopped release; do
        measured hook "$key" "$b"
        [ "$key" = floor ] || measured hook python-noop -
    done
    for key in start1 start5 start20 stopped20; do
        measured hook "$key" "$b"
        measured hook "python-$key" -
    done
    # An ignored event in turn with the two Swift floors (their differences are below the machine's drift).
    for key in in-turn-floor in-turn-modules in-turn-ignored; do measured hook "$key" "$b"; done
    # start with 20 forwards beside a table full of other guests' forwards (a smaller one with --quick).
    measured hook start20-scale "$b"
    # ... and beside one other guest's forwards (with nft: the table exists, only elements are added).
    measured hook start20-beside "$b"
    # A network's start (with nft it creates the table, without base chains).
    measured hook netstart "$b"
}

@test "hook latency: iptables backend, each event next to the Python pattern; the kernel's share" {
    hook_latency iptables
    # What every event starts with (iptables-save; hyperfine subtracts a shell's start-up, which can leave
    # 0) and the kernel's share of start with 20 forwards (the same transaction, restored alone).
    measured hook iptables-save iptables "0="
    measured hook iptables-restore-start20 iptables
}

@test "hook latency: nft backend, each event next to the Python pattern; the kernel's share" {
    hook_latency nft
    # The first guest with forwards since its network started: it creates the table.
    measured hook start20-first nft
    # The kernel's share of that start: the same transaction applied by nft alone.
    measured hook nft-alone-start20 nft
    # ... and of stopped with 20 forwards (deleting: the close of nft's socket waits as virtgate's does).
    measured hook nft-alone-stopped20 nft
    # ... and of start with 20 forwards after its own stop: its elements added by nft alone.
    measured hook nft-alone-restart20 nft
}

# peak_memory BACKEND: the peak RSS of a no-op and of a start with 20 forwards, next to the Python
# pattern's; what a waiting hook holds resident (anonymous + file-backed ≤ the whole).
peak_memory() {
    local b=$1 key
    backend_measured "$b"
    for key in noop start20; do
        measured memory "$key" "$b"
        below memory "$key" "$b" 1024 MiB
        measured memory "python-$key" -
    done
    for key in waiting-rss waiting-anon waiting-file; do measured memory "$key" "$b"; done
    local rss anon file
    rss=$(field memory waiting-rss "$b" 4)
    anon=$(field memory waiting-anon "$b" 4)
    file=$(field memory waiting-file "$b" 4)
    awk -v r="$rss" -v a="$anon" -v f="$file" 'BEGIN { exit !(a + f <= r + 0.001) }' \
        || fail "memory ($b backend): anonymous $anon + file-backed $file MiB exceed the resident $rss MiB"
    ok
}

@test "peak memory: iptables backend, next to the Python pattern" {
    peak_memory iptables
}

@test "peak memory: nft backend, next to the Python pattern" {
    peak_memory nft
}

# sync BACKEND: for each size: apply, re-sync and dry run measured, the DNATs left (5 per guest at
# least), libvirt alone (sync's libvirt calls from a C program: the baseline) and virsh list on the same
# state, and the same transaction applied alone (iptables-restore, or nft -f); the paired rounds' own
# share (also with libvirt's calls timed in the same process) and re-sync / apply.
sync_figures() {
    local b=$1 g sizes dnat size
    backend_measured "$b"
    sizes=$(run_list sync-sizes) || true
    [ "$(echo "$sizes" | grep -c .)" -ge 2 ] || fail "sync: the run names fewer than two sizes ($sizes)"
    ok
    for g in $sizes; do
        measured sync "$g-apply" "$b"
        measured sync "$g-resync" "$b"
        measured sync "$g-dry-run" "$b"
        measured sync "$g-dnat" "$b"
        dnat=$(field sync "$g-dnat" "$b" 4)
        [ "$dnat" -ge $((g * 5)) ] || fail "sync $g ($b backend): $dnat DNATs for $g guests with 5 forwards each"
        ok
        measured sync "libvirt-$g" -
        measured sync "virsh-$g" -
        if [ "$b" = iptables ]; then measured sync "$g-iptables-restore" "$b"; else measured sync "$g-nft-alone" "$b"; fi
    done
    # The paired rounds (libvirt alone, apply, re-sync in turn) at one of the run's sizes.
    for key in own-wall own-cpu ratio-wall ratio-cpu; do measured sync "paired-$key" "$b"; done
    # ... and the own share with libvirt's calls timed in the same process (sync's log line).
    for key in inprocess-apply inprocess-resync inprocess-ratio; do measured sync "paired-$key" "$b"; done
    size=$(field sync paired-own-wall "$b" 7)
    echo "$sizes" | grep -qx -- "$size" || fail "sync ($b backend): paired rounds at '$size' guests, not one of the run's sizes"
    ok
}

@test "sync: iptables backend, apply, re-sync and dry run per size, next to libvirt alone and iptables-restore" {
    sync_figures iptables
}

@test "sync: nft backend, apply, re-sync and dry run per size, next to libvirt alone" {
    sync_figures nft
}

# connections BACKEND: for each size, connect() through the DNAT measured over every connection of the
# run (rounds x pairs of them), after a connection in each of the two labs proved the path (the guest's
# server saw the lab's wan address on port 8080 while the client dialled 40000); the ratio of the largest
# size to the smallest, inside its 95 % interval; the labs' own difference, near 1.
connections() {
    local b=$1 n sizes rounds pairs seen lab wan low ratio high
    backend_measured "$b"
    sizes=$(run_list conn-sizes) || true
    [ "$(echo "$sizes" | grep -c .)" -ge 2 ] || fail "connections: the run names fewer than two sizes ($sizes)"
    ok
    measured connection rounds "$b"
    measured connection pairs "$b"
    rounds=$(field connection rounds "$b" 4)
    pairs=$(field connection pairs "$b" 4)
    for n in $sizes; do
        measured connection "$n" "$b"
        assert_equal "$(field connection "$n" "$b" 6)" "$((rounds * pairs))"
        ok
        assert_equal "$(field connection "$n-path" "$b" 4)" 2
        seen=$(field connection "$n-path" "$b" 7)
        for lab in a b; do
            wan=$([ "$lab" = a ] && echo 198.18.50.2 || echo 198.18.50.6)
            [[ " | $seen | " == *" | $lab: $wan "*" 10.213.63.250 8080 $wan | "* ]] \
                || fail "connections, $n forwards ($b backend): the path was not verified in lab $lab (server saw: '$seen')"
            ok
        done
    done
    measured connection ratio "$b"
    measured connection ratio-low "$b"
    measured connection ratio-high "$b"
    low=$(field connection ratio-low "$b" 4)
    ratio=$(field connection ratio "$b" 4)
    high=$(field connection ratio-high "$b" 4)
    awk -v l="$low" -v r="$ratio" -v h="$high" 'BEGIN { exit !(l <= r && r <= h) }' \
        || fail "connections ($b backend): the ratio $ratio is not inside its interval $low–$high"
    ok
    measured connection lab-difference "$b"
    # Two labs built alike: a difference of more than a third is a broken lab, not noise.
    below connection lab-difference "$b" 1.5
    awk -v d="$(field connection lab-difference "$b" 4)" 'BEGIN { exit !(d > 0.67) }' \
        || fail "connections ($b backend): lab b differs from lab a by a factor $(field connection lab-difference "$b" 4)"
    ok
}

@test "connections: iptables backend, a new connection through the DNAT at each size, path verified in both labs" {
    connections iptables
}

@test "connections: nft backend, a new connection through the DNAT at each size, path verified in both labs" {
    connections nft
}
