/// libvirt's current state as admin commands read it: every active network, every running guest,
/// and DHCP leases. `sync` and `status` plan all of it (`EngineInput.everything`).
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

/// Networks and leases as libvirt reported them, for planning outside hooks.
public struct SyncAddressBook: AddressBook {
    public let input: SyncInput

    public init(input: SyncInput) { self.input = input }

    public func network(named name: String) -> NetworkDefinition? { input.networks.first { $0.name == name } }
    public func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? {
        input.leases[bridge]?[mac]?.first { $0.family == family }
    }
    public func leaseHolder(bridge: String, address: IPAddress) -> MACAddress? {
        input.leases[bridge]?.first { $0.value.contains(address) }?.key
    }
}

extension EngineInput {
    /// Everything libvirt runs, as `sync` applies it and `status` compares it: whatever virtgate
    /// owns beyond it is removed.
    public static func everything(_ input: SyncInput) -> EngineInput {
        var everything = EngineInput(networks: input.networks, guests: input.guests, exclusive: true,
                                     addresses: SyncAddressBook(input: input))
        everything.gateways = []
        return everything
    }
}
