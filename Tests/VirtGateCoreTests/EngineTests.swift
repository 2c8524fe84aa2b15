import Testing
@testable import VirtGateCore

/// Shapes that once made the nftables backend's transactions fail in the kernel, or the two
/// backends disagree, planned through the engine as the hook plans them. The kernel's verdict on
/// each lives in `KernelRoundTripTests.engineShapes`; generated cases in `Tests/DifferentialTests`.
@Suite("The engine on shapes the backends once disagreed on")
struct EngineTests {
    static let network = """
        <network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>
          <ip address='192.168.122.1' netmask='255.255.255.0'>
            <dhcp><host mac='52:54:00:aa:00:01' ip='192.168.122.10'/><host mac='52:54:00:aa:00:02' ip='192.168.122.20'/></dhcp>
          </ip>
        </network>
        """

    static func domain(_ name: String, mac: String = "52:54:00:aa:00:01", bridgeNIC: Bool = false, _ forwards: String) -> String {
        let nic = bridgeNIC
            ? "<interface type='bridge'><mac address='\(mac)'/><source bridge='br-lan'/><target dev='vnet9'/></interface>"
            : "<interface type='network'><mac address='\(mac)'/><source network='default' bridge='virbr0'/><target dev='vnet0'/></interface>"
        return """
            <domain type='kvm'><name>\(name)</name><metadata><vg:forwards xmlns:vg="urn:virtgate:forwards:1">\(forwards)</vg:forwards></metadata>
            <devices>\(nic)</devices></domain>
            """
    }

    /// The engine's plan and rendering of these guests (in this order, as successive events would
    /// see each other through `incumbents`) against an empty kernel.
    static func preview(_ domains: [String], backend: any Backend) throws -> Firewall.Preview {
        let network = try LibvirtXML.network(fromXML: Self.network)
        let guests = try domains.map { try LibvirtXML.guest(fromXML: $0) }
        let input = EngineInput(networks: [network], guests: guests, addresses: MemoryAddressBook(networks: [network]))
        return Firewall.preview(input, backend: backend, state: KernelState(iptables: IptablesSnapshot(), nft: NftState()),
                                mark: Settings().connectionMark)
    }

    static let backends: [any Backend] = [IptablesChainBackend(), NftMapBackend(mark: Settings().connectionMark)]

    @Test("Overlapping guest ports within a guest are all planned", arguments: backends.indices)
    func overlappingGuestPorts(backend: Int) throws {
        let preview = try Self.preview([Self.domain("web", """
            <vg:forward host-port="8080" guest-port="80"/><vg:forward host-port="2222" guest-port="22"/>
            <vg:forward host-port="8090-8091" guest-port="80-81"/><vg:forward host-port="8443" guest-port="80" source="192.0.2.0/24"/>
            <vg:forward host-port="9000-9010"/><vg:forward host-port="9100-9110" guest-port="9005-9015"/>
            """)], backend: Self.backends[backend])
        #expect(preview.plan.problems.isEmpty)
        #expect(preview.plan.guests[0].plan.claims.count == 6)
        // No per-forward hairpin element remains whose intervals could overlap.
        #expect(!preview.transaction.nft.contains("hairpin4 {"))
    }

    @Test func allowListsAreNormalised() {
        let list = ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.7/32", "10.0.0.0/8", "192.0.2.0/24"].compactMap(IPNetwork.init(parsing:))
        #expect(IPNetwork.normalizedAllowList(list).map(\.description) == ["10.0.0.0/8", "192.0.2.0/24"])
        let anyone = ["198.51.100.0/24", "0.0.0.0/0"].compactMap(IPNetwork.init(parsing:))
        #expect(IPNetwork.normalizedAllowList(anyone).isEmpty)
    }

    @Test("A prefix-0 source renders as no source at all (iptables-save prints none)")
    func prefixZeroSource() throws {
        let preview = try Self.preview([Self.domain("web", #"<vg:forward host-port="8080" source="0.0.0.0/0"/>"#)],
                                       backend: IptablesChainBackend())
        let dnat = preview.desired.chains?[.nat]?["VGD-web"] ?? []
        #expect(dnat == ["-A VGD-web -p tcp -m tcp --dport 8080 -j DNAT --to-destination 192.168.122.10:8080"])
    }

    @Test("An allow-list clash between guests is a conflict naming both, not a kernel error", arguments: backends.indices)
    func allowListClash(backend: Int) throws {
        let preview = try Self.preview([
            Self.domain("a", #"<vg:forward host-port="7000" source="10.0.0.0/8"/>"#),
            Self.domain("b", mac: "52:54:00:aa:00:02", #"<vg:forward host-port="7000" source="10.1.0.0/16"/><vg:forward host-port="7001"/>"#),
        ], backend: Self.backends[backend])
        let problems = preview.plan.problems.map(\.description)
        #expect(problems.count == 1)
        #expect(problems.first?.contains(#"guest "b""#) == true && problems.first?.contains(#"guest "a""#) == true)
        #expect(preview.plan.guests.map { $0.plan.claims.count } == [1, 1], "b keeps its other forward")
    }

    @Test("A host-address claim and an any-address claim on one port conflict", arguments: backends.indices)
    func hostAddressVersusAny(backend: Int) throws {
        let preview = try Self.preview([
            Self.domain("a", #"<vg:forward host-port="7000"/>"#),
            Self.domain("b", mac: "52:54:00:aa:00:02", #"<vg:forward host-port="7000" host-address="198.51.100.10"/>"#),
        ], backend: Self.backends[backend])
        #expect(preview.plan.problems.count == 1)
    }

    @Test("A guest-address outside the NIC's network is refused on both backends", arguments: backends.indices)
    func guestAddressOutsideNetwork(backend: Int) throws {
        let preview = try Self.preview([Self.domain("web", """
            <vg:forward host-port="8080" guest-address="fd00::10"/><vg:forward host-port="8081" guest-address="10.9.9.9"/>
            <vg:forward host-port="8082"/>
            """)], backend: Self.backends[backend])
        #expect(preview.plan.problems.map(\.field) == ["forward #1 guest-address", "forward #2 guest-address"])
        #expect(preview.plan.guests[0].plan.claims.count == 1)
    }

    @Test("A guest-address must be the guest's: not the host's, not another guest's reservation or lease", arguments: backends.indices)
    func guestAddressOwnership(backend: Int) throws {
        let network = try LibvirtXML.network(fromXML: Self.network)
        var book = MemoryAddressBook(networks: [network])
        book.leases["virbr0"] = [mac("52:54:00:aa:00:09"): ip("192.168.122.99")]
        let guest = try LibvirtXML.guest(fromXML: Self.domain("web", """
            <vg:forward host-port="8080" guest-address="192.168.122.1"/><vg:forward host-port="8081" guest-address="192.168.122.20"/>
            <vg:forward host-port="8082" guest-address="192.168.122.99"/><vg:forward host-port="8083" guest-address="192.168.122.10"/>
            <vg:forward host-port="8084" guest-address="192.168.122.77"/>
            """))
        let preview = Firewall.preview(EngineInput(guests: [guest], addresses: book), backend: Self.backends[backend],
                                       state: KernelState(iptables: IptablesSnapshot(), nft: NftState()), mark: 0x0020_0000)
        let reasons = preview.plan.problems.map(\.reason)
        #expect(reasons == [#"the host's own address on network "default""#,
                            "reserved on network \"default\" for MAC 52:54:00:aa:00:02",
                            "leased on network \"default\" to MAC 52:54:00:aa:00:09"])
        // Its own reservation, and a free address of its network, stay usable.
        #expect(preview.plan.guests[0].plan.claims.map(\.hostPorts.lower) == [8083, 8084])
    }

    @Test("A new forward never hides a host socket; one the guest already holds stays", arguments: backends.indices)
    func hostSockets(backend: Int) throws {
        let network = try LibvirtXML.network(fromXML: Self.network)
        let guest = try LibvirtXML.guest(fromXML: Self.domain("web", """
            <vg:forward host-port="22"/><vg:forward host-port="53" proto="udp" host-address="198.51.100.9"/>
            <vg:forward host-port="8000-8100"/><vg:forward host-port="631"/><vg:forward host-port="9000"/>
            """))
        var input = EngineInput(guests: [guest], addresses: MemoryAddressBook(networks: [network]))
        input.hostSockets = [
            HostSocket(proto: .tcp, address: ip("0.0.0.0"), port: 22),          // sshd on every address
            HostSocket(proto: .udp, address: ip("198.51.100.9"), port: 53),     // a resolver on that address
            HostSocket(proto: .tcp, address: ip("198.51.100.9"), port: 8080),   // inside the range
            HostSocket(proto: .tcp, address: ip("127.0.0.1"), port: 631),       // loopback only: never hidden
        ]
        let empty = KernelState(iptables: IptablesSnapshot(), nft: NftState())
        var preview = Firewall.preview(input, backend: Self.backends[backend], state: empty, mark: 0x0020_0000)
        #expect(preview.plan.problems.map(\.reason) == ["a host process holds tcp 0.0.0.0:22; the forward would hide it",
                                                         "a host process holds udp 198.51.100.9:53; the forward would hide it",
                                                         "a host process holds tcp 198.51.100.9:8080; the forward would hide it"])
        #expect(preview.plan.guests[0].plan.claims.map(\.hostPorts.lower) == [631, 9000])
        // A listener that appeared after the guest took 9000 does not take it away.
        input.hostSockets.append(HostSocket(proto: .tcp, address: ip("::"), port: 9000))
        let held = KernelState(iptables: IptablesSnapshot(chains: preview.desired.chains ?? [:]),
                               nft: NftState(exists: true, layout: nil, elements: Array((preview.desired.elements ?? [:]).values.joined())))
        preview = Firewall.preview(input, backend: Self.backends[backend], state: held, mark: 0x0020_0000)
        #expect(preview.plan.guests[0].plan.claims.map(\.hostPorts.lower) == [631, 9000])
    }

    @Test("HOST_PORTS reaches the planner through the backend the settings choose", arguments: BackendKind.allCases)
    func hostPortsThroughBackend(kind: BackendKind) {
        var settings = Settings()
        settings.backend = kind
        settings.hostPorts = [PortRange(8000, 8999)]
        #expect(Backends.make(settings, nftInstalled: true).plannerSettings.hostPorts == [PortRange(8000, 8999)])
    }

    @Test("HOST_PORTS limits what guests may claim")
    func hostPortsAllowList() throws {
        let network = try LibvirtXML.network(fromXML: Self.network)
        let guest = try LibvirtXML.guest(fromXML: Self.domain("web", #"<vg:forward host-port="8080"/><vg:forward host-port="22"/><vg:forward host-port="8999-9001"/>"#))
        let plan = Engine.plan(EngineInput(guests: [guest], addresses: MemoryAddressBook(networks: [network])), incumbents: [],
                               settings: PlannerSettings(hostPorts: [PortRange(8000, 9000)]))
        #expect(plan.guests[0].plan.claims.map(\.hostPorts.lower) == [8080])
        #expect(plan.problems.count == 2)
    }

    @Test("Planning everything with nft: a guest on a plain host bridge keeps its accept in iptables, one on a libvirt network has no chain")
    func exclusiveNftFilterHalf() throws {
        let network = try LibvirtXML.network(fromXML: Self.network)
        let web = try LibvirtXML.guest(fromXML: Self.domain("web", #"<vg:forward proto="tcp" host-port="8080" guest-port="80"/>"#))
        let lan = try LibvirtXML.guest(fromXML: Self.domain("lan", mac: "52:54:00:aa:00:02", bridgeNIC: true,
            #"<vg:forward proto="tcp" host-port="2222" guest-port="22" guest-address="192.0.2.20"/>"#))
        let input = EngineInput.everything(SyncInput(networks: [network], guests: [web, lan], leases: [:]))
        let preview = Firewall.preview(input, backend: NftMapBackend(mark: 0x0020_0000),
                                       state: KernelState(iptables: IptablesSnapshot(), nft: NftState()), mark: 0x0020_0000)
        let filter = preview.desired.chains?[.filter] ?? [:]
        #expect(filter["VGF-lan"]?.isEmpty == false, "the plain bridge's guest admits its marked forwards itself")
        #expect(filter.keys.contains { $0.hasSuffix("-web") } == false)
        #expect(preview.transaction.iptables[.v4]?.contains("VGF-lan") == true)
    }

    @Test("Each forward binds on its own NIC's network, also when a guest's NICs are on two networks")
    func forwardsOnTwoNetworks() throws {
        let first = try LibvirtXML.network(fromXML: Self.network)
        let second = try LibvirtXML.network(fromXML: """
            <network><name>other</name><forward mode='nat'/><bridge name='virbr1'/>
              <ip address='192.168.100.1' netmask='255.255.255.0'><dhcp><host mac='52:54:00:aa:00:02' ip='192.168.100.20'/></dhcp></ip>
            </network>
            """)
        let guest = try LibvirtXML.guest(fromXML: """
            <domain type='kvm'><name>two</name><metadata><vg:forwards xmlns:vg="urn:virtgate:forwards:1">
              <vg:forward proto="tcp" host-port="8080" guest-port="80" mac="52:54:00:aa:00:01"/>
              <vg:forward proto="tcp" host-port="8081" guest-port="80" mac="52:54:00:aa:00:02"/>
              <vg:forward proto="tcp" host-port="8082" guest-port="80" mac="52:54:00:aa:00:01"/>
            </vg:forwards></metadata><devices>
              <interface type='network'><mac address='52:54:00:aa:00:01'/><source network='default' bridge='virbr0'/></interface>
              <interface type='network'><mac address='52:54:00:aa:00:02'/><source network='other' bridge='virbr1'/></interface>
            </devices></domain>
            """)
        let plan = Engine.plan(EngineInput(networks: [first, second], guests: [guest], addresses: MemoryAddressBook(networks: [first, second])),
                               incumbents: [], settings: PlannerSettings())
        let bound = plan.guests[0].plan.plan.intents.compactMap { if case .dnat(let forward) = $0 { forward } else { nil } }
        #expect(bound.map { "\($0.hostPorts) \($0.guestAddress) \($0.bridge)" }
                == ["8080 192.168.122.10 virbr0", "8081 192.168.100.20 virbr1", "8082 192.168.122.10 virbr0"])
    }

    @Test("Traffic to a network's own address skips forwards on any address, on both backends")
    func gatewaysExempt() throws {
        let network = try LibvirtXML.network(fromXML: Self.network)
        let guest = try LibvirtXML.guest(fromXML: Self.domain("web", """
            <vg:forward proto="udp" host-port="53"/><vg:forward proto="udp" host-port="5353" guest-port="53" host-address="192.168.122.1"/>
            """))
        var input = EngineInput(networks: [network], guests: [guest], addresses: MemoryAddressBook(networks: [network]))
        input.gateways = [ip("10.0.0.1")]
        let empty = KernelState(iptables: IptablesSnapshot(), nft: NftState())
        let iptables = Firewall.preview(input, backend: IptablesChainBackend(), state: empty, mark: 0x0020_0000)
        #expect(iptables.desired.chains?[.nat]?["VGD-web"] == [
            "-A VGD-web -d 192.168.122.1/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 192.168.122.10:53",
            "-A VGD-web -d 10.0.0.1/32 -j RETURN", "-A VGD-web -d 192.168.122.1/32 -j RETURN",
            "-A VGD-web -p udp -m udp --dport 53 -j DNAT --to-destination 192.168.122.10:53",
        ])
        let nft = Firewall.preview(input, backend: NftMapBackend(mark: 0x0020_0000), state: empty, mark: 0x0020_0000)
        #expect(nft.desired.elements?[NftLayout.gatewayOwner]?.map(\.key) == ["10.0.0.1", "192.168.122.1"])
        #expect(nft.transaction.nft.contains("ip daddr @gw4 goto named"))
    }

    @Test func procNetSockets() {
        let tcp = """
              sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
               0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
               1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
               2: 0A00000A:0050 0B00000A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
            """
        #expect(ListeningSockets.parse(tcp, proto: .tcp, family: .v4) == [
            HostSocket(proto: .tcp, address: ip("0.0.0.0"), port: 22), HostSocket(proto: .tcp, address: ip("127.0.0.1"), port: 631),
        ])
        let tcp6 = """
              sl  local_address                         remote_address                        st
               0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0
               1: B80D0120000000000000000010000000:01BB 00000000000000000000000000000000:0000 0A 0
            """
        #expect(ListeningSockets.parse(tcp6, proto: .tcp, family: .v6) == [
            HostSocket(proto: .tcp, address: ip("::1"), port: 8080), HostSocket(proto: .tcp, address: ip("2001:db8::10"), port: 443),
        ])
    }

    @Test("An owner id recorded for another guest is never replaced or removed", arguments: backends.indices)
    func ownerIdCollision(backend: Int) throws {
        let network = try LibvirtXML.network(fromXML: Self.network)
        let book = MemoryAddressBook(networks: [network])
        let owner = try LibvirtXML.guest(fromXML: Self.domain("web", #"<vg:forward host-port="8080"/>"#))
        let empty = KernelState(iptables: IptablesSnapshot(), nft: NftState())
        let held = Firewall.preview(EngineInput(guests: [owner], addresses: book), backend: Self.backends[backend],
                                    state: empty, mark: 0x0020_0000).desired
        let kernel = KernelState(iptables: IptablesSnapshot(chains: held.chains ?? [:]),
                                 nft: NftState(exists: true, layout: nil, elements: Array((held.elements ?? [:]).values.joined())))
        // Pretend another name hashed to web's id: it must neither replace nor remove web's rules.
        let intruder = try LibvirtXML.guest(fromXML: Self.domain("web", #"<vg:forward host-port="9090"/>"#))
        var input = EngineInput(guests: [intruder], addresses: book, names: [ChainNames.id(for: "web"): "someone-else"])
        var preview = Firewall.preview(input, backend: Self.backends[backend], state: kernel, mark: 0x0020_0000)
        #expect(preview.plan.collisions.count == 1 && preview.plan.guests.isEmpty)
        func holderUntouched(_ desired: DesiredState) -> Bool {
            func owned(_ chains: DesiredChains?) -> DesiredChains {
                (chains ?? [:]).mapValues { $0.filter { !$0.value.isEmpty } }.filter { !$0.value.isEmpty }
            }
            return owned(desired.chains) == owned(held.chains)
                && (desired.elements ?? [:]).filter { $0.key != NftLayout.gatewayOwner } == (held.elements ?? [:])
        }
        #expect(holderUntouched(preview.desired), "nothing of the holder's changes")
        input = EngineInput(removed: [.guest("web")], addresses: NoAddresses(), names: [ChainNames.id(for: "web"): "someone-else"])
        preview = Firewall.preview(input, backend: Self.backends[backend], state: kernel, mark: 0x0020_0000)
        #expect(holderUntouched(preview.desired) && preview.plan.collisions.count == 1)
    }

    @Test("A NIC on a plain host bridge gets the mark accept from its guest with nft, and a forward-accept with iptables")
    func plainBridge() throws {
        let domain = Self.domain("lan", bridgeNIC: true, #"<vg:forward host-port="8080" guest-address="203.0.113.5"/>"#)
        let nft = try Self.preview([domain], backend: NftMapBackend(mark: 0x0020_0000))
        #expect(nft.desired.chains?[.filter]?["VGF-lan"] == ["-A VGF-lan -o br-lan -m connmark --mark 0x200000/0x200000 -m conntrack --ctstate DNAT -j ACCEPT"])
        #expect(nft.desired.elements?["lan"]?.count == 1)
        let iptables = try Self.preview([domain], backend: IptablesChainBackend())
        #expect(iptables.desired.chains?[.filter]?["VGF-lan"]?.first?.contains("-o br-lan") == true)
        // Stopping it with nft removes that accept too (the engine reads iptables for it).
        let stop = EngineInput(removed: [.guest("lan")], addresses: NoAddresses(), removesPlainBridgeRules: true)
        #expect(NftMapBackend(mark: 0x0020_0000).reads(for: stop)
                == KernelReads(iptables: true, nft: true, nftScope: NftReadScope(owners: ["lan", NftLayout.gatewayOwner], ports: [:],
                                                                    marker: NftLayout.marker(mark: 0x0020_0000))))
    }

    @Test("A guest event on a libvirt network never reads iptables with nft")
    func nftGuestEventsStayInNft() throws {
        let guest = try LibvirtXML.guest(fromXML: Self.domain("web", #"<vg:forward host-port="8080"/>"#))
        let input = EngineInput(guests: [guest], addresses: NoAddresses())
        // Of the table, only web's own elements, the gateways and others' claims on tcp 8080 are read.
        #expect(NftMapBackend(mark: 0x0020_0000).reads(for: input)
                == KernelReads(iptables: false, nft: true,
                               nftScope: NftReadScope(owners: [ChainNames.id(for: "web"), NftLayout.gatewayOwner], ports: [6: [PortRange(8080, 8080)]],
                                                      marker: NftLayout.marker(mark: 0x0020_0000))))
        #expect(IptablesChainBackend(nftInstalled: true).reads(for: input) == KernelReads(iptables: true, nft: false))
        // sync and reapply replace everything: they read the whole table.
        let everything = EngineInput(guests: [guest], exclusive: true, addresses: NoAddresses())
        #expect(NftMapBackend(mark: 0x0020_0000).reads(for: everything).nftScope == nil)
    }

    @Test("Exit statuses: only refuse stops a guest; reconnect never fails")
    func hookPolicy() {
        let warn = HookPolicy(.warn), refuse = HookPolicy(.refuse)
        for result in [HookPolicy.Result.problems, .failed, .invalidInput] {
            #expect(warn.status(QemuOperation.start, result) == 0)
            #expect(refuse.status(QemuOperation.start, result) == 1)
            #expect(refuse.status(QemuOperation.reconnect, result) == 0)
            #expect(refuse.status(QemuOperation.release, result) == 0)
        }
        #expect(refuse.status(QemuOperation.start, .done) == 0)
        #expect(refuse.status(NetworkOperation.started, .failed) == 1)
        #expect(refuse.status(NetworkOperation.started, .problems) == 0, "a guest's metadata never stops a network")
    }
}
