import FoundationEssentials
import Testing
@testable import VirtGateCore

/// The nftables backend's rendering: every guest fixture as a whole-table script from an empty
/// kernel, compared with its golden file; and the element difference against a table read back.
@Suite("nftables rendering (golden files)")
struct NftRenderTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var golden: String
        var networks: [String]
        var domain: String
        var testDescription: String { golden }
    }

    static let cases: [Case] = [
        Case(golden: "web-on-default.nft", networks: ["network-default.xml"], domain: "domain-web-start.xml"),
        Case(golden: "bad-guest.nft", networks: ["network-default.xml"], domain: "domain-bad.xml"),
        Case(golden: "long-name-guest.nft", networks: ["network-default.xml"], domain: "domain-long-name.xml"),
        Case(golden: "dual-stack.nft", networks: ["network-dual.xml"], domain: "domain-web6-start.xml"),
    ]

    static let mark = Settings().connectionMark

    /// The engine's preview of a case against an empty kernel: the same entry the hook uses.
    static func preview(_ testCase: Case) throws -> Firewall.Preview {
        let networks = try testCase.networks.map { try LibvirtXML.network(fromXML: Files.fixture($0)) }
        let guest = try LibvirtXML.guest(fromXML: Files.fixture(testCase.domain))
        var input = EngineInput(guests: [guest], addresses: MemoryAddressBook(networks: networks))
        input.gateways = networks.flatMap { $0.subnets.map(\.gateway) }
        return Firewall.preview(input, backend: NftMapBackend(mark: mark), state: KernelState(nft: NftState()), mark: mark)
    }

    static func plan(_ testCase: Case) throws -> GuestPlan {
        try #require(try preview(testCase).plan.guests.first).plan
    }

    static func desired(_ testCase: Case) throws -> DesiredElements {
        try preview(testCase).desired.elements ?? [:]
    }

    @Test(arguments: cases)
    func golden(_ testCase: Case) throws {
        let rendered = try Self.preview(testCase).transaction.nft
        let url = Files.goldenURL("nft/\(testCase.golden)")
        if ProcessInfo.processInfo.environment["VIRTGATE_UPDATE_GOLDEN"] == "1" {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(rendered.utf8).write(to: url)
        }
        #expect(rendered == String(decoding: try Data(contentsOf: url), as: UTF8.self))
    }

    /// The kernel state the golden script leaves, as `nft -j` would report it.
    static func kernel(_ desired: DesiredElements) -> NftState {
        NftState(exists: true, layout: NftLayout.marker(mark: mark), elements: Array(desired.values.joined()))
    }

    @Test("Re-asserting the same forwards writes nothing")
    func sameIsNoOp() throws {
        let desired = try Self.desired(Self.cases[0])
        #expect(NftTransaction.render(from: Self.kernel(desired), to: desired, mark: Self.mark) == "")
    }

    @Test("A changed forward replaces exactly its elements; other guests' stay untouched")
    func exactDifference() throws {
        var desired = try Self.desired(Self.cases[0])
        desired["other"] = [NftElement(set: "fwd4any", key: "6 . 7000", value: "192.168.122.99 . 7000", comment: "other")]
        let kernel = Self.kernel(desired)
        var moved = desired
        moved["web"] = moved["web"]!.map { element in
            var element = element
            element.value = element.value?.replacing("192.168.122.10 . 22", with: "192.168.122.11 . 22")
            return element
        }
        let script = NftTransaction.render(from: kernel, to: moved, mark: Self.mark)
        #expect(script == """
        delete element inet virtgate fwd4any { 6 . 2222 }
        add element inet virtgate fwd4any { 6 . 2222 comment "web" : 192.168.122.11 . 22 }

        """)
    }

    @Test("A table of another layout or mark is rebuilt whole; the last forward gone removes it")
    func rebuildAndRemoval() throws {
        let desired = try Self.desired(Self.cases[0])
        var stale = Self.kernel(desired)
        stale.layout = "layout-0-00200000"
        let script = NftTransaction.render(from: stale, to: desired, mark: Self.mark)
        #expect(script.hasPrefix("table inet virtgate\ndelete table inet virtgate\ntable inet virtgate {\n"))
        #expect(NftTransaction.render(from: Self.kernel(desired), to: [:], mark: Self.mark)
                == "table inet virtgate\ndelete table inet virtgate\n")
        #expect(NftTransaction.render(from: NftState(), to: [:], mark: Self.mark) == "")
    }

    @Test("A network's gateways create the table without base chains, its first forward adds them; the last forward gone, it stays while a gateway does")
    func gatewaysCreateUnhooked() throws {
        let desired = try Self.desired(Self.cases[0])
        let gateways = try #require(desired[NftLayout.gatewayOwner])
        try #require(!gateways.isEmpty && desired.count >= 2, "the case has a network and forwards")
        let onlyGateways: DesiredElements = [NftLayout.gatewayOwner: gateways]
        let forwards = Set(desired.filter { $0.key != NftLayout.gatewayOwner }.values.joined())
        // A network starts with no forward anywhere: the table, with no chain on a hook.
        let network = try #require(NftTransaction.changes(from: NftState(), to: onlyGateways, mark: Self.mark))
        #expect(network.table == .created(mark: Self.mark, replacing: false, hooked: false))
        #expect(network.added == gateways.sorted() && network.removed.isEmpty)
        #expect(!network.script.contains(" hook ") && network.script.contains("chain forwards {"))
        #expect(NftTransaction.summary(of: network) == "1 elements added (table inet virtgate created, without base chains until a forward)")
        var unhooked = Self.kernel(onlyGateways)
        unhooked.baseChains = 0
        #expect(NftTransaction.changes(from: unhooked, to: onlyGateways, mark: Self.mark) == nil)
        // Its first forward adds the base chains and its elements, in one change.
        let first = try #require(NftTransaction.changes(from: unhooked, to: desired, mark: Self.mark))
        #expect(first.table == .hooked(mark: Self.mark))
        #expect(Set(first.added) == forwards && first.removed.isEmpty)
        #expect(first.script.hasPrefix(NftLayout.baseChainDefinition(mark: Self.mark)))
        #expect(NftLayout.baseChains.allSatisfy { first.script.contains("chain \($0) {") })
        // The guest stops: its elements go, the table (hooked) and the gateways stay.
        let stop = try #require(NftTransaction.changes(from: Self.kernel(desired), to: onlyGateways, mark: Self.mark))
        #expect(stop.table == .kept)
        #expect(stop.added.isEmpty)
        #expect(Set(stop.removed) == forwards)
        // The guest starts again: only its elements are added.
        let start = try #require(NftTransaction.changes(from: Self.kernel(onlyGateways), to: desired, mark: Self.mark))
        #expect(start.table == .kept && start.removed.isEmpty)
        #expect(Set(start.added) == forwards)
        // The network stops too: nothing is left, the table goes, hooked or not.
        #expect(NftTransaction.changes(from: Self.kernel(onlyGateways), to: [:], mark: Self.mark)?.table == .removed)
        #expect(NftTransaction.changes(from: unhooked, to: [:], mark: Self.mark)?.table == .removed)
        // A table of another layout holding only gateways is rebuilt without base chains.
        var stale = Self.kernel(onlyGateways)
        stale.layout = "layout-0-00200000"
        #expect(NftTransaction.changes(from: stale, to: onlyGateways, mark: Self.mark)?.table
                == .created(mark: Self.mark, replacing: true, hooked: false))
        // Some base chains but not all: not a table virtgate leaves; rebuilt whole, with every element.
        for count in 1..<NftLayout.baseChains.count {
            var partial = Self.kernel(desired)
            partial.baseChains = count
            let rebuilt = try #require(NftTransaction.changes(from: partial, to: desired, mark: Self.mark))
            #expect(rebuilt.table == .created(mark: Self.mark, replacing: true, hooked: true))
            #expect(Set(rebuilt.added) == Set(desired.values.joined()))
        }
        // Other owners' elements left unread by a scoped read are forwards: the table is hooked for them.
        var scoped = unhooked
        scoped.unreadElements = 1
        #expect(NftTransaction.changes(from: scoped, to: onlyGateways, mark: Self.mark)?.table == .hooked(mark: Self.mark))
    }

    @Test("A table created from nothing gets every element once, in order, whatever order the owners come in")
    func createdElementsSortedOnce() throws {
        let desired = try Self.desired(Self.cases[0])
        let elements = desired.values.joined().sorted()
        try #require(elements.count >= 2)
        // The same element under two owners (a table is a set: it holds it once), owners listed reversed.
        var shuffled: DesiredElements = [:]
        for (index, owner) in desired.keys.sorted().reversed().enumerated() { shuffled["\(index)"] = desired[owner]!.reversed() }
        shuffled["twice"] = [elements[0]]
        let changes = try #require(NftTransaction.changes(from: NftState(), to: shuffled, mark: Self.mark))
        #expect(changes.table == .created(mark: Self.mark, replacing: false, hooked: true))
        #expect(changes.added == elements)
    }

    @Test("Claims read back from the elements are the plan's own")
    func claimsRoundTrip() throws {
        let plan = try Self.plan(Self.cases[3])
        let state = Self.kernel(try Self.desired(Self.cases[3]))
        let read = state.forwardClaims(names: ["web6": "web6"])
        // Ranges come back port by port; every planned claim is covered and nothing else appears.
        for claim in plan.claims {
            #expect(read.contains { $0.overlaps(claim) && $0.family == claim.family })
        }
        for claim in read {
            #expect(plan.claims.contains { $0.overlaps(claim) })
        }
    }

    @Test func jsonListingIsParsed() throws {
        let json = """
        {"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "virtgate", "handle": 1}},
        {"map": {"family": "inet", "name": "fwd6src", "table": "virtgate", "type": ["ipv6_addr", "ipv6_addr", "inet_proto", "inet_service"],
         "handle": 1, "map": "ipv6_addr . inet_service", "flags": ["interval"], "elem": [[{"elem": {"val": {"concat": [
         {"prefix": {"addr": "2001:db8:1::", "len": 48}}, {"prefix": {"addr": "::", "len": 0}}, 17, 5000]}, "comment": "web6"}},
         {"concat": ["fd00:126::10", 6000]}]]}},
        {"set": {"family": "inet", "name": "hairpin4", "table": "virtgate", "elem": [{"elem": {"val": {"concat": [
         {"prefix": {"addr": "192.168.126.0", "len": 24}}, "192.168.126.10", 17, {"range": [6000, 6002]}]}, "comment": "web6"}}]}},
        {"chain": {"family": "inet", "table": "virtgate", "name": "layout-1-00200000", "handle": 9}}]}
        """
        let state = try NftState(json: json)
        #expect(state.exists)
        #expect(state.layout == "layout-1-00200000")
        #expect(state.elements == [
            NftElement(set: "fwd6src", key: "2001:db8:1::/48 . ::/0 . 17 . 5000", value: "fd00:126::10 . 6000", comment: "web6"),
            NftElement(set: "hairpin4", key: "192.168.126.0/24 . 192.168.126.10 . 17 . 6000-6002", value: nil, comment: "web6"),
        ])
        // An element without a comment (added by hand) has no owner.
        #expect(try NftState(json: #"{"nftables": [{"set": {"name": "x", "elem": [1]}}]}"#).elements
                == [NftElement(set: "x", key: "1", value: nil, comment: "")])
        #expect(throws: VirtGateError.self) { try NftState(json: #"{"nftables": [{"set": {"name": "x", "elem": [{"odd": 1}]}}]}"#) }
    }
}
