/// `NftLayout.definition(mark:)` compiled as nft 1.0 compiles it: the table's sets, chains and
/// rules as the kernel's objects and expressions, so that the table can be created over netlink
/// in the same batch as its elements, without libnftables parsing and evaluating its text (about
/// 5 ms per creation, and 12 µs per element). The kernel round-trip test creates the table both
/// ways and holds nft's listings of the two, rule bytecode included, to each other.
enum NftProgram {
    struct SetDeclaration: Equatable {
        var name: String
        /// NFT_SET_* flags: constant 0x2, anonymous 0x1, interval 0x4, map 0x8, concat 0x80.
        var flags: UInt32
        /// nft's type ids, a concatenation as `(a << 6 | b) << 6 | c`.
        var keyType: UInt32
        var keyLength: UInt32
        var dataType: UInt32?
        var dataLength: UInt32?
        /// Each field's length in bytes, for interval maps with concatenated keys (the kernel's
        /// pipapo set needs them).
        var fieldLengths: [UInt8] = []
        /// The number of elements of a constant set.
        var size: UInt32?
        /// nft's own metadata: the byte order of key and data and how the types were declared,
        /// which its listing reads to print the set as it was written.
        var userData: [UInt8]
        /// A constant set's elements, added with it.
        var elements: [[UInt8]] = []
        var anonymous: Bool { flags & 0x1 != 0 }
    }

    struct Chain: Equatable {
        var name: String
        /// A base chain's type, hook number and priority.
        var hook: (type: String, number: UInt32, priority: Int32)?

        static func == (lhs: Self, rhs: Self) -> Bool {
            lhs.name == rhs.name && lhs.hook?.type == rhs.hook?.type && lhs.hook?.number == rhs.hook?.number
                && lhs.hook?.priority == rhs.hook?.priority
        }
    }

    /// The kernel's expressions, with its register numbers: 1–4 are 16-byte registers, 8–23 the
    /// 4-byte ones over the same space (8 is the first word of 1), 0 the verdict.
    enum Expression: Equatable {
        case metaLoad(key: UInt32, into: UInt32)
        case metaSet(key: UInt32, from: UInt32)
        case payload(base: UInt32, offset: UInt32, length: UInt32, into: UInt32)
        case compare(UInt32, op: UInt32, [UInt8])
        case lookup(set: String, from: UInt32, into: UInt32?)
        case verdict(Int32, chain: String)
        case fib(flags: UInt32, result: UInt32, into: UInt32)
        case ctLoad(key: UInt32, into: UInt32)
        case ctSet(key: UInt32, from: UInt32)
        /// `(register & mask) ^ xor`; `withOp`: nft names the boolean operation explicitly.
        case bitwise(UInt32, mask: [UInt8], xor: [UInt8], withOp: Bool)
        case hostToNetwork(UInt32, size: UInt32)
        case dnat(family: UInt32, address: UInt32, port: UInt32?)
        case masquerade
    }

    struct Rule: Equatable {
        var chain: String
        /// The constant set it looks up, declared just before it.
        var anonymousSet: SetDeclaration?
        var expressions: [Expression]
    }

    struct Table: Equatable {
        var sets: [SetDeclaration]
        var chains: [Chain]
        var rules: [Rule]
    }

    // linux/netfilter/nf_tables.h and nft's datatypes: a stable ABI.
    static let metaMark: UInt32 = 3, metaProtocolFamily: UInt32 = 15, metaTransportProtocol: UInt32 = 16
    static let networkHeader: UInt32 = 1, transportHeader: UInt32 = 2
    static let equal: UInt32 = 0, notEqual: UInt32 = 1
    static let jump: Int32 = -3, goto: Int32 = -4
    static let ctState: UInt32 = 0, ctStatus: UInt32 = 2, ctMark: UInt32 = 3
    static let typeAddressIPv4: UInt32 = 7, typeAddressIPv6: UInt32 = 8, typeProtocol: UInt32 = 12, typeService: UInt32 = 13

    /// The table `NftLayout.definition(mark:hooked:)` declares, in its order.
    static func table(mark: UInt32, hooked: Bool = true) -> Table {
        let all = whole(mark: mark)
        guard !hooked else { return all }
        let base = Set(NftLayout.baseChains)
        return Table(sets: all.sets, chains: all.chains.filter { !base.contains($0.name) },
                     rules: all.rules.filter { !base.contains($0.chain) })
    }

    /// The base chains and their rules alone (`NftLayout.baseChainDefinition(mark:)`): they use no set.
    static func baseChains(mark: UInt32) -> Table {
        let all = whole(mark: mark)
        let base = Set(NftLayout.baseChains)
        return Table(sets: [], chains: all.chains.filter { base.contains($0.name) }, rules: all.rules.filter { base.contains($0.chain) })
    }

    /// The whole table, in `NftLayout.definition(mark:)`'s order.
    private static func whole(mark: UInt32) -> Table {
        var sets: [SetDeclaration] = []
        for family in IPFamily.allCases {
            for ranges in [false, true] {
                for scope in [NftLayout.Scope.address, .any, .source, .sourceAny] {
                    sets.append(map(scope, family, ranges: ranges))
                }
            }
            sets.append(SetDeclaration(name: NftLayout.gatewaySet(family), flags: 0, keyType: addressType(family),
                                       keyLength: UInt32(family.bytes), userData: [0, 4, 2, 0, 0, 0]))
        }
        let chains = [
            Chain(name: NftLayout.marker(mark: mark)),
            Chain(name: "forwards"),
            Chain(name: "named"),
            Chain(name: "prerouting", hook: ("nat", 0, -100)),
            Chain(name: "output", hook: ("nat", 3, -100)),
            Chain(name: "hairpin", hook: ("filter", 2, -150)),
            Chain(name: "postrouting", hook: ("nat", 4, 100)),
        ]
        // The base chains' rules last, as their chains.
        let base = Set(NftLayout.baseChains), all = rules(mark: mark)
        return Table(sets: sets, chains: chains, rules: all.filter { !base.contains($0.chain) } + all.filter { base.contains($0.chain) })
    }

    static func addressType(_ family: IPFamily) -> UInt32 { family == .v4 ? typeAddressIPv4 : typeAddressIPv6 }

    static func concatenated(_ types: [UInt32]) -> UInt32 { types.reduce(0) { $0 << 6 | $1 } }

    /// A DNAT map as `definition` declares it.
    static func map(_ scope: NftLayout.Scope, _ family: IPFamily, ranges: Bool) -> SetDeclaration {
        let name = NftLayout.map(scope, family, ranges: ranges)
        let fields = NftLayout.elementFields.first { $0.0 == name }!.1
        let keyTypes: [UInt32] = fields.key.map {
            switch $0 {
            case .address(let family): addressType(family)
            case .proto: typeProtocol
            case .port: typeService
            }
        }
        let interval = fields.interval
        // Key byte order 0 (a concatenation), data byte order 0 or 2 (an address alone: big
        // endian), the key declared as a concatenation, the data too where it is one, no
        // interval data.
        let typeOf: [UInt8] = [0, 4, 13, 0, 0, 0, 1, 0]
        var userData: [UInt8] = [0, 4, 0, 0, 0, 0, 1, 4, ranges ? 2 : 0, 0, 0, 0, 3, 8] + typeOf
        if !ranges { userData += [4, 8] + typeOf }
        userData += [6, 4, 0, 0, 0, 0]
        return SetDeclaration(
            name: name,
            flags: 0x8 | (interval ? 0x4 | 0x80 : 0),
            keyType: concatenated(keyTypes),
            keyLength: UInt32(fields.key.reduce(0) { $0 + $1.width }),
            dataType: ranges ? addressType(family) : concatenated([addressType(family), typeService]),
            dataLength: UInt32(family.bytes + (ranges ? 0 : 4)),
            fieldLengths: interval ? fields.key.map {
                switch $0 {
                case .address(let family): UInt8(family.bytes)
                case .proto: 1
                case .port: 2
                }
            } : [],
            userData: userData)
    }

    /// `meta l4proto { tcp, udp, sctp }`: a constant set of each rule that uses it.
    static let transportProtocols = SetDeclaration(
        name: "__set%d", flags: 0x1 | 0x2, keyType: typeProtocol, keyLength: 1, size: 3,
        // Key byte order 1 (host), declared as `meta l4proto` (expression 9, meta key 16).
        userData: [0, 4, 1, 0, 0, 0, 3, 14, 0, 4, 9, 0, 0, 0, 1, 6, 0, 4, 16, 0, 0, 0],
        elements: [[6], [17], [132]])

    /// A 4-byte value as the kernel compares registers: in host order.
    static func word(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

    /// The register of the 4-byte word `slot` of a concatenation: a 16-byte register where one
    /// starts, else the 4-byte one (as nft allocates them).
    static func register(slot: Int) -> UInt32 { slot % 4 == 0 ? UInt32(slot / 4 + 1) : UInt32(8 + slot) }

    static func rules(mark: UInt32) -> [Rule] {
        var rules: [Rule] = []
        let local: [Expression] = [.fib(flags: 0x2 /* daddr */, result: 3 /* type */, into: 1), .compare(1, op: equal, word(2 /* RTN_LOCAL */))]
        rules.append(Rule(chain: "prerouting", expressions: local + [.verdict(jump, chain: "forwards")]))
        for family in IPFamily.allCases {
            let destination = family == .v4 ? UInt32(16) : 24
            let loopback: [UInt8] = family == .v4 ? [127] : Array(repeating: 0, count: 15) + [1]
            rules.append(Rule(chain: "output", expressions: protocolFamily(family) + [
                .payload(base: networkHeader, offset: destination, length: UInt32(loopback.count), into: 1),
                .compare(1, op: notEqual, loopback),
            ] + local + [.verdict(jump, chain: "forwards")]))
        }
        for family in IPFamily.allCases {
            rules.append(Rule(chain: "forwards", expressions: protocolFamily(family) + [
                address(family, source: false, into: 1),
                .lookup(set: NftLayout.gatewaySet(family), from: 1, into: nil),
                .verdict(goto, chain: "named"),
            ]))
        }
        rules.append(Rule(chain: "forwards", expressions: [.verdict(jump, chain: "named")]))
        for family in IPFamily.allCases {
            for ranges in [false, true] {
                rules.append(dnat(.sourceAny, family, ranges: ranges, mark: mark))
                rules.append(dnat(.any, family, ranges: ranges, mark: mark))
            }
        }
        for family in IPFamily.allCases {
            for ranges in [false, true] {
                rules.append(dnat(.source, family, ranges: ranges, mark: mark))
                rules.append(dnat(.address, family, ranges: ranges, mark: mark))
            }
        }
        let m = word(mark), notM = word(~mark), zero = word(0)
        rules.append(Rule(chain: "hairpin", expressions: [
            .ctLoad(key: ctState, into: 1), .bitwise(1, mask: word(0x8 /* new */), xor: zero, withOp: false), .compare(1, op: notEqual, zero),
            .ctLoad(key: ctStatus, into: 1), .bitwise(1, mask: word(0x20 /* dnat */), xor: zero, withOp: false), .compare(1, op: notEqual, zero),
            .ctLoad(key: ctMark, into: 1), .bitwise(1, mask: m, xor: zero, withOp: true), .compare(1, op: equal, m),
            .fib(flags: 0x2 | 0x8 | 0x20 /* daddr . iif, present */, result: 1 /* oif */, into: 1), .compare(1, op: equal, word(1)),
            .metaLoad(key: metaMark, into: 1), .bitwise(1, mask: notM, xor: m, withOp: true), .metaSet(key: metaMark, from: 1),
        ]))
        rules.append(Rule(chain: "postrouting", expressions: [
            .metaLoad(key: metaMark, into: 1), .bitwise(1, mask: m, xor: zero, withOp: true), .compare(1, op: equal, m),
            .metaLoad(key: metaMark, into: 1), .bitwise(1, mask: notM, xor: zero, withOp: true), .metaSet(key: metaMark, from: 1),
            .masquerade,
        ]))
        return rules
    }

    /// `meta nfproto ipv4` (or ipv6): what nft puts before a network header's field in an inet table.
    static func protocolFamily(_ family: IPFamily) -> [Expression] {
        [.metaLoad(key: metaProtocolFamily, into: 1), .compare(1, op: equal, [family == .v4 ? 2 : 10])]
    }

    static func address(_ family: IPFamily, source: Bool, into register: UInt32) -> Expression {
        let offset: UInt32 = family == .v4 ? (source ? 12 : 16) : (source ? 8 : 24)
        return .payload(base: networkHeader, offset: offset, length: UInt32(family.bytes), into: register)
    }

    /// A DNAT rule of `definition`: the protocols `th dport` applies to, the map's key built
    /// field by field from the first register on, the connection mark, the DNAT to what the map
    /// holds for the key.
    static func dnat(_ scope: NftLayout.Scope, _ family: IPFamily, ranges: Bool, mark: UInt32) -> Rule {
        let name = NftLayout.map(scope, family, ranges: ranges)
        let fields = NftLayout.elementFields.first { $0.0 == name }!.1
        var key: [Expression] = []
        var slot = 0
        var addresses = 0
        for field in fields.key {
            let target = register(slot: slot)
            switch field {
            case .address:
                // A source and a destination where both are keyed (source first), else the one the scope names.
                let source = scope == .sourceAny || (scope == .source && addresses == 0)
                key.append(address(family, source: source, into: target))
                addresses += 1
            case .proto:
                key.append(.metaLoad(key: metaTransportProtocol, into: target))
                // Interval maps compare keys as big-endian numbers.
                if fields.interval { key.append(.hostToNetwork(target, size: 2)) }
            case .port:
                key.append(.payload(base: transportHeader, offset: 2, length: 2, into: target))
            }
            slot += field.width / 4
        }
        let protocols: [Expression] = [.metaLoad(key: metaTransportProtocol, into: 1), .lookup(set: transportProtocols.name, from: 1, into: nil)]
        // `meta nfproto` comes where nft's text has it: written out before the protocols where no
        // address is keyed, else as the dependency of the first address.
        let lead = scope == .any ? protocolFamily(family) + protocols : protocols + protocolFamily(family)
        let m = word(mark)
        let setMark: [Expression] = [.ctLoad(key: ctMark, into: 1), .bitwise(1, mask: word(~mark), xor: m, withOp: true), .ctSet(key: ctMark, from: 1)]
        let port: UInt32? = ranges ? nil : register(slot: family.bytes / 4)
        return Rule(chain: scope == .source || scope == .address ? "named" : "forwards", anonymousSet: transportProtocols,
                    expressions: lead + key + [.lookup(set: name, from: 1, into: nil)] + setMark + key
                        + [.lookup(set: name, from: 1, into: 1), .dnat(family: family == .v4 ? 2 : 10, address: 1, port: port)])
    }
}

extension IPFamily {
    var bytes: Int { self == .v4 ? 4 : 16 }
}
