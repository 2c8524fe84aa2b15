/// What virtgate wants the firewall to do, independent of any backend. A plan belongs to exactly
/// one owner (a network or a guest); applying an owner's plan replaces everything that owner had.
public enum Owner: Hashable, Sendable, CustomStringConvertible {
    case network(String)
    case guest(String)

    public var description: String {
        switch self {
        case .network(let name): "network \(InputProblem.quoted(name))"
        case .guest(let name): "guest \(InputProblem.quoted(name))"
        }
    }
}

/// A forward bound to a concrete guest address and bridge.
public struct BoundForward: Hashable, Sendable {
    public var proto: TransportProtocol
    public var hostAddress: IPAddress?
    public var hostPorts: PortRange
    public var sources: [IPNetwork]
    public var guestAddress: IPAddress
    public var guestPorts: PortRange
    public var bridge: String
    /// Subnets of the guest's network on that bridge, for the hairpin masquerade.
    public var subnets: [IPNetwork]
    /// The forward's position in the metadata, to report its state.
    public var position: Int = 0
    /// The NIC is on a host bridge that is not a libvirt network (`<interface type='bridge'>`).
    public var onPlainBridge = false

    /// Every address of a bound forward is of this family (the parser and planner see to it).
    public var family: IPFamily { guestAddress.family }
}

public enum Intent: Hashable, Sendable {
    // Network intents.
    /// Guest ↔ guest on the same bridge, also when br_netfilter sends bridged frames through FORWARD.
    case allowIntraBridge(bridge: String, family: IPFamily)
    /// Traffic from the network's subnet, entering from its bridge, may leave.
    case allowOutbound(bridge: String, subnet: IPNetwork)
    /// Replies to connections the guests opened may come back in.
    case allowReplies(bridge: String, subnet: IPNetwork)
    /// Source NAT for `route`/`open` networks when the admin enabled it (libvirt does it for `nat`).
    case masquerade(subnet: IPNetwork)
    /// With the nftables backend: connections its DNAT maps forwarded (they carry `mark` in their
    /// conntrack mark) may enter the bridge. One rule stands for every forward's `allowForwarded`.
    case allowMarkedForwards(bridge: String, mark: UInt32, family: IPFamily)

    // Guest intents.
    /// Rewrite the destination of matching new connections to the guest.
    case dnat(BoundForward)
    /// Admit only connections that were DNAT'ed to this guest and port: never a blanket accept.
    case allowForwarded(BoundForward)
    /// Traffic to these host addresses (libvirt networks' own, where guests find DNS and DHCP)
    /// skips the guest's forwards on any address; forwards naming the address still apply.
    case exemptGateways([IPAddress])
    /// Guests on the same network that reach the forward through the host's address need their
    /// source rewritten, or the guest would answer them directly and the connection would break.
    case hairpinMasquerade(BoundForward)
}

public struct OwnerPlan: Hashable, Sendable {
    public var owner: Owner
    public var intents: [Intent]

    public init(owner: Owner, intents: [Intent]) {
        self.owner = owner
        self.intents = intents
    }
}

/// A forward that cannot be bound yet (the guest has no known address): nothing is rendered for it.
public struct PendingForward: Hashable, Sendable {
    public var forward: ForwardSpec
    public var reason: String
}

public struct GuestPlan: Hashable, Sendable {
    public var plan: OwnerPlan
    public var pending: [PendingForward]
    /// Problems found while binding (e.g. a `mac` that matches no NIC), on top of parse problems.
    public var problems: [InputProblem]
    /// Networks the bound forwards run through: their own rules must be in place too.
    public var networks: [String]
    /// What the bound forwards hold, in the order of their DNAT intents: conflict checks of guests
    /// planned after this one look them up.
    public var claims: [ForwardClaim]
}
