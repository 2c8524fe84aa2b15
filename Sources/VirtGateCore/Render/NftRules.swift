/// The nftables backend's rendering: guests' forwards become elements of maps in virtgate's own
/// `table inet virtgate`, so a new connection costs one hash lookup however many forwards exist.
/// Filtering stays where the host's DROP is (iptables, see `Intent.allowMarkedForwards`): an
/// accept in a table of our own cannot override a DROP in someone else's.
///
/// Each element's comment names its owner (the guest's chain id), so the kernel itself says which
/// guest holds what, as virtgate's iptables chains do. (Not the forward's position: moving a forward
/// within the metadata must not rewrite it.)
public struct NftElement: Hashable, Sendable, Comparable {
    /// The map or set.
    public var set: String
    public var key: String
    /// For maps: the DNAT destination `address . port`.
    public var value: String?
    public var comment: String

    public init(set: String, key: String, value: String?, comment: String) {
        self.set = set
        self.key = key
        self.value = value
        self.comment = comment
    }

    /// The owner id the comment names.
    public var owner: String { String(comment.prefix { $0 != " " }) }

    /// `key comment "…" : value`, as `add element` takes it.
    var rendered: String {
        "\(key) comment \"\(comment)\"" + (value.map { " : \($0)" } ?? "")
    }

    /// By set, key, value (none first), comment. Field by field without building tuples of copied
    /// strings: a sync sorts thousands of elements.
    public static func < (lhs: Self, rhs: Self) -> Bool {
        if lhs.set != rhs.set { return lhs.set < rhs.set }
        if lhs.key != rhs.key { return lhs.key < rhs.key }
        let left = lhs.value ?? "", right = rhs.value ?? ""
        if left != right { return left < right }
        return lhs.comment < rhs.comment
    }
}

/// Desired elements per owner id (`ChainNames.id(for:)` of the guest's name).
public typealias DesiredElements = [String: [NftElement]]

/// What a change does, as objects rather than script: to the table, then the elements it removes
/// and adds, in its script's order. Written as one netfilter batch (`NftNetlink.apply`).
public struct NftChanges: Sendable, Equatable {
    public enum Table: Sendable, Equatable {
        /// The table stays, of the current layout; only elements change.
        case kept
        /// The table stays and gains its base chains (`NftLayout.baseChains`): the first forward in
        /// a table that a network's start created without them.
        case hooked(mark: UInt32)
        /// The table is created in the current layout with `mark`, after removing the one there
        /// (of another layout or mark) when `replacing`; with its base chains when `hooked`.
        case created(mark: UInt32, replacing: Bool, hooked: Bool)
        /// The table is removed, whatever it holds.
        case removed
    }

    public var table: Table = .kept
    public var removed: [NftElement]
    public var added: [NftElement]

    /// The same change as an `nft -f` script.
    public var script: String {
        // Declaring the table first makes its delete safe if it vanished meanwhile.
        let removal = "table inet \(NftLayout.table)\ndelete table inet \(NftLayout.table)\n"
        switch table {
        case .removed:
            return removal
        case .created(let mark, let replacing, let hooked):
            return (replacing ? removal : "") + NftLayout.definition(mark: mark, hooked: hooked) + NftTransaction.addLines(added)
        case .kept, .hooked:
            var text = ""
            if case .hooked(let mark) = table { text = NftLayout.baseChainDefinition(mark: mark) }
            for (set, group) in NftTransaction.grouped(removed) {
                text += "delete element inet \(NftLayout.table) \(set) { \(group.map(\.key).joinedText(separator: ", ")) }\n"
            }
            return text + NftTransaction.addLines(added)
        }
    }
}

public enum NftLayout {
    public static let table = "virtgate"
    /// Bumped when the table's sets, maps or rules change shape: a table of another layout (or with
    /// another connection mark) is rebuilt as a whole. 2: hairpin by route, not by a set.
    /// 3: a range that keeps its port numbers is one interval element, not one element per port.
    /// 4: libvirt networks' own addresses (`gw4`, `gw6`) reach only forwards that name them.
    /// 5: created when a network starts, without base chains until its first forward (an older
    /// virtgate would take such a table for a whole one).
    static let version = 5

    /// The chains on netfilter's hooks, in the order `definition` declares them. A table without
    /// them is on no packet's path.
    public static let baseChains = ["prerouting", "output", "hairpin", "postrouting"]

    /// The owner of the gateway sets' elements: every change that knows the networks rewrites
    /// them. ':' never occurs in a guest's id, so no guest can own them.
    public static let gatewayOwner = "virtgate:gateways"
    static func gatewaySet(_ family: IPFamily) -> String { "gw\(family.digit)" }

    /// An empty chain whose name records the layout and the mark; its presence is the check.
    public static func marker(mark: UInt32) -> String { "layout-\(version)-\(hex(mark))" }

    static func hex(_ mark: UInt32) -> String {
        let digits = String(mark, radix: 16)
        return String(repeating: "0", count: 8 - digits.count) + digits
    }

    /// Which host addresses a map's forwards receive, and whether they have a source list.
    enum Scope: CaseIterable { case address, any, source, sourceAny }

    /// A map's name. `ranges`: keyed by port intervals, valued by the guest address alone (the
    /// port stays as it was); else keyed by single ports, valued by address and port (a remapped
    /// port, or each port of a remapped range: nft cannot shift a range as iptables' `/base` does).
    static func map(_ scope: Scope, _ family: IPFamily, ranges: Bool) -> String {
        let base = switch scope {
        case .address: "fwd\(family.digit)"
        case .any: "fwd\(family.digit)any"
        case .source: "fwd\(family.digit)src"
        case .sourceAny: "fwd\(family.digit)srcany"
        }
        return ranges ? base + "range" : base
    }

    /// Every DNAT map by name, with what its forwards receive and their family.
    static let dnatMaps: [String: (Scope, IPFamily)] = {
        var maps: [String: (Scope, IPFamily)] = [:]
        for scope in Scope.allCases {
            for family in IPFamily.allCases {
                for ranges in [false, true] { maps[map(scope, family, ranges: ranges)] = (scope, family) }
            }
        }
        return maps
    }()

    /// DNAT map for forwards with a host address (no source list): exact-match hash lookup.
    static func addressMap(_ family: IPFamily) -> String { map(.address, family, ranges: false) }
    /// DNAT map for forwards on any local address (no source list).
    static func anyMap(_ family: IPFamily) -> String { map(.any, family, ranges: false) }
    /// DNAT map for forwards limited to sources: source and host address are intervals.
    static func sourceMap(_ family: IPFamily) -> String { map(.source, family, ranges: false) }

    /// The whole table with empty maps and sets; without its base chains unless `hooked`.
    public static func definition(mark: UInt32, hooked: Bool = true) -> String {
        let m = "0x" + hex(mark)
        var text = "table inet \(table) {\n"
        for family in IPFamily.allCases {
            let addr = family.nftAddressType
            for ranges in [false, true] {
                let value = ranges ? addr : "\(addr) . inet_service"
                let interval = ranges ? " flags interval;" : ""
                text += "\tmap \(map(.address, family, ranges: ranges)) { type \(addr) . inet_proto . inet_service : \(value);\(interval) }\n"
                text += "\tmap \(map(.any, family, ranges: ranges)) { type inet_proto . inet_service : \(value);\(interval) }\n"
                text += "\tmap \(map(.source, family, ranges: ranges)) { type \(addr) . \(addr) . inet_proto . inet_service : \(value); flags interval; }\n"
                text += "\tmap \(map(.sourceAny, family, ranges: ranges)) { type \(addr) . inet_proto . inet_service : \(value); flags interval; }\n"
            }
            text += "\tset \(gatewaySet(family)) { type \(addr); }\n"
        }
        text += "\tchain \(marker(mark: mark)) {\n\t}\n"
        // The mark is set only when a map holds the connection, so the filter side can admit
        // exactly the connections virtgate forwarded, and nothing routed past it. Traffic to a
        // libvirt network's own address (guests' DNS and DHCP) sees only forwards naming it.
        let dnat = { (family: IPFamily) in "ct mark set ct mark | \(m) dnat \(family.nftPayload) to" }
        let proto = "meta l4proto { tcp, udp, sctp }"
        text += "\tchain forwards {\n"
        for family in IPFamily.allCases {
            text += "\t\t\(family.nftPayload) daddr @\(gatewaySet(family)) goto named\n"
        }
        text += "\t\tjump named\n"
        for family in IPFamily.allCases {
            let ip = family.nftPayload
            for ranges in [false, true] {
                let source = map(.sourceAny, family, ranges: ranges), any = map(.any, family, ranges: ranges)
                text += "\t\t\(proto) \(ip) saddr . meta l4proto . th dport @\(source) \(dnat(family)) \(ip) saddr . meta l4proto . th dport map @\(source)\n"
                text += "\t\tmeta nfproto \(family.nftProto) \(proto) meta l4proto . th dport @\(any) \(dnat(family)) meta l4proto . th dport map @\(any)\n"
            }
        }
        text += "\t}\n"
        text += "\tchain named {\n"
        for family in IPFamily.allCases {
            let ip = family.nftPayload
            for ranges in [false, true] {
                let source = map(.source, family, ranges: ranges), address = map(.address, family, ranges: ranges)
                text += "\t\t\(proto) \(ip) saddr . \(ip) daddr . meta l4proto . th dport @\(source) \(dnat(family)) \(ip) saddr . \(ip) daddr . meta l4proto . th dport map @\(source)\n"
                text += "\t\t\(proto) \(ip) daddr . meta l4proto . th dport @\(address) \(dnat(family)) \(ip) daddr . meta l4proto . th dport map @\(address)\n"
            }
        }
        text += "\t}\n"
        // The base chains last: a table made in one go lists as one whose first forward hooked it.
        return text + (hooked ? baseChainText(mark: mark) : "") + "}\n"
    }

    /// The base chains alone, added to a table that has everything else (`Table.hooked`).
    public static func baseChainDefinition(mark: UInt32) -> String {
        "table inet \(table) {\n" + baseChainText(mark: mark) + "}\n"
    }

    /// The base chains' blocks, in `baseChains`' order.
    static func baseChainText(mark: UInt32) -> String {
        let m = "0x" + hex(mark)
        // Any local address, as the iptables backend's `addrtype LOCAL` jumps: wan clients, guests
        // (hairpin) and the host itself. Loopback needs route_localnet, an opt-in left out here.
        var text = "\tchain prerouting {\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n"
        text += "\t\tfib daddr type local jump forwards\n\t}\n"
        text += "\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n"
        text += "\t\tip daddr != 127.0.0.0/8 fib daddr type local jump forwards\n"
        text += "\t\tip6 daddr != ::1 fib daddr type local jump forwards\n\t}\n"
        // Hairpin: a guest reaching a forward (through the host's address) to a guest on its own
        // bridge must see its connection masqueraded, or the target would answer it directly. Such a
        // connection leaves through the interface it came in by: the route to its new destination
        // goes out of its input interface. Decided once per connection by a route lookup, with no
        // per-forward element (and so nothing to overlap between forwards or guests); the packet
        // mark carries the decision to the NAT hook, which clears it again.
        text += "\tchain hairpin {\n\t\ttype filter hook forward priority mangle; policy accept;\n"
        text += "\t\tct state new ct status dnat ct mark & \(m) == \(m) fib daddr . iif oif exists meta mark set meta mark | \(m)\n\t}\n"
        text += "\tchain postrouting {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        text += "\t\tmeta mark & \(m) == \(m) meta mark set meta mark & 0x\(hex(~mark)) masquerade\n\t}\n"
        return text
    }
}

extension IPFamily {
    var digit: String { self == .v4 ? "4" : "6" }
    var nftAddressType: String { self == .v4 ? "ipv4_addr" : "ipv6_addr" }
    /// The payload and NAT family keyword: `ip` or `ip6`.
    var nftPayload: String { self == .v4 ? "ip" : "ip6" }
    var nftProto: String { self == .v4 ? "ipv4" : "ipv6" }
}

extension IPNetwork {
    /// How nft prints an interval element: a host network as a bare address.
    var nftElement: String { prefix == family.bits ? address.description : description }
}

public enum NftRules {
    /// A forward's DNAT elements. A forward that keeps its port numbers (single port or range) is
    /// one interval element per source; a remapped range is one element per port (5003 → 6003, as
    /// the iptables backend's shifted DNAT), which the planner's limits keep bounded.
    static func dnatElements(_ forward: BoundForward, owner: String) -> [NftElement] {
        let family = forward.family
        let scope: NftLayout.Scope = switch (forward.sources.isEmpty, forward.hostAddress == nil) {
        case (true, true): .any
        case (true, false): .address
        case (false, true): .sourceAny
        case (false, false): .source
        }
        // Protocols by number: nft resolves a name through /etc/protocols for every element it
        // reads or writes, which dominated reading back thousands of them.
        func key(_ ports: String) -> [String] {
            let tail = "\(forward.proto.number) . \(ports)"
            switch scope {
            case .source: return forward.sources.map { "\($0.nftElement) . \(forward.hostAddress!) . \(tail)" }
            case .sourceAny: return forward.sources.map { "\($0.nftElement) . \(tail)" }
            case .address: return ["\(forward.hostAddress!) . \(tail)"]
            case .any: return [tail]
            }
        }
        let keepsPorts = forward.hostPorts == forward.guestPorts
        if keepsPorts && !forward.hostPorts.isSingle {
            return key(forward.hostPorts.description).map {
                NftElement(set: NftLayout.map(scope, family, ranges: true), key: $0, value: forward.guestAddress.description, comment: owner)
            }
        }
        var elements: [NftElement] = []
        for offset in 0..<forward.hostPorts.count {
            let value = "\(forward.guestAddress) . \(Int(forward.guestPorts.lower) + offset)"
            for key in key("\(Int(forward.hostPorts.lower) + offset)") {
                elements.append(NftElement(set: NftLayout.map(scope, family, ranges: false), key: key, value: value, comment: owner))
            }
        }
        return elements
    }

    /// The elements of a guest's plan. Filter intents have no element: `allowForwarded` is carried
    /// by the connection mark the DNAT sets and the network's `allowMarkedForwards` accept.
    /// Network plans have none either; their rules live in iptables with the host's DROP.
    public static func elements(for plan: OwnerPlan) -> [NftElement] {
        guard case .guest(let name) = plan.owner else { return [] }
        let id = ChainNames.id(for: name)
        var elements: [NftElement] = []
        for intent in plan.intents {
            switch intent {
            case .dnat(let forward):
                elements += dnatElements(forward, owner: id)
            case .hairpinMasquerade, .allowForwarded, .allowIntraBridge, .allowOutbound, .allowReplies, .masquerade, .allowMarkedForwards,
                 .exemptGateways:
                break
            }
        }
        return elements
    }
}

public enum NftTransaction {
    /// Replaces `owner`'s elements in `current` (no elements removes the owner).
    public static func desired(_ current: DesiredElements, replacing owner: Owner, with elements: [NftElement]) -> DesiredElements {
        var result = current
        replace(&result, owner: owner, with: elements)
        return result
    }

    /// In place, for loops over many owners.
    public static func replace(_ desired: inout DesiredElements, owner: Owner, with elements: [NftElement]) {
        guard case .guest(let name) = owner else { return }
        desired[ChainNames.id(for: name)] = elements.isEmpty ? nil : elements
    }

    /// One `nft -f` script turning `state` into `desired`: only the elements that differ, or the whole
    /// table when it is missing or of another layout. Empty when the kernel already matches.
    public static func render(from state: NftState, to desired: DesiredElements, mark: UInt32) -> String {
        changes(from: state, to: desired, mark: mark)?.script ?? ""
    }

    /// The change that turns `state` into `desired`, nil when there is nothing to do. Its script
    /// (`NftChanges.script`) is rendered only when asked for: a dry run prints it, and it is the
    /// fallback when netlink cannot write the change; a sync's 5,000 elements are not rendered twice.
    public static func changes(from state: NftState, to desired: DesiredElements, mark: UInt32) -> NftChanges? {
        // The table comes with the first network or forward, and goes when nothing is left in it: the
        // last forward and the last network's gateways, as the iptables backend's dispatch chains go
        // with the last guest and network. In between, a guest that stops and starts again (the only
        // one with forwards, on many hosts) changes elements instead of removing and re-creating 18
        // sets, 7 chains and 24 rules. Created for networks' gateways alone, it has no base chains: a
        // host without a forward has nothing of virtgate's on a packet's path, and its first forward
        // adds the 4 base chains instead of creating the whole table (about a millisecond of the
        // kernel's work, on the first guest's start).
        // A scoped read leaves other owners' elements unread: they are forwards, and the table is
        // then not this change's to remove.
        let forwards = state.unreadElements > 0 || holdsForwards(desired)
        if !forwards, desired[NftLayout.gatewayOwner]?.isEmpty != false {
            return state.exists ? NftChanges(table: .removed, removed: [], added: []) : nil
        }
        // Some but not all base chains: not a table virtgate leaves, so it is rebuilt.
        let hooks = state.baseChains
        guard state.layout == NftLayout.marker(mark: mark), hooks == 0 || hooks == NftLayout.baseChains.count else {
            // Every element, in order and once: sorted, then each kept where it differs from the one
            // before (no set of thousands of elements hashed first).
            var all = Array(desired.values.joined())
            all.sort()
            var added: [NftElement] = []
            added.reserveCapacity(all.count)
            for element in all where added.last != element { added.append(element) }
            return NftChanges(table: .created(mark: mark, replacing: state.exists, hooked: forwards), removed: [], added: added)
        }
        let want = Set(desired.values.joined())
        let have = Set(state.elements)
        let removed = have.subtracting(want).sorted()
        let added = want.subtracting(have).sorted()
        // Once hooked, the table stays so until it goes: the next forward is elements alone.
        if forwards, hooks == 0 { return NftChanges(table: .hooked(mark: mark), removed: removed, added: added) }
        return removed.isEmpty && added.isEmpty ? nil : NftChanges(removed: removed, added: added)
    }

    /// Whether any guest has an element in `desired` (beside the networks' gateways).
    public static func holdsForwards(_ desired: DesiredElements) -> Bool {
        desired.contains { $0.key != NftLayout.gatewayOwner && !$0.value.isEmpty }
    }

    /// The gateway sets' elements for `gateways`, owned by `NftLayout.gatewayOwner`.
    public static func gatewayElements(_ gateways: [IPAddress]) -> [NftElement] {
        gateways.map { NftElement(set: NftLayout.gatewaySet($0.family), key: $0.description, value: nil, comment: NftLayout.gatewayOwner) }
    }

    static func addLines(_ elements: [NftElement]) -> String {
        grouped(elements).map { set, group in
            "add element inet \(NftLayout.table) \(set) { \(group.map(\.rendered).joinedText(separator: ", ")) }\n"
        }.joinedText(separator: "")
    }

    static func grouped(_ elements: [NftElement]) -> [(String, [NftElement])] {
        var order: [String] = []
        var groups: [String: [NftElement]] = [:]
        for element in elements {
            if groups[element.set] == nil { order.append(element.set) }
            groups[element.set, default: []].append(element)
        }
        return order.sorted().map { ($0, groups[$0]!) }
    }
}

extension Array where Element == String {
    /// `joined(separator:)` compiled here, for strings only: the standard library's is generic, and
    /// its first use in a process costs the runtime ~0.2M instructions of type lookups, which a hook
    /// run pays on every guest event.
    func joinedText(separator: String) -> String {
        var text = ""
        for (index, part) in enumerated() {
            if index > 0 { text += separator }
            text += part
        }
        return text
    }
}
