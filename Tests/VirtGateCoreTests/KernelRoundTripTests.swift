import FoundationEssentials
import Testing
@testable import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

/// Root tests that need no traffic: every golden ruleset goes through the real iptables-restore and
/// iptables-save of both variants inside a throw-away network namespace. This proves that the
/// rendered text is accepted by the kernel and that what iptables-save prints back is exactly what
/// virtgate renders, which is what makes re-asserting a no-op and drift detectable.
enum Root {
    static let isRoot = getuid() == 0
    /// CI sets this so that a missing privilege fails instead of skipping.
    static let required = getenv("VIRTGATE_REQUIRE_ROOT").map { String(cString: $0) == "1" } ?? false

    /// A run killed before its defer ran leaves its namespaces (`PREFIX<pid>-…`): remove those of
    /// test processes that are gone.
    static func removeStaleNamespaces(prefix: String) {
        guard isRoot, let entries = try? FileManager.default.contentsOfDirectory(atPath: "/run/netns") else { return }
        for entry in entries where entry.hasPrefix(prefix) {
            let pid = entry.dropFirst(prefix.count).prefix { $0 != "-" }
            if let value = Int32(pid), value != getpid(), kill(value, 0) != 0 {
                _ = system("ip netns del \(entry) 2>/dev/null")
            }
        }
    }
}

@Suite("Rules round-trip through the kernel", .enabled(if: Root.isRoot || Root.required), .serialized)
struct KernelRoundTripTests {
    let runner = ProcessRunner()

    init() {
        Root.removeStaleNamespaces(prefix: "vgt-rt-")
    }

    func sh(_ arguments: [String], input: String? = nil) async throws -> CommandResult {
        try await runner.run("/usr/bin/env", arguments, input: input)
    }

    @Test(arguments: [IptablesVariant.nft, .legacy], IptablesRenderTests.cases)
    func roundTrip(variant: IptablesVariant, testCase: IptablesRenderTests.Case) async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let namespace = "vgt-rt-\(getpid())-\(variant.rawValue)-\(testCase.golden.split(separator: ".")[0])"
        #expect(try await sh(["ip", "netns", "add", namespace]).status == 0)
        defer { _ = system("ip netns del \(namespace) 2>/dev/null") }
        let backend = IptablesCommands(variant: variant, runner: NamespaceRunner(namespace: namespace, base: runner))

        let desired = try IptablesRenderTests.desired(testCase)
        let empty = try await backend.snapshot()
        for family in IPFamily.allCases {
            try await backend.restore(IptablesTransaction.render(from: empty, to: desired, family: family), family: family)
        }
        let applied = try await backend.snapshot()
        #expect(applied.ownerChains == desired.filter { !$0.value.isEmpty })
        #expect(IptablesTransaction.render(from: applied, to: desired) == "", "iptables-save must print our rules verbatim")

        for family in IPFamily.allCases {
            try await backend.restore(IptablesTransaction.render(from: applied, to: [:], family: family), family: family)
        }
        let removed = try await backend.snapshot()
        for table in removed.tables.values {
            #expect(!table.chains.contains(where: ChainNames.isOwned))
            #expect(!table.rules.values.joined().contains { $0.contains("VIRTGATE") })
        }
    }

    @Test("nft: each golden script goes through the real nft; what nft lists back is exactly what virtgate renders",
          arguments: NftRenderTests.cases)
    func nftRoundTrip(testCase: NftRenderTests.Case) async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let namespace = "vgt-rt-\(getpid())-nft-\(testCase.golden.split(separator: ".")[0])"
        #expect(try await sh(["ip", "netns", "add", namespace]).status == 0)
        defer { _ = system("ip netns del \(namespace) 2>/dev/null") }
        let backend = NftCommands(runner: NamespaceRunner(namespace: namespace, base: runner))
        let desired = try NftRenderTests.desired(testCase)
        // Every read both ways: nft's JSON listing (the reference) and the hook's netlink reader.
        func read() async throws -> NftState {
            let listed = try await backend.state()
            let fromNetlink = try Self.inNamespace(namespace) { try NftNetlink.shared?.state() }
            #expect(fromNetlink.map { NftState(exists: $0.exists, layout: $0.layout, baseChains: $0.baseChains, elements: $0.elements.sorted()) }
                    == NftState(exists: listed.exists, layout: listed.layout, baseChains: listed.baseChains, elements: listed.elements.sorted()),
                    "netlink and nft's listing disagree")
            return listed
        }

        #expect(try await read() == NftState())
        try await backend.apply(NftTransaction.render(from: NftState(), to: desired, mark: NftRenderTests.mark))
        let applied = try await read()
        // A guest without valid forwards leaves the table as its network's gateway makes it: on no
        // hook, holding the gateway.
        let forwardless = !desired.contains { $0.key != NftLayout.gatewayOwner }
        #expect(applied.layout == (desired.isEmpty ? nil : NftLayout.marker(mark: NftRenderTests.mark)))
        #expect(applied.baseChains == (forwardless ? 0 : NftLayout.baseChains.count))
        #expect(Set(applied.elements) == Set(desired.values.joined()))
        // The text listing virtgate reads says exactly what nft's JSON listing says.
        let json = try await sh(["ip", "netns", "exec", namespace, "nft", "-j", "-p", "list", "table", "inet", NftLayout.table])
        if json.status == 0 { #expect(try NftState(json: json.output) == applied) }
        #expect(NftTransaction.render(from: applied, to: desired, mark: NftRenderTests.mark) == "")

        // Another guest's element added and the first guest removed, against the real kernel.
        var next = desired
        next["other"] = [NftElement(set: "fwd4any", key: "6 . 7000", value: "10.0.0.9 . 7000", comment: "other")]
        next = NftTransaction.desired(next, replacing: try NftRenderTests.plan(testCase).plan.owner, with: [])
        try await backend.apply(NftTransaction.render(from: applied, to: next, mark: NftRenderTests.mark))
        #expect(Set(try await read().elements) == Set(next.values.joined()))

        // The same changes both ways again, this time written over netlink (as a hook writes them).
        if !forwardless {
            let changes = try #require(NftTransaction.changes(from: try await read(), to: desired, mark: NftRenderTests.mark),
                                       "only elements change")
            #expect(try Self.inNamespace(namespace) { try NftNetlink.shared?.apply(changes) } == true)
            #expect(Set(try await read().elements) == Set(desired.values.joined()))
            #expect(NftTransaction.render(from: try await read(), to: desired, mark: NftRenderTests.mark) == "")
            let forth = try #require(NftTransaction.changes(from: try await read(), to: next, mark: NftRenderTests.mark))
            #expect(try Self.inNamespace(namespace) { try NftNetlink.shared?.apply(forth) } == true)
            #expect(Set(try await read().elements) == Set(next.values.joined()))
        }

        try await backend.apply(NftTransaction.render(from: try await read(), to: [:], mark: NftRenderTests.mark))
        #expect(try await read() == NftState())
    }

    /// Golden cases whose guests hold forwards (the others create a table without base chains).
    static let casesWithTable = NftRenderTests.cases.filter { testCase in
        (try? NftRenderTests.desired(testCase)).map(NftTransaction.holdsForwards) ?? false
    }

    /// A listing with its element lines sorted: a hash set lists its elements in the order of its
    /// (randomly seeded) buckets. Everything else stays in order.
    static func comparable(_ listing: String) -> [String] {
        let lines = listing.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        return lines.filter { !$0.hasPrefix("\telement ") } + lines.filter { $0.hasPrefix("\telement ") }.sorted()
    }

    @Test("nft: the table created (with base chains or without, then hooked), rebuilt and removed over netlink is what nft makes of the same script, rule bytecode included",
          arguments: casesWithTable)
    func netlinkTable(testCase: NftRenderTests.Case) async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let reference = "vgt-rt-\(getpid())-tref-\(testCase.golden.split(separator: ".")[0])"
        let written = "vgt-rt-\(getpid())-tnl-\(testCase.golden.split(separator: ".")[0])"
        for namespace in [reference, written] { #expect(try await sh(["ip", "netns", "add", namespace]).status == 0) }
        defer { _ = system("ip netns del \(reference) 2>/dev/null; ip netns del \(written) 2>/dev/null") }
        let nft = NftCommands(runner: NamespaceRunner(namespace: reference, base: runner))
        let listed = NftCommands(runner: NamespaceRunner(namespace: written, base: runner))
        let desired = try NftRenderTests.desired(testCase)
        // nft's listing of the table, and the kernel's expressions of every rule as nft prints them.
        func same(hooked: Bool = true) async throws {
            for arguments in [["list", "table", "inet", NftLayout.table], ["--debug=netlink", "list", "table", "inet", NftLayout.table]] {
                let want = try await sh(["ip", "netns", "exec", reference, "nft"] + arguments)
                let have = try await sh(["ip", "netns", "exec", written, "nft"] + arguments)
                #expect(want.status == 0 && want.output.contains("chain named") && want.output.contains("chain postrouting") == hooked)
                #expect(Self.comparable(have.output) == Self.comparable(want.output), "\(arguments.joined(separator: " ")) differs")
            }
        }

        // Created for a network's gateway alone, without base chains; the first forward adds them
        // with its elements.
        let network: DesiredElements = [NftLayout.gatewayOwner: desired[NftLayout.gatewayOwner]
            ?? [NftElement(set: "gw4", key: "192.0.2.1", value: nil, comment: NftLayout.gatewayOwner)]]
        var withNetwork = desired
        withNetwork[NftLayout.gatewayOwner] = network[NftLayout.gatewayOwner]
        try await nft.apply(NftTransaction.render(from: NftState(), to: network, mark: NftRenderTests.mark))
        let started = try #require(NftTransaction.changes(from: try await listed.state(), to: network, mark: NftRenderTests.mark))
        #expect(started.table == .created(mark: NftRenderTests.mark, replacing: false, hooked: false))
        #expect(try Self.inNamespace(written) { try NftNetlink.shared?.apply(started) } == true)
        try await same(hooked: false)
        #expect(try await listed.state().baseChains == 0)
        try await nft.apply(NftTransaction.render(from: try await nft.state(), to: withNetwork, mark: NftRenderTests.mark))
        let hooking = try #require(NftTransaction.changes(from: try await listed.state(), to: withNetwork, mark: NftRenderTests.mark))
        #expect(hooking.table == .hooked(mark: NftRenderTests.mark))
        #expect(try Self.inNamespace(written) { try NftNetlink.shared?.apply(hooking) } == true)
        try await same()
        #expect(try await listed.state().baseChains == NftLayout.baseChains.count)
        #expect(NftTransaction.render(from: try await listed.state(), to: withNetwork, mark: NftRenderTests.mark) == "")
        for namespace in [reference, written] {
            #expect(try await sh(["ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", NftLayout.table]).status == 0)
        }

        // Created, with the guests' elements, in one batch.
        try await nft.apply(NftTransaction.render(from: NftState(), to: desired, mark: NftRenderTests.mark))
        let create = try #require(NftTransaction.changes(from: try await listed.state(), to: desired, mark: NftRenderTests.mark))
        #expect(create.table == .created(mark: NftRenderTests.mark, replacing: false, hooked: true))
        #expect(try Self.inNamespace(written) { try NftNetlink.shared?.apply(create) } == true)
        try await same()
        #expect(NftTransaction.render(from: try await listed.state(), to: desired, mark: NftRenderTests.mark) == "")

        // Rebuilt with another connection mark: the old table goes in the same batch.
        let other: UInt32 = 0x0040_0000
        try await nft.apply(NftTransaction.render(from: try await nft.state(), to: desired, mark: other))
        let rebuild = try #require(NftTransaction.changes(from: try await listed.state(), to: desired, mark: other))
        #expect(rebuild.table == .created(mark: other, replacing: true, hooked: true))
        #expect(try Self.inNamespace(written) { try NftNetlink.shared?.apply(rebuild) } == true)
        try await same()

        // Removed with its last forward.
        let removal = try #require(NftTransaction.changes(from: try await listed.state(), to: [:], mark: other))
        #expect(removal.table == .removed)
        #expect(try Self.inNamespace(written) { try NftNetlink.shared?.apply(removal) } == true)
        #expect(try await listed.state() == NftState())
    }

    @Test("The ruleset generation moves with every nf_tables commit, nft's and iptables-nft's alike, and with nothing else")
    func rulesetGeneration() async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let namespace = "vgt-rt-\(getpid())-generation"
        #expect(try await sh(["ip", "netns", "add", namespace]).status == 0)
        defer { _ = system("ip netns del \(namespace) 2>/dev/null") }
        let netlink = try #require(NftNetlink.shared)
        func generation() throws -> UInt32 { try Self.inNamespace(namespace) { try netlink.generation() } }

        let first = try generation()
        #expect(try generation() == first, "a read commits nothing")
        _ = try Self.inNamespace(namespace) { try netlink.state() }
        #expect(try generation() == first)
        #expect(try await sh(["ip", "netns", "exec", namespace, "nft", "add", "table", "inet", "vgt-generation"]).status == 0)
        let afterNft = try generation()
        #expect(afterNft != first)
        // sync trusts a read of iptables-nft's rules as long as the generation stands: their commits must move it.
        let rules = "*nat\n:VGD-generation - [0:0]\n-A VGD-generation -p tcp -m tcp --dport 2222 -j DNAT --to-destination 10.0.0.2:22\nCOMMIT\n"
        #expect(try await sh(["ip", "netns", "exec", namespace, "iptables-nft-restore", "--noflush"], input: rules).status == 0)
        let afterIptables = try generation()
        #expect(afterIptables != afterNft)
        #expect(try generation() == afterIptables)
    }

    @Test("A scoped netlink read holds the owners a change replaces and the claims that can collide with it, nothing else")
    func scopedNetlinkRead() async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let namespace = "vgt-rt-\(getpid())-scoped"
        #expect(try await sh(["ip", "netns", "add", namespace]).status == 0)
        defer { _ = system("ip netns del \(namespace) 2>/dev/null") }
        let backend = NftCommands(runner: NamespaceRunner(namespace: namespace, base: runner))
        func any(_ owner: String, _ proto: Int, _ port: Int) -> NftElement {
            NftElement(set: "fwd4any", key: "\(proto) . \(port)", value: "192.168.122.10 . \(port)", comment: owner)
        }
        let range = NftElement(set: "fwd4anyrange", key: "6 . 8000-8100", value: "192.168.122.20", comment: "bbbb")
        let gateway = NftElement(set: "gw4", key: "192.168.122.1", value: nil, comment: NftLayout.gatewayOwner)
        let desired: DesiredElements = [
            "aaaa": [any("aaaa", 6, 8080), any("aaaa", 6, 9000)],
            "bbbb": [any("bbbb", 6, 8081), range],
            "cccc": [any("cccc", 17, 8080), any("cccc", 6, 7000)],
            NftLayout.gatewayOwner: [gateway],
        ]
        try await backend.apply(NftTransaction.render(from: NftState(), to: desired, mark: NftRenderTests.mark))

        // aaaa changes, claiming tcp 8080 and 9000: bbbb's range holds tcp 8080, nothing else of others does.
        let marker = NftLayout.marker(mark: NftRenderTests.mark)
        let scope = NftReadScope(owners: ["aaaa", NftLayout.gatewayOwner],
                                 ports: [6: [PortRange(8080, 8080), PortRange(9000, 9000)]], marker: marker)
        let scoped = try #require(try Self.inNamespace(namespace) { try NftNetlink.shared?.state(scope: scope) })
        #expect(Set(scoped.elements) == [any("aaaa", 6, 8080), any("aaaa", 6, 9000), range, gateway])
        #expect(scoped.unreadElements == 3)
        #expect(scoped.forwardClaims().contains { $0.guest == "bbbb" && $0.hostPorts == PortRange(8000, 8100) })

        // aaaa stops, read with its own scope only: what was left unread keeps the table, and stays.
        let narrow = try #require(try Self.inNamespace(namespace) {
            try NftNetlink.shared?.state(scope: NftReadScope(owners: ["aaaa", NftLayout.gatewayOwner], ports: [:], marker: marker))
        })
        // A change made with another mark rebuilds the table from what it read: it reads all of it.
        let otherMark = try #require(try Self.inNamespace(namespace) {
            try NftNetlink.shared?.state(scope: NftReadScope(owners: ["aaaa"], ports: [:], marker: NftLayout.marker(mark: 0x0040_0000)))
        })
        #expect(otherMark.unreadElements == 0)
        #expect(Set(otherMark.elements) == Set(desired.values.joined()))
        // So does a change to a table missing some of its base chains: it is rebuilt whole.
        #expect(try await sh(["ip", "netns", "exec", namespace, "nft", "delete", "chain", "inet", NftLayout.table, "hairpin"]).status == 0)
        let partial = try #require(try Self.inNamespace(namespace) { try NftNetlink.shared?.state(scope: scope) })
        #expect(partial.baseChains == NftLayout.baseChains.count - 1)
        #expect(partial.unreadElements == 0 && Set(partial.elements) == Set(desired.values.joined()))
        let rebuilt = try #require(NftTransaction.changes(from: partial, to: partial.ownerElements, mark: NftRenderTests.mark))
        #expect(rebuilt.table == .created(mark: NftRenderTests.mark, replacing: true, hooked: true))
        #expect(try Self.inNamespace(namespace) { try NftNetlink.shared?.apply(rebuilt) } == true)
        #expect(try await backend.state().baseChains == NftLayout.baseChains.count)
        #expect(narrow.unreadElements == 4)
        var after = narrow.ownerElements
        after["aaaa"] = nil
        let script = NftTransaction.render(from: narrow, to: after, mark: NftRenderTests.mark)
        #expect(!script.contains("delete table"))
        try await backend.apply(script)
        var left = desired
        left["aaaa"] = nil
        #expect(Set(try await backend.state().elements) == Set(left.values.joined()))
        #expect(NftTransaction.summary(of: try #require(NftTransaction.changes(from: narrow, to: after, mark: NftRenderTests.mark)))
                == "0 elements added, 2 removed")
    }

    @Test("A change of thousands of elements is written over netlink in messages the kernel takes, all or nothing")
    func largeNetlinkBatch() async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let namespace = "vgt-rt-\(getpid())-batch"
        #expect(try await sh(["ip", "netns", "add", namespace]).status == 0)
        defer { _ = system("ip netns del \(namespace) 2>/dev/null") }
        let backend = NftCommands(runner: NamespaceRunner(namespace: namespace, base: runner))
        func element(_ index: Int, _ owner: String) -> NftElement {
            NftElement(set: "fwd4srcany", key: "10.\(index >> 8).\(index & 255).0/24 . 6 . \(10000 + index)",
                       value: "192.168.122.10 . 80", comment: owner)
        }
        let seed: DesiredElements = ["seed": [element(0, "seed")]]
        try await backend.apply(NftTransaction.render(from: NftState(), to: seed, mark: NftRenderTests.mark))
        // 3,000 interval elements (about 300 KiB): far more than one netlink attribute holds.
        var many = seed
        many["bulk"] = (1...3000).map { element($0, "bulk") }
        let adding = try #require(NftTransaction.changes(from: try await backend.state(), to: many, mark: NftRenderTests.mark))
        #expect(try Self.inNamespace(namespace) { try NftNetlink.shared?.apply(adding) } == true)
        #expect(Set(try await backend.state().elements) == Set(many.values.joined()))
        // A batch the kernel refuses (one element already deleted) changes nothing at all.
        var fewer = many
        fewer["bulk"] = nil
        var removing = try #require(NftTransaction.changes(from: try await backend.state(), to: fewer, mark: NftRenderTests.mark))
        removing.removed.append(element(4000, "bulk"))
        #expect(throws: VirtGateError.self) { try Self.inNamespace(namespace) { try NftNetlink.shared?.apply(removing) } }
        #expect(Set(try await backend.state().elements) == Set(many.values.joined()))
        removing.removed.removeLast()
        #expect(try Self.inNamespace(namespace) { try NftNetlink.shared?.apply(removing) } == true)
        #expect(Set(try await backend.state().elements) == Set(fewer.values.joined()))
    }

    @Test("Shapes the nft backend once failed on: the kernel accepts every event, a repeat writes nothing, stops leave nothing",
          arguments: ["iptables", "nft"])
    func engineShapes(backendName: String) async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let namespace = "vgt-rt-\(getpid())-shapes-\(backendName)"
        #expect(try await sh(["ip", "netns", "add", namespace]).status == 0)
        defer { _ = system("ip netns del \(namespace) 2>/dev/null") }
        let inside = NamespaceRunner(namespace: namespace, base: runner)
        let firewall = Firewall(iptables: IptablesCommands(variant: .nft, runner: inside), nft: NftCommands(runner: inside),
                                log: Log(syslog: false, stderr: false))
        let backend: any Backend = backendName == "nft" ? NftMapBackend(mark: firewall.mark) : IptablesChainBackend(nftInstalled: true)
        let network = try LibvirtXML.network(fromXML: EngineTests.network)
        let book = MemoryAddressBook(networks: [network])
        let domains = [
            EngineTests.domain("a", """
                <vg:forward host-port="8080" guest-port="80"/><vg:forward host-port="2222" guest-port="22"/>
                <vg:forward host-port="8090-8091" guest-port="80-81"/><vg:forward host-port="8443" guest-port="80" source="192.0.2.0/24"/>
                <vg:forward host-port="9000-9010"/><vg:forward host-port="9100-9110" guest-port="9005-9015"/>
                <vg:forward host-port="7000" source="10.0.0.0/8 10.1.0.0/16"/><vg:forward host-port="7100" source="0.0.0.0/0 ::/0"/>
                <vg:forward host-port="7200-7210" guest-port="80-90" guest-address="192.168.122.20"/>
                """),
            EngineTests.domain("b", mac: "52:54:00:aa:00:02", """
                <vg:forward host-port="80"/><vg:forward host-port="7000" source="10.2.0.0/16"/><vg:forward host-port="7300"/>
                """),
            EngineTests.domain("lan", mac: "52:54:00:aa:00:03", bridgeNIC: true,
                               #"<vg:forward host-port="7400" guest-address="203.0.113.5"/>"#),
        ]
        let guests = try domains.map { try LibvirtXML.guest(fromXML: $0) }
        let baseline = try await firewall.read(KernelReads(iptables: true, nft: true), dryRun: false)
        #expect(try await firewall.run(EngineInput(networks: [network], addresses: book), backend: backend, dryRun: false, store: nil).applied)
        for guest in guests {
            let input = EngineInput.guest(guest, addresses: book, assertNetwork: { _ in true })
            let first = try await firewall.run(input, backend: backend, dryRun: false, store: nil)
            #expect(first.applied, "\(guest.name): the kernel accepted the transaction")
            let again = try await firewall.run(input, backend: backend, dryRun: false, store: nil)
            #expect(!again.applied && again.transaction.isEmpty, "\(guest.name): a repeated event writes nothing")
        }
        // b's 7000 clashes with a's allow-list: refused in planning, b's other forwards stand.
        let kernel = try await firewall.read(KernelReads(iptables: true, nft: true), dryRun: false)
        let claims = kernel.claims(names: [:])
        #expect(claims.filter { $0.guest == "b" }.map(\.hostPorts.lower).sorted() == [80, 7300])
        #expect(claims.contains { $0.guest == "lan" })
        for guest in guests {
            let stop = EngineInput(removed: [.guest(guest.name)], addresses: NoAddresses(),
                                   removesPlainBridgeRules: EngineInput.usesPlainBridge(guest))
            _ = try await firewall.run(stop, backend: backend, dryRun: false, store: nil)
        }
        _ = try await firewall.run(EngineInput(removed: [.network("default")], addresses: NoAddresses()), backend: backend,
                                   dryRun: false, store: nil)
        let after = try await firewall.read(KernelReads(iptables: true, nft: true), dryRun: false)
        // iptables-nft leaves the empty built-in tables it created: compare what is in them.
        #expect(after.iptables?.ownerChains.isEmpty == true, "every owner gone: no virtgate chain")
        #expect(after.iptables?.tables.values.allSatisfy { $0.rules.values.allSatisfy(\.isEmpty) } == true,
                "every owner gone: no jump left; the namespace started with no rules at all")
        #expect(baseline.iptables?.tables.isEmpty == true)
        #expect(after.nft == baseline.nft, "every owner gone: no virtgate table")
    }

    @Test("A failing table is rolled back: nothing is half-applied")
    func rollback() async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let namespace = "vgt-rt-\(getpid())-rollback"
        #expect(try await sh(["ip", "netns", "add", namespace]).status == 0)
        defer { _ = system("ip netns del \(namespace) 2>/dev/null") }
        let commands = IptablesCommands(variant: .nft, runner: NamespaceRunner(namespace: namespace, base: runner))
        let nft = NftCommands(runner: NamespaceRunner(namespace: namespace, base: runner))
        let firewall = Firewall(iptables: commands, nft: nft, log: Log(syslog: false, stderr: false))

        let network = try LibvirtXML.network(fromXML: Files.fixture("network-default.xml"))
        let before = try await firewall.run(EngineInput(networks: [network], addresses: NoAddresses()),
                                            backend: IptablesChainBackend(), dryRun: false, store: nil)
        #expect(before.applied)
        let baseline = try await commands.snapshot()

        // A guest whose nat rules are fine but whose filter rule the kernel rejects (a bad interface
        // name slipped past validation): nat is committed first, then filter fails.
        var broken = baseline.ownerChains
        broken[.nat, default: [:]]["VGD-web"] = ["-A VGD-web -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.10:22"]
        broken[.filter, default: [:]]["VGF-web"] = ["-A VGF-web -p tcp -m tcp --dport 22 -j NO-SUCH-TARGET"]
        let state = KernelState(iptables: baseline)
        await #expect(throws: VirtGateError.self) {
            try await firewall.apply(Firewall.render(DesiredState(chains: broken), on: state, mark: firewall.mark), on: state)
        }
        var after = try await commands.snapshot()
        #expect(after.ownerChains == baseline.ownerChains)
        #expect(after.tables[.nat]?.rules["PREROUTING"] ?? [] == baseline.tables[.nat]?.rules["PREROUTING"] ?? [])

        // Valid iptables rules followed by an nft script the kernel refuses: the iptables part goes back too.
        var valid = baseline.ownerChains
        valid[.nat, default: [:]]["VGD-web"] = broken[.nat]!["VGD-web"]
        var transaction = Firewall.render(DesiredState(chains: valid), on: state, mark: firewall.mark)
        transaction.nftChanges = NftChanges(removed: [], added: [NftElement(set: "no-such-map", key: "1", value: nil, comment: "vg-x")])
        await #expect(throws: VirtGateError.self) { try await firewall.apply(transaction, on: state) }
        after = try await commands.snapshot()
        #expect(after.ownerChains == baseline.ownerChains)
    }
}

/// Runs every command inside a network namespace (`ip netns exec`).
extension KernelRoundTripTests {
    /// Runs `body` on this thread inside network namespace `name` (sockets it opens belong to
    /// that namespace), then puts the thread back. `body` is synchronous: it cannot change threads.
    static func inNamespace<T>(_ name: String, _ body: () throws -> T) throws -> T {
        // setns(2) needs _GNU_SOURCE, which the C module does not define: found at run time instead.
        typealias SetNamespace = @convention(c) (Int32, Int32) -> Int32
        let setns = try #require(dlsym(nil, "setns").map { unsafeBitCast($0, to: SetNamespace.self) })
        let newNetworkNamespace: Int32 = 0x4000_0000                   // CLONE_NEWNET
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        let target = open("/run/netns/\(name)", O_RDONLY | O_CLOEXEC)
        defer { close(original); close(target) }
        try #require(original >= 0 && target >= 0, "cannot open the namespaces")
        try #require(setns(target, newNetworkNamespace) == 0, "setns \(name): errno \(errno)")
        defer { precondition(setns(original, newNetworkNamespace) == 0, "cannot return to the test's namespace") }
        return try body()
    }
}

struct NamespaceRunner: CommandRunner {
    let namespace: String
    let base: any CommandRunner

    func run(_ executable: String, _ arguments: [String], input: String?) async throws -> CommandResult {
        try await base.run("/usr/bin/env", ["ip", "netns", "exec", namespace, executable] + arguments, input: input)
    }
}
