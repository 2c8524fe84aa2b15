#!/usr/bin/env bash
# virtgate's benchmark suite: whole-process figures, each next to its baseline from the same run.
#   1. hook latency per libvirt event (no forwards; start with 1, 5, 20 forwards), against /bin/true and
#      the classic Python hook pattern (baseline/python-hook.py: one iptables process per rule);
#   2. `virtgate sync` of many guests (real apply, re-sync, --dry-run), against libvirt alone (the libvirt
#      calls sync makes, from baseline/libvirt-alone.c, on the same state; `virsh list` for reference) and
#      the same transaction applied alone (iptables-restore, nft -f);
#   3. the cost of a new connection through a DNAT with 10 and with 10,000 forwards (real TCP connections
#      wan -> host -> guest across namespaces);
#   4. peak memory (max RSS) of a hook run.
# Each is run for VIRTGATE_BACKEND=iptables and =nft; a backend this build does not have is skipped.
# Everything that changes rules runs in network namespaces this script creates (vgt-b...-PID); traffic
# stays inside them. It removes them, its processes and its files on exit, also on failure.
#
# Usage: sudo bash Tests/bench/run.sh [--quick] [--binary PATH] [--output FILE] [--figures FILE]
#   --quick    few iterations and small sizes (a smoke test, well under 2 minutes)
#   --binary   the virtgate to measure (default: .build/release/virtgate). As installed: build it with
#              ./install.sh --build DIR and pass DIR/virtgate (swift build -c release
#              --static-swift-stdlib alone builds the dependencies without install.sh's start-up flag)
#   --output   also write the Markdown report to FILE (it always goes to stdout; progress goes to stderr)
#   --figures  also write every figure to FILE, one a line, tab-separated:
#              group figure backend value unit samples note
#              (group: run, hook, memory, sync, connection or skip; backend "-" for a baseline; value empty
#              when not measured). Tests/bats/bench.bats checks them.
# A missed target is a finding of the report, not an error; a figure that could not be measured is
# missing from the report and from the figures. The exit status is non-zero only when the run itself fails.
set -Eeuo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
quick=0
binary=$repo/.build/release/virtgate
output=
figures=
while [ $# -gt 0 ]; do
    case $1 in
        --quick) quick=1 ;;
        --binary) binary=${2:?--binary needs a path}; shift ;;
        --output) output=${2:?--output needs a file}; shift ;;
        --figures) figures=${2:?--figures needs a file}; shift ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { echo "bench: $*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: the benchmarks create network namespaces and firewall rules in them"
[ -x "$binary" ] || die "no virtgate binary at $binary (swift build -c release --static-swift-stdlib, or --binary PATH)"
case $output in "" | /*) ;; *) output=$PWD/$output ;; esac
case $figures in "" | /*) ;; *) figures=$PWD/$figures ;; esac

# Tools. /usr/bin/python3 is Debian's (what a libvirt hook with #!/usr/bin/python3 runs).
missing=()
command -v hyperfine >/dev/null || missing+=(hyperfine)
[ -x /usr/bin/python3 ] || missing+=(python3)
{ [ -x /usr/bin/time ] && /usr/bin/time -f %M true >/dev/null 2>&1; } || missing+=(time)
command -v ip >/dev/null || missing+=(iproute2)
command -v iptables-restore >/dev/null || missing+=(iptables)
command -v nft >/dev/null || missing+=(nftables)
command -v virsh >/dev/null || missing+=(libvirt-clients)
command -v which >/dev/null || missing+=(debianutils)
if [ ${#missing[@]} -gt 0 ]; then
    die "missing tools; install them with: apt-get install -y ${missing[*]}"
fi

# libvirt gives hooks a scrubbed environment with a plain PATH; use the same for everything measured.
# The Swift compiler, for the Swift floor baseline, and a C compiler (the system's, else the Swift
# toolchain's clang) for libvirt's share of sync (found before PATH is reset below).
swiftc=$(command -v swiftc || true)
[ -n "$swiftc" ] || { [ -x /opt/swift/usr/bin/swiftc ] && swiftc=/opt/swift/usr/bin/swiftc; } || true
ccompiler=$(command -v cc || command -v clang || true)
[ -n "$ccompiler" ] || { [ -x /opt/swift/usr/bin/clang ] && ccompiler=/opt/swift/usr/bin/clang; } || true
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LC_ALL=C

# Sizes and iteration counts.
if [ "$quick" -eq 1 ]; then
    warm=2; runs_fast=10; runs_py=5; runs_mem=3; runs_alternate=30
    sync_sizes=(10 100); sync_runs=(3 3); sync_warm=(1 1); paired_size=100; paired_rounds=3
    conn_sizes=(10 1000)
else
    warm=5; runs_fast=100; runs_py=30; runs_mem=9; runs_alternate=400
    sync_sizes=(100 1000 5000); sync_runs=(10 5 3); sync_warm=(2 1 0); paired_size=1000; paired_rounds=25
    conn_sizes=(10 10000)
fi
backends=(iptables nft)

pid=$$
work=$(mktemp -d /tmp/vgt-bench.XXXXXX)
res=$work/results
mkdir -p "$res" "$work/log" "$work/hooks"
started_pids=()

cleanup() {
    local status=$? p ns
    set +e
    for p in "${started_pids[@]}"; do
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}'); do
        case $ns in vgt-b*-"$pid") ip netns del "$ns" ;; esac
    done
    if [ -n "${VGT_BENCH_KEEP:-}" ]; then echo "bench: kept $work" >&2; else rm -rf "$work"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'say "failed (status $?) at line $LINENO: $BASH_COMMAND"' ERR

netns_new() { ip netns del "$1" 2>/dev/null || true; ip netns add "$1"; ip -n "$1" link set lo up; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

cp "$binary" "$work/virtgate"
chmod 0755 "$work/virtgate"
ln -s "$work/virtgate" "$work/hooks/qemu"
ln -s "$work/virtgate" "$work/hooks/network"
cp "$here/baseline/python-hook.py" "$work/python-hook.py"
chmod 0755 "$work/python-hook.py"
export VIRTGATE_SYSLOG=0 VIRTGATE_CONFIG=$work/none \
    VIRTGATE_NETWORK_RUN_DIR=$work/none VIRTGATE_NETWORK_ETC_DIR=$work/none VIRTGATE_DNSMASQ_DIR=$work/none
export CONFIG_FILENAME=$work/python-hook.json

# ---------------------------------------------------------------------------------------------------
# Helpers in Python: input files, node XML for libvirt's test driver, the TCP server and client, the report.
cat > "$work/gen.py" <<'PY'
import json, sys

NIC = ("<interface type='network'><mac address='{mac}'/><source network='{net}' bridge='{bridge}'/>"
       "<target dev='vnet{n}'/><model type='virtio'/></interface>")

def forwards(pairs):
    inner = "".join(f"<vg:forward proto='tcp' host-port='{h}' guest-port='{g}'/>" for h, g in pairs)
    return f"<metadata><vg:forwards xmlns:vg='urn:virtgate:forwards:1'>{inner}</vg:forwards></metadata>" if pairs else ""

def mac(i):
    return "52:54:00:%02x:%02x:%02x" % ((i >> 16) & 255, (i >> 8) & 255, i & 255)

def hook_files(work):
    """Domain XML as libvirt hands it to the qemu hook, the network hook's XML, the Python hook's config."""
    guests = {"plain": (1, 0, 0), "fwd1": (2, 1, 10000), "fwd5": (3, 5, 11000), "fwd20": (4, 20, 12000)}
    hosts, config = [], {}
    for name, (i, count, base) in guests.items():
        pairs = [(base + k, base + 10000 + k) for k in range(count)]
        ip = f"192.168.122.{10 + i}"
        hosts.append(f"<host mac='{mac(i)}' name='{name}' ip='{ip}'/>")
        xml = (f"<domain type='kvm' id='{i}'><name>{name}</name><uuid>00000000-0000-4000-8000-{i:012d}</uuid>"
               f"{forwards(pairs)}<memory unit='KiB'>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
               f"<devices>{NIC.format(mac=mac(i), net='default', bridge='virbr0', n=i)}</devices></domain>")
        open(f"{work}/{name}.xml", "w").write(xml)
        if count:
            config[name] = {"interface": "virbr0", "private_ip": ip, "public_ip": "198.18.50.1",
                            "port_map": {"tcp": [list(p) for p in pairs]}}
    open(f"{work}/network.xml", "w").write(
        "<hookData><network><name>default</name><uuid>00000000-0000-4000-8000-0000000000ff</uuid>"
        "<forward mode='nat'/><bridge name='virbr0'/><ip address='192.168.122.1' prefix='24'><dhcp>"
        "<range start='192.168.122.100' end='192.168.122.254'/>" + "".join(hosts) +
        "</dhcp></ip></network></hookData>")
    json.dump(config, open(f"{work}/python-hook.json", "w"), indent=1)

def node(path, fillers, per_guest, net, bridge, prefix, first, target=None):
    """libvirt test:/// driver state: one nat network, `fillers` running guests with `per_guest` forwards
    each at first+1, first+2, ... in the /`prefix` subnet whose first address is `first` (a.b.c.d), and
    optionally a target guest (name, address, [(host, guest port)]) that sorts after every filler."""
    a = [int(x) for x in first.split(".")]
    base = (a[0] << 24) | (a[1] << 16) | (a[2] << 8) | a[3]
    dotted = lambda v: ".".join(str((v >> s) & 255) for s in (24, 16, 8, 0))
    guests = []
    for i in range(fillers):
        pairs = [(20000 + i * per_guest + k, 8000 + k) for k in range(per_guest)]
        guests.append((f"g{i:05d}", dotted(base + 10 + i), pairs))
    if target:
        guests.append(target)
    if 10 + fillers >= (1 << (32 - prefix)) - 2 or 20000 + fillers * per_guest > 65535:
        sys.exit(f"node: {fillers} guests x {per_guest} forwards do not fit")
    out = ["<?xml version='1.0'?>\n<node>\n<network><name>", net, "</name>",
           "<uuid>00000000-0000-4000-8000-0000000000fe</uuid><forward mode='nat'/>",
           f"<bridge name='{bridge}' stp='on' delay='0'/><ip address='{dotted(base + 1)}' prefix='{prefix}'><dhcp>"]
    for i, (name, ip, _) in enumerate(guests):
        out.append(f"<host mac='{mac(i + 1)}' name='{name}' ip='{ip}'/>")
    out.append("</dhcp></ip></network>\n")
    for i, (name, ip, pairs) in enumerate(guests):
        out.append(
            "<domain type='test' xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            f"<name>{name}</name><uuid>00000000-0000-4000-8001-{i + 1:012d}</uuid>{forwards(pairs)}"
            "<memory>131072</memory><vcpu>1</vcpu><os><type>hvm</type></os><devices>"
            f"<interface type='network'><mac address='{mac(i + 1)}'/><source network='{net}'/></interface>"
            "</devices><test:runstate>1</test:runstate></domain>\n")
    out.append("</node>\n")
    open(path, "w").write("".join(out))

def session(node_path):
    """What libvirt alone (baseline/libvirt-alone.c) must report for the state in node_path, as sync sees
    it: "<running guests> <guests with forwards>" (sync asks for each of those its addresses from leases,
    the test driver having no network leases)."""
    import xml.etree.ElementTree as ET
    root = ET.parse(node_path).getroot()
    test = "{http://libvirt.org/schemas/domain/test/1.0}"
    running = [d for d in root.findall("domain") if (d.findtext(f"{test}runstate") or "1").strip() == "1"]
    forwarded = sum(1 for d in running
                    if d.find("metadata/{urn:virtgate:forwards:1}forwards/{urn:virtgate:forwards:1}forward") is not None)
    print(len(running), forwarded)

if __name__ == "__main__":
    what = sys.argv[1]
    if what == "session":
        session(sys.argv[2])
    elif what == "hook-files":
        hook_files(sys.argv[2])
    elif what == "node":
        path, fillers, per_guest, net, bridge, prefix, first = sys.argv[2:9]
        target = None
        if len(sys.argv) > 9:
            name, ip, host_ports, guest_ports = sys.argv[9:13]
            target = (name, ip, list(zip(map(int, host_ports.split(",")), map(int, guest_ports.split(",")))))
        node(path, int(fillers), int(per_guest), net, bridge, int(prefix), first, target)
PY

cat > "$work/server.py" <<'PY'
# TCP server in the guest: tells each client what it saw ("<peer ip> <peer port> <local ip> <local port>").
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
while True:
    c, peer = s.accept()
    try:
        local = c.getsockname()
        c.sendall(f"{peer[0]} {peer[1]} {local[0]} {local[1]}\n".encode())
    except OSError:
        pass
    c.close()
PY

cat > "$work/client.py" <<'PY'
# From wan: `verify HOST PORT SOURCE` prints what the server saw, and the client's address.
# `pairs OUT ROUNDS PAIRS PORT HOST_A SOURCE_A HOST_B SOURCE_B` times connect() (SYN out, SYN-ACK back)
# to lab a and lab b in turn (a b, b a, a b, ...: each lab follows the other as often as itself), PAIRS
# times per round, and writes each round's two lists of times in µs as JSON. One warm-up round first,
# not kept. Alternating connection by connection is what makes a few per cent decidable on a busy
# machine: whatever else runs (frequency, other processes, interrupts) hits both labs alike within
# microseconds, and a round's ratio cancels it.
import errno, gc, json, socket, struct, sys, time
mode = sys.argv[1]
if mode == "verify":
    host, port, source = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    for attempt in range(50):
        try:
            with socket.create_connection((host, port), timeout=2, source_address=(source, 0)) as s:
                print(s.makefile().readline().strip(), s.getsockname()[0])
                sys.exit(0)
        except OSError:
            time.sleep(0.1)
    sys.exit("no connection")
out, rounds, pairs, port = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
labs = [(sys.argv[6], sys.argv[7]), (sys.argv[8], sys.argv[9])]
linger = struct.pack("ii", 1, 0)  # close with RST: no TIME_WAIT piles up on the client
# A fixed cycle of source ports: every connection after the first cycle meets the same conntrack work
# (a SYN on its tuple's closed entry replaces it) and the tables keep one size however long the run.
ports = range(41000, 41512)
clock = time.perf_counter_ns
SOL, REUSE, LINGER = socket.SOL_SOCKET, socket.SO_REUSEADDR, socket.SO_LINGER
def once(lab, k):
    host, source = labs[lab]
    # A port of the cycle can still be taken (a tuple the kernel has not let go of yet): the next one
    # is used instead, and the failed attempt is not timed.
    for attempt in range(len(ports)):
        s = socket.socket()
        s.setsockopt(SOL, LINGER, linger)
        s.setsockopt(SOL, REUSE, 1)
        try:
            s.bind((source, ports[(k + attempt) % len(ports)]))
            t0 = clock()
            s.connect((host, port))
            t1 = clock()
        except OSError as error:
            s.close()
            if error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
                continue
            raise
        s.close()
        return (t1 - t0) / 1000
    raise OSError("no source port of the cycle is free")
gc.disable()
result, k = [], 0
for r in range(rounds + 1):
    times = ([], [])
    for i in range(pairs):
        for lab in ((0, 1) if i % 2 == 0 else (1, 0)):
            times[lab].append(once(lab, k))
        k += 1
    if r > 0:
        result.append(times)
json.dump(result, open(out, "w"))
PY

# Sync's targets compare figures of different commands (apply against libvirt alone, re-sync against
# apply). Timed one command after the other, a drift of this shared machine between them reads as a
# difference; here they run in rounds instead, one of each per round, and every difference is taken
# within a round. Wall time and CPU time (user and system, children included) per run, and for sync the time
# its libvirt calls took in that very process (its log line), which no drift of the machine can separate from
# the run's wall time.
#   paired.py NS ROUNDS OUT ALONE URI: in NS, ROUNDS times: libvirt alone, a flush (not timed), apply, re-sync.
cat > "$work/paired.py" <<'PY'
import json, re, resource, subprocess, sys, time
ns, rounds, out, alone, uri = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
def run(arguments):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(["ip", "netns", "exec", ns] + arguments, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          check=True, text=True, errors="replace")
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    libvirt = re.search(r"libvirt's calls took ([0-9]+) ms", done.stderr)
    return {"wall": wall * 1000, "cpu": (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000,
            "libvirt": int(libvirt.group(1)) if libvirt else None}
result = []
for _ in range(rounds):
    one = {"alone": run([alone, uri])}
    run(["./virtgate", "flush"])
    one["apply"] = run(["./virtgate", "sync", "--connect", uri])
    one["resync"] = run(["./virtgate", "sync", "--connect", uri])
    result.append(one)
json.dump(result, open(out, "w"))
PY

# ---------------------------------------------------------------------------------------------------
hf() { # NAMESPACE NAME RUNS hyperfine-arguments... : one hyperfine run in the namespace, JSON to results/NAME.json
    local ns=$1 name=$2 runs=$3; shift 3
    if ! (cd "$work" && in_ns "$ns" hyperfine --style none --warmup "${hf_warm:-$warm}" --runs "$runs" \
            --export-json "$res/$name.json" "$@") >"$work/log/$name.log" 2>&1; then
        say "  $name failed:"; tail -n 5 "$work/log/$name.log" | sed 's/^/    /' >&2
        rm -f "$res/$name.json"
        return 1
    fi
}
skip() { # BACKEND SECTION REASON
    echo "$3" > "$res/skip-$1-$2.txt"; say "  skipped: $1 backend, $2: $3"
}

/usr/bin/python3 "$work/gen.py" hook-files "$work"

# Machine and versions, for the report.
{
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cores=$(nproc)"
    echo "memory=$(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
    echo "kernel=$(uname -r)"
    echo "os=$(. /etc/os-release; echo "$PRETTY_NAME") (debian_version $(cat /etc/debian_version 2>/dev/null || echo '?'))"
    echo "iptables=$(iptables -V 2>&1 | head -n1)"
    echo "nft=$(nft -v 2>&1 | head -n1)"
    echo "libvirt=$(virsh --version 2>/dev/null)"
    echo "python=$(/usr/bin/python3 -V 2>&1)"
    echo "hyperfine=$(hyperfine --version)"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$(git -C "$repo" log -1 --format='%h %s' 2>/dev/null || echo unknown)"
    echo "binary=$(du -h "$work/virtgate" | cut -f1)"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "quick=$quick"
} > "$res/machine.txt"

# ---------------------------------------------------------------------------------------------------
# 1 and 4. Hook latency and peak memory. One namespace per backend; the network "default" is started
# through the network hook first, as libvirt does. Every hook run applies real rules.
q() { echo "hooks/qemu $1 $2 $3 - < $1.xml > /dev/null 2>&1"; }   # GUEST OP SUBOP -> a quiet hook call
# The network "default" stopped and started again: with nft, the table goes with it (no guest holds forwards).
renew_network="hooks/network default stopped end - < network.xml > /dev/null 2>&1; hooks/network default started begin - < network.xml > /dev/null 2>&1"
hook() { in_ns "$ns" "$work/hooks/qemu" "$1" "$2" "$3" - < "$work/$1.xml"; }

mem() { # NAME PREPARE COMMAND : median of max RSS (KiB) over runs_mem runs
    local name=$1 prepare=$2 command=$3 i
    : > "$res/$name.mem"
    for i in $(seq "$runs_mem"); do
        (cd "$work" && in_ns "$ns" sh -c "$prepare" >/dev/null 2>&1) || true
        (cd "$work" && in_ns "$ns" /usr/bin/time -f %M -a -o "$res/$name.mem" sh -c "exec $command") \
            || { say "  $name failed"; rm -f "$res/$name.mem"; return 1; }
    done
}

mem_split() { # NAME : resident memory of a hook that has started and waits for its stdin, anonymous vs file-backed
    local fifo=$work/stdin.fifo p
    rm -f "$fifo"; mkfifo "$fifo"
    (cd "$work" && exec ip netns exec "$ns" "$work/hooks/qemu" plain prepare begin - < "$fifo" >/dev/null 2>&1) &
    p=$!
    started_pids+=("$p")
    exec 7>"$fifo"
    sleep 0.5
    grep -E '^(VmRSS|RssAnon|RssFile|RssShmem):' "/proc/$p/status" > "$res/$1.txt" 2>/dev/null || true
    exec 7>&-
    wait "$p" 2>/dev/null || true
    started_pids=()
    rm -f "$fifo"
}

say "hook latency: baselines (/bin/true and the Python hook pattern)"
ns=vgt-bpy-$pid
netns_new "$ns"
# /bin/true without a shell (it reads nothing); the hook commands below go through `sh -c` for their stdin,
# and hyperfine subtracts the shell's start-up from them, which leaves the exec of the hook itself.
hf "$ns" true $((runs_fast * 2)) -N /bin/true || true
# The floor of any Swift program linked as virtgate's release build is: one that only exits, with the
# static Swift runtime and Package.swift's release linker settings (lld with packed relative relocations,
# libstdc++ static through Sources/virtgate/link, no dynamic symbol table; SwiftPM's --gc-sections). Built
# plainly (gold, the shared libstdc++) the same program runs 2.2M instructions instead of 0.44M and takes
# about 0.7 ms more: that is no floor of virtgate's.
# swift-floor-modules: the same, linking the toolchain's runtime modules that virtgate's dependencies bring
# (its source says which brings which), none of virtgate's own code: what that floor costs, no change to
# virtgate's own code removes; fewer dependencies would.
if [ -n "$swiftc" ]; then
    printf 'import Glibc\nexit(0)\n' > "$work/swift-floor.swift"
    for floor in "$work/swift-floor.swift" "$here/baseline/swift-floor-modules.swift"; do
        name=$(basename "$floor" .swift)
        if "$swiftc" -O -static-stdlib -use-ld=lld -Xlinker -z -Xlinker pack-relative-relocs -Xlinker --no-export-dynamic \
                -Xlinker --gc-sections -L "$repo/Sources/virtgate/link" "$floor" -o "$work/$name" >"$work/log/$name.log" 2>&1; then
            hf "$ns" "$name" $((runs_fast * 2)) -N "$work/$name" || true
        fi
    done
fi
# The start-up floors and an event virtgate ignores, run in turn (below, per backend).
alternate=""
if [ -n "$ccompiler" ] && "$ccompiler" -O2 -o "$work/alternate" "$here/baseline/alternate.c" >"$work/log/alternate.log" 2>&1; then
    alternate=$work/alternate
fi
py() { echo "./python-hook.py $1 $2 $3 - < $1.xml > /dev/null 2>&1"; }
hf "$ns" hook-python-noop "$runs_py" "$(py plain prepare begin)" || true
for n in 1 5 20; do
    hf "$ns" hook-python-start$n "$runs_py" --prepare "$(py fwd$n stopped end)" "$(py fwd$n start begin)" || true
done
hf "$ns" hook-python-stopped20 "$runs_py" --prepare "$(py fwd20 start begin)" "$(py fwd20 stopped end)" || true
in_ns "$ns" "$work/python-hook.py" fwd20 start begin - < "$work/fwd20.xml" >/dev/null 2>&1 || true
in_ns "$ns" iptables-save | grep -c -- '^-A \(DNAT\|SNAT\|FWD\)-fwd20 ' > "$res/python-rules20.txt" || true
(cd "$work" && in_ns "$ns" ./python-hook.py fwd20 stopped end - < fwd20.xml >/dev/null 2>&1) || true
mem mem-python-noop "true" "$(py plain prepare begin)" || true
mem mem-python-start20 "$(py fwd20 stopped end)" "$(py fwd20 start begin)" || true
ip netns del "$ns"

available=()
for backend in "${backends[@]}"; do
    export VIRTGATE_BACKEND=$backend VIRTGATE_STATE_DIR=$work/state-$backend
    ns=vgt-bench-$pid
    netns_new "$ns"
    say "hook latency: backend $backend"
    # Does this build have the backend? The whole lifecycle must exit 0 and leave the rules it promises.
    probe=$work/log/probe-$backend.log
    if ! { in_ns "$ns" "$work/hooks/network" default started begin - < "$work/network.xml" \
           && hook fwd5 prepare begin && hook fwd5 start begin && hook fwd5 started begin; } >"$probe" 2>&1; then
        skip "$backend" all "a hook exited non-zero: $(tail -n 1 "$probe")"
        ip netns del "$ns"; continue
    fi
    if [ "$backend" = nft ] && ! in_ns "$ns" nft list tables 2>/dev/null | grep -q virtgate; then
        skip "$backend" all "VIRTGATE_BACKEND=nft was accepted but no virtgate nftables table appeared (this build has no nft backend yet)"
        ip netns del "$ns"; continue
    fi
    if [ "$backend" = iptables ] && ! in_ns "$ns" iptables-save -t nat | grep -q 'VGD-fwd5'; then
        skip "$backend" all "the hook exited 0 but left no VGD-fwd5 chain"
        ip netns del "$ns"; continue
    fi
    if ! { hook fwd5 stopped end && hook fwd5 release end; } >>"$probe" 2>&1; then
        skip "$backend" all "stopping a guest failed: $(tail -n 1 "$probe")"
        ip netns del "$ns"; continue
    fi
    available+=("$backend")
    b=$backend
    # The floor: an event virtgate ignores (start-up, arguments, one log line; no XML, no firewall).
    hf "$ns" hook-$b-floor "$runs_fast" "$(q plain no-such-event begin)" || true
    # ... and in turn with the two Swift floors (baseline/alternate.c): what separates them is a fraction of
    # a millisecond, less than the machine drifts between two hyperfine runs a minute apart.
    if [ -n "$alternate" ] && [ -x "$work/swift-floor" ] && [ -x "$work/swift-floor-modules" ]; then
        (cd "$work" && in_ns "$ns" "$alternate" "$runs_alternate" "$res/start-up-$b" plain.xml \
            floor "$work/swift-floor" ::: modules "$work/swift-floor-modules" ::: \
            ignored "$work/hooks/qemu" plain no-such-event begin -) >"$work/log/start-up-$b.log" 2>&1 \
            || say "  start-up-$b failed: $(tail -n 1 "$work/log/start-up-$b.log")"
    fi
    # A guest without forwards, each lifecycle event from the state libvirt calls it in.
    hf "$ns" hook-$b-prepare "$runs_fast" --prepare "$(q plain release end)" "$(q plain prepare begin)" || true
    hf "$ns" hook-$b-start "$runs_fast" --prepare "$(q plain release end)" "$(q plain start begin)" || true
    hf "$ns" hook-$b-started "$runs_fast" --prepare "$(q plain start begin)" "$(q plain started begin)" || true
    hf "$ns" hook-$b-stopped "$runs_fast" --prepare "$(q plain start begin)" "$(q plain stopped end)" || true
    hf "$ns" hook-$b-release "$runs_fast" --prepare "$(q plain start begin); $(q plain stopped end)" \
        "$(q plain release end)" || true
    # start with forwards: each run begins with the guest's rules absent (released just before).
    for n in 1 5 20; do
        hf "$ns" hook-$b-start$n "$runs_fast" --prepare "$(q fwd$n release end)" "$(q fwd$n start begin)" || true
        hook fwd$n release end >/dev/null 2>&1 || true
    done
    hf "$ns" hook-$b-stopped20 "$runs_fast" --prepare "$(q fwd20 start begin)" "$(q fwd20 stopped end)" || true
    hook fwd20 release end >/dev/null 2>&1 || true
    # With nft the table stays after a guest's stop while its network runs (it holds the network's
    # gateway), so the start above adds elements only. The network's start creates it without base
    # chains, and the first guest with forwards since then adds them: each run begins with the network
    # stopped (the table goes) and started.
    if [ "$b" = nft ]; then
        hf "$ns" hook-$b-start20-first "$runs_fast" \
            --prepare "$(q fwd20 release end); $renew_network" \
            "$(q fwd20 start begin)" || true
        hook fwd20 release end >/dev/null 2>&1 || true
    fi
    # start with 20 forwards while another guest (fwd5) holds forwards: with nft the table is there
    # already, so the start only adds its elements.
    if hook fwd5 start begin >/dev/null 2>&1; then
        hf "$ns" hook-$b-start20-beside "$runs_fast" --prepare "$(q fwd20 release end)" "$(q fwd20 start begin)" || true
        hook fwd20 release end >/dev/null 2>&1 || true
    fi
    hook fwd5 release end >/dev/null 2>&1 || true
    # The network's own start, no guest holding forwards: its iptables chain, and with nft the table
    # without base chains (what the first guest then need not create).
    hf "$ns" hook-$b-netstart "$runs_fast" \
        --prepare "hooks/network default stopped end - < network.xml > /dev/null 2>&1" \
        "hooks/network default started begin - < network.xml > /dev/null 2>&1" || true
    # Started again whatever hyperfine's last step was (a failed run can end after a prepare).
    (cd "$work" && in_ns "$ns" sh -c "$renew_network") || true
    # The kernel's share of start with 20 forwards: the very transaction virtgate writes, restored alone.
    if [ "$b" = iptables ]; then
        # (IPv4 only: the part before an "# ip6tables-restore" section, if any)
        (cd "$work" && in_ns "$ns" ./virtgate hook --dry-run qemu fwd20 start begin - < fwd20.xml 2>/dev/null \
            | sed '/^# ip6tables-restore/,$d' > add20.rules) || true
        hook fwd20 start begin >/dev/null 2>&1 || true
        (cd "$work" && in_ns "$ns" ./virtgate hook --dry-run qemu fwd20 stopped end - < fwd20.xml 2>/dev/null \
            | sed '/^# ip6tables-restore/,$d' > del20.rules) || true
        hook fwd20 release end >/dev/null 2>&1 || true
        if in_ns "$ns" iptables-restore -w --noflush --test < "$work/add20.rules" 2>/dev/null; then
            hf "$ns" hook-restore-start20 "$runs_fast" --prepare "iptables-restore -w --noflush < del20.rules > /dev/null 2>&1 || true" \
                "iptables-restore -w --noflush < add20.rules" || true
            in_ns "$ns" iptables-restore -w --noflush < "$work/del20.rules" >/dev/null 2>&1 || true
        fi
    fi
    # What every event starts with: reading the kernel's rules (here: the network's chains only).
    if [ "$b" = iptables ]; then
        hf "$ns" hook-save "$runs_fast" "iptables-save > /dev/null" || true
    fi
    mem mem-$b-noop "true" "$(q plain prepare begin)" || true
    mem_split mem-$b-split || true
    # The most a start with 20 forwards holds: with nft, the first guest's, which adds the base chains.
    first=""
    [ "$b" = nft ] && first="; $renew_network"
    mem mem-$b-start20 "$(q fwd20 release end)$first" "$(q fwd20 start begin)" || true
    hook fwd20 release end >/dev/null 2>&1 || true
    # The kernel's share with nft: the very transaction of the first guest's start with 20 forwards
    # (its base chains and elements), applied by nft alone to the table as the network's start left it.
    if [ "$b" = nft ]; then
        (cd "$work" && in_ns "$ns" sh -c "$renew_network") || true
        (cd "$work" && in_ns "$ns" nft list table inet virtgate > net.nft) || true
        (cd "$work" && in_ns "$ns" ./virtgate hook --dry-run qemu fwd20 start begin - < fwd20.xml 2>/dev/null \
            | grep -v '^# nft' > add20.nft) || true
        if [ -s "$work/add20.nft" ] && [ -s "$work/net.nft" ] && in_ns "$ns" nft -c -f "$work/add20.nft" 2>/dev/null; then
            hf "$ns" hook-nft-alone-start20 "$runs_fast" \
                --prepare "nft delete table inet virtgate > /dev/null 2>&1; nft -f net.nft > /dev/null 2>&1 || true" \
                "nft -f add20.nft" || true
            (cd "$work" && in_ns "$ns" sh -c "$renew_network") || true
        fi
        # ... and of stopped with 20 forwards: its elements deleted by nft alone, re-added untimed. Any
        # netfilter socket closed after a change that deleted something waits for the kernel's deferred
        # freeing (an RCU grace period), nft's as virtgate's.
        hook fwd20 start begin >/dev/null 2>&1 || true
        (cd "$work" && in_ns "$ns" ./virtgate hook --dry-run qemu fwd20 stopped end - < fwd20.xml 2>/dev/null \
            | grep -v '^# nft' > del20.nft) || true
        hook fwd20 release end >/dev/null 2>&1 || true
        (cd "$work" && in_ns "$ns" ./virtgate hook --dry-run qemu fwd20 start begin - < fwd20.xml 2>/dev/null \
            | grep -v '^# nft' > readd20.nft) || true
        if grep -q '^delete element' "$work/del20.nft" && grep -q '^add element' "$work/readd20.nft" \
           && ! grep -q '^table' "$work/readd20.nft"; then
            hf "$ns" hook-nft-alone-stopped20 "$runs_fast" --prepare "nft -f readd20.nft > /dev/null 2>&1 || true" \
                "nft -f del20.nft" || true
            # ... and of start with 20 forwards after its own stop (elements only: the table stays while
            # its network runs), the row a guest's restart is measured by.
            hf "$ns" hook-nft-alone-restart20 "$runs_fast" --prepare "nft -f del20.nft > /dev/null 2>&1 || true" \
                "nft -f readd20.nft" || true
            in_ns "$ns" nft -f "$work/del20.nft" >/dev/null 2>&1 || true
        fi
    fi
    # start with 20 forwards at scale: beside 1,000 guests × 5 forwards (applied by one sync first),
    # so reading the kernel's state is reading a full table. The guest's XML is the one sync
    # remembered (its address comes from the network sync remembered).
    if [ "$quick" = 1 ]; then scale=50; else scale=1000; fi
    /usr/bin/python3 "$work/gen.py" node "$work/scale-$b.xml" "$scale" 5 default virbr0 16 10.221.0.0 \
        scale20 10.221.200.1 "$(seq -s, 12000 12019)" "$(seq -s, 22000 22019)"
    if in_ns "$ns" "$work/virtgate" sync --connect "test:///$work/scale-$b.xml" >"$work/log/scale-$b.log" 2>&1 \
       && cp "$VIRTGATE_STATE_DIR/guests/scale20.xml" "$work/scale20.xml"; then
        hf "$ns" hook-$b-start20-scale "$runs_fast" --prepare "$(q scale20 release end)" "$(q scale20 start begin)" || true
        echo "$scale" > "$res/scale-guests.txt"
    else
        skip "$b" scale "sync of $scale guests failed: $(tail -n 1 "$work/log/scale-$b.log")"
    fi
    ip netns del "$ns"
done

# ---------------------------------------------------------------------------------------------------
# 2. sync of G guests x 5 forwards from libvirt's test:/// driver (state parsed from a node XML file).
for i in "${!sync_sizes[@]}"; do
    g=${sync_sizes[$i]}
    /usr/bin/python3 "$work/gen.py" node "$work/sync-$g.xml" "$g" 5 bench vgt-bsbr 16 10.220.0.0
done
say "sync: libvirt alone (the libvirt calls sync makes, from a C program; virsh list) on the same test:/// state"
ns=vgt-bsync-$pid
netns_new "$ns"
alone=
if [ -n "$ccompiler" ] && "$ccompiler" -O2 -o "$work/libvirt-alone" "$here/baseline/libvirt-alone.c" -lvirt \
        >"$work/log/libvirt-alone.log" 2>&1; then
    alone=$work/libvirt-alone
else
    say "  cannot build the libvirt-alone baseline ($(tail -n 1 "$work/log/libvirt-alone.log" 2>/dev/null)); own shares not measured"
fi
for i in "${!sync_sizes[@]}"; do
    g=${sync_sizes[$i]}
    uri=test:///$work/sync-$g.xml
    if [ -n "$alone" ]; then
        # It must have made every call: each running guest's XML, and a lease lookup for each guest
        # with forwards (the test driver has no network leases, so sync asks per guest).
        expect=$(/usr/bin/python3 "$work/gen.py" session "$work/sync-$g.xml")
        got=$(in_ns "$ns" "$alone" "$uri" 2>"$work/log/libvirt-alone-$g.err" | cut -d' ' -f1,2)
        if [ "$got" = "$expect" ]; then
            echo "$expect" > "$res/sync-session-$g.calls"
            hf_warm=${sync_warm[$i]} hf "$ns" sync-libvirt-$g "${sync_runs[$i]}" -N "$alone $uri" || true
        else
            say "  libvirt alone for $g guests answered '$got' (guests, lease lookups), expected '$expect'; not measured"
        fi
    fi
    hf_warm=${sync_warm[$i]} hf "$ns" sync-virsh-$g "${sync_runs[$i]}" "virsh -q -c $uri list --all > /dev/null" || true
done
for backend in "${available[@]}"; do
    export VIRTGATE_BACKEND=$backend VIRTGATE_STATE_DIR=$work/state-sync-$backend
    netns_new "$ns"
    say "sync: backend $backend"
    flush="./virtgate flush > /dev/null 2>&1"
    for i in "${!sync_sizes[@]}"; do
        g=${sync_sizes[$i]} r=${sync_runs[$i]} hf_warm=${sync_warm[$i]}
        uri=test:///$work/sync-$g.xml
        in_ns "$ns" "$work/virtgate" flush >/dev/null 2>&1 || true
        if ! in_ns "$ns" "$work/virtgate" sync --dry-run --connect "$uri" > "$work/sync-$backend-$g.rules" 2>"$work/log/sync-$backend-$g.err"; then
            skip "$backend" "sync-$g" "sync --dry-run failed: $(tail -n 1 "$work/log/sync-$backend-$g.err")"
            continue
        fi
        hf "$ns" sync-$backend-$g-dry "$r" "./virtgate sync --dry-run --connect $uri > /dev/null 2>&1" || true
        hf "$ns" sync-$backend-$g-apply "$r" --prepare "$flush" "./virtgate sync --connect $uri > /dev/null 2>&1" || true
        in_ns "$ns" "$work/virtgate" sync --connect "$uri" >/dev/null 2>&1 || true
        if [ "$backend" = nft ]; then
            in_ns "$ns" nft list table inet virtgate 2>/dev/null | grep -o ' : [0-9]' | wc -l > "$res/sync-$backend-$g.dnat" || true
        else
            in_ns "$ns" iptables-save -t nat | grep -c '^-A VGD-' > "$res/sync-$backend-$g.dnat" || true
        fi
        hf "$ns" sync-$backend-$g-noop "$r" "./virtgate sync --connect $uri > /dev/null 2>&1" || true
        if [ "$g" = "$paired_size" ] && [ -n "$alone" ] && [ -s "$res/sync-session-$g.calls" ]; then
            (cd "$work" && /usr/bin/python3 paired.py "$ns" "$paired_rounds" "$res/sync-paired-$backend-$g.json" "$alone" "$uri") \
                || say "  paired rounds at $g guests failed"
        fi
        # Baseline: the kernel's share, one iptables-restore of the very ruleset sync wrote.
        if [ "$backend" = iptables ]; then
            in_ns "$ns" "$work/virtgate" flush >/dev/null 2>&1 || true
            sed -i '/^# ip6tables-restore/,$d' "$work/sync-$backend-$g.rules"
            if in_ns "$ns" iptables-restore -w --noflush < "$work/sync-$backend-$g.rules" 2>/dev/null; then
                hf "$ns" sync-restore-$g "$r" --prepare "$flush" \
                    "iptables-restore -w --noflush < sync-$backend-$g.rules" || true
            fi
        fi
        # With nft: the very nft transaction sync wrote (it creates the table with every element),
        # applied by nft alone: libnftables' parsing of it and the kernel's commit.
        if [ "$backend" = nft ]; then
            in_ns "$ns" "$work/virtgate" flush >/dev/null 2>&1 || true
            sed -n '/^# nft -f$/,$p' "$work/sync-$backend-$g.rules" | sed 1d > "$work/sync-$backend-$g.nft"
            if [ -s "$work/sync-$backend-$g.nft" ] && in_ns "$ns" nft -c -f "$work/sync-$backend-$g.nft" 2>/dev/null; then
                hf "$ns" sync-nft-alone-$g "$r" --prepare "nft delete table inet virtgate > /dev/null 2>&1 || true" \
                    "nft -f sync-$backend-$g.nft" || true
            fi
            in_ns "$ns" nft delete table inet virtgate >/dev/null 2>&1 || true
        fi
        in_ns "$ns" "$work/virtgate" flush >/dev/null 2>&1 || true
    done
done
ip netns del "$ns" 2>/dev/null || true
hf_warm=

# ---------------------------------------------------------------------------------------------------
# 3. A new connection through the DNAT, 10 vs N forwards, loaded by virtgate sync. Two labs alike, a and
#    b, each: a host namespace (forwarding on, FORWARD policy DROP as under UFW) with a bridge vgt-bcbr
#    (10.213.48.1/20) and a guest namespace (10.213.63.250) listening on 8080 behind it; both hosts link
#    to one wan namespace (lab a: host 198.18.50.1, wan 198.18.50.2; lab b: host 198.18.50.5, wan
#    198.18.50.6). The measured forward is host port 40000 -> 8080, the last forward of the guest that
#    sorts last. One client process in wan alternates its connections between the labs, one lab holding
#    the small ruleset and the other the large one; the phases swap which lab holds which (a crossover),
#    so a difference between the labs themselves cancels out of the ratio.
wan=vgt-bc-wan-$pid
target_ip=10.213.63.250
conn_host() { echo "vgt-bc-host$1-$pid"; }
conn_addr() { case $1 in a) echo "198.18.50.1 198.18.50.2" ;; b) echo "198.18.50.5 198.18.50.6" ;; esac; }
# Connections per size: phases x rounds x pairs. A phase is one arrangement of the rulesets; a round's
# ratio compares its two labs over `pairs` connections each. The iptables backend at the large size costs
# milliseconds per connection (a linear walk); fewer of its connections show that as well.
if [ "$quick" -eq 1 ]; then
    conn_phases=4; conn_rounds_nft=3; conn_pairs_nft=25; conn_rounds_iptables=3; conn_pairs_iptables=25
else
    conn_phases=8; conn_rounds_nft=25; conn_pairs_nft=200; conn_rounds_iptables=5; conn_pairs_iptables=40
fi
# The client and its softirq work on one CPU, the guests' servers on another, where this process may
# use two.
client_pin=() server_pin=()
read -r cpu_client cpu_server < <(/usr/bin/python3 -c 'import os; print(*sorted(os.sched_getaffinity(0))[:2])')
if command -v taskset >/dev/null && [ -n "${cpu_server:-}" ]; then
    client_pin=(taskset -c "$cpu_client"); server_pin=(taskset -c "$cpu_server")
fi
for n in "${conn_sizes[@]}"; do
    fillers=$(( n / 5 - 1 ))
    /usr/bin/python3 "$work/gen.py" node "$work/conn-$n.xml" "$fillers" 5 bcnet vgt-bcbr 20 10.213.48.0 \
        zz-target "$target_ip" 39996,39997,39998,39999,40000 8076,8077,8078,8079,8080
done
conn_servers=()
lab_up() {
    local lab host guest hostip wanip
    netns_new "$wan"
    for lab in a b; do
        host=$(conn_host $lab) guest=vgt-bc-guest$lab-$pid
        read -r hostip wanip <<<"$(conn_addr $lab)"
        netns_new "$host"; netns_new "$guest"
        ip -n "$host" link add vgt-bcbr type bridge
        ip -n "$host" addr add 10.213.48.1/20 dev vgt-bcbr
        ip -n "$host" link set vgt-bcbr up
        ip -n "$host" link add vgt-bcg type veth peer name eth0 netns "$guest"
        ip -n "$host" link set vgt-bcg master vgt-bcbr up
        ip -n "$guest" addr add "$target_ip/20" dev eth0
        ip -n "$guest" link set eth0 up
        ip -n "$guest" route add default via 10.213.48.1
        ip -n "$host" link add vgt-bcw type veth peer name "eth-$lab" netns "$wan"
        ip -n "$host" addr add "$hostip/30" dev vgt-bcw
        ip -n "$host" link set vgt-bcw up
        ip -n "$wan" addr add "$wanip/30" dev "eth-$lab"
        ip -n "$wan" link set "eth-$lab" up
        in_ns "$host" sysctl -qw net.ipv4.ip_forward=1
        in_ns "$host" iptables -P FORWARD DROP
        ip netns exec "$guest" "${server_pin[@]}" /usr/bin/python3 "$work/server.py" 8080 >/dev/null 2>&1 &
        conn_servers+=("$!"); started_pids+=("$!")
    done
}
lab_down() {
    local p lab
    for p in "${conn_servers[@]}"; do { kill "$p"; wait "$p"; } 2>/dev/null || true; done
    conn_servers=() started_pids=()
    ip netns del "$wan"
    for lab in a b; do ip netns del "$(conn_host $lab)"; ip netns del "vgt-bc-guest$lab-$pid"; done
}
# conn_load BACKEND LAB SIZE PHASE: sync the lab to SIZE forwards and prove the path with one connection:
# the guest's server sees the lab's wan address on its port 8080 while the client dialled 40000.
conn_load() {
    local b=$1 lab=$2 n=$3 phase=$4 host hostip wanip seen dnat last elements tables
    host=$(conn_host "$lab")
    read -r hostip wanip <<<"$(conn_addr "$lab")"
    if ! VIRTGATE_STATE_DIR=$work/state-conn-$b-$lab in_ns "$host" "$work/virtgate" sync --connect "test:///$work/conn-$n.xml" \
            >"$work/log/conn-$b-$lab-$n.sync" 2>&1; then
        skip "$b" conn "sync of $n forwards failed: $(tail -n 1 "$work/log/conn-$b-$lab-$n.sync")"; return 1
    fi
    seen=$(in_ns "$wan" /usr/bin/python3 "$work/client.py" verify "$hostip" 40000 "$wanip" 2>&1) || seen="none: $seen"
    case $seen in
        "$wanip "*" $target_ip 8080 $wanip") echo "$seen" > "$res/conn-$b-$n-$lab.verify" ;;
        *) skip "$b" conn "lab $lab, phase $phase, $n forwards: the connection did not cross the DNAT as expected (server saw: $seen)"; return 1 ;;
    esac
    if [ ! -e "$res/conn-$b-$n.rules" ]; then
        dnat=$(in_ns "$host" iptables-save -t nat | grep -c '^-A VGD-' || true)
        last=$(in_ns "$host" iptables-save -t nat | grep '^-A VIRTGATE-DNAT ' | tail -n 1 | awk '{print $NF}') || true
        elements=$(in_ns "$host" nft list table inet virtgate 2>/dev/null | grep -o ' : [0-9]' | wc -l) || true
        tables=$(in_ns "$host" nft list tables 2>/dev/null | tr '\n' ' ')
        echo "dnat_rules=$dnat map_elements=$elements last_dispatch=$last tables=$tables" > "$res/conn-$b-$n.rules"
    fi
}
small=${conn_sizes[0]} large=${conn_sizes[-1]}
for backend in "${available[@]}"; do
    export VIRTGATE_BACKEND=$backend
    rounds_var=conn_rounds_$backend pairs_var=conn_pairs_$backend
    rounds=${!rounds_var} pairs=${!pairs_var}
    say "connections: backend $backend ($small vs $large forwards, $conn_phases phases x $rounds rounds x $pairs connections to each lab)"
    lab_up
    ok=1
    for phase in $(seq "$conn_phases"); do
        # Odd phases: lab a holds the small ruleset, b the large one; even phases the other way round.
        if [ $((phase % 2)) -eq 1 ]; then size_a=$small size_b=$large large_lab=b; else size_a=$large size_b=$small large_lab=a; fi
        conn_load "$backend" a "$size_a" "$phase" && conn_load "$backend" b "$size_b" "$phase" || { ok=0; break; }
        echo "$large_lab" > "$res/conn-$backend-phase$phase.large"
        # A connection that never completes (a SYN dropped) would block for minutes: bounded, and a skip.
        if ! timeout 600 ip netns exec "$wan" "${client_pin[@]}" /usr/bin/python3 "$work/client.py" pairs \
                "$res/conn-$backend-phase$phase.json" "$rounds" "$pairs" 40000 198.18.50.1 198.18.50.2 198.18.50.5 198.18.50.6 \
                2>"$work/log/conn-$backend-phase$phase.err"; then
            skip "$backend" conn "phase $phase: the client failed: $(tail -n 1 "$work/log/conn-$backend-phase$phase.err")"; ok=0; break
        fi
    done
    [ "$ok" -eq 1 ] || rm -f "$res/conn-$backend-phase"*
    lab_down
done

echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$res/machine.txt"

# ---------------------------------------------------------------------------------------------------
# The report.
cat > "$work/report.py" <<'PY'
import json, os, statistics, sys
res, sync_sizes, conn_sizes = sys.argv[1], sys.argv[2].split(), sys.argv[3].split()
backends = ["iptables", "nft"]
machine = dict(line.rstrip("\n").split("=", 1) for line in open(f"{res}/machine.txt") if "=" in line)

def hf(name):
    try:
        r = json.load(open(f"{res}/{name}.json"))["results"][0]
        return {"median": r["median"] * 1000, "runs": len(r["times"]),
                "q1": statistics.quantiles(r["times"], n=4)[0] * 1000 if len(r["times"]) > 1 else r["median"] * 1000,
                "q3": statistics.quantiles(r["times"], n=4)[2] * 1000 if len(r["times"]) > 1 else r["median"] * 1000}
    except (FileNotFoundError, KeyError, IndexError, ValueError):
        return None

def ms(x):
    return "–" if x is None else (f"{x['median']:.2f} ms" if x["median"] < 100 else f"{x['median']:.0f} ms")

def skipped(backend, section):
    for s in (section, "all"):
        p = f"{res}/skip-{backend}-{s}.txt"
        if os.path.exists(p):
            return open(p).read().strip()
    return None

def check(ok):
    return "met" if ok else "**missed**"

def interval_verdict(m, bound, unit="", no_interval=""):
    """m is (median, low, high): met only when the median is within the bound; whether the 95 % interval
    decides it is said with it."""
    low, high = m[1], m[2]
    where = (f" ({no_interval})" if no_interval else "") if low is None else (
        f" (interval below {bound}{unit})" if high <= bound else
        f" (interval above {bound}{unit})" if low > bound else f" (interval crosses {bound}{unit}: not decided)")
    return check(m[0] <= bound) + where

def faster(base, v):
    """base's median over v's; None without a base, or when v's median is 0 (hyperfine's subtraction
    of the shell's start-up can leave 0 for a run that short), which no ratio can be made of."""
    return base["median"] / v["median"] if base and v and v["median"] > 0 else None

ZERO = "not measurable: median 0 after hyperfine's shell correction"

out = []
p = out.append
quick = machine.get("quick") == "1"
p("# virtgate benchmarks\n")
if quick:
    p("> **Quick mode**: small sizes and few runs, a smoke test of the suite. Do not quote these figures.\n")
p("Generated by `sudo bash Tests/bench/run.sh" + (" --quick" if quick else "") + "`. Whole processes, medians of several runs, "
  "every figure next to a baseline measured in the same run. All rules are real: each run applies them in a "
  "private network namespace.\n")
p("## Machine\n")
p("| | |\n|---|---|")
for key, label in [("cpu", "CPU"), ("cores", "cores"), ("memory", "memory"), ("kernel", "kernel"), ("os", "OS"),
                   ("iptables", "iptables"), ("nft", "nftables"), ("libvirt", "libvirt (test:/// driver)"),
                   ("python", "Python (baseline)"), ("hyperfine", "timing"), ("commit", "virtgate commit"),
                   ("binary", "binary size"), ("date", "date"),
                   ("load_start", "load average at start / end")]:
    value = machine.get(key, "?")
    if key == "load_start":
        value += " / " + machine.get("load_end", "?")
    p(f"| {label} | {value} |")
p("")
for b in backends:
    reason = skipped(b, "all")
    if reason:
        p(f"**{b} backend skipped:** {reason}\n")

# 1. Hook latency
true = hf("true")
py_noop = hf("hook-python-noop")
p("## 1. Hook latency\n")
p("virtgate runs as libvirt runs it: `hooks/qemu` (a symlink to the binary) with `GUEST OPERATION SUB-OPERATION -` "
  "and the domain XML on stdin, in a namespace where the network `default` was started through the network hook. "
  "Every run starts from the state libvirt calls that event in: `start` with the guest's rules absent (the guest is "
  "released in hyperfine's `--prepare`, which is not timed), `stopped` and `started` with them present, `release` "
  "after `stopped`. hyperfine runs each hook command through `sh -c` (for its stdin) and subtracts the shell's own start-up; "
  "`/bin/true` runs without a shell.\n")
swift_floor = hf("swift-floor")
if swift_floor:
    p(f"The floor of a Swift program: one linked as virtgate's release build is (static Swift runtime, lld, packed "
      f"relative relocations, libstdc++ static), that only exits, "
      f"takes {ms(swift_floor)} ({swift_floor['median'] - true['median']:.2f} ms above `/bin/true`, run the same way): "
      f"the runtime's start-up, which no virtgate change removes.\n")
modules_floor = hf("swift-floor-modules")
if modules_floor:
    above = f" ({modules_floor['median'] - swift_floor['median']:.2f} ms above it)" if swift_floor else ""
    p(f"The same program linking the runtime modules virtgate's dependencies bring (`Tests/bench/baseline/swift-floor-modules.swift`: "
      f"FoundationEssentials and the regex modules through swift-argument-parser, the concurrency runtime and libdispatch "
      f"through swift-subprocess), linked as virtgate's release build is, takes {ms(modules_floor)}{above}: "
      f"the floor of any binary built from these dependencies. An event virtgate ignores, below, is that floor and the "
      f"hook's own start (arguments, settings, log line).\n")
p(f"Baselines: `/bin/true` {ms(true)}; the classic Python hook pattern (`Tests/bench/baseline/python-hook.py`, "
  f"one `iptables` process per rule) {ms(py_noop)} for a guest it has nothing to do for.\n")
rows = [("floor", "an event virtgate ignores (start-up, arguments, settings, a log line)", None), ("prepare", "no forwards: `prepare`", "noop"), ("start", "no forwards: `start`", "noop"),
        ("started", "no forwards: `started`", "noop"), ("stopped", "no forwards: `stopped`", "noop"),
        ("release", "no forwards: `release`", "noop"), ("start1", "`start`, 1 forward", None),
        ("start5", "`start`, 5 forwards", None), ("start20", "`start`, 20 forwards (after its own stop, its network running)", "start20"),
        ("stopped20", "`stopped`, 20 forwards", None),
        ("netstart", "a network's `started`, no guest (with `nft`: the table, without base chains)", None)]
summary = []
for b in backends:
    if skipped(b, "all"):
        continue
    p(f"### Backend `{b}`\n")
    p("| hook run | virtgate | (q1–q3) | Python pattern | virtgate faster by | × `/bin/true` | target | |")
    p("|---|---|---|---|---|---|---|---|")
    lifecycle = 0.0
    for key, label, target in rows:
        v = hf(f"hook-{b}-{key}")
        base = py_noop if target == "noop" else (hf(f"hook-python-{key}") if key != "floor" else None)
        speed = f"{faster(base, v):.1f}×" if faster(base, v) is not None else "–"
        xtrue = f"{v['median'] / true['median']:.1f}" if v and true and true["median"] > 0 else "–"
        spread = f"{v['q1']:.2f}–{v['q3']:.2f}" if v else ""
        goal, verdict = "", ""
        if target == "noop":
            goal = "≤ 2 ms above `/bin/true`, ≥ 15×"
            verdict = (check(base and true and v["median"] - true["median"] <= 2 and faster(base, v) >= 15)
                       if v["median"] > 0 else ZERO) if v else ""
            lifecycle += v["median"] if v else 0
        elif target == "start20":
            goal = "≤ 4 ms, ≥ 35×"
            verdict = (check(base and v["median"] <= 4 and faster(base, v) >= 35)
                       if v["median"] > 0 else ZERO) if v else ""
            if v:
                summary.append((b, "start, 20 forwards, after its own stop (its network running)", v, base))
        if key == "prepare" and v:
            summary.append((b, "no-op hook (`prepare`)", v, base))
        p(f"| {label} | {ms(v)} | {spread} | {ms(base)} | {speed} | {xtrue} | {goal} | {verdict} |")
        if key == "started" and hf("hook-save") and b == "iptables":
            r = hf("hook-save")
            p(f"| ↳ `iptables-save` alone (an event with forwards reads the kernel's rules first; one without runs none) | {ms(r)} | {r['q1']:.2f}–{r['q3']:.2f} | | | "
              f"{r['median'] / true['median']:.1f} | | |")
        if key == "start20" and hf("hook-restore-start20") and b == "iptables":
            r = hf("hook-restore-start20")
            p(f"| ↳ `iptables-restore` of that same transaction alone | {ms(r)} | {r['q1']:.2f}–{r['q3']:.2f} | | | "
              f"{r['median'] / true['median']:.1f} | | |")
        if key == "start20" and hf("hook-nft-alone-restart20") and b == "nft":
            r = hf("hook-nft-alone-restart20")
            p(f"| ↳ `nft -f` of that same transaction alone (elements only) | {ms(r)} | "
              f"{r['q1']:.2f}–{r['q3']:.2f} | | | {r['median'] / true['median']:.1f} | | |")
        if key == "start20" and hf(f"hook-{b}-start20-first"):
            r = hf(f"hook-{b}-start20-first")
            py20 = hf("hook-python-start20")
            summary.append((b, "start, 20 forwards, the first guest with forwards since its network started (adds the base chains)", r, py20))
            p(f"| ↳ the same `start` as the first guest with forwards since its network started (it adds the table's base chains) | "
              f"{ms(r)} | {r['q1']:.2f}–{r['q3']:.2f} | | | {r['median'] / true['median']:.1f} | "
              f"≤ 4 ms, ≥ 35× | {check(py20 and 0 < r['median'] <= 4 and py20['median'] / r['median'] >= 35)} |")
        if key == "start20" and hf("hook-nft-alone-start20") and b == "nft":
            r = hf("hook-nft-alone-start20")
            p(f"| ↳ `nft -f` of that first guest's transaction alone (base chains and elements) | {ms(r)} | "
              f"{r['q1']:.2f}–{r['q3']:.2f} | | | {r['median'] / true['median']:.1f} | | |")
        if key == "stopped20" and hf("hook-nft-alone-stopped20") and b == "nft":
            r = hf("hook-nft-alone-stopped20")
            p(f"| ↳ `nft -f` of that same transaction alone (a netfilter socket closed after a deletion waits for the "
              f"kernel's deferred freeing, an RCU grace period: nft's as virtgate's) | {ms(r)} | "
              f"{r['q1']:.2f}–{r['q3']:.2f} | | | {r['median'] / true['median']:.1f} | | |")
        if key == "start20" and hf(f"hook-{b}-start20-beside"):
            r = hf(f"hook-{b}-start20-beside")
            py20 = hf("hook-python-start20")
            if b == "nft":
                summary.append((b, "start, 20 forwards, beside another guest's (the table exists)", r, hf("hook-python-start20")))
            p(f"| ↳ the same `start` while another guest holds forwards{' (the table exists: only elements are added)' if b == 'nft' else ''} | "
              f"{ms(r)} | {r['q1']:.2f}–{r['q3']:.2f} | | | {r['median'] / true['median']:.1f} | "
              + (f"≤ 4 ms, ≥ 35× | {check(py20 and 0 < r['median'] <= 4 and py20['median'] / r['median'] >= 35)} |"
                 if b == "nft" else "| |"))
        if key == "start20" and hf(f"hook-{b}-start20-scale"):
            r = hf(f"hook-{b}-start20-scale")
            n = open(f"{res}/scale-guests.txt").read().strip() if os.path.exists(f"{res}/scale-guests.txt") else "?"
            p(f"| ↳ the same `start` beside {int(n):,} guests × 5 forwards (the kernel's state is a full table) | {ms(r)} | "
              f"{r['q1']:.2f}–{r['q3']:.2f} | | | {r['median'] / true['median']:.1f} | | |")
    p("")
    floor_t, modules_t, ignored_t = (hf(f"start-up-{b}-{name}") for name in ("floor", "modules", "ignored"))
    if floor_t and modules_t and ignored_t:
        p(f"Run in turn instead ({floor_t['runs']} rounds of the three, by `Tests/bench/baseline/alternate.c`, each with "
          f"the same drift of the machine): the Swift floor {ms(floor_t)}, the floor with the runtime modules of "
          f"virtgate's dependencies {ms(modules_t)} ({modules_t['median'] - floor_t['median']:+.2f} ms), an event "
          f"virtgate ignores {ms(ignored_t)} ({ignored_t['median'] - modules_t['median']:+.2f} ms more: the hook's own "
          f"start).\n")
    if py_noop and lifecycle:
        p(f"libvirt runs the hook at least five times per guest lifecycle (`prepare`, `start`, `started`, `stopped`, "
          f"`release`; more with `migrate`, `restore` or `reconnect`): {lifecycle:.1f} ms in all for a guest without "
          f"forwards, against {5 * py_noop['median']:.0f} ms for the Python pattern.\n")
rules20 = open(f"{res}/python-rules20.txt").read().strip() if os.path.exists(f"{res}/python-rules20.txt") else "?"
p(f"The Python pattern's `start` with 20 forwards runs 87 `iptables` processes (3 chains, 4 rules per forward "
  f"({rules20} rules in its chains afterwards), 4 jumps), plus one `which iptables`; its `stopped` runs 10. q1–q3 is "
  f"the interquartile range of the runs.\n")

# 4. Memory
p("## 2. Peak memory of a hook run\n")
p(f"Maximum resident set size from GNU time (`/usr/bin/time -f %M`), median of several runs, of the hook process and "
  f"its children's largest. Target ≤ 15 MiB.\n")
p("| hook run | " + " | ".join(f"virtgate `{b}`" for b in backends) + " | Python pattern |")
p("|---|" + "---|" * (len(backends) + 1))
def mem(name):
    try:
        values = [int(x) for x in open(f"{res}/{name}.mem").read().split()]
        return statistics.median(values) / 1024
    except (FileNotFoundError, ValueError, statistics.StatisticsError):
        return None
def mib(x, goal=True):
    if x is None:
        return "–"
    return f"{x:.1f} MiB" + ((" (met)" if x <= 15 else " (**missed**)") if goal else "")
for key, label in [("noop", "no-op (`prepare`, no forwards)"), ("start20", "`start`, 20 forwards")]:
    p(f"| {label} | " + " | ".join(mib(mem(f"mem-{b}-{key}")) for b in backends) + f" | {mib(mem(f'mem-python-{key}'), False)} |")
p("")
for b in backends:
    try:
        split = dict(line.split(":", 1) for line in open(f"{res}/mem-{b}-split.txt"))
        kib = {k: int(v.split()[0]) for k, v in split.items()}
        p(f"Backend `{b}`, a hook that has started and waits for its stdin: {kib['VmRSS'] / 1024:.1f} MiB resident, of which "
          f"{kib['RssFile'] / 1024:.1f} MiB are pages of files (the binary and its shared libraries: clean, shared "
          f"with every other process that maps them) and {kib['RssAnon'] / 1024:.1f} MiB its own (anonymous).\n")
    except (FileNotFoundError, KeyError, ValueError):
        pass

# 2. sync
p("## 3. `virtgate sync`\n")
p("Guests × 5 forwards each, all running, on one nat network with DHCP reservations, served by libvirt's "
  "`test:///` driver from a node XML file. **apply** starts from an empty ruleset (`virtgate flush` in `--prepare`), "
  "**re-sync** runs when everything is already in place (reads the kernel, finds nothing to do), **dry-run** "
  "computes and prints the full transaction.\n")
p("Baselines, on the same `test:///` state in the same run: **libvirt alone** is a C program "
  "(`Tests/bench/baseline/libvirt-alone.c`) making the libvirt calls sync makes, in its order, and nothing else: "
  "connect, the active networks with each one's XML and DHCP leases (the test driver has none: the call fails, as "
  "it does for sync), the running guests with each one's name and XML, and each guest's addresses from its leases "
  "(what sync asks when the networks have no leases). It includes libvirt parsing the node file on connect, a cost "
  "every `test:///` connection pays and a real libvirtd does not. Before it is timed, one run must report every "
  "guest and every lease lookup. **virsh list** (`virsh list --all`) is the connection and node file alone, for "
  "reference. The very transaction sync writes, applied alone (`iptables-restore --noflush`, or `nft -f`, which "
  "with nft creates the table with every element), is the kernel's share and the firewall tool's. virtgate's own "
  "share is apply minus libvirt alone. Target: that share ≤ 100 ms for 1,000 × 5 applied, and re-sync never "
  "slower than apply.\n")
calls = {}
for g in sync_sizes:
    try:
        guests, forwarded = open(f"{res}/sync-session-{g}.calls").read().split()
        calls[g] = (int(guests), int(forwarded))
    except (FileNotFoundError, ValueError):
        pass
if calls:
    p("libvirt alone made, per size: " + "; ".join(f"{int(g):,} guests: {c[0]:,} guests' XML, {c[1]:,} lease lookups"
                                   for g, c in calls.items()) + ".\n")
def own_share(a, libvirt):
    return a["median"] - libvirt["median"] if a and libvirt else None

import math
def median_interval(values):
    """The median of values and its 95 % interval from order statistics (None, None below 6 values)."""
    v, n = sorted(values), len(values)
    k, cumulative = 0, 0.0
    for i in range(n + 1):
        cumulative += math.comb(n, i) / 2 ** n
        if cumulative > 0.025:
            break
        k = i + 1
    return statistics.median(v), (v[k - 1] if k else None), (v[n - k] if k else None)

def paired(b):
    """The paired rounds of a backend (paired.py), at the one size they ran: per-round own share (apply −
    libvirt alone) and re-sync / apply, wall and CPU, each a median with its interval; None when not run."""
    for g in sync_sizes:
        try:
            rounds = json.load(open(f"{res}/sync-paired-{b}-{g}.json"))
        except (FileNotFoundError, ValueError):
            continue
        if not rounds:
            continue
        figure = {"size": g, "rounds": len(rounds)}
        for clock in ("wall", "cpu"):
            figure[f"own-{clock}"] = median_interval([r["apply"][clock] - r["alone"][clock] for r in rounds])
            figure[f"ratio-{clock}"] = median_interval([r["resync"][clock] / r["apply"][clock] for r in rounds
                                                        if r["apply"][clock] > 0])
            for command in ("alone", "apply", "resync"):
                figure[f"{command}-{clock}"] = statistics.median(r[command][clock] for r in rounds)
        # The same process's libvirt calls (its log line): its wall time minus them is its own share.
        for command in ("apply", "resync"):
            timed = [r[command] for r in rounds if r[command].get("libvirt") is not None]
            figure[f"inprocess-{command}"] = median_interval([t["wall"] - t["libvirt"] for t in timed]) if timed else None
            figure[f"libvirt-{command}"] = statistics.median(t["libvirt"] for t in timed) if timed else None
        # Re-sync over apply by their own shares, round by round: libvirt's time, which varies between
        # processes far more than either share, is out of both.
        both = [(r["resync"]["wall"] - r["resync"]["libvirt"], r["apply"]["wall"] - r["apply"]["libvirt"]) for r in rounds
                if r["apply"].get("libvirt") is not None and r["resync"].get("libvirt") is not None]
        figure["inprocess-ratio"] = median_interval([s / a for s, a in both if a > 0]) if both else None
        return figure
    return None

def interval(m, digits=0, unit=""):
    low, high = m[1], m[2]
    return "" if low is None else f" (95 % interval {low:.{digits}f}–{high:.{digits}f}{unit})"

for b in backends:
    if skipped(b, "all"):
        continue
    p(f"### Backend `{b}`\n")
    p(f"| guests | {'DNAT map elements' if b == 'nft' else 'DNAT rules'} | apply | re-sync | dry-run | apply per guest | growth per guest (vs previous size) | libvirt alone | own share (apply − libvirt alone) | virsh list | {'`nft -f`' if b == 'nft' else '`iptables-restore`'} of the same transaction alone | target |")
    p("|---|---|---|---|---|---|---|---|---|---|---|---|")
    prev = None
    pr = paired(b)
    for g in sync_sizes:
        reason = skipped(b, f"sync-{g}")
        if reason:
            p(f"| {int(g):,} | skipped: {reason} |||||||||||")
            continue
        a, n, d = hf(f"sync-{b}-{g}-apply"), hf(f"sync-{b}-{g}-noop"), hf(f"sync-{b}-{g}-dry")
        dn = open(f"{res}/sync-{b}-{g}.dnat").read().strip() if os.path.exists(f"{res}/sync-{b}-{g}.dnat") else "?"
        per = f"{a['median'] / int(g) * 1000:.0f} µs" if a else "–"
        growth = "–"
        if a and prev:
            growth = f"{(a['median'] - prev[1]) / (int(g) - prev[0]) * 1000:.0f} µs"
        restore = hf(f"sync-restore-{g}") if b == "iptables" else hf(f"sync-nft-alone-{g}")
        libvirt = hf(f"sync-libvirt-{g}")
        share = own_share(a, libvirt)
        goal = ""
        if g == "1000":
            # Commands timed one after the other take the machine's drift between them as a
            # difference: where paired rounds ran at this size, they give the verdict, not this row.
            if pr and str(pr["size"]) == g:
                goal = "own share ≤ 100 ms: see the paired rounds below"
            else:
                goal = "own share ≤ 100 ms: " + check(share <= 100) if share is not None else "–"
        p(f"| {int(g):,} | {dn} | {ms(a)} | {ms(n)} | {ms(d)} | {per} | {growth} | {ms(libvirt)} | "
          f"{'–' if share is None else f'{round(share)} ms'} | {ms(hf(f'sync-virsh-{g}'))} | "
          f"{ms(restore)} | {goal} |")
        if a:
            prev = (int(g), a["median"])
    p("")
    if pr:
        p(f"Paired rounds at {int(pr['size']):,} guests ({pr['rounds']} rounds, each: libvirt alone, apply from nothing, "
          f"re-sync; every difference taken within its round): libvirt alone {pr['alone-wall']:.0f} ms, apply "
          f"{pr['apply-wall']:.0f} ms, re-sync {pr['resync-wall']:.0f} ms (medians). **Own share "
          f"{pr['own-wall'][0]:.0f} ms**{interval(pr['own-wall'], 0, ' ms')}, in CPU time (user and system, children "
          f"included) {pr['own-cpu'][0]:.0f} ms{interval(pr['own-cpu'], 0, ' ms')}. **Re-sync / apply "
          f"{pr['ratio-wall'][0]:.2f}×**{interval(pr['ratio-wall'], 2, '×')}, in CPU time "
          f"{pr['ratio-cpu'][0]:.2f}×{interval(pr['ratio-cpu'], 2, '×')}.\n")
        if pr["inprocess-apply"]:
            p(f"The same rounds, libvirt's share timed inside each sync (its log line: the time its libvirt calls took, "
              f"loading libvirt, and the part of closing the connection that sync waited for): libvirt "
              f"{pr['libvirt-apply']:.0f} ms in apply, "
              f"{pr['libvirt-resync']:.0f} ms in re-sync (medians; libvirt alone, a process of its own, "
              f"{pr['alone-wall']:.0f} ms). **Own share in the same process: apply {pr['inprocess-apply'][0]:.0f} ms**"
              f"{interval(pr['inprocess-apply'], 0, ' ms')}, re-sync {pr['inprocess-resync'][0]:.0f} ms"
              f"{interval(pr['inprocess-resync'], 0, ' ms')}: each run's wall time minus its own libvirt calls, so "
              f"the machine's drift between processes does not enter it. It counts as virtgate's what the paired "
              f"difference does not: `ip netns exec`, the process's start and its exit."
              + (f" **Re-sync / apply by these shares, round by round: {pr['inprocess-ratio'][0]:.2f}×**"
                 f"{interval(pr['inprocess-ratio'], 2, '×')}." if pr["inprocess-ratio"] else "") + "\n")

# 3. connections
import math

def conn(b):
    """The connection figures of a backend from its phases (None when not measured): per size the median
    connect() over every connection and their count; the ratio large vs small with its 95 % interval."""
    phases = []
    for k in range(1, 100):
        try:
            rounds = json.load(open(f"{res}/conn-{b}-phase{k}.json"))
            large = open(f"{res}/conn-{b}-phase{k}.large").read().strip()
        except FileNotFoundError:
            break
        big, small = (1, 0) if large == "b" else (0, 1)
        phases.append((large, [(r[small], r[big]) for r in rounds if r[0] and r[1]]))
    if not phases or not all(rs for _, rs in phases):
        return None
    # A round's ratio: its median connect() at the large size over its median at the small one, both
    # taken in the same milliseconds. A phase's ratio: the median of its rounds'. The ratio: the
    # geometric mean of the phases' (as many with the large ruleset in lab a as in lab b, so what
    # differs between the labs themselves cancels; the lab difference is what it was).
    per_phase = [statistics.median([statistics.median(l) / statistics.median(s) for s, l in rs]) for _, rs in phases]
    logs = {lab: [math.log(m) for (at, _), m in zip(phases, per_phase) if at == lab] for lab in "ab"}
    means = {lab: sum(x) / len(x) for lab, x in logs.items() if x}
    mean = sum(means.values()) / len(means)
    half = (means["b"] - means["a"]) / 2 if len(means) == 2 else None
    # 95 % interval from the spread of the phases themselves around their lab's mean (Student's t with
    # phases − 2 degrees of freedom). Not from resampling rounds: re-syncing the rulesets between phases
    # moves a phase's ratio by about a per cent, far more than its rounds vary, and only the phases show it.
    df = len(per_phase) - len(means)
    low = high = None
    if df >= 1:
        variance = sum((x - means[lab]) ** 2 for lab, xs in logs.items() for x in xs) / df
        spread = math.sqrt(variance * sum(1 / len(xs) for xs in logs.values() if xs)) / len(means)
        t = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
             2.131, 2.120, 2.110, 2.101, 2.093, 2.086][min(df, 20) - 1]
        low, high = math.exp(mean - t * spread), math.exp(mean + t * spread)
    small = [t for _, rs in phases for s, _ in rs for t in s]
    large = [t for _, rs in phases for _, l in rs for t in l]
    return {"median": (statistics.median(small), statistics.median(large)), "count": (len(small), len(large)),
            "ratio": math.exp(mean), "low": low, "high": high, "phases": per_phase, "degrees": df,
            "phase_large": [lab for lab, _ in phases], "lab_difference": None if half is None else math.exp(half),
            "rounds": sum(len(rs) for _, rs in phases), "pairs": len(phases[0][1][0][0])}

def conn_verdict(c):
    return interval_verdict((c["ratio"], c["low"], c["high"]), 1.05, no_interval="no interval: too few phases")

def conn_interval(c, digits=3):
    return "–" if c["low"] is None else f"{c['low']:.{digits}f}–{c['high']:.{digits}f}"

def conn_paths(b, n):
    return {lab: open(f"{res}/conn-{b}-{n}-{lab}.verify").read().strip()
            for lab in "ab" if os.path.exists(f"{res}/conn-{b}-{n}-{lab}.verify")}

conns = {b: conn(b) for b in backends}
lo, hi = f"{int(conn_sizes[0]):,}", f"{int(conn_sizes[-1]):,}"
p(f"## 4. A new connection through a DNAT: {lo} vs {hi} forwards\n")
p("Real TCP connections through two labs alike: in each, a host namespace forwards port 40000 of its address to "
  "port 8080 of a guest namespace on its bridge (10.213.48.0/20), with FORWARD policy DROP (as under UFW), so only "
  "virtgate's accept lets the connection through. One wan namespace links to both hosts (lab a: 198.18.50.1, lab b: "
  "198.18.50.5). The rules are what `virtgate sync` renders for a `test:///` node with N forwards: N/5 − 1 other "
  "guests with 5 forwards each and the measured guest, whose name sorts last; the measured forward is its last one, "
  "so with linear chains every other rule is evaluated first. After each sync, one connection proves the path: the "
  "server reports the lab's wan address as peer and 8080 as its port while the client dialled 40000.\n")
p("One client process (pinned to a CPU where the machine has two; the guests' servers on the other) times "
  "`connect()` (SYN out, SYN-ACK back: the new connection's NAT lookup and both directions' filtering), alternating "
  "connection by connection between the lab holding the small ruleset and the lab holding the large one, from a "
  "fixed cycle of source ports, each connection closed with a reset. A round's ratio is its median at the large "
  "size over its median at the small size, so whatever else the machine does hits both alike; a phase's ratio is "
  "the median of its rounds'. The phases swap which lab holds which ruleset, and the ratio is the geometric mean of "
  "the phases' ratios, so a difference between the labs cancels out (it is shown as the lab difference). The 95 % "
  "interval comes from the spread of the phases' ratios (Student's t, phases − 2 degrees of freedom): each phase "
  "re-syncs both labs, and that moves a phase's ratio more than its rounds vary. Target: with the nft backend, "
  f"{hi} forwards within 5 % of {lo}, met only when the ratio is ≤ 1.05; the interval says whether the run decides it.\n")
p(f"| backend | {lo} forwards | {hi} forwards | {hi} vs {lo} | 95 % interval | per phase (large ruleset in lab) | "
  "lab difference (b vs a) | connections per size | path verified | target |")
p("|---|---|---|---|---|---|---|---|---|---|")
for b in backends:
    reason = skipped(b, "all") or skipped(b, "conn")
    c = conns[b]
    if reason or not c:
        p(f"| `{b}` | {'skipped: ' + reason if reason else 'not measured'} |" + "|" * 8)
        continue
    phases = ", ".join(f"{m:.3f} ({lab})" for m, lab in zip(c["phases"], c["phase_large"]))
    verified = all(len(conn_paths(b, n)) == 2 for n in conn_sizes)
    goal = ("≤ 1.05: " + conn_verdict(c)) if b == "nft" else "(none)"
    diff = "–" if c["lab_difference"] is None else f"{c['lab_difference']:.3f}"
    p(f"| `{b}` | {c['median'][0]:.1f} µs | {c['median'][1]:.1f} µs | {c['ratio']:.3f}× | {conn_interval(c)} | "
      f"{phases} | {diff} | {min(c['count']):,} ({c['rounds']} rounds × {c['pairs']}) | {'yes, both labs' if verified else 'no'} | {goal} |")
p("")
p("The medians per size are over every connection of the run, both labs; the ratio is not their quotient but the "
  "rounds' (see above).\n")
for b in backends:
    for n in conn_sizes:
        path = f"{res}/conn-{b}-{n}.rules"
        if os.path.exists(path):
            info = dict(kv.split("=", 1) for kv in open(path).read().split(" tables=")[0].split())
            tables = open(path).read().split(" tables=", 1)[1].strip() if " tables=" in open(path).read() else ""
            p(f"- `{b}`, {int(n):,} forwards: {info.get('dnat_rules', '?')} iptables DNAT rules, "
              f"{info.get('map_elements', '?')} elements in nft DNAT maps; last jump of "
              f"`VIRTGATE-DNAT`: `{info.get('last_dispatch') or 'none'}`; nft tables: {tables or 'none'}")
p("")

# summary
p("## Summary against the targets\n")
p("| figure | backend | measured | target | |")
p("|---|---|---|---|---|")
for b, label, v, base in summary:
    x = faster(base, v)
    speed = f"{x:.0f}×" if x is not None else "–"
    if v["median"] <= 0:
        p(f"| {label} | `{b}` | {ms(v)} | {'≤ 2 ms above `/bin/true`, ≥ 15×' if 'no-op' in label else '≤ 4 ms, ≥ 35×'} | {ZERO} |")
    elif "no-op" in label:
        p(f"| {label} | `{b}` | {ms(v)}, {speed} faster than Python | ≤ 2 ms above `/bin/true`, ≥ 15× | "
          f"{check(true and v['median'] - true['median'] <= 2 and x is not None and x >= 15)} |")
    else:
        p(f"| {label} | `{b}` | {ms(v)}, {speed} faster than Python | ≤ 4 ms, ≥ 35× | "
          f"{check(v['median'] <= 4 and x is not None and x >= 35)} |")
for b in backends:
    pr = paired(b)
    if pr and pr["size"] == "1000":
        # Paired: each round's apply minus its own libvirt alone, and its re-sync over its apply.
        p(f"| sync 1,000 × 5, apply: own share (minus libvirt alone: sync's libvirt calls, nothing else), paired rounds | `{b}` | "
          f"{pr['own-wall'][0]:.0f} ms{interval(pr['own-wall'], 0, ' ms')} | ≤ 100 ms | {interval_verdict(pr['own-wall'], 100, ' ms')} |")
        if pr["inprocess-apply"]:
            p(f"| sync 1,000 × 5, apply: own share, libvirt's calls timed in the same process | `{b}` | "
              f"{pr['inprocess-apply'][0]:.0f} ms{interval(pr['inprocess-apply'], 0, ' ms')} | ≤ 100 ms | "
              f"{interval_verdict(pr['inprocess-apply'], 100, ' ms')} |")
        p(f"| sync 1,000 × 5: re-sync / apply, paired rounds | `{b}` | "
          f"{pr['ratio-wall'][0]:.2f}×{interval(pr['ratio-wall'], 2, '×')} | ≤ 1× | {interval_verdict(pr['ratio-wall'], 1, '×')} |")
        if pr["inprocess-ratio"]:
            p(f"| sync 1,000 × 5: re-sync / apply, own shares in the same process | `{b}` | "
              f"{pr['inprocess-ratio'][0]:.2f}×{interval(pr['inprocess-ratio'], 2, '×')} | ≤ 1× | "
              f"{interval_verdict(pr['inprocess-ratio'], 1, '×')} |")
        continue
    a = hf(f"sync-{b}-1000-apply")
    if a:
        libvirt = hf("sync-libvirt-1000")
        if libvirt:
            p(f"| sync 1,000 × 5, apply: own share (minus libvirt alone: sync's libvirt calls, nothing else) | `{b}` | "
              f"{ms(a)} − {ms(libvirt)} = {round(own_share(a, libvirt))} ms | ≤ 100 ms | {check(own_share(a, libvirt) <= 100)} |")
    x = mem(f"mem-{b}-start20")
    if x is not None:
        p(f"| peak memory, start with 20 forwards | `{b}` | {x:.1f} MiB | ≤ 15 MiB | {check(x <= 15)} |")
for b in backends:
    c = conns[b]
    if b == "nft":
        if c:
            p(f"| connection cost, {hi} vs {lo} forwards | `nft` | {c['ratio']:.3f}× (95 % interval {conn_interval(c)}) | ≤ 1.05× | {conn_verdict(c)} |")
        else:
            p(f"| connection cost, {hi} vs {lo} forwards | `nft` | not measured ({skipped(b, 'all') or skipped(b, 'conn') or 'no data'}) | ≤ 1.05× | |")
    elif c:
        p(f"| connection cost, {hi} vs {lo} forwards | `{b}` | {c['ratio']:.2f}× (95 % interval {conn_interval(c, 2)}) | (reference) | |")
print("\n".join(out))

# Every figure, one a line (see --figures): what Tests/bats/bench.bats checks.
if len(sys.argv) > 4 and sys.argv[4]:
    rows = [("group", "figure", "backend", "value", "unit", "samples", "note")]
    def row(group, figure, backend, value, unit, samples="", note=""):
        if isinstance(value, float):
            value = f"{value:.6g}"
        rows.append((group, figure, backend, "" if value is None else str(value), unit, str(samples),
                     note.replace("\t", " ").replace("\n", " ")))
    def hf_row(group, figure, backend, name):
        v = hf(name)
        row(group, figure, backend, v["median"] if v else None, "ms", v["runs"] if v else 0)
    def mem_row(figure, backend, name):
        try:
            values = [int(x) for x in open(f"{res}/{name}.mem").read().split()]
        except (FileNotFoundError, ValueError):
            values = []
        row("memory", figure, backend, statistics.median(values) / 1024 if values else None, "MiB", len(values))
    row("run", "quick", "-", 1 if quick else 0, "")
    row("run", "sync-sizes", "-", " ".join(sync_sizes), "guests")
    row("run", "conn-sizes", "-", " ".join(conn_sizes), "forwards")
    events = ["floor", "prepare", "start", "started", "stopped", "release", "start1", "start5", "start20", "stopped20", "netstart"]
    # 1. Hook latency: the baselines, each backend's events, the kernel's share (iptables).
    hf_row("hook", "true", "-", "true")
    for key in ["noop", "start1", "start5", "start20", "stopped20"]:
        hf_row("hook", f"python-{key}", "-", f"hook-python-{key}")
    for b in backends:
        for key in events:
            hf_row("hook", key, b, f"hook-{b}-{key}")
    hf_row("hook", "iptables-save", "iptables", "hook-save")
    hf_row("hook", "iptables-restore-start20", "iptables", "hook-restore-start20")
    hf_row("hook", "nft-alone-start20", "nft", "hook-nft-alone-start20")
    hf_row("hook", "nft-alone-stopped20", "nft", "hook-nft-alone-stopped20")
    hf_row("hook", "nft-alone-restart20", "nft", "hook-nft-alone-restart20")
    hf_row("hook", "swift-floor", "-", "swift-floor")
    hf_row("hook", "swift-floor-modules", "-", "swift-floor-modules")
    for b in backends:
        for name in ("floor", "modules", "ignored"):
            hf_row("hook", f"in-turn-{name}", b, f"start-up-{b}-{name}")
    for b in backends:
        hf_row("hook", "start20-scale", b, f"hook-{b}-start20-scale")
        hf_row("hook", "start20-beside", b, f"hook-{b}-start20-beside")
    hf_row("hook", "start20-first", "nft", "hook-nft-start20-first")
    # 2. Peak memory, and what a waiting hook holds resident.
    mem_row("python-noop", "-", "mem-python-noop")
    mem_row("python-start20", "-", "mem-python-start20")
    for b in backends:
        mem_row("noop", b, f"mem-{b}-noop")
        mem_row("start20", b, f"mem-{b}-start20")
        try:
            kib = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in open(f"{res}/mem-{b}-split.txt"))}
        except (FileNotFoundError, ValueError):
            kib = {}
        for key, label in [("VmRSS", "waiting-rss"), ("RssAnon", "waiting-anon"), ("RssFile", "waiting-file")]:
            row("memory", label, b, kib[key] / 1024 if key in kib else None, "MiB", 1 if key in kib else 0)
    # 3. sync: libvirt alone, then each backend's apply, re-sync, dry run, the DNATs it left, the kernel's share.
    for g in sync_sizes:
        hf_row("sync", f"libvirt-{g}", "-", f"sync-libvirt-{g}")
        hf_row("sync", f"virsh-{g}", "-", f"sync-virsh-{g}")
    for b in backends:
        for g in sync_sizes:
            hf_row("sync", f"{g}-apply", b, f"sync-{b}-{g}-apply")
            hf_row("sync", f"{g}-resync", b, f"sync-{b}-{g}-noop")
            hf_row("sync", f"{g}-dry-run", b, f"sync-{b}-{g}-dry")
            try:
                dnat = int(open(f"{res}/sync-{b}-{g}.dnat").read().strip())
            except (FileNotFoundError, ValueError):
                dnat = None
            row("sync", f"{g}-dnat", b, dnat, "map elements" if b == "nft" else "rules")
            if b == "iptables":
                hf_row("sync", f"{g}-iptables-restore", b, f"sync-restore-{g}")
            else:
                hf_row("sync", f"{g}-nft-alone", b, f"sync-nft-alone-{g}")
        pr = paired(b)
        # note: the size the paired rounds ran at; samples: their number
        for key in ("own-wall", "own-cpu", "ratio-wall", "ratio-cpu", "inprocess-apply", "inprocess-resync",
                    "inprocess-ratio"):
            unit = "x" if "ratio" in key else "ms"
            value = pr[key][0] if pr and pr[key] else None
            row("sync", f"paired-{key}", b, value, unit, pr["rounds"] if pr else 0, pr["size"] if pr else "")
    # 4. Connections through the DNAT: the median connect() per size over the whole run, the path check
    # in both labs, the ratio with its 95 % interval, the lab difference, and how many rounds of how many
    # connections to each lab made it (connections per size = rounds x pairs).
    for b in backends:
        c = conns[b]
        for i, n in enumerate(conn_sizes):
            row("connection", f"{n}", b, c["median"][i] if c else None, "us", c["count"][i] if c else 0)
            seen = conn_paths(b, n)
            # note: per lab, what the guest's server saw and the client's address ("peer port local port client")
            row("connection", f"{n}-path", b, len(seen) if seen else None, "labs verified", len(seen),
                " | ".join(f"{lab}: {seen[lab]}" for lab in sorted(seen)))
        row("connection", "ratio", b, c["ratio"] if c else None, "x")
        row("connection", "ratio-low", b, c["low"] if c else None, "x")
        row("connection", "ratio-high", b, c["high"] if c else None, "x")
        row("connection", "lab-difference", b, c["lab_difference"] if c else None, "x")
        row("connection", "rounds", b, c["rounds"] if c else None, "rounds")
        row("connection", "pairs", b, c["pairs"] if c else None, "connections")
    # Skipped parts, with the reason.
    for name in sorted(os.listdir(res)):
        if name.startswith("skip-") and name.endswith(".txt"):
            backend, section = name[5:-4].split("-", 1)
            row("skip", section, backend, None, "", "", open(f"{res}/{name}").read().strip())
    with open(sys.argv[4], "w") as f:
        for r in rows:
            f.write("\t".join(r) + "\n")
PY

report=$work/report.md
/usr/bin/python3 "$work/report.py" "$res" "${sync_sizes[*]}" "${conn_sizes[*]}" "${figures:+$work/figures.tsv}" > "$report"
cat "$report"
if [ -n "$output" ]; then
    cp "$report" "$output"
    say "report written to $output"
fi
if [ -n "$figures" ]; then
    cp "$work/figures.tsv" "$figures"
    say "figures written to $figures"
fi
