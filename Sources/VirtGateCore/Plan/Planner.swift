/// Where the planner finds what the domain XML does not say: network definitions (for reservations
/// and subnets) and DHCP leases. The hook implements it from files; tests from memory.
public protocol AddressBook {
    func network(named name: String) -> NetworkDefinition?
    func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress?
    /// The MAC a DHCP lease on `bridge` gives `address` to, if any.
    func leaseHolder(bridge: String, address: IPAddress) -> MACAddress?
}

extension AddressBook {
    public func leaseHolder(bridge: String, address: IPAddress) -> MACAddress? { nil }
}

public struct PlannerSettings: Hashable, Sendable {
    /// Add a masquerade for `route` and `open` networks (libvirt already masquerades `nat` ones).
    public var masqueradeRoutedNetworks = false
    /// The conntrack mark of the nftables backend's DNATs; nil with the iptables backend.
    public var forwardMark: UInt32?

    /// Host ports guests may claim (`HOST_PORTS`); nil: any.
    public var hostPorts: [PortRange]?

    public init(masqueradeRoutedNetworks: Bool = false, forwardMark: UInt32? = nil, hostPorts: [PortRange]? = nil) {
        self.masqueradeRoutedNetworks = masqueradeRoutedNetworks
        self.forwardMark = forwardMark
        self.hostPorts = hostPorts
    }
}

public enum Planner {
    public static func plan(network: NetworkDefinition, settings: PlannerSettings) -> OwnerPlan {
        var intents: [Intent] = []
        // IPv6 rules only for a network with an IPv6 subnet: a host without IPv6 networks gets no
        // ip6tables table from virtgate at all.
        let families = IPFamily.allCases.filter { $0 == .v4 || network.subnets.contains { $0.network.family == .v6 } }
        if let bridge = network.bridge {
            switch network.mode {
            case .nat, .route, .open:
                intents += families.map { .allowIntraBridge(bridge: bridge, family: $0) }
                for subnet in network.subnets {
                    intents.append(.allowOutbound(bridge: bridge, subnet: subnet.network))
                    intents.append(.allowReplies(bridge: bridge, subnet: subnet.network))
                }
                if let mark = settings.forwardMark {
                    intents += families.map { .allowMarkedForwards(bridge: bridge, mark: mark, family: $0) }
                }
                if settings.masqueradeRoutedNetworks, network.mode == .route || network.mode == .open {
                    // IPv4 only: IPv6 subnets are routed as they are (no NAT66).
                    intents += network.subnets.filter { $0.network.family == .v4 }.map { .masquerade(subnet: $0.network) }
                }
            case .isolated:
                intents += families.map { .allowIntraBridge(bridge: bridge, family: $0) }
            case .other:
                break
            }
        }
        return OwnerPlan(owner: .network(network.name), intents: intents)
    }

    /// Why an explicit guest address is not this guest's to point a forward at, if it is not: it
    /// must lie on the NIC's network (the network's filter rules cover only its subnets), and be
    /// neither the host's own address there nor an address reserved or leased to another guest.
    static func notTheGuests(_ address: IPAddress, nic: GuestInterface, guest: String, network: NetworkDefinition,
                             bridge: String, addresses: some AddressBook) -> String? {
        let quoted = InputProblem.quoted(network.name)
        if !network.subnets.contains(where: { $0.network.contains(address) }) { return "not in a subnet of network \(quoted)" }
        if network.subnets.contains(where: { $0.gateway == address }) { return "the host's own address on network \(quoted)" }
        if let other = network.reservations.first(where: { $0.value == address && $0.key != nic.mac }) {
            return "reserved on network \(quoted) for MAC \(other.key)"
        }
        if let other = network.namedReservations.first(where: { $0.value == address && $0.key != guest }) {
            return "reserved on network \(quoted) for host \(InputProblem.quoted(other.key))"
        }
        if let holder = addresses.leaseHolder(bridge: bridge, address: address), holder != nic.mac {
            return "leased on network \(quoted) to MAC \(holder)"
        }
        return nil
    }

    /// Binds each valid forward to the guest's NIC, bridge and address, in metadata order.
    /// `taken` are the forwards other guests already hold: an overlapping forward of this guest is
    /// refused with a problem naming the holder (the first guest keeps the port).
    public static func plan(guest: GuestDefinition, addresses: some AddressBook, taken: [ForwardClaim] = [],
                            settings: PlannerSettings = PlannerSettings()) -> GuestPlan {
        plan(guest: guest, addresses: addresses, taken: ClaimIndex(taken), settings: settings)
    }

    /// The same with an index of what others hold: planning many guests stays linear.
    /// What a guest's plan must respect beyond other guests' claims.
    public struct HostContext: Sendable {
        public var hostSockets: [HostSocket] = []
        /// This guest's claims in the kernel: kept even if a host socket appeared since.
        public var held: [ForwardClaim] = []
        /// Host addresses on libvirt networks: a forward on any address leaves traffic to them alone.
        public var gateways: [IPAddress] = []

        public init(hostSockets: [HostSocket] = [], held: [ForwardClaim] = [], gateways: [IPAddress] = []) {
            self.hostSockets = hostSockets
            self.held = held
            self.gateways = gateways
        }
    }

    public static func plan(guest: GuestDefinition, addresses: some AddressBook, taken: ClaimIndex,
                            settings: PlannerSettings = PlannerSettings(), context: HostContext = HostContext()) -> GuestPlan {
        let subject = InputProblem.Subject.guest(guest.name)
        var intents: [Intent] = []
        var pending: [PendingForward] = []
        var problems: [InputProblem] = []
        var networks: [String] = []
        // Bound forwards and their claims, side by side: each claim made once, not once per comparison.
        var bound: [BoundForward] = []
        var boundClaims: [ForwardClaim] = []
        bound.reserveCapacity(guest.forwards.count)
        boundClaims.reserveCapacity(guest.forwards.count)
        // What the forwards through one NIC share, worked out once per NIC when a forward first uses
        // it: a guest's forwards almost always share one NIC.
        var nics = [NICBinding?](repeating: nil, count: guest.interfaces.count)

        var remappedPorts = 0
        for (index, forward) in guest.forwards.enumerated() {
            // Bounded work whatever the metadata says: libvirt waits for the hook.
            if let reason = Limits.exceeded(by: forward, index: index, remappedSoFar: &remappedPorts) {
                problems.append(InputProblem(subject, field: "forward #\(forward.position)", value: forward.summary, reason: reason))
                continue
            }
            if let allowed = settings.hostPorts,
               !allowed.contains(where: { $0.lower <= forward.hostPorts.lower && forward.hostPorts.upper <= $0.upper }) {
                problems.append(InputProblem(subject, field: "forward #\(forward.position) host-port", value: forward.hostPorts.description,
                                             reason: "not among the host ports guests may claim (HOST_PORTS)"))
                continue
            }
            let nicIndex: Int?
            if let mac = forward.mac {
                nicIndex = guest.interfaces.firstIndex { $0.mac == mac }
                if nicIndex == nil {
                    problems.append(InputProblem(subject, field: "forward #\(forward.position) mac",
                                                 value: mac.description, reason: "no interface of the guest has it"))
                    continue
                }
            } else {
                nicIndex = guest.interfaces.firstIndex { $0.network != nil } ?? guest.interfaces.indices.first
            }
            guard let nicIndex else {
                pending.append(PendingForward(forward: forward, reason: "the guest has no network interface"))
                continue
            }
            if nics[nicIndex] == nil { nics[nicIndex] = NICBinding(guest.interfaces[nicIndex], addresses: addresses) }
            guard let bridge = nics[nicIndex]!.bridge else {
                pending.append(PendingForward(forward: forward, reason: "bridge of interface \(nics[nicIndex]!.mac) unknown"))
                continue
            }
            if let name = nics[nicIndex]!.networkName, !nics[nicIndex]!.routed {
                problems.append(InputProblem(subject, field: "forward #\(forward.position) network", value: name,
                                             reason: "network is not routed by the host (nat, route or open)"))
                continue
            }
            // One binding per family the forward applies to. A forward that names no family binds
            // wherever the guest has an address; it is pending only while it has none at all.
            var unbound: [IPFamily] = []
            var settled = false
            for family in forward.families {
                let given = forward.guestAddress?.family == family ? forward.guestAddress : nil
                guard let address = given ?? nics[nicIndex]!.address(family, guest: guest.name, addresses: addresses) else {
                    unbound.append(family)
                    continue
                }
                settled = true
                // A given guest address must lie on the NIC's network: anything else is not this
                // guest's (and the network's filter rules, which admit the forward, cover only its subnets).
                if given != nil, let network = nics[nicIndex]!.network,
                   let reason = Self.notTheGuests(address, nic: guest.interfaces[nicIndex], guest: guest.name, network: network,
                                                  bridge: bridge, addresses: addresses) {
                    problems.append(InputProblem(subject, field: "forward #\(forward.position) guest-address",
                                                 value: address.description, reason: reason))
                    continue
                }
                let candidate = BoundForward(
                    proto: forward.proto, hostAddress: forward.hostAddress, hostPorts: forward.hostPorts,
                    sources: IPNetwork.normalizedAllowList(forward.sources.filter { $0.family == family }), guestAddress: address,
                    guestPorts: forward.guestPorts, bridge: bridge,
                    subnets: family == .v4 ? nics[nicIndex]!.subnets.v4 : nics[nicIndex]!.subnets.v6,
                    position: forward.position, onPlainBridge: nics[nicIndex]!.networkName == nil)
                let claim = candidate.claim(by: guest.name)
                if let earlier = boundClaims.firstIndex(where: { $0.overlaps(claim) }) {
                    problems.append(InputProblem(subject, field: "forward #\(forward.position) host-port",
                                                 value: forward.hostPorts.description,
                                                 reason: "overlaps forward #\(bound[earlier].position)"))
                    continue
                }
                if let socket = context.hostSockets.first(where: { $0.isHidden(by: claim) }),
                   !context.held.contains(where: { $0.covers(claim) }) {
                    problems.append(InputProblem(subject, field: "forward #\(forward.position) host-port",
                                                 value: forward.hostPorts.description,
                                                 reason: "a host process holds \(socket.summary); the forward would hide it"))
                    continue
                }
                if let holder = taken.first(overlapping: claim) {
                    problems.append(InputProblem(subject, field: "forward #\(forward.position) host-port",
                                                 value: forward.hostPorts.description,
                                                 reason: "conflicts with guest \(InputProblem.quoted(holder.guest)), which holds \(holder.summary)"))
                    continue
                }
                bound.append(candidate)
                boundClaims.append(claim)
                if let name = nics[nicIndex]!.networkName, !networks.contains(name) { networks.append(name) }
            }
            if !settled {
                let families = unbound.count == 1 ? "\(unbound[0].label) " : ""
                pending.append(PendingForward(forward: forward, reason: "no \(families)address known yet for \(nics[nicIndex]!.mac)"))
            }
        }

        // Forwards on a named host address first, then the gateway exemption, then forwards on any
        // address: traffic to a libvirt network's own address (guests' DNS, DHCP) reaches the host
        // unless a forward names that address.
        intents.reserveCapacity(bound.count * 3 + 2)
        for forward in bound where forward.hostAddress != nil {
            intents.append(.dnat(forward))
            intents.append(.allowForwarded(forward))
        }
        for family in IPFamily.allCases where bound.contains(where: { $0.hostAddress == nil && $0.family == family }) {
            let gateways = context.gateways.filter { $0.family == family }
            if !gateways.isEmpty { intents.append(.exemptGateways(gateways)) }
        }
        for forward in bound where forward.hostAddress == nil {
            intents.append(.dnat(forward))
            intents.append(.allowForwarded(forward))
        }
        for forward in bound where !forward.subnets.isEmpty { intents.append(.hairpinMasquerade(forward)) }
        // A NIC on a host bridge that is no libvirt network has no network rules to admit the marked
        // connections (nftables backend): the guest carries that accept itself, once per bridge and family.
        if let mark = settings.forwardMark {
            var seen = Set<String>()
            for forward in bound where forward.onPlainBridge && seen.insert("\(forward.bridge) \(forward.family)").inserted {
                intents.append(.allowMarkedForwards(bridge: forward.bridge, mark: mark, family: forward.family))
            }
        }
        // The claims in the order of the DNAT intents: forwards on a named host address first.
        var claims = boundClaims
        if bound.contains(where: { $0.hostAddress != nil }) {
            claims = bound.indices.filter { bound[$0].hostAddress != nil }.map { boundClaims[$0] }
                + bound.indices.filter { bound[$0].hostAddress == nil }.map { boundClaims[$0] }
        }
        return GuestPlan(plan: OwnerPlan(owner: .guest(guest.name), intents: intents), pending: pending,
                         problems: problems, networks: networks, claims: claims)
    }
}

/// A host address/port range/protocol that a guest's forward receives, as far as other forwards
/// are concerned (the guest side does not matter for conflicts).
public struct ForwardClaim: Hashable, Sendable {
    public var guest: String
    public var family: IPFamily
    public var proto: TransportProtocol
    public var hostAddress: IPAddress?
    public var hostPorts: PortRange
    public var sources: [IPNetwork]

    public init(guest: String, family: IPFamily, proto: TransportProtocol, hostAddress: IPAddress?,
                hostPorts: PortRange, sources: [IPNetwork]) {
        self.guest = guest
        self.family = family
        self.proto = proto
        self.hostAddress = hostAddress
        self.hostPorts = hostPorts
        self.sources = sources
    }

    /// Two claims compete for the same packets: same protocol, overlapping host ports, a common
    /// host address and a common source.
    public func overlaps(_ other: ForwardClaim) -> Bool {
        guard family == other.family, proto == other.proto, hostPorts.lower <= other.hostPorts.upper,
              other.hostPorts.lower <= hostPorts.upper else { return false }
        if let mine = hostAddress, let theirs = other.hostAddress, mine != theirs { return false }
        if sources.isEmpty || other.sources.isEmpty { return true }
        return sources.contains { mine in
            other.sources.contains { mine.contains($0.address) || $0.contains(mine.address) }
        }
    }

    /// `self` receives every packet `other` would (same or wider ports, host address and sources).
    public func covers(_ other: ForwardClaim) -> Bool {
        family == other.family && proto == other.proto && hostPorts.lower <= other.hostPorts.lower
            && other.hostPorts.upper <= hostPorts.upper && (hostAddress == nil || hostAddress == other.hostAddress)
            && (sources.isEmpty || other.sources.allSatisfy { theirs in sources.contains { $0.covers(theirs) } } && !other.sources.isEmpty)
    }

    public var summary: String {
        if let hostAddress { return "\(proto.rawValue) \(hostAddress.bracketed):\(hostPorts)" }
        return "\(proto.rawValue) \(hostPorts)" + (family == .v6 ? " (IPv6)" : "")
    }
}

/// Claims by family, protocol and host port, so a conflict check looks at the claims on its own
/// ports only. Wide ranges (beyond `wideRange` ports) are kept aside and always compared.
public struct ClaimIndex: Sendable {
    /// Family, protocol and port in one word: one integer to hash.
    struct Key: Hashable {
        var packed: UInt32

        init(family: IPFamily, proto: TransportProtocol, port: UInt16) {
            packed = UInt32(port) | UInt32(proto.number) << 16 | (family == .v6 ? 1 << 24 : 0)
        }
    }
    static let wideRange = 256

    /// The first claim on each port, and the others on it in order: most ports hold one claim,
    /// which then needs no array of its own (a sync indexes thousands).
    private var first: [Key: ForwardClaim] = [:]
    private var more: [Key: [ForwardClaim]] = [:]
    private var wide: [ForwardClaim] = []

    public init(_ claims: [ForwardClaim] = []) {
        first.reserveCapacity(claims.count)
        for claim in claims { insert(claim) }
    }

    /// Room for `ports` more single-port claims without rehashing.
    public mutating func reserveCapacity(_ ports: Int) {
        first.reserveCapacity(first.count + ports)
    }

    public mutating func insert(_ claim: ForwardClaim) {
        guard claim.hostPorts.count <= Self.wideRange else { return wide.append(claim) }
        for port in claim.hostPorts.ports {
            let key = Key(family: claim.family, proto: claim.proto, port: port)
            // One lookup for a port no claim holds yet, the usual case.
            if let earlier = first.updateValue(claim, forKey: key) {
                first[key] = earlier
                more[key, default: []].append(claim)
            }
        }
    }

    /// A claim of another guest that competes with `claim` for the same packets: on the lowest
    /// port where there is one, the one indexed first.
    public func first(overlapping claim: ForwardClaim) -> ForwardClaim? {
        for port in claim.hostPorts.ports {
            let key = Key(family: claim.family, proto: claim.proto, port: port)
            guard let held = first[key] else { continue }
            if held.guest != claim.guest && held.overlaps(claim) { return held }
            if !more.isEmpty, let others = more[key] {
                for other in others where other.guest != claim.guest && other.overlaps(claim) {
                    return other
                }
            }
        }
        return wide.first { $0.guest != claim.guest && $0.overlaps(claim) }
    }
}

extension BoundForward {
    func claim(by guest: String) -> ForwardClaim {
        ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: hostAddress, hostPorts: hostPorts, sources: sources)
    }
}

/// What all forwards through one guest NIC share: its network, looked up once (a lookup copies a
/// definition that holds every reservation of the network), its bridge, the network's subnets of
/// each family, and each family's reserved or leased address once a forward asks for it.
private struct NICBinding {
    let mac: MACAddress
    let network: NetworkDefinition?
    let networkName: String?
    let routed: Bool
    let bridge: String?
    let subnets: (v4: [IPNetwork], v6: [IPNetwork])
    /// Per family: nil until asked, then the address (or none).
    private var addresses: (v4: IPAddress??, v6: IPAddress??) = (nil, nil)

    init(_ nic: GuestInterface, addresses book: some AddressBook) {
        mac = nic.mac
        network = nic.network.flatMap { book.network(named: $0) }
        networkName = network?.name
        routed = network?.mode.isRouted ?? false
        bridge = nic.bridge ?? network?.bridge
        let subnets = network?.subnets.map(\.network) ?? []
        self.subnets = (subnets.filter { $0.family == .v4 }, subnets.filter { $0.family == .v6 })
    }

    /// The NIC's address of `family` from its network's reservation, else from a lease on its bridge.
    mutating func address(_ family: IPFamily, guest: String, addresses book: some AddressBook) -> IPAddress? {
        if let known = family == .v4 ? addresses.v4 : addresses.v6 { return known }
        let found = network?.reservation(mac: mac, guest: guest, family: family)
            ?? bridge.flatMap { book.leasedAddress(bridge: $0, mac: mac, family: family) }
        if family == .v4 { addresses.v4 = .some(found) } else { addresses.v6 = .some(found) }
        return found
    }
}

/// What one guest's metadata may ask for. Past these a forward is refused with a one-line error,
/// so every hook run finishes in bounded time and memory whatever the metadata holds.
public enum Limits {
    /// Forwards per guest.
    public static let forwardsPerGuest = 256
    /// Entries in one forward's `source` list.
    public static let sourcesPerForward = 64
    /// Ports of remapped ranges (guest ports other than the host ports), times their sources, per
    /// guest: each is one nftables map element (nft cannot shift a range), where a range that keeps
    /// its port numbers is one element whatever its length.
    public static let remappedPortsPerGuest = 4096

    static func exceeded(by forward: ForwardSpec, index: Int, remappedSoFar: inout Int) -> String? {
        if index >= forwardsPerGuest { return "more than \(forwardsPerGuest) forwards in one guest" }
        if forward.sources.count > sourcesPerForward { return "more than \(sourcesPerForward) source entries" }
        if forward.hostPorts != forward.guestPorts && !forward.hostPorts.isSingle {
            let cost = forward.hostPorts.count * max(1, forward.sources.count)
            if remappedSoFar + cost > remappedPortsPerGuest {
                return "remapped ranges of one guest may cover at most \(remappedPortsPerGuest) ports (times their sources)"
            }
            remappedSoFar += cost
        }
        return nil
    }
}
