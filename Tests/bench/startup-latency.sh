#!/usr/bin/env bash
# Hook start-up and work, before against after: medians of whole-process runs of two binaries,
# interleaved in the same hyperfine runs, inside a throw-away network namespace.
#   sudo bash Tests/bench/startup-latency.sh BEFORE AFTER [ROUNDS]
# Cases: the no-op hook (qemu prepare of a guest without forwards) as hook-latency.sh runs it (no
# config file) and as libvirt runs it (scrubbed environment, the installed default config); network
# port-created; qemu start with 20 forwards (released before each run) per backend.
# Needs hyperfine, python3, iptables and nft. Touches nothing outside the namespace and a temp dir.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
[ $# -ge 2 ] || { echo "usage: $0 BEFORE AFTER [ROUNDS]" >&2; exit 1; }
before=$1 after=$2 rounds=${3:-3}
for tool in hyperfine python3; do command -v $tool >/dev/null || { echo "needs $tool" >&2; exit 1; }; done

ns=vgt-startup-$$
work=$(mktemp -d /tmp/vgt-startup.XXXXXX)
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
ip netns add "$ns"

for side in before after; do
    mkdir -p "$work/$side/hooks"
    cp "${!side}" "$work/$side/virtgate"
    ln -s "$work/$side/virtgate" "$work/$side/hooks/qemu"
    ln -s "$work/$side/virtgate" "$work/$side/hooks/network"
done
cp hooks/virtgate.conf "$work/virtgate.conf"
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
open(f"{work}/port.xml", "w").write(
    "<hookData><network><name>default</name><bridge name='virbr0'/></network><networkport><owner><name>plain</name>"
    "</owner><mac address='52:54:00:aa:bb:02'/><plug type='network' bridge='virbr0'/></networkport></hookData>")
PY

cd "$work"
# Both binaries share the state directory and the namespace's rules, as two versions on one host would.
bench_env="VIRTGATE_STATE_DIR=$work/state VIRTGATE_SYSLOG=0 VIRTGATE_CONFIG=$work/none
    VIRTGATE_NETWORK_RUN_DIR=$work/none VIRTGATE_NETWORK_ETC_DIR=$work/none VIRTGATE_DNSMASQ_DIR=$work/none"
# libvirt's environment for hooks (LC_ALL=C, a fixed PATH, HOME, USER, LOGNAME), the installed config.
libvirt_env="-i LC_ALL=C PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root USER=root
    LOGNAME=root VIRTGATE_CONFIG=$work/virtgate.conf VIRTGATE_STATE_DIR=$work/state"
run() { ip netns exec "$ns" "$@"; }
run env $bench_env after/hooks/network default started begin - < net.xml 2>/dev/null

bench() { # name, environment (env's arguments), then hyperfine's
    local name=$1 environment=$2; shift 2
    run env $environment hyperfine --style none --warmup 5 --export-json "$name.json" "$@" >/dev/null 2>&1
    python3 -c '
import json, sys
name = sys.argv[1]
for result, side in zip(json.load(open(name + ".json"))["results"], ("before", "after")):
    print(name, side, "%.2f" % (result["median"] * 1000))
' "$name" >> results.txt
}
both() { # hook, arguments, input: the command for each side
    echo "before/hooks/$1 $2 < $3"
    echo "after/hooks/$1 $2 < $3"
}
for round in $(seq "$rounds"); do
    bench true "$bench_env" --runs 200 "/bin/true < plain.xml" "/bin/true < plain.xml"
    mapfile -t commands < <(both qemu "plain prepare begin -" plain.xml)
    bench noop "$bench_env" --runs 200 "${commands[@]}"
    bench noop-libvirt "$libvirt_env" --runs 200 "${commands[@]}"
    mapfile -t commands < <(both network "default port-created begin -" port.xml)
    bench port-created "$bench_env" --runs 200 "${commands[@]}"
    for backend in iptables nft; do
        mapfile -t commands < <(both qemu "twenty start begin -" twenty.xml)
        mapfile -t releases < <(both qemu "twenty release end -" twenty.xml)
        bench "start20-$backend" "VIRTGATE_BACKEND=$backend $bench_env" --runs 40 \
            --prepare "${releases[0]}" "${commands[0]}" --prepare "${releases[1]}" "${commands[1]}"
        run env VIRTGATE_BACKEND=$backend $bench_env after/hooks/qemu twenty release end - < twenty.xml 2>/dev/null
    done
done

python3 - <<'PY'
from collections import defaultdict
from statistics import median
rows = defaultdict(list)
for line in open("results.txt"):
    name, side, value = line.split()
    rows[(name, side)].append(float(value))
labels = [
    ("true", "/bin/true (process start baseline)"),
    ("noop", "no-op hook: qemu prepare, no forwards (hook-latency.sh's setting)"),
    ("noop-libvirt", "the same as libvirt runs it: scrubbed env, default config"),
    ("port-created", "network port-created (nothing to do)"),
    ("start20-iptables", "qemu start with 20 forwards, iptables backend"),
    ("start20-nft", "qemu start with 20 forwards, nft backend"),
]
print(f"medians over {len(rows[('true', 'before')])} rounds of hyperfine medians, ms")
print(f"{'run':66} {'before':>8} {'after':>8}")
for name, label in labels:
    print(f"{label:66} {median(rows[(name, 'before')]):8.2f} {median(rows[(name, 'after')]):8.2f}")
PY
