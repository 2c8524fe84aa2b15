#!/usr/bin/python3
"""Benchmark baseline, not part of virtgate.

A libvirt qemu hook in the classic style of saschpe's libvirt-hook-qemu and its forks: a Python 3 script
that reads a JSON file of forwards per guest and, on `start`, runs one `iptables` process per rule; on
`stopped` it deletes them the same way. Run by Tests/bench/run.sh to give virtgate's figures a baseline
taken on the same machine in the same run.

Per guest it owns three chains (nat DNAT-<guest>, nat SNAT-<guest>, filter FWD-<guest>). Per forward it
appends four rules: the DNAT, an SNAT and a hairpin MASQUERADE for the guest's own traffic, and a FORWARD
accept to the guest port. Then it inserts four jumps (nat OUTPUT and PREROUTING for the public address,
POSTROUTING and FORWARD for the guest). `stopped` deletes the jumps and flushes and deletes the chains;
`reconnect` does both. So a start with N forwards is 4N + 7 iptables processes, a stop 10.

Differences from the pattern, each one in the baseline's favour (it does less work than the original):
- the public address comes from the config; the original also runs two shell pipelines (`ip route | grep`
  and `ip addr | grep`) on every event to find the default route's address when none is configured;
- no JSON-with-comments pre-pass and no optional jsonschema validation;
- it does not write bridge-nf-call-iptables=0 (a global side effect that breaks other bridge users).
Like the original, it finds `iptables` with `which` on every run unless IPTABLES_BINARY is set.

Config (CONFIG_FILENAME, default hooks.json next to this file):
  {"web": {"interface": "virbr0", "private_ip": "192.168.122.10", "public_ip": "198.51.100.10",
           "port_map": {"tcp": [[2222, 22], 8080]}}}
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG_FILENAME = os.getenv("CONFIG_FILENAME") or os.path.join(HERE, "hooks.json")
IPTABLES = os.getenv("IPTABLES_BINARY") or subprocess.check_output(["which", "iptables"]).decode().strip()


def iptables(*args):
    # One process per rule, exit status ignored, as in the original pattern.
    subprocess.call([IPTABLES, *args])


def port_pairs(guest):
    for proto, entries in guest.get("port_map", {}).items():
        for entry in entries:
            host_port, guest_port = entry if isinstance(entry, list) else (entry, entry)
            yield proto, str(host_port), str(guest_port)


def jumps(action, names, public_ip, private_ip):
    dnat, snat, fwd = names
    iptables("-t", "nat", action, "OUTPUT", "-d", public_ip, "-j", dnat)
    iptables("-t", "nat", action, "PREROUTING", "-d", public_ip, "-j", dnat)
    iptables("-t", "nat", action, "POSTROUTING", "-s", private_ip, "-d", private_ip, "-j", snat)
    iptables("-t", "filter", action, "FORWARD", "-d", private_ip, "-j", fwd)


def start(names, guest, public_ip, private_ip):
    dnat, snat, fwd = names
    iptables("-t", "nat", "-N", dnat)
    iptables("-t", "nat", "-N", snat)
    iptables("-t", "filter", "-N", fwd)
    out = ["-o", guest["interface"]] if "interface" in guest else []
    for proto, host_port, guest_port in port_pairs(guest):
        iptables("-t", "nat", "-A", dnat, "-p", proto, "-d", public_ip, "--dport", host_port,
                 "-j", "DNAT", "--to", f"{private_ip}:{guest_port}")
        iptables("-t", "nat", "-A", snat, "-p", proto, "-s", private_ip, "--dport", guest_port,
                 "-j", "SNAT", "--to-source", public_ip)
        iptables("-t", "nat", "-A", snat, "-p", proto, "-s", private_ip, "-d", private_ip,
                 "--dport", host_port, "-j", "MASQUERADE")
        iptables("-t", "filter", "-A", fwd, "-p", proto, "-d", private_ip, "--dport", guest_port,
                 "-j", "ACCEPT", *out)
    jumps("-I", names, public_ip, private_ip)


def stop(names, public_ip, private_ip):
    jumps("-D", names, public_ip, private_ip)
    for table, chain in zip(("nat", "nat", "filter"), names):
        iptables("-t", table, "-F", chain)
        iptables("-t", table, "-X", chain)


def main():
    name, operation = sys.argv[1:3]
    with open(CONFIG_FILENAME) as f:
        guest = json.load(f).get(name)
    if guest is None:
        return 0
    short = name[:23]  # iptables chain names stop at 28 characters
    names = (f"DNAT-{short}", f"SNAT-{short}", f"FWD-{short}")
    public_ip, private_ip = guest["public_ip"], guest["private_ip"]
    if operation in ("stopped", "reconnect"):
        stop(names, public_ip, private_ip)
    if operation in ("start", "reconnect"):
        start(names, guest, public_ip, private_ip)
    return 0


if __name__ == "__main__":
    sys.exit(main())
