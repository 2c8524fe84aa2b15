import Testing
@testable import VirtGateCore

@Suite("doctor diagnoses")
struct DoctorTests {
    static let network = NetworkDefinition(
        name: "default", bridge: "virbr0", mode: .nat,
        subnets: [.init(gateway: IPAddress("192.168.122.1")!, network: IPNetwork(parsing: "192.168.122.0/24")!)],
        reservations: [:])

    static var networkChains: DesiredChains {
        IptablesTransaction.desired([:], replacing: .network("default"),
                                    with: IptablesRules.chains(for: Planner.plan(network: network, settings: PlannerSettings())))
    }

    /// A host where everything is right: forwarding on, virtgate's rules in place under UFW.
    static func healthy() -> DoctorFacts {
        var facts = DoctorFacts()
        facts.ipForwarding = true
        facts.networks = [network]
        facts.desired = networkChains
        facts.snapshot = IptablesSnapshot(parsing: """
        *filter
        :INPUT DROP [0:0]
        :FORWARD DROP [0:0]
        :OUTPUT ACCEPT [0:0]
        :VGN-default - [0:0]
        :VIRTGATE-FWD - [0:0]
        :ufw-before-forward - [0:0]
        -A FORWARD -j VIRTGATE-FWD
        -A FORWARD -j ufw-before-forward
        -A VGN-default -i virbr0 -o virbr0 -j ACCEPT
        -A VGN-default -s 192.168.122.0/24 -i virbr0 -j ACCEPT
        -A VGN-default -d 192.168.122.0/24 -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
        -A VIRTGATE-FWD -j VGN-default
        COMMIT
        """)

        facts.ufwActive = true
        facts.ufwInstalled = true
        facts.afterInitIntegrated = true
        facts.nftTablesPresent = true
        facts.hooks = [.init(driver: "qemu", path: "/etc/libvirt/hooks/qemu", executable: true, installedAt: 100),
                       .init(driver: "network", path: "/etc/libvirt/hooks/network", executable: true, installedAt: 100)]
        facts.daemons = [.init(name: "libvirtd", startedAt: 200)]
        return facts
    }

    @Test func healthyHostHasNoFindings() {
        #expect(Doctor.diagnose(Self.healthy()) == [])
        var nft = Self.healthy()
        let elements = [NftElement(set: "fwd4any", key: "6 . 2222", value: "192.168.122.10 . 22", comment: "web")]
        nft.desiredElements = ["web": elements]
        nft.nftState = NftState(exists: true, layout: NftLayout.marker(mark: Settings().connectionMark), baseChains: 4, elements: elements)
        #expect(Doctor.diagnose(nft) == [])
        // A table a network's start created: the gateway, no base chains, no forward to hook.
        let gateway = [NftElement(set: "gw4", key: "192.168.122.1", value: nil, comment: NftLayout.gatewayOwner)]
        nft.desiredElements = [NftLayout.gatewayOwner: gateway]
        nft.nftState = NftState(exists: true, layout: NftLayout.marker(mark: Settings().connectionMark), baseChains: 0, elements: gateway)
        #expect(Doctor.diagnose(nft) == [])
    }

    @Test("Forwards in a table without all its base chains are drift: no packet reaches them")
    func unhookedForwardsAreDrift() {
        var facts = Self.healthy()
        let elements = [NftElement(set: "fwd4any", key: "6 . 2222", value: "192.168.122.10 . 22", comment: "web")]
        facts.desiredElements = ["web": elements]
        for count in 0..<NftLayout.baseChains.count {
            facts.nftState = NftState(exists: true, layout: NftLayout.marker(mark: Settings().connectionMark), baseChains: count, elements: elements)
            #expect(Doctor.diagnose(facts).map(\.id) == ["nft-elements-drift"])
        }
    }

    @Test("Each broken state is named", arguments: [
        "ip-forwarding-off", "forward-drop-without-accept", "rules-drift", "jumps-not-first", "libvirt-nftables-under-ufw",
        "mixed-iptables-variants", "hook-missing-qemu", "hook-not-executable-network", "hook-newer-than-daemon-qemu",
        "ufw-after-init-missing", "nft-elements-drift", "nft-forward-drop-elsewhere", "forward-hides-host-socket",
    ])
    func brokenStates(id: String) {
        var facts = Self.healthy()
        switch id {
        case "ip-forwarding-off": facts.ipForwarding = false
        case "forward-drop-without-accept", "rules-drift":
            // An admin flushed virtgate's chains.
            facts.snapshot = IptablesSnapshot(parsing: "*filter\n:FORWARD DROP [0:0]\n:ufw-before-forward - [0:0]\n-A FORWARD -j ufw-before-forward\nCOMMIT\n")
        case "jumps-not-first":
            facts.snapshot!.tables[.filter]!.rules["FORWARD"]!.insert("-A FORWARD -j LIBVIRT_FWI", at: 0)
        case "libvirt-nftables-under-ufw": facts.libvirtNftTable = true
        case "mixed-iptables-variants": facts.legacyTablesPresent = true
        case "hook-missing-qemu": facts.hooks[0].path = nil
        case "hook-not-executable-network": facts.hooks[1].executable = false
        case "hook-newer-than-daemon-qemu": facts.hooks[0].installedAt = 300
        case "ufw-after-init-missing": facts.afterInitIntegrated = false
        case "nft-elements-drift":
            // The nft backend remembers a guest with a forward; an admin flushed the ruleset.
            facts.desiredElements = ["web": [NftElement(set: "fwd4any", key: "6 . 2222", value: "192.168.122.10 . 22", comment: "web")]]
            facts.nftState = NftState()
        case "nft-forward-drop-elsewhere":
            facts.foreignForwardDrops = try! NftForeignChains.forwardDrops(json: """
            {"nftables": [{"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "type": "filter", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "firewall", "name": "fwd", "type": "filter", "hook": "forward", "policy": "drop"}},
            {"chain": {"family": "inet", "table": "other", "name": "fwd", "type": "filter", "hook": "forward", "policy": "accept"}}]}
            """)
            #expect(facts.foreignForwardDrops == ["inet firewall fwd"])
        case "forward-hides-host-socket":
            facts.hiddenSockets = [#"guest "web" tcp 2222 hides tcp 0.0.0.0:2222"#]
        default: Issue.record("unknown case")
        }
        let findings = Doctor.diagnose(facts)
        #expect(findings.contains { $0.id == id }, "got \(findings.map(\.id))")
        for finding in findings {
            #expect(!finding.problem.isEmpty && !finding.fix.isEmpty)
        }
    }
}
