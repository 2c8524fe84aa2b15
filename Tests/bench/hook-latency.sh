#!/usr/bin/env bash
# Whole-process hook latency, medians, against baselines measured in the same run:
#   /bin/true, and iptables-nft-restore of the very transaction virtgate writes.
# Runs as root inside a throw-away network namespace; touches nothing else.
# Usage: sudo bash Tests/bench/hook-latency.sh [path/to/virtgate]   (default: a release build)
# Needs hyperfine (apt-get install hyperfine) and python3.
set -euo pipefail
cd "$(dirname "$0")/../.."
binary=${1:-.build/release/virtgate}
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
command -v hyperfine >/dev/null || { echo "needs hyperfine" >&2; exit 1; }
[ -x "$binary" ] || { echo "no binary at $binary (swift build -c release --static-swift-stdlib)" >&2; exit 1; }

ns=vgt-bench-$$
work=$(mktemp -d /tmp/vgt-bench.XXXXXX)
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
ip netns add "$ns"

mkdir -p "$work/hooks"
cp "$binary" "$work/virtgate"
ln -s "$work/virtgate" "$work/hooks/qemu"
ln -s "$work/virtgate" "$work/hooks/network"
export VIRTGATE_STATE_DIR=$work/state VIRTGATE_SYSLOG=0 VIRTGATE_CONFIG=$work/none \
    VIRTGATE_NETWORK_RUN_DIR=$work/none VIRTGATE_NETWORK_ETC_DIR=$work/none VIRTGATE_DNSMASQ_DIR=$work/none

python3 - "$work" <<'PY'
import sys
work = sys.argv[1]
forwards = "\n".join(f'<vg:forward host-port="{10000 + i}" guest-port="{20000 + i}"/>' for i in range(20))
nic = "<devices><interface type='network'><mac address='52:54:00:aa:bb:{m}'/><source network='default' bridge='virbr0'/><target dev='vnet{m}'/></interface></devices>"
open(f"{work}/plain.xml", "w").write(f"<domain type='kvm' id='1'><name>plain</name>{nic.format(m='02')}</domain>")
open(f"{work}/twenty.xml", "w").write(
    f"<domain type='kvm' id='2'><name>twenty</name><metadata><vg:forwards xmlns:vg='urn:virtgate:forwards:1'>{forwards}"
    f"</vg:forwards></metadata>{nic.format(m='01')}</domain>")
open(f"{work}/net.xml", "w").write(
    "<hookData><network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>"
    "<ip address='192.168.122.1' prefix='24'><dhcp><host mac='52:54:00:aa:bb:01' ip='192.168.122.10'/>"
    "</dhcp></ip></network></hookData>")
PY

run() { ip netns exec "$ns" "$@"; }
run "$work/hooks/network" default started begin - < "$work/net.xml" 2>/dev/null
# The transaction a start of "twenty" writes, and the one that undoes it, for the iptables baseline.
run "$work/virtgate" hook --dry-run qemu twenty start begin - < "$work/twenty.xml" > "$work/add.rules" 2>/dev/null
run "$work/hooks/qemu" twenty start begin - < "$work/twenty.xml" 2>/dev/null
run "$work/virtgate" hook --dry-run qemu twenty stopped end - < "$work/twenty.xml" > "$work/del.rules" 2>/dev/null
run "$work/hooks/qemu" twenty release end - < "$work/twenty.xml" 2>/dev/null

cd "$work"
bench() { # name, hyperfine arguments…
    local name=$1; shift
    run hyperfine --style none --warmup 5 --export-json "$name.json" "$@" >/dev/null 2>&1
}
bench true --runs 200 "/bin/true < plain.xml"
bench noop --runs 200 "hooks/qemu plain prepare begin - < plain.xml"
bench reassert --runs 100 "hooks/qemu plain started begin - < plain.xml"
bench start20 --runs 60 --prepare "hooks/qemu twenty release end - < twenty.xml" "hooks/qemu twenty start begin - < twenty.xml"
bench restore20 --runs 60 --prepare "iptables-nft-restore -w --noflush < del.rules || true" "iptables-nft-restore -w --noflush < add.rules"
run hooks/qemu twenty release end - < twenty.xml 2>/dev/null

python3 - <<'PY'
import json
def median(name):
    result = json.load(open(f"{name}.json"))["results"][0]
    return result["median"] * 1000, result["stddev"] * 1000
rows = [
    ("/bin/true (process start baseline)", "true"),
    ("no-op hook: qemu prepare, guest without forwards", "noop"),
    ("re-assert: qemu started, guest without forwards (reads the ruleset)", "reassert"),
    ("qemu start with 20 forwards (one transaction)", "start20"),
    ("iptables-nft-restore of that same transaction alone", "restore20"),
]
base = median("true")[0]
print(f"{'run':70} {'median':>9} {'stddev':>8} {'x true':>7}")
for label, name in rows:
    m, s = median(name)
    print(f"{label:70} {m:7.2f}ms {s:6.2f}ms {m / base:7.1f}")
PY
