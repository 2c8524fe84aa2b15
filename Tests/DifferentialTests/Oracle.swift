import VirtGateCore

/// What the README promises, written from it and not from the planner: which forwards are held
/// (first guest in event order, then first forward in metadata order, keeps a contested claim; a
/// binding that overlaps an earlier one is refused whole) and where a connection must end up.
struct Oracle {
    struct Binding {
        var guest: String
        var family: IPFamily
        var proto: String
        var hostAddress: IPAddress?
        var hostPorts: ClosedRange<Int>
        /// This family's entries of the forward's allow-list, as written.
        var sources: [IPNetwork]
        var guestAddress: IPAddress
        var guestPorts: ClosedRange<Int>
        /// The guest's NIC is on the network and the network has a subnet of this family: the
        /// hairpin masquerade exists.
        var hairpin: Bool

        func overlaps(_ other: Binding) -> Bool {
            guard family == other.family, proto == other.proto, hostPorts.overlaps(other.hostPorts) else { return false }
            if let mine = hostAddress, let theirs = other.hostAddress, mine != theirs { return false }
            return Oracle.commonSource(sources, other.sources)
        }

        func admits(_ source: IPAddress, to address: IPAddress, proto: String, port: Int) -> Bool {
            family == address.family && self.proto == proto && hostPorts.contains(port)
                && (hostAddress == nil || hostAddress == address)
                && (Oracle.anyone(sources) || sources.contains { $0.contains(source) })
        }
    }

    let bindings: [Binding]
    /// The network's own addresses: a connection to one is forwarded only by a forward that names it.
    let networkAddresses: [IPAddress]

    init(_ testCase: Case) {
        // A guest-address never points at an address the network reserves for another guest.
        let reservedToOthers = Set(testCase.guests.filter { !$0.onHostBridge }.flatMap { other in
            (other.reserved4 ? [other.address4] : []) + (testCase.ipv6 && other.reserved6 ? [other.address6] : [])
        }.compactMap { IPAddress($0) })
        networkAddresses = ([Lab.gateway4] + (testCase.ipv6 ? [Lab.gateway6] : [])).compactMap { IPAddress($0) }
        var held: [Binding] = []
        for guest in testCase.guests {
            var own: [Binding] = []
            for forward in guest.forwards {
                let sources = forward.sources.compactMap { IPNetwork(parsing: $0) }
                let hostAddress = forward.hostAddress.flatMap { IPAddress($0) }
                let guestAddress = forward.guestAddress.flatMap { IPAddress($0) }
                // A guest-address outside the subnets of the NIC's network is invalid: the forward
                // is skipped (a NIC on a plain host bridge has no such check).
                let subnets = ["10.91.0.0/24"] + (testCase.ipv6 ? ["fd91::/64"] : [])
                if !guest.onHostBridge, let guestAddress,
                   !subnets.contains(where: { IPNetwork(parsing: $0)!.contains(guestAddress) })
                    || reservedToOthers.contains(guestAddress) && guestAddress != IPAddress(guest.address4)
                    && guestAddress != IPAddress(guest.address6) {
                    continue
                }
                // A forward names its family through an address or its sources; else it is both.
                let families: [IPFamily] = if let named = hostAddress?.family ?? guestAddress?.family { [named] }
                    else if sources.isEmpty { [.v4, .v6] }
                    else { [IPFamily.v4, .v6].filter { family in sources.contains { $0.family == family } } }
                for family in families {
                    let reserved: String? = guest.onHostBridge ? nil
                        : family == .v4 ? (guest.reserved4 ? guest.address4 : nil)
                        : (testCase.ipv6 && guest.reserved6 ? guest.address6 : nil)
                    guard let address = guestAddress?.family == family ? guestAddress : reserved.flatMap({ IPAddress($0) }) else {
                        continue // pending in this family
                    }
                    let binding = Binding(guest: guest.name, family: family, proto: forward.proto, hostAddress: hostAddress,
                                          hostPorts: forward.hostPorts, sources: sources.filter { $0.family == family },
                                          guestAddress: address, guestPorts: forward.guestPorts,
                                          hairpin: !guest.onHostBridge && (family == .v4 || testCase.ipv6))
                    if own.contains(where: { $0.overlaps(binding) }) || held.contains(where: { $0.overlaps(binding) }) { continue }
                    own.append(binding)
                }
            }
            held += own
        }
        bindings = held
    }

    /// An allow-list that admits everyone: none, or one with a whole family in it.
    static func anyone(_ sources: [IPNetwork]) -> Bool { sources.isEmpty || sources.contains { $0.prefix == 0 } }

    static func commonSource(_ a: [IPNetwork], _ b: [IPNetwork]) -> Bool {
        if anyone(a) || anyone(b) { return true }
        return a.contains { x in b.contains { y in x.contains(y.address) || y.contains(x.address) } }
    }

    /// An allow-list as a set of addresses: entries covered by another dropped, "" for anyone.
    static func normalized(_ sources: [IPNetwork]) -> String {
        if anyone(sources) { return "" }
        let unique = Array(Set(sources))
        let kept = unique.filter { network in
            !unique.contains { $0 != network && $0.prefix <= network.prefix && $0.contains(network.address) }
        }
        return kept.map(\.description).sorted().joined(separator: " ")
    }

    /// Per host port: who holds it, for which addresses and sources. Both backends' read-back and
    /// the oracle are compared in this form (iptables has one rule per range and source, nft one
    /// element per port and source).
    struct Claim: Hashable, Comparable, CustomStringConvertible {
        var guest: String, family: String, proto: String, hostAddress: String, port: Int, sources: String
        var description: String {
            "\(guest) \(family) \(proto) \(hostAddress.isEmpty ? "*" : hostAddress):\(port)" + (sources.isEmpty ? "" : " from \(sources)")
        }
        static func < (a: Claim, b: Claim) -> Bool { a.description < b.description }
    }

    static func claims(_ raw: [(guest: String, family: IPFamily, proto: String, hostAddress: IPAddress?, ports: ClosedRange<Int>, sources: [IPNetwork])]) -> Set<Claim> {
        var lists: [Claim: [IPNetwork]] = [:]
        var open: Set<Claim> = [] // someone admits anyone
        for claim in raw {
            for port in claim.ports {
                let key = Claim(guest: claim.guest, family: claim.family == .v4 ? "ipv4" : "ipv6", proto: claim.proto,
                                hostAddress: claim.hostAddress?.description ?? "", port: port, sources: "")
                if anyone(claim.sources) { open.insert(key) } else { lists[key, default: []] += claim.sources }
            }
        }
        return Set(lists.keys).union(open).reduce(into: Set<Claim>()) { result, key in
            var claim = key
            claim.sources = open.contains(key) ? "" : normalized(lists[key] ?? [])
            result.insert(claim)
        }
    }

    var claims: Set<Claim> {
        Self.claims(bindings.map { ($0.guest, $0.family, $0.proto, $0.hostAddress, $0.hostPorts, $0.sources) })
    }

    static func kernelClaims(_ claims: [ForwardClaim]) -> Set<Claim> {
        Self.claims(claims.map {
            ($0.guest, $0.family, $0.proto.rawValue, $0.hostAddress, Int($0.hostPorts.lower)...Int($0.hostPorts.upper), $0.sources)
        })
    }

    enum Client: String, CaseIterable { case wan, lan, host }

    /// The answer a probe must get: where its connection lands ("addr port"), or "" for none.
    func expected(_ probe: Traffic.Probe) -> String {
        expected(client: probe.client, address: IPAddress(probe.address)!, proto: probe.proto, port: probe.port) ?? ""
    }

    /// Where a connection from `client` to the host's `address`:`port` must land ("addr port"), or
    /// nil when nothing may answer.
    func expected(client: Client, address: IPAddress, proto: String, port: Int) -> String? {
        let source: IPAddress = switch client {
        case .wan: IPAddress(address.family == .v4 ? Lab.wan4 : Lab.wan6)!
        case .lan: IPAddress(address.family == .v4 ? Lab.lan4 : Lab.lan6)!
        case .host: address // the host talks to its own address from that address
        }
        guard let binding = bindings.first(where: {
            $0.admits(source, to: address, proto: proto, port: port) && ($0.hostAddress != nil || !networkAddresses.contains(address))
        }) else { return nil }
        // From the network's own bridge to a guest on it, the reply only comes back through the host
        // if the hairpin masquerade rewrote the source.
        let onBridge = IPNetwork(parsing: binding.family == .v4 ? "10.91.0.0/24" : "fd91::/64")!.contains(binding.guestAddress)
        if client == .lan, onBridge, !binding.hairpin { return nil }
        return "\(binding.guestAddress) \(binding.guestPorts.lowerBound + port - binding.hostPorts.lowerBound)"
    }
}
