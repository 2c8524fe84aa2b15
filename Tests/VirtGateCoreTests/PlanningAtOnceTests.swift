import Testing
@testable import VirtGateCore

/// `Engine.plan` plans a sync's many guests on every core and plans again, in order, only a guest
/// whose looked-up claims meet an earlier guest's. On generated guest sets crowded onto a few ports
/// (so that guests conflict with each other, with the kernel's claims and with host sockets), that
/// must give exactly the plans of one guest after another.
@Suite("Many guests planned at once")
struct PlanningAtOnceTests {
    static let network = NetworkDefinition(
        name: "default", bridge: "virbr0", mode: .nat,
        subnets: [.init(gateway: ip("192.168.122.1"), network: IPNetwork(parsing: "192.168.122.0/24")!),
                  .init(gateway: ip("fd00:122::1"), network: IPNetwork(parsing: "fd00:122::/64")!)],
        reservations: Dictionary(uniqueKeysWithValues: (0..<120).map { (guestMAC($0), ip("192.168.122.\(10 + $0)")) }))

    static func guestMAC(_ index: Int) -> MACAddress {
        func octet(_ value: Int) -> String { (value < 16 ? "0" : "") + String(value, radix: 16) }
        return mac("52:54:00:00:\(octet(index / 256)):\(octet(index % 256))")
    }

    /// The same book, but one that says it cannot be read from several threads: planned one guest
    /// after another.
    struct OneThreadBook: AddressBook {
        let base: SyncAddressBook
        func network(named name: String) -> NetworkDefinition? { base.network(named: name) }
        func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? {
            base.leasedAddress(bridge: bridge, mac: mac, family: family)
        }
        func leaseHolder(bridge: String, address: IPAddress) -> MACAddress? { base.leaseHolder(bridge: bridge, address: address) }
    }

    struct Case {
        var input: EngineInput
        var incumbents: [ForwardClaim]
    }

    static func generate(seed: UInt64) -> Case {
        var random = SplitMix64(seed: seed)
        func pick(_ count: Int) -> Int { Int(random.next() % UInt64(count)) }
        let count = Engine.guestsPlannedAtOnce + pick(100)
        var guests: [GuestDefinition] = []
        var leases: [String: [MACAddress: [IPAddress]]] = [:]
        for index in 0..<count {
            let name = "g\(pick(3) == 0 ? "a" : "b")\(index)"
            let mac = guestMAC(index)
            // Reserved (below 120), leased, or with no address at all (its forwards pending).
            if index >= 120, pick(3) != 0 {
                leases["virbr0", default: [:]][mac] = [ip("192.168.122.\(130 + index % 100)"), ip("fd00:122::\(String(index, radix: 16))")]
            }
            var specs: [ForwardSpec] = []
            for position in 0..<pick(6) {
                // A handful of ports, so that guests and forwards of one guest collide often.
                let port = 8000 + pick(24)
                let text: String
                switch pick(8) {
                case 0: text = "\(port)-\(port + pick(4)):\(port)-\(port + 3)"                 // a range, maybe refused
                case 1: text = "9000-\(9000 + 200 + pick(200))"                                 // wide: kept aside in the index
                case 2: text = "198.51.100.\(10 + pick(2)):\(port):\(port)"                     // a host address
                case 3: text = "[2001:db8::10]:\(port)"
                case 4: text = "\(port)/udp"
                default: text = "\(port):\(80 + pick(3))"
                }
                let sources = pick(3) == 0 ? ["203.0.113.\(pick(2) * 128)/25"] : []
                guard case .success(var spec) = ForwardMetadata.parseShorthand(text, sources: sources, guest: name) else { continue }
                spec.position = position + 1
                specs.append(spec)
            }
            guests.append(GuestDefinition(name: name, interfaces: [GuestInterface(mac: mac, network: "default", bridge: "virbr0", tap: nil)],
                                          forwards: specs, problems: []))
        }
        // Claims the kernel holds: some of guests planned here (theirs are replaced), some of guests
        // that are gone (they block, unless the change is exclusive).
        var incumbents: [ForwardClaim] = []
        for _ in 0..<pick(30) {
            let holder = pick(2) == 0 ? guests[pick(guests.count)].name : "gone\(pick(5))"
            let port = UInt16(8000 + pick(24))
            incumbents.append(ForwardClaim(guest: holder, family: pick(4) == 0 ? .v6 : .v4, proto: pick(5) == 0 ? .udp : .tcp,
                                           hostAddress: nil, hostPorts: PortRange(port, port + UInt16(pick(3))), sources: []))
        }
        var input = EngineInput(networks: [network], guests: guests, exclusive: pick(2) == 0,
                                addresses: SyncAddressBook(input: SyncInput(networks: [network], guests: guests, leases: leases)))
        input.hostSockets = [HostSocket(proto: .tcp, address: ip("0.0.0.0"), port: UInt16(8000 + pick(24)))]
        input.gateways = []
        return Case(input: input, incumbents: incumbents)
    }

    @Test("equal to one guest after another, on generated guest sets")
    func sameAsOneAfterAnother() throws {
        let seeds: [UInt64] = (0..<40).map { 0x706C_616E_0000 + $0 }
        var conflictsBetweenGuests = 0
        for seed in seeds {
            let testCase = Self.generate(seed: seed)
            var sequential = testCase.input
            sequential.addresses = OneThreadBook(base: testCase.input.addresses as! SyncAddressBook)
            let atOnce = Engine.plan(testCase.input, incumbents: testCase.incumbents, settings: PlannerSettings())
            let oneByOne = Engine.plan(sequential, incumbents: testCase.incumbents, settings: PlannerSettings())
            #expect(atOnce.guests.map(\.guest.name) == oneByOne.guests.map(\.guest.name), "seed \(seed)")
            // The first guest planned otherwise, by name: a failure stays readable.
            if let differing = zip(atOnce.guests, oneByOne.guests).first(where: { $0.0.plan != $0.1.plan }) {
                Issue.record("""
                    seed \(seed): guest \(differing.0.guest.name) planned otherwise at once:
                    \(differing.0.problems.map(\.description)), \(differing.0.plan.claims.map(\.summary))
                    one after another: \(differing.1.problems.map(\.description)), \(differing.1.plan.claims.map(\.summary))
                    """)
            }
            #expect(atOnce.problems.map(\.description) == oneByOne.problems.map(\.description), "seed \(seed)")
            let planned = Set(testCase.input.guests.map(\.name))
            conflictsBetweenGuests += oneByOne.problems.count { problem in
                planned.contains { problem.reason.contains("conflicts with guest \"\($0)\"") }
            }
        }
        // The generated sets are crowded enough that the second pass has work to do.
        #expect(conflictsBetweenGuests > 100)
    }
}
