import Testing
@testable import VirtGateCore

@Suite("iptables transactions against a snapshot")
struct IptablesTransactionTests {
    static let network = NetworkDefinition(
        name: "default", bridge: "virbr0", mode: .nat,
        subnets: [.init(gateway: IPAddress("192.168.122.1")!, network: IPNetwork(parsing: "192.168.122.0/24")!)],
        reservations: [MACAddress("52:54:00:00:00:01")!: IPAddress("192.168.122.10")!,
                       MACAddress("52:54:00:00:00:02")!: IPAddress("192.168.122.11")!])

    static func guestChains(_ name: String, mac macText: String, port: UInt16) -> [OwnedChain] {
        var spec = ForwardSpec(hostPorts: PortRange(port, port), guestPorts: PortRange(22, 22))
        spec.position = 1
        let guest = GuestDefinition(name: name, interfaces: [GuestInterface(mac: MACAddress(macText)!, network: "default",
                                                                            bridge: "virbr0", tap: nil)],
                                    forwards: [spec], problems: [])
        return IptablesRules.chains(for: Planner.plan(guest: guest, addresses: MemoryAddressBook(networks: [network])).plan)
    }

    static var networkChains: [OwnedChain] {
        IptablesRules.chains(for: Planner.plan(network: network, settings: PlannerSettings()))
    }

    /// What the kernel would hold after applying `desired` to an empty ruleset with foreign rules.
    static func kernel(_ desired: DesiredChains, foreign: [IptablesTable: [String]] = [:]) -> IptablesSnapshot {
        var snapshot = IptablesSnapshot()
        for family in IPFamily.allCases {
            var text = ""
            for table in IptablesTable.tables(of: family) {
                let chains = IptablesTransaction.fullChains(desired, table: table)
                text += "*\(table.name)\n"
                let builtins = table.name == "nat" ? ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] : ["INPUT", "FORWARD", "OUTPUT"]
                for chain in builtins { text += ":\(chain) ACCEPT [0:0]\n" }
                for chain in chains.keys.sorted() { text += ":\(chain) - [0:0]\n" }
                for top in TopChain.allCases where top.lives(in: table) && chains[top.rawValue] != nil {
                    for jump in top.builtinJumps(family) { text += "-A \(jump.chain) \(jump.spec)\n" }
                }
                for line in foreign[table] ?? [] { text += line + "\n" }
                for chain in chains.keys.sorted() { for rule in chains[chain]! { text += rule + "\n" } }
                text += "COMMIT\n"
            }
            snapshot.add(parsing: text, family: family)
        }
        return snapshot
    }

    @Test func applyingTheSameStateIsANoOp() {
        var desired = IptablesTransaction.desired([:], replacing: .network("default"), with: Self.networkChains)
        desired = IptablesTransaction.desired(desired, replacing: .guest("web"), with: Self.guestChains("web", mac: "52:54:00:00:00:01", port: 2222))
        #expect(IptablesTransaction.render(from: Self.kernel(desired), to: desired) == "")
    }

    @Test("The result depends on the set of owners, not on the order of events")
    func orderIndependence() {
        let web = Self.guestChains("web", mac: "52:54:00:00:00:01", port: 2222)
        let db = Self.guestChains("db", mac: "52:54:00:00:00:02", port: 2223)
        var a = IptablesTransaction.desired([:], replacing: .guest("web"), with: web)
        a = IptablesTransaction.desired(a, replacing: .network("default"), with: Self.networkChains)
        a = IptablesTransaction.desired(a, replacing: .guest("db"), with: db)
        var b = IptablesTransaction.desired([:], replacing: .guest("db"), with: db)
        b = IptablesTransaction.desired(b, replacing: .network("default"), with: Self.networkChains)
        b = IptablesTransaction.desired(b, replacing: .guest("web"), with: web)
        #expect(a == b)
        #expect(IptablesTransaction.render(from: IptablesSnapshot(), to: a) == IptablesTransaction.render(from: IptablesSnapshot(), to: b))
    }

    @Test func displacedJumpIsMovedBackToTheTop() {
        let desired = IptablesTransaction.desired([:], replacing: .network("default"), with: Self.networkChains)
        var kernel = Self.kernel(desired)
        // libvirt or an admin inserted a rule above ours.
        kernel.tables[.filter]!.rules["FORWARD"]!.insert("-A FORWARD -j LIBVIRT_FWX", at: 0)
        let text = IptablesTransaction.render(from: kernel, to: desired)
        #expect(text == "*filter\n-D FORWARD -j VIRTGATE-FWD\n-I FORWARD 1 -j VIRTGATE-FWD\nCOMMIT\n")
    }

    @Test func duplicatedJumpsAreCollapsed() {
        let desired = IptablesTransaction.desired([:], replacing: .network("default"), with: Self.networkChains)
        var kernel = Self.kernel(desired)
        kernel.tables[.filter]!.rules["FORWARD"]!.append("-A FORWARD -j VIRTGATE-FWD")
        let text = IptablesTransaction.render(from: kernel, to: desired)
        #expect(text == "*filter\n-D FORWARD -j VIRTGATE-FWD\n-D FORWARD -j VIRTGATE-FWD\n-I FORWARD 1 -j VIRTGATE-FWD\nCOMMIT\n")
    }

    @Test func missingJumpIsRestored() {
        let desired = IptablesTransaction.desired([:], replacing: .network("default"), with: Self.networkChains)
        var kernel = Self.kernel(desired)
        kernel.tables[.filter]!.rules["FORWARD"] = ["-A FORWARD -j ufw-before-forward"]
        #expect(IptablesTransaction.render(from: kernel, to: desired) == "*filter\n-I FORWARD 1 -j VIRTGATE-FWD\nCOMMIT\n")
    }

    @Test("Removing the last owner removes dispatch chains and jumps, nothing else")
    func removingEverything() {
        var desired = IptablesTransaction.desired([:], replacing: .network("default"), with: Self.networkChains)
        desired = IptablesTransaction.desired(desired, replacing: .guest("web"), with: Self.guestChains("web", mac: "52:54:00:00:00:01", port: 2222))
        let kernel = Self.kernel(desired, foreign: [.filter: ["-A FORWARD -j LIBVIRT_FWX"]])
        var after = IptablesTransaction.desired(kernel.ownerChains, replacing: .guest("web"), with: [])
        after = IptablesTransaction.desired(after, replacing: .network("default"), with: [])
        // An IPv4-only network has no IPv6 rules: nothing to remove there.
        #expect(IptablesTransaction.render(from: kernel, to: after, family: .v6) == "")
        let text = IptablesTransaction.render(from: kernel, to: after, family: .v4)
        #expect(text == """
        *nat
        :VGD-web - [0:0]
        :VGS-web - [0:0]
        :VIRTGATE-DNAT - [0:0]
        :VIRTGATE-POST - [0:0]
        -D PREROUTING -m addrtype --dst-type LOCAL -j VIRTGATE-DNAT
        -D OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j VIRTGATE-DNAT
        -D POSTROUTING -j VIRTGATE-POST
        -X VGD-web
        -X VGS-web
        -X VIRTGATE-DNAT
        -X VIRTGATE-POST
        COMMIT
        *filter
        :VGF-web - [0:0]
        :VGN-default - [0:0]
        :VIRTGATE-FWD - [0:0]
        -D FORWARD -j VIRTGATE-FWD
        -X VGF-web
        -X VGN-default
        -X VIRTGATE-FWD
        COMMIT

        """)
        #expect(!text.contains("LIBVIRT"))
    }

    @Test("Removing one guest rewrites the dispatch chain and keeps the others")
    func removingOneGuest() {
        var desired = IptablesTransaction.desired([:], replacing: .guest("web"), with: Self.guestChains("web", mac: "52:54:00:00:00:01", port: 2222))
        desired = IptablesTransaction.desired(desired, replacing: .guest("db"), with: Self.guestChains("db", mac: "52:54:00:00:00:02", port: 2223))
        let kernel = Self.kernel(desired)
        let after = IptablesTransaction.desired(kernel.ownerChains, replacing: .guest("web"), with: [])
        let text = IptablesTransaction.render(from: kernel, to: after)
        #expect(text.contains("-X VGD-web\n") && text.contains("-X VGF-web\n") && text.contains("-X VGS-web\n"))
        #expect(text.contains("-A VIRTGATE-DNAT -j VGD-db\n"))
        #expect(!text.contains("-X VGD-db") && !text.contains("PREROUTING"))
        // Applying it yields exactly the db-only state.
        #expect(IptablesTransaction.render(from: Self.kernel(after), to: after) == "")
    }

    @Test func removingAnUnknownOwnerChangesNothing() {
        let desired = IptablesTransaction.desired([:], replacing: .network("default"), with: Self.networkChains)
        let kernel = Self.kernel(desired)
        #expect(IptablesTransaction.render(from: kernel, to: IptablesTransaction.desired(kernel.ownerChains, replacing: .guest("ghost"), with: [])) == "")
    }

    @Test func snapshotParsing() {
        let text = """
        # Generated by iptables-save v1.8.9 (nf_tables)
        *filter
        :INPUT ACCEPT [0:0]
        :FORWARD DROP [12:720]
        :VIRTGATE-FWD - [0:0]
        :ufw-before-forward - [0:0]
        -A FORWARD -j VIRTGATE-FWD
        -A FORWARD -m comment --comment "x -j VGN-fake" -j ufw-before-forward
        COMMIT
        *mangle
        :PREROUTING ACCEPT [0:0]
        COMMIT
        """
        let snapshot = IptablesSnapshot(parsing: text)
        #expect(snapshot.tables.keys.sorted() == [.filter])
        #expect(snapshot.tables[.filter]!.chains == ["INPUT", "FORWARD", "VIRTGATE-FWD", "ufw-before-forward"])
        #expect(IptablesSnapshot.target(of: snapshot.tables[.filter]!.rules["FORWARD"]![1]) == "ufw-before-forward")
        #expect(snapshot.ownerChains.isEmpty)
    }
}
