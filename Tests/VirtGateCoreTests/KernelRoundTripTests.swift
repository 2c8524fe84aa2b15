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
}

@Suite("Rules round-trip through the kernel", .enabled(if: Root.isRoot || Root.required), .serialized)
struct KernelRoundTripTests {
    let runner = ProcessRunner()

    init() {
        // A run killed before its defer ran leaves its namespace: remove those of dead test processes.
        guard Root.isRoot, let entries = try? FileManager.default.contentsOfDirectory(atPath: "/run/netns") else { return }
        for entry in entries where entry.hasPrefix("vgt-rt-") {
            let pid = entry.split(separator: "-")[2]
            if let value = Int32(pid), value != getpid(), kill(value, 0) != 0 {
                _ = system("ip netns del \(entry) 2>/dev/null")
            }
        }
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

        #expect(try await backend.state() == NftState())
        try await backend.apply(NftTransaction.render(from: NftState(), to: desired, mark: NftRenderTests.mark))
        let applied = try await backend.state()
        // A guest without valid forwards leaves the host without a virtgate table.
        #expect(applied.layout == (desired.isEmpty ? nil : NftLayout.marker(mark: NftRenderTests.mark)))
        #expect(Set(applied.elements) == Set(desired.values.joined()))
        #expect(NftTransaction.render(from: applied, to: desired, mark: NftRenderTests.mark) == "")

        // Another guest's element added and the first guest removed, against the real kernel.
        var next = desired
        next["other"] = [NftElement(set: "fwd4any", key: "6 . 7000", value: "10.0.0.9 . 7000", comment: "other")]
        next = NftTransaction.desired(next, replacing: try NftRenderTests.plan(testCase).plan.owner, with: [])
        try await backend.apply(NftTransaction.render(from: applied, to: next, mark: NftRenderTests.mark))
        #expect(try await backend.state().elements == next["other"]!)

        try await backend.apply(NftTransaction.render(from: try await backend.state(), to: [:], mark: NftRenderTests.mark))
        #expect(try await backend.state() == NftState())
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
        transaction.nft = "add element inet virtgate no-such-map { 1 }\n"
        await #expect(throws: VirtGateError.self) { try await firewall.apply(transaction, on: state) }
        after = try await commands.snapshot()
        #expect(after.ownerChains == baseline.ownerChains)
    }
}

/// Runs every command inside a network namespace (`ip netns exec`).
struct NamespaceRunner: CommandRunner {
    let namespace: String
    let base: any CommandRunner

    func run(_ executable: String, _ arguments: [String], input: String?) async throws -> CommandResult {
        try await base.run("/usr/bin/env", ["ip", "netns", "exec", namespace, executable] + arguments, input: input)
    }
}
