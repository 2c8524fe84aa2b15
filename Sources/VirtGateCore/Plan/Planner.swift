/// Where the planner finds what the domain XML does not say: network definitions (for reservations
/// and subnets) and DHCP leases. The hook implements it from files; tests from memory.
public protocol AddressBook {
    func network(named name: String) -> NetworkDefinition?
    func leasedAddress(bridge: String, mac: MACAddress) -> IPv4Address?
}

public struct PlannerSettings: Hashable, Sendable {
    /// Add a masquerade for `route` and `open` networks (libvirt already masquerades `nat` ones).
    public var masqueradeRoutedNetworks = false

    public init(masqueradeRoutedNetworks: Bool = false) {
        self.masqueradeRoutedNetworks = masqueradeRoutedNetworks
    }
}

public enum Planner {
    public static func plan(network: NetworkDefinition, settings: PlannerSettings) -> OwnerPlan {
        var intents: [Intent] = []
        if let bridge = network.bridge {
            switch network.mode {
            case .nat, .route, .open:
                intents.append(.allowIntraBridge(bridge: bridge))
                for subnet in network.subnets {
                    intents.append(.allowOutbound(bridge: bridge, subnet: subnet.network))
                    intents.append(.allowReplies(bridge: bridge, subnet: subnet.network))
                }
                if settings.masqueradeRoutedNetworks, network.mode == .route || network.mode == .open {
                    intents += network.subnets.map { .masquerade(subnet: $0.network) }
                }
            case .isolated:
                intents.append(.allowIntraBridge(bridge: bridge))
            case .other:
                break
            }
        }
        return OwnerPlan(owner: .network(network.name), intents: intents)
    }

    /// Binds each valid forward to the guest's NIC, bridge and address, in metadata order.
    /// `taken` are the forwards other guests already hold: an overlapping forward of this guest is
    /// refused with a problem naming the holder (the first guest keeps the port).
    public static func plan(guest: GuestDefinition, addresses: some AddressBook, taken: [ForwardClaim] = []) -> GuestPlan {
        let subject = InputProblem.Subject.guest(guest.name)
        var intents: [Intent] = []
        var pending: [PendingForward] = []
        var problems: [InputProblem] = []
        var networks: [String] = []
        var bound: [(ForwardSpec, BoundForward)] = []

        for forward in guest.forwards {
            let nic: GuestInterface?
            if let mac = forward.mac {
                nic = guest.interfaces.first { $0.mac == mac }
                if nic == nil {
                    problems.append(InputProblem(subject, field: "forward #\(forward.position) mac",
                                                 value: mac.description, reason: "no interface of the guest has it"))
                    continue
                }
            } else {
                nic = guest.interfaces.first { $0.network != nil } ?? guest.interfaces.first
            }
            guard let nic else {
                pending.append(PendingForward(forward: forward, reason: "the guest has no network interface"))
                continue
            }
            let network = nic.network.flatMap { addresses.network(named: $0) }
            guard let bridge = nic.bridge ?? network?.bridge else {
                pending.append(PendingForward(forward: forward, reason: "bridge of interface \(nic.mac) unknown"))
                continue
            }
            if let network, !network.mode.isRouted {
                problems.append(InputProblem(subject, field: "forward #\(forward.position) network",
                                             value: network.name,
                                             reason: "network is not routed by the host (nat, route or open)"))
                continue
            }
            let address = forward.guestAddress
                ?? network?.reservations[nic.mac]
                ?? addresses.leasedAddress(bridge: bridge, mac: nic.mac)
            guard let address else {
                pending.append(PendingForward(forward: forward, reason: "no address known yet for \(nic.mac)"))
                continue
            }
            let candidate = BoundForward(
                proto: forward.proto, hostAddress: forward.hostAddress, hostPorts: forward.hostPorts,
                sources: forward.sources, guestAddress: address, guestPorts: forward.guestPorts, bridge: bridge,
                subnets: network?.subnets.map(\.network) ?? [], position: forward.position)
            if let (earlier, _) = bound.first(where: { $0.1.claim(by: guest.name).overlaps(candidate.claim(by: guest.name)) }) {
                problems.append(InputProblem(subject, field: "forward #\(forward.position) host-port",
                                             value: forward.hostPorts.description,
                                             reason: "overlaps forward #\(earlier.position)"))
                continue
            }
            if let holder = taken.first(where: { $0.guest != guest.name && $0.overlaps(candidate.claim(by: guest.name)) }) {
                problems.append(InputProblem(subject, field: "forward #\(forward.position) host-port",
                                             value: forward.hostPorts.description,
                                             reason: "conflicts with guest \(InputProblem.quoted(holder.guest)), which holds \(holder.summary)"))
                continue
            }
            bound.append((forward, candidate))
            if let network, !networks.contains(network.name) { networks.append(network.name) }
        }

        for (_, forward) in bound { intents += [.dnat(forward), .allowForwarded(forward)] }
        for (_, forward) in bound where !forward.subnets.isEmpty { intents.append(.hairpinMasquerade(forward)) }
        return GuestPlan(plan: OwnerPlan(owner: .guest(guest.name), intents: intents), pending: pending,
                         problems: problems, networks: networks)
    }
}

/// A host address/port range/protocol that a guest's forward receives, as far as other forwards
/// are concerned (the guest side does not matter for conflicts).
public struct ForwardClaim: Hashable, Sendable {
    public var guest: String
    public var proto: TransportProtocol
    public var hostAddress: IPv4Address?
    public var hostPorts: PortRange
    public var sources: [IPv4Network]

    public init(guest: String, proto: TransportProtocol, hostAddress: IPv4Address?, hostPorts: PortRange,
                sources: [IPv4Network]) {
        self.guest = guest
        self.proto = proto
        self.hostAddress = hostAddress
        self.hostPorts = hostPorts
        self.sources = sources
    }

    /// Two claims compete for the same packets: same protocol, overlapping host ports, a common
    /// host address and a common source.
    public func overlaps(_ other: ForwardClaim) -> Bool {
        guard proto == other.proto, hostPorts.lower <= other.hostPorts.upper,
              other.hostPorts.lower <= hostPorts.upper else { return false }
        if let mine = hostAddress, let theirs = other.hostAddress, mine != theirs { return false }
        if sources.isEmpty || other.sources.isEmpty { return true }
        return sources.contains { mine in
            other.sources.contains { mine.contains($0.address) || $0.contains(mine.address) }
        }
    }

    public var summary: String {
        "\(proto.rawValue) \(hostAddress.map { "\($0):" } ?? "")\(hostPorts)"
    }
}

extension BoundForward {
    func claim(by guest: String) -> ForwardClaim {
        ForwardClaim(guest: guest, proto: proto, hostAddress: hostAddress, hostPorts: hostPorts, sources: sources)
    }
}

extension GuestPlan {
    /// What this plan's forwards hold, for conflict checks of guests planned after it.
    public var claims: [ForwardClaim] {
        guard case .guest(let name) = plan.owner else { return [] }
        return plan.intents.compactMap { if case .dnat(let forward) = $0 { forward.claim(by: name) } else { nil } }
    }
}
