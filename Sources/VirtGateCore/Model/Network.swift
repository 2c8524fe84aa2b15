/// A libvirt virtual network as virtgate needs it: the bridge, how it forwards, its IPv4/IPv6 subnets
/// and the DHCP reservations that give guests fixed addresses.
public struct NetworkDefinition: Hashable, Sendable {
    public enum ForwardMode: Hashable, Sendable {
        case nat, route, open
        /// No `<forward>` element: guests talk to each other and the host only.
        case isolated
        /// bridge, passthrough, private, vepa, hostdev: guests sit on a host device; nothing to route.
        case other(String)

        /// Modes where the host routes guest traffic, so forward-accepts belong to this network.
        public var isRouted: Bool {
            switch self {
            case .nat, .route, .open: true
            case .isolated, .other: false
            }
        }
    }

    /// One `<ip>` element: the host's address on the bridge and the subnet it implies.
    public struct Subnet: Hashable, Sendable {
        public let gateway: IPAddress
        public let network: IPNetwork
    }

    public var name: String
    public var bridge: String?
    public var mode: ForwardMode
    public var subnets: [Subnet]
    /// IPv4 (and any MAC-keyed) DHCP reservations.
    public var reservations: [MACAddress: IPAddress]
    /// DHCPv6 reservations by host name, bound to the guest of that name.
    public var namedReservations: [String: IPAddress]

    public init(name: String, bridge: String?, mode: ForwardMode, subnets: [Subnet],
                reservations: [MACAddress: IPAddress], namedReservations: [String: IPAddress] = [:]) {
        self.name = name
        self.bridge = bridge
        self.mode = mode
        self.subnets = subnets
        self.reservations = reservations
        self.namedReservations = namedReservations
    }

    /// The reserved address of `family` for a guest NIC.
    public func reservation(mac: MACAddress, guest: String, family: IPFamily) -> IPAddress? {
        if let address = reservations[mac], address.family == family { return address }
        return family == .v6 ? namedReservations[guest] : nil
    }
}

/// What the guest's domain XML says about one NIC.
public struct GuestInterface: Hashable, Sendable {
    public var mac: MACAddress
    /// The libvirt network, for `type='network'` NICs.
    public var network: String?
    /// Known from qemu `start` on; absent in `prepare`, `stopped` and `release` XML.
    public var bridge: String?
    public var tap: String?
}

/// One port forward as declared in the domain metadata, validated but not yet bound to an address.
public struct ForwardSpec: Hashable, Sendable {
    public var proto: TransportProtocol = .tcp
    public var hostPorts: PortRange
    public var guestPorts: PortRange
    public var hostAddress: IPAddress?
    public var sources: [IPNetwork] = []
    public var guestAddress: IPAddress?
    public var mac: MACAddress?
    /// 1-based position in the metadata, so messages can point at the element.
    public var position: Int = 0

    public init(proto: TransportProtocol = .tcp, hostPorts: PortRange, guestPorts: PortRange? = nil,
                hostAddress: IPAddress? = nil, sources: [IPNetwork] = [],
                guestAddress: IPAddress? = nil, mac: MACAddress? = nil) {
        self.proto = proto
        self.hostPorts = hostPorts
        self.guestPorts = guestPorts ?? hostPorts
        self.hostAddress = hostAddress
        self.sources = sources
        self.guestAddress = guestAddress
        self.mac = mac
    }

    /// How an admin writes it, e.g. `tcp 8000-8009 -> 9000-9009`; used in logs and errors.
    public var summary: String {
        let host = hostAddress.map { "\($0.bracketed):" } ?? ""
        return "\(proto.rawValue) \(host)\(hostPorts) -> \(guestAddress.map { "\($0.bracketed):" } ?? "")\(guestPorts)"
    }

    /// The families the forward applies to: the one its addresses or sources name, else both (each
    /// bound only where the guest has an address of that family).
    public var families: [IPFamily] {
        if let family = hostAddress?.family ?? guestAddress?.family { return [family] }
        if sources.isEmpty { return IPFamily.allCases }
        return IPFamily.allCases.filter { family in sources.contains { $0.family == family } }
    }

}

public struct GuestDefinition: Hashable, Sendable {
    public var name: String
    public var interfaces: [GuestInterface]
    /// The valid forwards, in document order.
    public var forwards: [ForwardSpec]
    /// Forwards that were rejected, one problem each; empty when the metadata is clean.
    public var problems: [InputProblem]
}
