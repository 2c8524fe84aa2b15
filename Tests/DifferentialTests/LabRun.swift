#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import VirtGateCore

/// One case on one backend, in namespaces of its own:
///
///     wan (198.51.100.2) ── hw [host] vgtdf-br0 10.91.0.1 fd91::1 ── lan (.250, the hairpin client)
///                                 │                               ├─ ga (even slots' guest addresses)
///                                 │                               └─ gb (odd slots')
///                                 └ vgtdf-br1 10.92.0.1 ─────────── gc (host-bridge guests' addresses)
///
/// The host plays libvirt's host with UFW's shape of firewall (FORWARD DROP, replies accepted), so a
/// forward only works when virtgate's accept lets it through. The binary is driven exactly as
/// libvirt drives it, inside the host namespace.
struct LabRun {
    struct Outcome {
        /// (kind of check, what it saw): the kind lets shrinking look for the same failure.
        var failures: [(kind: String, text: String)] = []
        var checks = 0
        var claims: Set<Oracle.Claim> = []
        var answers: [Traffic.Probe: String] = [:]

        mutating func check(_ ok: Bool, _ kind: String, _ failure: @autoclosure () -> String) {
            checks += 1
            if !ok { failures.append((kind, failure())) }
        }
    }

    let testCase: Case
    let backend: String
    let binary: String
    let probes: [Traffic.Probe]
    let prefix: String
    let directory: String
    private let runner = ProcessRunner()

    init(_ testCase: Case, backend: String, binary: String, probes: [Traffic.Probe], tag: String) {
        self.testCase = testCase
        self.backend = backend
        self.binary = binary
        self.probes = probes
        prefix = "vgt-df-\(getpid())-\(tag)"
        directory = "/tmp/\(prefix)"
    }

    func ns(_ role: String) -> String { "\(prefix)-\(role)" }
    static let roles = ["host", "wan", "lan", "ga", "gb", "gc"]

    @discardableResult
    func sh(_ script: String, input: String? = nil) async throws -> CommandResult {
        try await runner.run("/bin/bash", ["-c", script], input: input)
    }

    func inHost(_ arguments: [String], input: String? = nil) async throws -> CommandResult {
        try await runner.run("/usr/bin/env", ["ip", "netns", "exec", ns("host")] + arguments, input: input)
    }

    func run() async -> Outcome {
        var outcome = Outcome()
        var pids: [Int32] = []
        do {
            pids = try await setUp()
            try await exercise(&outcome)
        } catch {
            outcome.failures.append(("lab", "lab: \(error)"))
        }
        await tearDown(pids: pids)
        return outcome
    }

    // MARK: the lab

    func setUp() async throws -> [Int32] {
        let (h, w, l, a, b, c) = (ns("host"), ns("wan"), ns("lan"), ns("ga"), ns("gb"), ns("gc"))
        var guestAddresses = [a: "", b: "", c: ""]
        for slot in 0..<Lab.slots {
            let side = slot % 2 == 0 ? a : b
            guestAddresses[side]! += "addr add \(Guest.address4(slot: slot, onHostBridge: false))/24 dev eth0\n"
            guestAddresses[side]! += "addr add \(Guest.address6(slot: slot))/64 dev eth0 nodad\n"
            guestAddresses[c]! += "addr add \(Guest.address4(slot: slot, onHostBridge: true))/24 dev eth0\n"
        }
        let script = """
        set -e
        mkdir -p \(directory)/state \(directory)/network-run \(directory)/network-etc \(directory)/dnsmasq
        printf 'SYSLOG=no\\nON_INVALID=warn\\n' > \(directory)/virtgate.conf
        for n in \(Self.roles.map(ns).joined(separator: " ")); do ip netns add $n; ip -n $n link set lo up; done
        ip -n \(h) link add hw type veth peer name wh netns \(w)
        ip -n \(h) -batch - <<EOF
        addr add \(Lab.hostWan4)/24 dev hw
        addr add \(Lab.hostAlt4)/32 dev hw
        addr add \(Lab.hostWan6)/64 dev hw nodad
        addr add \(Lab.hostAlt6)/128 dev hw nodad
        link set hw up
        link add \(Lab.bridge) type bridge stp_state 0 forward_delay 0
        addr add \(Lab.gateway4)/24 dev \(Lab.bridge)
        addr add \(Lab.gateway6)/64 dev \(Lab.bridge) nodad
        link set \(Lab.bridge) up
        link add \(Lab.hostBridge) type bridge stp_state 0 forward_delay 0
        addr add \(Lab.hostBridgeGateway)/24 dev \(Lab.hostBridge)
        link set \(Lab.hostBridge) up
        EOF
        ip -n \(w) -batch - <<EOF
        addr add \(Lab.wan4)/24 dev wh
        addr add \(Lab.wan6)/64 dev wh nodad
        link set wh up
        route add 10.91.0.0/24 via \(Lab.hostWan4)
        route add fd91::/64 via \(Lab.hostWan6)
        EOF
        port() { # NS BRIDGE PORT-NAME
            ip -n \(h) link add $3 type veth peer name eth0 netns $1
            ip -n \(h) link set $3 master $2 up
            ip -n $1 link set eth0 up
        }
        port \(l) \(Lab.bridge) p-lan
        port \(a) \(Lab.bridge) p-ga
        port \(b) \(Lab.bridge) p-gb
        port \(c) \(Lab.hostBridge) p-gc
        ip -n \(l) addr add \(Lab.lan4)/24 dev eth0
        ip -n \(l) addr add \(Lab.lan6)/64 dev eth0 nodad
        ip -n \(a) -batch - <<EOF
        \(guestAddresses[a]!)
        EOF
        ip -n \(b) -batch - <<EOF
        \(guestAddresses[b]!)
        EOF
        ip -n \(c) -batch - <<EOF
        \(guestAddresses[c]!)
        EOF
        for n in \(l) \(a) \(b); do
            ip -n $n route add default via \(Lab.gateway4)
            ip -n $n -6 route add default via \(Lab.gateway6)
        done
        ip -n \(c) route add default via \(Lab.hostBridgeGateway)
        ip netns exec \(h) sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
        # UFW's shape: FORWARD drops what no accept admits, replies pass; libvirt's masquerade.
        ip netns exec \(h) sh -e -c '
            for t in iptables ip6tables; do
                $t -w -P FORWARD DROP
                $t -w -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
            done
            iptables -w -t nat -A POSTROUTING -s 10.91.0.0/24 ! -d 10.91.0.0/24 -j MASQUERADE
            ip6tables -w -t nat -A POSTROUTING -s fd91::/64 -d ff02::/16 -j RETURN'
        # Each guest namespace reports where a TCP connection was headed before it was redirected here.
        for n in \(a) \(b) \(c); do
            echo 'table inet vgtdf-guest { chain prerouting { type nat hook prerouting priority dstnat; policy accept; meta l4proto tcp redirect to :\(Traffic.redirectPort); }; }' |
                ip netns exec $n nft -f -
        done
        cat > \(directory)/traffic.py
        """
        let setup = try await sh(script, input: Traffic.script)
        guard setup.status == 0 else { throw LabError("lab set-up failed: \(setup.error)") }

        let udpPorts = Traffic.udpPorts(for: testCase, probes: probes).map(String.init).joined(separator: " ")
        var pids: [Int32] = []
        for role in ["ga", "gb", "gc"] {
            // `ip netns exec` execs python, so $! is the responder itself: only it is killed later.
            let started = try await sh("""
                ip netns exec \(ns(role)) python3 \(directory)/traffic.py serve \(directory)/ready-\(role) \(Traffic.redirectPort) \(udpPorts) \
                    </dev/null >/dev/null 2>\(directory)/serve-\(role).log &
                echo $!
                """)
            if let pid = Int32(String(started.output.filter(\.isNumber))) { pids.append(pid) }
        }
        let ready = try await sh("""
            for i in $(seq 100); do
                [ -e \(directory)/ready-ga ] && [ -e \(directory)/ready-gb ] && [ -e \(directory)/ready-gc ] && exit 0
                sleep 0.05
            done
            cat \(directory)/serve-*.log >&2; exit 1
            """)
        guard ready.status == 0 else { throw LabError("responders did not start: \(ready.error)") }
        return pids
    }

    func tearDown(pids: [Int32]) async {
        for pid in pids { kill(pid, SIGTERM) }
        _ = try? await sh("""
            sleep 0.1
            for n in \(Self.roles.map(ns).joined(separator: " ")); do ip netns del $n 2>/dev/null; done
            rm -rf \(directory)
            true
            """)
    }

    // MARK: events, read-back, traffic

    func exercise(_ outcome: inout Outcome) async throws {
        let baseline = try await ruleset()
        let network = testCase.networkXML()
        let oracle = Oracle(testCase)
        try await event(["network", Lab.network, "started", "begin", "-"], xml: network, &outcome)
        try await startGuests(&outcome)

        // Compared with the oracle and the other backend by the caller.
        outcome.claims = try await kernelClaims()
        outcome.answers = try await traffic(probes, retrying: oracle)
        try await stopGuests(&outcome)

        // Every guest stopped and started again on the running network, in the same order (with nft the
        // table stays between them, and only elements change): nothing is held in between, and
        // afterwards the same claims and the same answers as the oracle's.
        let between = try await kernelClaims()
        outcome.check(between.isEmpty, "restart", "claims held with every guest stopped: "
                      + between.map { "\($0)" }.sorted().prefix(4).joined(separator: " | "))
        try await startGuests(&outcome)
        let again = try await kernelClaims(), first = outcome.claims
        outcome.check(again == first, "restart", "claims after the restart differ from the first start's: "
                      + again.symmetricDifference(first).map { "\($0)" }.sorted().prefix(4).joined(separator: " | "))
        let answers = try await traffic(probes, retrying: oracle)
        let mismatched = probes.filter { answers[$0] != oracle.expected($0) }
        outcome.check(mismatched.isEmpty, "restart", "after the restart, \(mismatched.count) answers differ from the oracle's, e.g. "
                      + mismatched.prefix(3).map { "\($0.description): \(answers[$0] ?? "")" }.joined(separator: " | "))
        try await stopGuests(&outcome)
        try await event(["network", Lab.network, "stopped", "end", "-"], xml: network, &outcome)
        let after = try await ruleset()
        outcome.check(after == baseline, "baseline", "removing every owner does not restore the baseline ruleset:\n"
                      + lineDiff(baseline, after).prefix(12).map { "    \($0)" }.joined(separator: "\n"))
    }

    /// Every guest's `start`, in the case's order.
    func startGuests(_ outcome: inout Outcome) async throws {
        for guest in testCase.guests {
            try await event(["qemu", guest.name, "start", "begin", "-"], xml: guest.domainXML(), &outcome)
        }
    }

    /// The probes' answers; a busy machine can lose a SYN or a datagram, so what differs from the
    /// oracle is tried once more.
    func traffic(_ probes: [Traffic.Probe], retrying oracle: Oracle) async throws -> [Traffic.Probe: String] {
        var answers = try await traffic(probes)
        let doubtful = probes.filter { answers[$0] != oracle.expected($0) }
        if !doubtful.isEmpty { answers.merge(try await traffic(doubtful)) { $1 } }
        return answers
    }

    /// Every guest's `stopped` and `release`, as libvirt runs them.
    func stopGuests(_ outcome: inout Outcome) async throws {
        for guest in testCase.guests {
            try await event(["qemu", guest.name, "stopped", "end", "-"], xml: guest.domainXML(), &outcome)
            try await event(["qemu", guest.name, "release", "end", "-"], xml: guest.domainXML(), &outcome)
        }
    }

    /// One hook run as libvirt makes it, then the same again, which must write nothing.
    func event(_ arguments: [String], xml: String, _ outcome: inout Outcome) async throws {
        let name = arguments.prefix(4).joined(separator: " ")
        for pass in ["", " (repeated)"] {
            let result = try await inHost([
                "timeout", "60", "env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "LC_ALL=C", "HOME=/root", "USER=root", "LOGNAME=root",
                "VIRTGATE_CONFIG=\(directory)/virtgate.conf", "VIRTGATE_STATE_DIR=\(directory)/state",
                "VIRTGATE_NETWORK_RUN_DIR=\(directory)/network-run", "VIRTGATE_NETWORK_ETC_DIR=\(directory)/network-etc",
                "VIRTGATE_DNSMASQ_DIR=\(directory)/dnsmasq", "VIRTGATE_BACKEND=\(backend)", binary, "hook",
            ] + arguments, input: xml)
            let lines = result.error.split(separator: "\n")
            let bad = lines.filter { $0.lowercased().contains("error") || $0.lowercased().contains("failed") }
            outcome.check(result.status == 0 && bad.isEmpty, "event",
                          "\(name)\(pass): exit \(result.status): \((bad.isEmpty ? lines : bad).prefix(3).joined(separator: " | "))")
            if !pass.isEmpty {
                let applied = lines.filter { $0.contains(": applied") }
                outcome.check(applied.isEmpty, "repeat", "\(name) repeated wrote again: \(applied.prefix(2).joined(separator: " | "))")
            }
        }
    }

    /// What both backends' objects say guests hold, read from the kernel.
    func kernelClaims() async throws -> Set<Oracle.Claim> {
        var snapshot = IptablesSnapshot(parsing: try await inHost(["iptables-save"]).output, family: .v4)
        snapshot.add(parsing: try await inHost(["ip6tables-save"]).output, family: .v6)
        var claims = snapshot.forwardClaims()
        let table = try await inHost(["nft", "-j", "-p", "list", "table", "inet", "virtgate"])
        if table.status == 0 { claims += try NftState(json: table.output).forwardClaims() }
        return Oracle.kernelClaims(claims)
    }

    /// The host namespace's ruleset, counters and comments stripped: iptables (both families) as
    /// iptables-save prints it, and every native nftables table. iptables-nft's own tables are left
    /// to iptables-save: their built-in chains appear on first use and stay, empty, which is
    /// iptables-nft's doing and invisible to iptables.
    func ruleset() async throws -> [String] {
        let text = try await inHost(["sh", "-c", """
            iptables-save; ip6tables-save
            nft list tables | grep -vxE 'table (ip|ip6) (filter|nat|mangle|raw|security)' |
                while read -r _ family name; do nft list table "$family" "$name"; done
            """]).output
        return text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { String($0) }.map {
            $0.replacing(/\[\d+:\d+\]/, with: "[]").replacing(/counter packets \d+ bytes \d+/, with: "counter")
        }
    }

    func traffic(_ probes: [Traffic.Probe]) async throws -> [Traffic.Probe: String] {
        var answers: [Traffic.Probe: String] = [:]
        try await withThrowingTaskGroup(of: [Traffic.Probe: String].self) { group in
            for client in Oracle.Client.allCases {
                let mine = probes.filter { $0.client == client }
                let items = mine.enumerated().map { "[\"\($0.offset)\", \"\($0.element.proto)\", \"\($0.element.address)\", \($0.element.port)]" }
                let namespace = ns(client == .host ? "host" : client.rawValue)
                group.addTask {
                    let result = try await runner.run("/usr/bin/env", ["ip", "netns", "exec", namespace, "python3", "\(directory)/traffic.py", "probe"],
                                                      input: "[" + items.joined(separator: ",") + "]")
                    guard result.status == 0 else { throw LabError("probe from \(client) failed: \(result.error)") }
                    let raw = try JSONDecoder().decode([String: String].self, from: Data(result.output.utf8))
                    var mapped: [Traffic.Probe: String] = [:]
                    for (index, probe) in mine.enumerated() { mapped[probe] = Self.canonical(raw["\(index)"] ?? "") }
                    return mapped
                }
            }
            for try await part in group { answers.merge(part) { $1 } }
        }
        return answers
    }

    /// "ADDRESS PORT" with the address as virtgate prints it, so both sides compare as text.
    static func canonical(_ answer: String) -> String {
        let parts = answer.split(separator: " ")
        guard parts.count == 2, let address = IPAddress(parts[0]) else { return answer }
        return "\(address) \(parts[1])"
    }

    func lineDiff(_ before: [String], _ after: [String]) -> [String] {
        let gone = before.filter { !after.contains($0) }.map { "- \($0)" }
        let new = after.filter { !before.contains($0) }.map { "+ \($0)" }
        return gone + new
    }
}

struct LabError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
