/// The whole desired state from libvirt's current state: every active network, every running
/// guest. Used by `sync` (apply it) and `status` (compare it with the kernel). Guests are planned
/// one by one, incumbents first: a guest whose forwards the kernel already carries keeps its ports,
/// exactly as the sequence of hook events would have decided.
public struct SyncInput: Sendable {
    public var networks: [NetworkDefinition]
    public var guests: [GuestDefinition]
    /// DHCP leases by bridge, as libvirt reports them.
    public var leases: [String: [MACAddress: [IPAddress]]]

    public init(networks: [NetworkDefinition], guests: [GuestDefinition], leases: [String: [MACAddress: [IPAddress]]]) {
        self.networks = networks
        self.guests = guests
        self.leases = leases
    }
}

public struct SyncResult: Sendable {
    /// Every network's and guest's iptables chains (the iptables backend's whole state).
    public var desired: DesiredChains
    public var networkPlans: [(network: NetworkDefinition, plan: OwnerPlan)]
    /// In planning order.
    public var guestPlans: [(guest: GuestDefinition, plan: GuestPlan)]

    /// The nftables backend's whole state: networks' chains in iptables, guests' forwards as elements.
    public var networkChains: DesiredChains { desired.withoutGuests }
    public var elements: DesiredElements {
        guestPlans.reduce(into: DesiredElements()) { result, entry in
            NftTransaction.replace(&result, owner: entry.plan.plan.owner, with: NftRules.elements(for: entry.plan.plan))
        }
    }
}

/// Networks and leases as libvirt reported them, for planning outside hooks.
public struct SyncAddressBook: AddressBook {
    public let input: SyncInput

    public init(input: SyncInput) { self.input = input }

    public func network(named name: String) -> NetworkDefinition? { input.networks.first { $0.name == name } }
    public func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? {
        input.leases[bridge]?[mac]?.first { $0.family == family }
    }
}

public enum SyncPlanner {
    /// `incumbents` are the claims the kernel carries now (`IptablesSnapshot.forwardClaims`).
    public static func plan(_ input: SyncInput, settings: PlannerSettings, incumbents: [ForwardClaim] = []) -> SyncResult {
        let book = SyncAddressBook(input: input)
        var desired = DesiredChains()
        var networkPlans: [(NetworkDefinition, OwnerPlan)] = []
        for network in input.networks.sorted(by: { $0.name < $1.name }) {
            let plan = Planner.plan(network: network, settings: settings)
            networkPlans.append((network, plan))
            IptablesTransaction.replace(&desired, owner: plan.owner, with: IptablesRules.chains(for: plan))
        }
        let holders = Set(incumbents.map(\.guest))
        let ordered = input.guests.sorted {
            (holders.contains($0.name) ? 0 : 1, $0.name) < (holders.contains($1.name) ? 0 : 1, $1.name)
        }
        var taken = ClaimIndex()
        var guestPlans: [(GuestDefinition, GuestPlan)] = []
        for guest in ordered {
            let plan = Planner.plan(guest: guest, addresses: book, taken: taken)
            for claim in plan.claims { taken.insert(claim) }
            guestPlans.append((guest, plan))
            IptablesTransaction.replace(&desired, owner: plan.plan.owner, with: IptablesRules.chains(for: plan.plan))
        }
        return SyncResult(desired: desired, networkPlans: networkPlans, guestPlans: guestPlans)
    }
}
