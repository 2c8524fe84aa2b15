/// Where guests' forwards live. Chosen once, where the context is built (`Backends.make`), and
/// asked only two things: which kernel objects a change must read, and what those objects should
/// then be. Reading, rendering the difference and applying it are the same for both (`Firewall`).
public protocol Backend: Sendable {
    var kind: BackendKind { get }
    /// What the planner needs to know of this backend (the nftables backend's connection mark).
    var plannerSettings: PlannerSettings { get }
    /// A guest's change can assert its networks' rules at no extra cost (same transaction, same read).
    var networksRideAlong: Bool { get }
    /// The kernel objects `input`'s transaction replaces or decides conflicts from.
    func reads(for input: EngineInput) -> KernelReads
    /// What virtgate's objects should be once `plan` is applied to `state`. Pure.
    func desired(_ plan: EnginePlan, on state: KernelState) -> DesiredState
}

public struct KernelReads: Hashable, Sendable {
    /// virtgate's iptables/ip6tables chains (iptables-save).
    public var iptables: Bool
    /// virtgate's nftables table.
    public var nft: Bool
    /// With `nft`: nil reads the whole table; else only what `NftReadScope` names.
    public var nftScope: NftReadScope? = nil
}

/// The part of virtgate's nft table a guest event needs: every element of the owners it changes
/// (and the gateway set's), and any other owner's element on a protocol and port that one of its
/// forwards claims (a conflict needs both). Nothing else can change or matter, so nothing else is
/// decoded or compared: with 1,000 guests in the table that is almost all of it.
///
/// Only a table of the layout the change expects (`marker`) is read so: a table of another layout or
/// mark is rebuilt as a whole from what was read, so all of it is read.
public struct NftReadScope: Hashable, Sendable {
    public var owners: Set<String>
    /// Protocol number → host port ranges claimed.
    public var ports: [UInt8: [PortRange]]
    /// The layout marker chain of the backend making the change (`NftLayout.marker(mark:)`).
    public var marker: String

    public init(owners: Set<String>, ports: [UInt8: [PortRange]], marker: String) {
        self.owners = owners
        self.ports = ports
        self.marker = marker
    }

    /// Whether an element of another owner on `proto`, host ports `low`…`high`, can collide.
    public func overlaps(proto: UInt8, low: UInt16, high: UInt16) -> Bool {
        ports[proto]?.contains { $0.lower <= high && low <= $0.upper } ?? false
    }
}

/// virtgate's objects in the kernel, as far as they were read.
public struct KernelState: Sendable {
    public var iptables: IptablesSnapshot?
    public var nft: NftState?

    public init(iptables: IptablesSnapshot? = nil, nft: NftState? = nil) {
        self.iptables = iptables
        self.nft = nft
    }

    /// What guests hold in the kernel, in either backend's objects: after a switch of backend a
    /// guest keeps the ports it held.
    public func claims(names: [String: String]) -> [ForwardClaim] {
        (iptables?.forwardClaims(names: names) ?? []) + (nft?.forwardClaims(names: names) ?? [])
    }
}

/// What virtgate's objects should be; nil leaves that part as it is (not read, not written).
public struct DesiredState: Hashable, Sendable {
    public var chains: DesiredChains?
    public var elements: DesiredElements?

    public init(chains: DesiredChains? = nil, elements: DesiredElements? = nil) {
        self.chains = chains
        self.elements = elements
    }
}

public enum Backends {
    /// The backend the settings name. `nftInstalled` is false where nft is missing (`auto` then
    /// picked iptables; an explicit `nft` is refused when the context is built).
    public static func make(_ settings: Settings, nftInstalled: Bool) -> any Backend {
        switch settings.backend {
        case .nft: NftMapBackend(mark: settings.connectionMark, masqueradeRouted: settings.masqueradeRoutedNetworks,
                                 hostPorts: settings.hostPorts)
        case .iptables: IptablesChainBackend(masqueradeRouted: settings.masqueradeRoutedNetworks, nftInstalled: nftInstalled,
                                             hostPorts: settings.hostPorts)
        }
    }
}

/// Every owner has chains of its own in iptables/ip6tables; a change rewrites exactly its owners'.
public struct IptablesChainBackend: Backend {
    public let masqueradeRouted: Bool
    /// Whether a leftover nftables table of the other backend can exist (and must go on `sync`).
    public let nftInstalled: Bool
    /// `HOST_PORTS`: host ports guests may claim; nil: any.
    public let hostPorts: [PortRange]?

    public init(masqueradeRouted: Bool = false, nftInstalled: Bool = false, hostPorts: [PortRange]? = nil) {
        self.masqueradeRouted = masqueradeRouted
        self.nftInstalled = nftInstalled
        self.hostPorts = hostPorts
    }

    public var kind: BackendKind { .iptables }
    public var networksRideAlong: Bool { true }
    public var plannerSettings: PlannerSettings {
        PlannerSettings(masqueradeRoutedNetworks: masqueradeRouted, hostPorts: hostPorts)
    }

    public func reads(for input: EngineInput) -> KernelReads {
        // The other backend's table matters only to a change that clears it.
        KernelReads(iptables: true, nft: input.clearsOtherBackend && nftInstalled)
    }

    public func desired(_ plan: EnginePlan, on state: KernelState) -> DesiredState {
        var chains = plan.exclusive ? DesiredChains() : state.iptables?.ownerChains ?? [:]
        for owner in plan.removed { IptablesTransaction.replace(&chains, owner: owner, with: []) }
        for plan in plan.ownerPlans {
            IptablesTransaction.replace(&chains, owner: plan.owner, with: IptablesRules.chains(for: plan))
        }
        // Nothing of the other backend stays once everything was planned here.
        let elements: DesiredElements? = plan.clearsOtherBackend && state.nft != nil ? [:] : nil
        return DesiredState(chains: chains, elements: elements)
    }
}

/// Guests' forwards are elements of maps in virtgate's own nftables table; the filter half (where
/// the host's DROP is) stays in iptables: networks' chains, and the mark accept of a guest on a
/// plain host bridge. A guest event on a libvirt network therefore never reads or writes iptables.
public struct NftMapBackend: Backend {
    public let mark: UInt32
    public let masqueradeRouted: Bool
    /// `HOST_PORTS`: host ports guests may claim; nil: any.
    public let hostPorts: [PortRange]?

    public init(mark: UInt32, masqueradeRouted: Bool = false, hostPorts: [PortRange]? = nil) {
        self.mark = mark
        self.masqueradeRouted = masqueradeRouted
        self.hostPorts = hostPorts
    }

    public var kind: BackendKind { .nft }
    /// Networks' rules are in iptables, which a guest event otherwise never reads.
    public var networksRideAlong: Bool { false }
    public var plannerSettings: PlannerSettings {
        PlannerSettings(masqueradeRoutedNetworks: masqueradeRouted, forwardMark: mark, hostPorts: hostPorts)
    }

    public func reads(for input: EngineInput) -> KernelReads {
        let filter = input.clearsOtherBackend || !input.networks.isEmpty || input.removesPlainBridgeRules
            || input.removed.contains { if case .network = $0 { true } else { false } }
            || input.guests.contains(where: EngineInput.usesPlainBridge)
        return KernelReads(iptables: filter, nft: true, nftScope: Self.scope(for: input, mark: mark))
    }

    /// What a change that replaces only its own owners needs of the table (nil: all of it).
    static func scope(for input: EngineInput, mark: UInt32) -> NftReadScope? {
        guard !input.exclusive, !input.clearsOtherBackend else { return nil }
        var scope = NftReadScope(owners: [NftLayout.gatewayOwner], ports: [:], marker: NftLayout.marker(mark: mark))
        for guest in input.guests {
            scope.owners.insert(ChainNames.id(for: guest.name))
            for forward in guest.forwards { scope.ports[forward.proto.number, default: []].append(forward.hostPorts) }
        }
        for case .guest(let name) in input.removed { scope.owners.insert(ChainNames.id(for: name)) }
        return scope
    }

    public func desired(_ plan: EnginePlan, on state: KernelState) -> DesiredState {
        var elements = plan.exclusive ? DesiredElements() : state.nft?.ownerElements ?? [:]
        for owner in plan.removed { NftTransaction.replace(&elements, owner: owner, with: []) }
        // Each guest's elements are its plan's alone: a sync renders them on every core.
        let perGuest = plan.guests.parallelMap(threshold: 64) { NftRules.elements(for: $0.plan.plan) }
        for (guest, guestElements) in zip(plan.guests, perGuest) {
            NftTransaction.replace(&elements, owner: guest.plan.plan.owner, with: guestElements)
        }
        if let gateways = plan.gateways {
            let wanted = NftTransaction.gatewayElements(gateways)
            elements[NftLayout.gatewayOwner] = wanted.isEmpty ? nil : wanted
        }
        guard let snapshot = state.iptables else { return DesiredState(elements: elements) }
        var chains = plan.exclusive ? DesiredChains() : snapshot.ownerChains
        if plan.clearsOtherBackend {
            // Guests' DNAT and hairpin chains of the iptables backend, and accepts of guests no longer planned.
            for table in chains.keys {
                chains[table] = chains[table]?.filter { !["VGD-", "VGF-", "VGS-"].contains(String($0.key.prefix(4))) }
            }
        }
        for owner in plan.removed { IptablesTransaction.replace(&chains, owner: owner, with: []) }
        for network in plan.networks {
            IptablesTransaction.replace(&chains, owner: network.plan.owner, with: IptablesRules.chains(for: network.plan))
        }
        // A guest's own chains hold only its filter half; DNAT chains left from the iptables
        // backend (before a switch) go in the same change.
        for guest in plan.guests {
            let filter = Self.filterHalf(guest.plan.plan)
            // Planning everything, the chains start empty and no other owner has this guest's
            // chain names: a guest with no filter half has nothing to remove or write (a sync of
            // 1,000 guests on libvirt networks skips 1,000 replacements).
            if plan.exclusive && filter.intents.isEmpty { continue }
            IptablesTransaction.replace(&chains, owner: guest.plan.plan.owner, with: IptablesRules.chains(for: filter))
        }
        return DesiredState(chains: chains, elements: elements)
    }

    /// The intents of a guest's plan that live in iptables with this backend.
    static func filterHalf(_ plan: OwnerPlan) -> OwnerPlan {
        OwnerPlan(owner: plan.owner, intents: plan.intents.filter {
            if case .allowMarkedForwards = $0 { true } else { false }
        })
    }
}
