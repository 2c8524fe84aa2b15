
/// Renders plans as iptables rule lines, in exactly the form `iptables-save` prints them back, so
/// that comparing the kernel's state with the desired state is a plain string comparison.
public enum IptablesTable: String, CaseIterable, Hashable, Sendable, Comparable {
    // nat first: if the filter section then fails, the new DNATs are only harmless until rollback,
    // as nothing accepts their connections yet. IPv6 tables live in ip6tables.
    case nat, filter, nat6, filter6

    public var family: IPFamily { self == .nat || self == .filter ? .v4 : .v6 }
    /// The table's name in iptables-save/-restore.
    public var name: String { self == .nat || self == .nat6 ? "nat" : "filter" }

    public init?(name: String, family: IPFamily) {
        switch (name, family) {
        case ("nat", .v4): self = .nat
        case ("filter", .v4): self = .filter
        case ("nat", .v6): self = .nat6
        case ("filter", .v6): self = .filter6
        default: return nil
        }
    }

    public static func tables(of family: IPFamily) -> [IptablesTable] { allCases.filter { $0.family == family } }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}

/// virtgate's dispatch chains. Each is jumped from position 1 of built-in chains and jumps to the
/// per-owner chains. Only these jumps sit in chains virtgate does not own.
public enum TopChain: String, CaseIterable, Hashable, Sendable {
    case forward = "VIRTGATE-FWD"
    case dnat = "VIRTGATE-DNAT"
    case postrouting = "VIRTGATE-POST"

    public func table(_ family: IPFamily) -> IptablesTable {
        switch self {
        case .forward: IptablesTable(name: "filter", family: family)!
        case .dnat, .postrouting: IptablesTable(name: "nat", family: family)!
        }
    }

    public func lives(in table: IptablesTable) -> Bool { self.table(table.family) == table }

    /// (built-in chain, rule spec after `-A CHAIN`) pairs, as iptables-save prints them.
    public func builtinJumps(_ family: IPFamily) -> [(chain: String, spec: String)] {
        switch self {
        case .forward:
            [("FORWARD", "-j \(rawValue)")]
        case .dnat:
            // Any local address: wan clients, guests (hairpin) and the host itself reach forwards the
            // same way. Loopback is excluded from OUTPUT: reaching it needs route_localnet, an opt-in.
            [("PREROUTING", "-m addrtype --dst-type LOCAL -j \(rawValue)"),
             ("OUTPUT", "! -d \(family == .v4 ? "127.0.0.0/8" : "::1/128") -m addrtype --dst-type LOCAL -j \(rawValue)")]
        case .postrouting:
            [("POSTROUTING", "-j \(rawValue)")]
        }
    }
}

/// One chain that belongs to one owner, with its rule lines (`-A NAME …`).
public struct OwnedChain: Hashable, Sendable {
    public var table: IptablesTable
    public var name: String
    public var parent: TopChain
    public var rules: [String]
}

public enum ChainNames {
    /// iptables allows 28 characters (29 with the NUL).
    public static let maximumLength = 28
    public static let ownedPrefixes = ["VIRTGATE-", "VGN-", "VGM-", "VGF-", "VGD-", "VGS-"]

    public static func isOwned(_ chain: String) -> Bool {
        ownedPrefixes.contains { chain.hasPrefix($0) }
    }

    /// A chain-name-safe id for an object name. Short, plain names are used as they are, so admins
    /// recognise them; anything else becomes `+` and 128 bits of the name's SHA-256 (base64url, 22
    /// characters): guest names are untrusted input, and two names that shared an id would share
    /// their rules. '+' never occurs in a plain name, so the two forms cannot collide either.
    public static func id(for name: String) -> String {
        let plainLimit = maximumLength - 4
        // ASCII letters, digits and "_.-", byte by byte (an id is computed for every guest of a sync).
        let isPlain = name.utf8.count <= plainLimit && name.utf8.allSatisfy {
            switch $0 {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"): true
            default: false
            }
        } && !name.isEmpty
        if isPlain { return name }
        let digest = Array(SHA256.hash(data: Array(name.utf8)).prefix(16))
        return "+" + base64url(digest)
    }

    /// RFC 4648 §5 without padding: letters, digits, '-' and '_' only.
    static func base64url(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            var value = 0
            for byte in chunk { value = value << 8 | Int(byte) }
            value <<= 8 * (3 - chunk.count)
            for position in 0..<(chunk.count + 1) { out.append(alphabet[(value >> (18 - 6 * position)) & 63]) }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The owner's chains, IPv4 then IPv6 (same names in iptables and ip6tables).
    public static func chains(of owner: Owner) -> [(table: IptablesTable, name: String, parent: TopChain)] {
        let perFamily: [(String, TopChain)]
        switch owner {
        case .network(let name):
            let id = id(for: name)
            perFamily = [("VGN-\(id)", .forward), ("VGM-\(id)", .postrouting)]
        case .guest(let name):
            let id = id(for: name)
            perFamily = [("VGD-\(id)", .dnat), ("VGF-\(id)", .forward), ("VGS-\(id)", .postrouting)]
        }
        // Appended into room made once (a sync asks for the chains of every guest).
        var chains: [(table: IptablesTable, name: String, parent: TopChain)] = []
        chains.reserveCapacity(IPFamily.allCases.count * perFamily.count)
        for family in IPFamily.allCases {
            for (name, parent) in perFamily { chains.append((table: parent.table(family), name: name, parent: parent)) }
        }
        return chains
    }
}

public enum IptablesRules {
    /// All chains of the owner, each with its rules; chains the plan leaves empty have no rules and
    /// are removed by the transaction.
    public static func chains(for plan: OwnerPlan) -> [OwnedChain] {
        var chains = ChainNames.chains(of: plan.owner).map {
            OwnedChain(table: $0.table, name: $0.name, parent: $0.parent, rules: [])
        }
        func append(_ parent: TopChain, _ family: IPFamily, _ spec: String) {
            let index = chains.firstIndex { $0.parent == parent && $0.table.family == family }!
            chains[index].rules.append("-A \(chains[index].name) \(spec)")
        }
        for intent in plan.intents {
            switch intent {
            case .allowIntraBridge(let bridge, let family):
                // Bridged frames are seen by iptables and ip6tables alike (br_netfilter).
                append(.forward, family, "-i \(bridge) -o \(bridge) -j ACCEPT")
            case .allowOutbound(let bridge, let subnet):
                append(.forward, subnet.family, "-s \(subnet) -i \(bridge) -j ACCEPT")
            case .allowReplies(let bridge, let subnet):
                append(.forward, subnet.family, "-d \(subnet) -o \(bridge) -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
            case .masquerade(let subnet):
                // As libvirt does it: multicast and broadcast stay un-NATed. IPv4 only (no NAT66).
                append(.postrouting, .v4, "-s \(subnet) -d 224.0.0.0/24 -j RETURN")
                append(.postrouting, .v4, "-s \(subnet) -d 255.255.255.255/32 -j RETURN")
                append(.postrouting, .v4, "-s \(subnet) ! -d \(subnet) -j MASQUERADE")
            case .allowMarkedForwards(let bridge, let mark, let family):
                let m = "0x" + String(mark, radix: 16)
                append(.forward, family, "-o \(bridge) -m connmark --mark \(m)/\(m) -m conntrack --ctstate DNAT -j ACCEPT")
            case .exemptGateways(let gateways):
                for gateway in gateways { append(.dnat, gateway.family, "-d \(IPNetwork(host: gateway)) -j RETURN") }
            case .dnat(let forward):
                let sources: [IPNetwork?] = forward.sources.isEmpty ? [nil] : forward.sources
                for source in sources {
                    var spec = source.map { "-s \($0) " } ?? ""
                    if let host = forward.hostAddress { spec += "-d \(IPNetwork(host: host)) " }
                    spec += match(forward.proto, forward.hostPorts)
                    spec += " -j DNAT --to-destination \(destination(forward))"
                    append(.dnat, forward.family, spec)
                }
            case .allowForwarded(let forward):
                append(.forward, forward.family, "-d \(IPNetwork(host: forward.guestAddress)) -o \(forward.bridge) "
                    + match(forward.proto, forward.guestPorts)
                    + " -m conntrack --ctstate DNAT --ctorigdstport \(forward.hostPorts.matchSyntax) -j ACCEPT")
            case .hairpinMasquerade(let forward):
                for subnet in forward.subnets {
                    append(.postrouting, forward.family, "-s \(subnet) -d \(IPNetwork(host: forward.guestAddress)) "
                        + match(forward.proto, forward.guestPorts) + " -m conntrack --ctstate DNAT -j MASQUERADE")
                }
            }
        }
        return chains
    }

    static func match(_ proto: TransportProtocol, _ ports: PortRange) -> String {
        "-p \(proto.rawValue) -m \(proto.rawValue) --dport \(ports.matchSyntax)"
    }

    /// DNAT target. A range mapped onto a different range uses the kernel's shifted mapping
    /// (`/base`), so host port 5003 reaches guest port 6003 rather than any port of the range.
    static func destination(_ forward: BoundForward) -> String {
        let address = forward.guestAddress.bracketed
        if forward.guestPorts == forward.hostPorts {
            return forward.hostPorts.isSingle ? "\(address):\(forward.guestPorts.lower)" : forward.guestAddress.description
        }
        if forward.guestPorts.isSingle { return "\(address):\(forward.guestPorts.lower)" }
        return "\(address):\(forward.guestPorts.lower)-\(forward.guestPorts.upper)/\(forward.hostPorts.lower)"
    }
}
