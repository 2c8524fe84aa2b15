import Testing
@testable import VirtGateCore

@Suite("Binding forwards to guests")
struct PlannerTests {
    let network = NetworkDefinition(
        name: "default", bridge: "virbr0", mode: .nat,
        subnets: [.init(gateway: ip("192.168.122.1"), network: IPNetwork(parsing: "192.168.122.0/24")!)],
        reservations: [mac("52:54:00:00:00:01"): ip("192.168.122.10")])

    func guest(_ forwards: [ForwardSpec], nics: [GuestInterface]? = nil) -> GuestDefinition {
        GuestDefinition(
            name: "web",
            interfaces: nics ?? [GuestInterface(mac: mac("52:54:00:00:00:01"), network: "default", bridge: "virbr0", tap: "vnet0")],
            forwards: forwards.enumerated().map { var f = $0.element; f.position = $0.offset + 1; return f },
            problems: [])
    }

    func forward(_ host: String, _ guestPorts: String? = nil) -> ForwardSpec {
        let hostPorts = try! PortRange.parse(host).get()
        return ForwardSpec(hostPorts: hostPorts, guestPorts: guestPorts.map { try! PortRange.parse($0).get() })
    }

    func boundAddresses(_ plan: GuestPlan) -> [IPAddress] {
        plan.plan.intents.compactMap { if case .dnat(let f) = $0 { f.guestAddress } else { nil } }
    }

    @Test func reservationWins() {
        let plan = Planner.plan(guest: guest([forward("2222", "22")]), addresses: MemoryAddressBook(networks: [network]))
        #expect(boundAddresses(plan) == [ip("192.168.122.10")])
        #expect(plan.networks == ["default"])
        #expect(plan.pending.isEmpty && plan.problems.isEmpty)
        #expect(plan.plan.intents.count == 3)
    }

    @Test func explicitGuestAddressOverridesReservation() {
        var spec = forward("2222", "22")
        spec.guestAddress = ip("192.168.122.77")
        let plan = Planner.plan(guest: guest([spec]), addresses: MemoryAddressBook(networks: [network]))
        #expect(boundAddresses(plan) == [ip("192.168.122.77")])
    }

    @Test func leaseIsUsedWithoutReservation() {
        var net = network
        net.reservations = [:]
        let book = MemoryAddressBook(networks: [net], leases: ["virbr0": [mac("52:54:00:00:00:01"): ip("192.168.122.99")]])
        #expect(boundAddresses(Planner.plan(guest: guest([forward("80")]), addresses: book)) == [ip("192.168.122.99")])
    }

    @Test func noAddressMeansPending() {
        var net = network
        net.reservations = [:]
        let plan = Planner.plan(guest: guest([forward("80")]), addresses: MemoryAddressBook(networks: [net]))
        #expect(plan.plan.intents.isEmpty)
        #expect(plan.pending.count == 1)
        #expect(plan.pending[0].reason.contains("52:54:00:00:00:01"))
    }

    @Test func bridgeComesFromNetworkWhenXMLLacksIt() {
        let nic = GuestInterface(mac: mac("52:54:00:00:00:01"), network: "default", bridge: nil, tap: nil)
        let plan = Planner.plan(guest: guest([forward("80")], nics: [nic]), addresses: MemoryAddressBook(networks: [network]))
        guard case .dnat(let bound) = plan.plan.intents.first else { Issue.record("no dnat"); return }
        #expect(bound.bridge == "virbr0")
    }

    @Test func macSelectsTheInterface() {
        let nics = [
            GuestInterface(mac: mac("52:54:00:00:00:01"), network: "default", bridge: "virbr0", tap: "vnet0"),
            GuestInterface(mac: mac("52:54:00:00:00:02"), network: "default", bridge: "virbr0", tap: "vnet1"),
        ]
        var net = network
        net.reservations[mac("52:54:00:00:00:02")] = ip("192.168.122.20")
        var spec = forward("80")
        spec.mac = mac("52:54:00:00:00:02")
        var unknown = forward("81")
        unknown.mac = mac("52:54:00:00:00:09")
        let plan = Planner.plan(guest: guest([spec, unknown], nics: nics), addresses: MemoryAddressBook(networks: [net]))
        #expect(boundAddresses(plan) == [ip("192.168.122.20")])
        #expect(plan.problems.map(\.field) == ["forward #2 mac"])
    }

    /// Generated guests with several NICs on routed, isolated and no networks, addresses from
    /// reservations, leases or the metadata, forwards on one NIC or another, in either family or
    /// both: each forward binds exactly as it does planned alone (what the planner works out once per
    /// NIC is the NIC's, whichever forward asked first), and the plan's claims are its DNAT intents'
    /// claims, in their order. A failure names the seed and the case.
    @Test func generatedGuestsBindEachForwardAsItBindsAlone() {
        let seed: UInt64 = 0x706C_616E_6E65_72
        var random = SplitMix64(seed: seed)
        func pick(_ n: Int) -> Int { Int(random.next() % UInt64(n)) }
        let v6 = IPNetwork(parsing: "fd00:7::/64")!
        let networks = [
            NetworkDefinition(name: "nat", bridge: "virbr0", mode: .nat,
                              subnets: [.init(gateway: ip("192.168.122.1"), network: IPNetwork(parsing: "192.168.122.0/24")!),
                                        .init(gateway: ip("fd00:7::1"), network: v6)],
                              reservations: [mac("52:54:00:00:00:01"): ip("192.168.122.10")],
                              namedReservations: ["g": ip("fd00:7::10")]),
            NetworkDefinition(name: "routed", bridge: "virbr1", mode: .route,
                              subnets: [.init(gateway: ip("10.9.0.1"), network: IPNetwork(parsing: "10.9.0.0/24")!)],
                              reservations: [mac("52:54:00:00:00:02"): ip("10.9.0.20")]),
            NetworkDefinition(name: "closed", bridge: "virbr2", mode: .isolated, subnets: [], reservations: [:]),
        ]
        let book = MemoryAddressBook(networks: networks, leases: [
            "virbr0": [mac("52:54:00:00:00:03"): ip("192.168.122.30")],
            "virbr1": [mac("52:54:00:00:00:01"): ip("10.9.0.40")],
            "br-plain": [mac("52:54:00:00:00:02"): ip("172.16.0.2"), mac("52:54:00:00:00:03"): ip("172.16.0.3")],
        ])
        let attachments: [(network: String?, bridge: String?)] = [("nat", "virbr0"), ("nat", nil), ("routed", "virbr1"),
                                                                  ("closed", "virbr2"), (nil, "br-plain"), ("gone", nil)]
        for index in 0..<300 {
            let nics = (0..<(1 + pick(3))).map { n -> GuestInterface in
                let at = attachments[pick(attachments.count)]
                return GuestInterface(mac: mac("52:54:00:00:00:0\(n + 1 + pick(2))"), network: at.network, bridge: at.bridge, tap: nil)
            }
            let forwards = (0..<(1 + pick(8))).map { n -> ForwardSpec in
                var spec = forward("\(2000 + n * 10)", pick(2) == 0 ? nil : "\(22 + n)")
                if pick(3) == 0 { spec.mac = nics[pick(nics.count)].mac }
                if pick(5) == 0 { spec.mac = mac("52:54:00:00:00:09") }
                if pick(4) == 0 { spec.hostAddress = ip(pick(2) == 0 ? "198.18.0.1" : "2001:db8::1") }
                if pick(5) == 0 { spec.guestAddress = ip(["192.168.122.77", "10.9.0.99", "fd00:7::77"][pick(3)]) }
                if pick(4) == 0 { spec.sources = [IPNetwork(parsing: pick(2) == 0 ? "203.0.113.0/24" : "2001:db8:5::/48")!] }
                return spec
            }
            let planned = guest(forwards, nics: nics)
            var named = planned
            named.name = "g"
            let plan = Planner.plan(guest: named, addresses: book)
            let dnats = plan.plan.intents.compactMap { if case .dnat(let f) = $0 { f } else { nil } }
            let context = "seed \(seed), case \(index): \(nics) \(forwards)"
            #expect(plan.claims == dnats.map { $0.claim(by: "g") }, "\(context)")
            for (position, spec) in named.forwards.enumerated() {
                var alone = named
                alone.forwards = [spec]
                let single = Planner.plan(guest: alone, addresses: book)
                let together = dnats.filter { $0.position == position + 1 }
                let byItself = single.plan.intents.compactMap { if case .dnat(let f) = $0 { f } else { nil } }
                // Planned with the others, a forward can only lose bindings (to an earlier forward's port).
                #expect(together.allSatisfy { byItself.contains($0) }, "\(context): forward #\(position + 1)")
                if plan.problems.allSatisfy({ $0.field != "forward #\(position + 1) host-port" }) {
                    #expect(together == byItself, "\(context): forward #\(position + 1)")
                    #expect(plan.pending.filter { $0.forward.position == position + 1 }.map(\.reason)
                            == single.pending.map(\.reason), "\(context): forward #\(position + 1)")
                }
            }
        }
    }

    @Test("Overlapping forwards: the first keeps the port", arguments: [
        ("80", "80", true), ("8000-8009", "8005", true), ("8000-8009", "8010", false),
    ])
    func overlaps(first: String, second: String, conflict: Bool) {
        let plan = Planner.plan(guest: guest([forward(first), forward(second)]), addresses: MemoryAddressBook(networks: [network]))
        #expect(plan.problems.count == (conflict ? 1 : 0))
        if conflict { #expect(plan.problems[0].reason == "overlaps forward #1") }
    }

    @Test func differentHostAddressesOrSourcesDoNotOverlap() {
        var a = forward("80"), b = forward("80")
        a.hostAddress = ip("198.51.100.1")
        b.hostAddress = ip("198.51.100.2")
        var c = forward("81"), d = forward("81")
        c.sources = [IPNetwork(parsing: "10.1.0.0/16")!]
        d.sources = [IPNetwork(parsing: "10.2.0.0/16")!]
        var e = forward("81")
        e.sources = [IPNetwork(parsing: "10.1.2.0/24")!]
        let plan = Planner.plan(guest: guest([a, b, c, d, e]), addresses: MemoryAddressBook(networks: [network]))
        #expect(plan.problems.map(\.field) == ["forward #5 host-port"])
    }

    @Test func forwardsOnANonRoutedNetworkAreRefused() {
        var bridged = network
        bridged.mode = .other("bridge")
        let plan = Planner.plan(guest: guest([forward("80")]), addresses: MemoryAddressBook(networks: [bridged]))
        #expect(plan.plan.intents.isEmpty)
        #expect(plan.problems.map(\.field) == ["forward #1 network"])
    }

    @Test func networkIntentsByMode() {
        let settings = PlannerSettings(masqueradeRoutedNetworks: true)
        #expect(Planner.plan(network: network, settings: settings).intents.count == 3)
        var routed = network
        routed.mode = .route
        #expect(Planner.plan(network: routed, settings: settings).intents.count == 4)
        #expect(Planner.plan(network: routed, settings: PlannerSettings()).intents.count == 3)
        var isolated = network
        isolated.mode = .isolated
        #expect(Planner.plan(network: isolated, settings: settings).intents == [.allowIntraBridge(bridge: "virbr0", family: .v4)])
        var bridged = network
        bridged.mode = .other("bridge")
        #expect(Planner.plan(network: bridged, settings: settings).intents.isEmpty)
    }

    @Test("A forward naming no family binds each family the guest has an address in; pending only with none")
    func familiesBindWhereAddressesAre() {
        var dual = network
        dual.subnets.append(.init(gateway: ip("fd00::1"), network: IPNetwork(parsing: "fd00::/64")!))
        dual.namedReservations = ["web": ip("fd00::10")]
        let both = Planner.plan(guest: guest([forward("2222", "22")]), addresses: MemoryAddressBook(networks: [dual]))
        #expect(boundAddresses(both) == [ip("192.168.122.10"), ip("fd00::10")])
        #expect(both.pending.isEmpty)
        // each family's hairpin covers that family's subnet only
        let hairpins = both.plan.intents.compactMap { if case .hairpinMasquerade(let f) = $0 { f.subnets } else { nil } }
        #expect(hairpins == [[IPNetwork(parsing: "192.168.122.0/24")!], [IPNetwork(parsing: "fd00::/64")!]])

        // IPv4 only: no IPv6 address, nothing pending about it
        let v4 = Planner.plan(guest: guest([forward("2222", "22")]), addresses: MemoryAddressBook(networks: [network]))
        #expect(boundAddresses(v4) == [ip("192.168.122.10")] && v4.pending.isEmpty)

        // an IPv6 host address fixes the family: without an IPv6 address it is pending, naming IPv6
        var v6only = forward("443")
        v6only.hostAddress = ip("2001:db8::10")
        let pending = Planner.plan(guest: guest([v6only]), addresses: MemoryAddressBook(networks: [network]))
        #expect(boundAddresses(pending).isEmpty)
        #expect(pending.pending.map(\.reason) == ["no IPv6 address known yet for 52:54:00:00:00:01"])

        // sources of both families split per family
        var mixed = forward("8080", "80")
        mixed.sources = [IPNetwork(parsing: "203.0.113.0/24")!, IPNetwork(parsing: "2001:db8:1::/48")!]
        let split = Planner.plan(guest: guest([mixed]), addresses: MemoryAddressBook(networks: [dual]))
        let sources = split.plan.intents.compactMap { if case .dnat(let f) = $0 { f.sources } else { nil } }
        #expect(sources == [[IPNetwork(parsing: "203.0.113.0/24")!], [IPNetwork(parsing: "2001:db8:1::/48")!]])
    }

    @Test("Mixed-family addresses in one forward are refused, naming the field")
    func mixedFamilies() {
        let problem = ForwardSpec.parse(attributes: ["host-port": "80", "host-address": "198.51.100.1", "guest-address": "fd00::5"],
                                        subject: .guest("web"), position: 1)
        guard case .failure(let error) = problem else { Issue.record("accepted"); return }
        #expect(error.description == #"guest "web": forward #1 guest-address="fd00::5": IPv6 address, but host-address is IPv4"#)
        let source = ForwardSpec.parse(attributes: ["host-port": "80", "host-address": "2001:db8::1", "source": "10.0.0.0/8"],
                                       subject: .guest("web"), position: 2)
        guard case .failure(let sourceError) = source else { Issue.record("accepted"); return }
        #expect(sourceError.field == "forward #2 source")
    }

    @Test("Of several unknown attributes the first in name order is named, whatever the hash order")
    func unknownAttributesInNameOrder() {
        for _ in 0..<20 {
            var attributes = ["host-port": "80", "zz": "1", "mm": "3", "proto": "tcp", "ab": "2", "source": "10.0.0.0/8"]
            // Dictionaries built in another order hash alike but may iterate otherwise.
            attributes["b\(Int.random(in: 0..<1000))"] = "x"
            let result = ForwardSpec.parse(attributes: attributes, subject: .guest("web"), position: 3)
            guard case .failure(let problem) = result else { Issue.record("accepted"); return }
            #expect(problem.field == "forward #3 ab" && problem.value == "2" && problem.reason == "unknown attribute")
        }
    }
}
