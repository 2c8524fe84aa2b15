import FoundationEssentials
import Testing
@testable import VirtGateCore

/// Every fixture rendered from an empty ruleset and compared with its golden file, one rule per
/// line. Regenerate with VIRTGATE_UPDATE_GOLDEN=1 after an intended change, and review the diff.
@Suite("iptables rendering (golden files)")
struct IptablesRenderTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var golden: String
        var networks: [String]
        var domain: String?
        var masqueradeRouted = false
        /// Plan networks for the nftables backend (its mark-accept rule in iptables).
        var nftBackend = false
        var testDescription: String { golden }
    }

    static let cases: [Case] = [
        Case(golden: "web-on-default.rules", networks: ["network-default.xml"], domain: "domain-web-start.xml"),
        Case(golden: "default-network.rules", networks: ["network-default.xml"]),
        Case(golden: "routed-masquerade.rules", networks: ["network-routed.xml"], masqueradeRouted: true),
        Case(golden: "routed.rules", networks: ["network-routed.xml"]),
        Case(golden: "isolated.rules", networks: ["network-isolated.xml"]),
        Case(golden: "bad-guest.rules", networks: ["network-default.xml"], domain: "domain-bad.xml"),
        Case(golden: "long-name-guest.rules", networks: ["network-default.xml"], domain: "domain-long-name.xml"),
        Case(golden: "dual-stack.rules", networks: ["network-dual.xml"], domain: "domain-web6-start.xml"),
        Case(golden: "dual-stack-nft-backend.rules", networks: ["network-dual.xml"], nftBackend: true),
    ]

    /// The engine's preview of a case against an empty kernel: the same entry the hook uses.
    static func preview(_ testCase: Case) throws -> Firewall.Preview {
        let networks = try testCase.networks.map { try LibvirtXML.network(fromXML: Files.fixture($0)) }
        var input = EngineInput(networks: networks, addresses: MemoryAddressBook(networks: networks))
        input.gateways = []
        if let domain = testCase.domain { input.guests = [try LibvirtXML.guest(fromXML: Files.fixture(domain))] }
        let backend: any Backend = testCase.nftBackend
            ? NftMapBackend(mark: Settings().connectionMark, masqueradeRouted: testCase.masqueradeRouted)
            : IptablesChainBackend(masqueradeRouted: testCase.masqueradeRouted)
        return Firewall.preview(input, backend: backend, state: KernelState(iptables: IptablesSnapshot(), nft: NftState()),
                                mark: Settings().connectionMark)
    }

    /// The chains a case wants, as the hook would compute them.
    static func desired(_ testCase: Case) throws -> DesiredChains {
        try preview(testCase).desired.chains ?? [:]
    }

    @Test(arguments: cases)
    func golden(_ testCase: Case) throws {
        let rendered = try Self.preview(testCase).transaction.text
        let url = Files.goldenURL("iptables/\(testCase.golden)")
        if ProcessInfo.processInfo.environment["VIRTGATE_UPDATE_GOLDEN"] == "1" {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(rendered.utf8).write(to: url)
        }
        let expected = try String(decoding: Data(contentsOf: url), as: UTF8.self)
        #expect(rendered == expected)
    }

    @Test func shiftedRangeUsesBaseSyntax() {
        let forward = BoundForward(proto: .tcp, hostAddress: nil, hostPorts: PortRange(5000, 5009), sources: [],
                                   guestAddress: ip("10.0.0.5"), guestPorts: PortRange(6000, 6009), bridge: "b", subnets: [])
        #expect(IptablesRules.destination(forward) == "10.0.0.5:6000-6009/5000")
        var same = forward
        same.guestPorts = same.hostPorts
        #expect(IptablesRules.destination(same) == "10.0.0.5")
        var single = forward
        single.hostPorts = PortRange(2222, 2222)
        single.guestPorts = PortRange(22, 22)
        #expect(IptablesRules.destination(single) == "10.0.0.5:22")
    }

    @Test("Chain ids fit iptables and never collide", arguments: [
        "web", "a-very-long-guest-name-that-goes-on-and-on", "a-very-long-guest-name-that-goes-on-and-on-2",
        "guest with spaces", "gäst", "x+0000000", String(repeating: "z", count: 24), String(repeating: "z", count: 25),
    ])
    func chainIds(name: String) {
        for chain in ChainNames.chains(of: .guest(name)) + ChainNames.chains(of: .network(name)) {
            #expect(chain.name.utf8.count <= ChainNames.maximumLength)
            #expect(!chain.name.contains(" "))
            #expect(chain.name.unicodeScalars.allSatisfy { $0.isASCII })
        }
    }

    @Test func distinctNamesGiveDistinctIds() {
        let names = ["web", "Web", "a-very-long-guest-name-that-goes-on-and-on", "a-very-long-guest-name-that-goes-on-and-on-2",
                     "guest with spaces", "guest_with_spaces", "gäst", "g_st", String(repeating: "z", count: 24),
                     String(repeating: "z", count: 25)]
        #expect(Set(names.map(ChainNames.id(for:))).count == names.count)
        #expect(ChainNames.id(for: "web") == "web")
    }
}
