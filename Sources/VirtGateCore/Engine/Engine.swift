/// The engine: every hook event and every command describes what it knows as an `EngineInput`;
/// `Engine.plan` (pure) turns it into per-owner plans, problems and pending forwards; the chosen
/// `Backend` says what the kernel should then hold; `Firewall` (the only effects) reads the kernel,
/// renders the difference and applies it as one transaction. See `Firewall.run`.
public struct EngineInput {
    /// Networks whose rules this change asserts.
    public var networks: [NetworkDefinition]
    /// Guests whose forwards this change plans (each replaces everything that guest had).
    public var guests: [GuestDefinition]
    /// Owners whose rules go (a stopped guest or network).
    public var removed: [Owner]
    /// Everything virtgate owns that is not planned here goes too (sync, reapply): the result then
    /// depends only on this input, not on what the kernel had.
    public var exclusive: Bool
    /// Where guests' addresses come from: network definitions (reservations) and leases.
    public var addresses: any AddressBook
    /// What the other backend holds goes too (sync, reapply): after a switch of backend nothing of
    /// the old one stays.
    public var clearsOtherBackend: Bool
    /// Owner ids (chain ids, element comments) → guest names, for guests the kernel may hold claims
    /// of; the planned guests are added by the engine.
    public var names: [String: String]
    /// A removed guest had a NIC on a plain host bridge: with the nftables backend it then owns
    /// filter rules in iptables too (see `Intent.allowMarkedForwards`).
    public var removesPlainBridgeRules: Bool
    /// Under `ON_INVALID=refuse`: a plan with any problem changes nothing.
    public var refuseOnProblems: Bool
    /// Host sockets a new forward must not hide (`ListeningSockets.current()`).
    public var hostSockets: [HostSocket] = []
    /// The host's addresses on every libvirt network virtgate knows of, beyond `networks`: traffic
    /// to them (guests' DNS and DHCP) is never forwarded unless a forward names the address. nil:
    /// not known to this change (a removal), so the kernel's list stays as it is.
    public var gateways: [IPAddress]?

    public init(networks: [NetworkDefinition] = [], guests: [GuestDefinition] = [], removed: [Owner] = [],
                exclusive: Bool = false, addresses: any AddressBook, names: [String: String] = [:],
                clearsOtherBackend: Bool = false,
                removesPlainBridgeRules: Bool = false, refuseOnProblems: Bool = false) {
        self.networks = networks
        self.guests = guests
        self.removed = removed
        self.exclusive = exclusive
        self.clearsOtherBackend = clearsOtherBackend || exclusive
        self.addresses = addresses
        self.names = names
        self.removesPlainBridgeRules = removesPlainBridgeRules
        self.refuseOnProblems = refuseOnProblems
    }

    /// One guest's change, with the rules of the networks its NICs are on where `assertNetwork`
    /// says so (a guest without forwards needs none).
    public static func guest(_ guest: GuestDefinition, addresses: any AddressBook, names: [String: String] = [:],
                             assertNetwork: (String) -> Bool, refuseOnProblems: Bool = false) -> EngineInput {
        var networks: [NetworkDefinition] = []
        if !guest.forwards.isEmpty {
            for name in guest.interfaces.compactMap(\.network) where !networks.contains(where: { $0.name == name }) {
                guard assertNetwork(name), let network = addresses.network(named: name) else { continue }
                networks.append(network)
            }
        }
        return EngineInput(networks: networks, guests: [guest], addresses: addresses, names: names,
                           refuseOnProblems: refuseOnProblems)
    }

    /// A guest that has a NIC on a host bridge which is no libvirt network.
    public static func usesPlainBridge(_ guest: GuestDefinition) -> Bool {
        guest.interfaces.contains { $0.network == nil && $0.bridge != nil }
    }
}

public struct NetworkPlan: Sendable {
    public var network: NetworkDefinition
    public var plan: OwnerPlan
}

public struct PlannedGuest: Sendable {
    public var guest: GuestDefinition
    public var plan: GuestPlan

    /// Parse problems (of the metadata) and binding problems (conflicts, addresses), in that order.
    public var problems: [InputProblem] { guest.problems + plan.problems }
}

/// What one change makes of every owner it touches.
public struct EnginePlan: Sendable {
    public var networks: [NetworkPlan]
    /// In planning order: guests holding claims in the kernel first, then by name.
    public var guests: [PlannedGuest]
    public var removed: [Owner]
    /// Guests left alone because their owner id is another guest's.
    public var collisions: [InputProblem] = []
    public var exclusive: Bool
    public var clearsOtherBackend: Bool
    public var removesPlainBridgeRules: Bool
    /// Every gateway address traffic to which stays un-forwarded; nil: keep the kernel's.
    public var gateways: [IPAddress]?

    public var problems: [InputProblem] { collisions + guests.flatMap(\.problems) }
    public var ownerPlans: [OwnerPlan] { networks.map(\.plan) + guests.map(\.plan.plan) }
}

public enum Engine {
    /// The one planning function. `incumbents` are the claims the kernel holds now (of any backend):
    /// a guest already holding a port keeps it, exactly as the sequence of hook events decided.
    /// Claims of the guests being planned or removed are replaced, so they block no one; with
    /// `exclusive`, no claim outside this input survives either.
    public static func plan(_ input: EngineInput, incumbents: [ForwardClaim], settings: PlannerSettings) -> EnginePlan {
        let networks = input.networks.sorted { $0.name < $1.name }.map {
            NetworkPlan(network: $0, plan: Planner.plan(network: $0, settings: settings))
        }
        let replaced = Set(input.guests.map(\.name) + input.removed.compactMap {
            if case .guest(let name) = $0 { name } else { nil }
        })
        var taken = ClaimIndex(input.exclusive ? [] : incumbents.filter { !replaced.contains($0.guest) })
        let holders = Set(incumbents.map(\.guest))
        // Each guest's rank computed once, not in every comparison.
        let ordered = input.guests.map { (holders.contains($0.name) ? 0 : 1, $0) }
            .sorted { ($0.0, $0.1.name) < ($1.0, $1.1.name) }.map(\.1)
        let gateways = input.gateways.map { known in
            Array(Set(known + input.networks.flatMap { $0.subnets.map(\.gateway) })).sorted()
        }
        // What each guest holds in the kernel already: a host socket that appeared later does not
        // take it away (status and doctor flag it); it only keeps new claims from being made.
        var held: [String: [ForwardClaim]] = [:]
        for claim in incumbents { held[claim.guest, default: []].append(claim) }
        // Each owner id is recorded with its full name (`names`, from the state virtgate keeps): a
        // guest whose id another guest holds touches nothing of that owner's, whatever made them
        // collide.
        var collisions: [InputProblem] = []
        func collides(_ name: String) -> Bool {
            let id = ChainNames.id(for: name)
            guard let holder = input.names[id], holder != name else { return false }
            collisions.append(InputProblem(.guest(name), field: "name", value: name,
                                           reason: "its owner id \(id) belongs to guest \(InputProblem.quoted(holder)); nothing changed"))
            return true
        }
        let removed = input.removed.filter { if case .guest(let name) = $0 { !collides(name) } else { true } }
        var guests: [PlannedGuest] = []
        // Room for every forward's port: a sync indexes thousands, and growing the index rehashes it.
        taken.reserveCapacity(ordered.reduce(0) { $0 + $1.forwards.count })
        for guest in ordered where !collides(guest.name) {
            let plan = Planner.plan(guest: guest, addresses: input.addresses, taken: taken, settings: settings,
                                    context: .init(hostSockets: input.hostSockets, held: held[guest.name] ?? [],
                                                   gateways: gateways ?? []))
            for claim in plan.claims { taken.insert(claim) }
            guests.append(PlannedGuest(guest: guest, plan: plan))
        }
        return EnginePlan(networks: networks, guests: guests, removed: removed, collisions: collisions, exclusive: input.exclusive,
                          clearsOtherBackend: input.clearsOtherBackend, removesPlainBridgeRules: input.removesPlainBridgeRules,
                          gateways: gateways)
    }

    /// Owner id → guest name for every guest of `input`, on top of what the caller knows.
    static func names(_ input: EngineInput) -> [String: String] {
        var names = input.names
        for guest in input.guests { names[ChainNames.id(for: guest.name)] = guest.name }
        for case .guest(let name) in input.removed { names[ChainNames.id(for: name)] = name }
        return names
    }
}

/// For changes that bind no guest address (removals, flush).
public struct NoAddresses: AddressBook {
    public init() {}
    public func network(named name: String) -> NetworkDefinition? { nil }
    public func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? { nil }
}

extension Log {
    /// At most this many problem lines per guest and event; the rest are counted in one line, so a
    /// guest with thousands of bad forwards cannot flood the log.
    public static let problemLines = 20

    /// Each problem: an error when `refuse` keeps the guest from starting, else a warning.
    public func report(_ problems: [InputProblem], refuse: Bool) {
        for problem in problems.prefix(Self.problemLines) {
            refuse ? error("\(problem)") : warning("\(problem); forward skipped")
        }
        if problems.count > Self.problemLines {
            let line = "\(problems.count - Self.problemLines) more problems of the same guest not shown"
            refuse ? error(line) : warning(line)
        }
    }

    /// Each planned guest's problems (an error when `refuse` keeps it from starting, else a warning)
    /// and pending forwards.
    public func report(_ plan: EnginePlan, refuse: Bool = false) {
        for collision in plan.collisions { error("\(collision)") }
        for guest in plan.guests {
            report(guest.problems, refuse: refuse)
            for pending in guest.plan.pending {
                info("guest \(InputProblem.quoted(guest.guest.name)): forward #\(pending.forward.position) \(pending.forward.summary) pending: \(pending.reason)")
            }
        }
    }
}
