import Testing
@testable import VirtGateCore

@Suite("Conflicts between guests")
struct ConflictTests {
    static let network = NetworkDefinition(
        name: "default", bridge: "virbr0", mode: .nat,
        subnets: [.init(gateway: IPAddress("192.168.122.1")!, network: IPNetwork(parsing: "192.168.122.0/24")!)],
        reservations: [MACAddress("52:54:00:00:00:01")!: IPAddress("192.168.122.10")!,
                       MACAddress("52:54:00:00:00:02")!: IPAddress("192.168.122.11")!])

    static func guest(_ name: String, mac: String, _ forwards: [String]) -> GuestDefinition {
        let specs = forwards.enumerated().map { index, text in
            var spec = try! ForwardMetadata.parseShorthand(text, guest: name).get()
            spec.position = index + 1
            return spec
        }
        return GuestDefinition(name: name, interfaces: [GuestInterface(mac: MACAddress(mac)!, network: "default",
                                                                       bridge: "virbr0", tap: nil)],
                               forwards: specs, problems: [])
    }

    @Test func secondGuestIsRefusedWithBothNamed() {
        let book = MemoryAddressBook(networks: [Self.network])
        let web = Planner.plan(guest: Self.guest("web", mac: "52:54:00:00:00:01", ["8080:80", "2222:22"]), addresses: book)
        let db = Planner.plan(guest: Self.guest("db", mac: "52:54:00:00:00:02", ["8080:8080", "5432"]), addresses: book,
                              taken: web.claims)
        #expect(db.problems.map(\.description) == [
            #"guest "db": forward #1 host-port="8080": conflicts with guest "web", which holds tcp 8080"#,
        ])
        #expect(db.claims.map(\.summary) == ["tcp 5432"])
        // A guest never conflicts with itself (a re-assert of the holder).
        let again = Planner.plan(guest: Self.guest("web", mac: "52:54:00:00:00:01", ["8080:80"]), addresses: book, taken: web.claims)
        #expect(again.problems.isEmpty)
    }

    @Test("Claims are read back from the kernel's DNAT chains")
    func claimsFromKernel() {
        let book = MemoryAddressBook(networks: [Self.network])
        let spec = ["8080:80", "198.51.100.10:53/udp", "5000-5009:6000-6009"]
        var web = Self.guest("web", mac: "52:54:00:00:00:01", spec)
        web.forwards[2].sources = [IPNetwork(parsing: "203.0.113.0/24")!]
        let plan = Planner.plan(guest: web, addresses: book)
        let desired = IptablesTransaction.desired([:], replacing: plan.plan.owner, with: IptablesRules.chains(for: plan.plan))
        var text = "*nat\n"
        for (chain, rules) in IptablesTransaction.fullChains(desired, table: .nat) {
            text += ":\(chain) - [0:0]\n" + rules.map { $0 + "\n" }.joined()
        }
        let claims = IptablesSnapshot(parsing: text + "COMMIT\n").forwardClaims(names: ["web": "web"])
        #expect(Set(claims) == Set(plan.claims))
        #expect(claims.count == 3)
    }

    @Test("The claim index finds exactly the overlapping claims of other guests, narrow or wide")
    func claimIndex() {
        func claim(_ guest: String, _ family: IPFamily, _ lower: UInt16, _ upper: UInt16, proto: TransportProtocol = .tcp,
                   host: String? = nil) -> ForwardClaim {
            ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: host.map { IPAddress($0)! },
                         hostPorts: PortRange(lower, upper), sources: [])
        }
        let index = ClaimIndex([claim("a", .v4, 8080, 8080), claim("b", .v4, 1000, 60000), claim("c", .v6, 443, 443),
                                claim("d", .v4, 53, 53, proto: .udp), claim("e", .v4, 9000, 9000, host: "198.51.100.10")])
        #expect(index.first(overlapping: claim("x", .v4, 8080, 8080))?.guest == "a")
        #expect(index.first(overlapping: claim("x", .v4, 80, 80)) == nil)
        #expect(index.first(overlapping: claim("x", .v4, 7000, 7000))?.guest == "b")   // inside the wide range
        #expect(index.first(overlapping: claim("x", .v4, 443, 443)) == nil)            // c is IPv6 only
        #expect(index.first(overlapping: claim("x", .v6, 400, 500))?.guest == "c")
        #expect(index.first(overlapping: claim("x", .v4, 53, 53)) == nil)              // d is udp
        #expect(index.first(overlapping: claim("x", .v4, 53, 53, proto: .udp))?.guest == "d")
        #expect(index.first(overlapping: claim("b", .v4, 7000, 7000)) == nil)          // a guest never conflicts with itself
        // different host addresses never compete; a claim on any address competes with all of them
        #expect(index.first(overlapping: claim("x", .v4, 9000, 9000, host: "198.51.100.11"))?.guest == "b")
        #expect(ClaimIndex([claim("e", .v4, 9000, 9000, host: "198.51.100.10")])
            .first(overlapping: claim("x", .v4, 9000, 9000, host: "198.51.100.11")) == nil)
        #expect(ClaimIndex([claim("e", .v4, 9000, 9000, host: "198.51.100.10")])
            .first(overlapping: claim("x", .v4, 9000, 9000))?.guest == "e")
        // Several claims on one port (other host addresses, protocols, families share the key or
        // not): the first indexed that competes is named, skipping the asker's own.
        let shared = ClaimIndex([claim("f", .v4, 7000, 7000, host: "198.51.100.10"), claim("g", .v4, 7000, 7000, host: "198.51.100.11"),
                                 claim("h", .v4, 7000, 7001), claim("i", .v6, 7000, 7000), claim("j", .v4, 7000, 7000, proto: .udp)])
        #expect(shared.first(overlapping: claim("x", .v4, 7000, 7000))?.guest == "f")
        #expect(shared.first(overlapping: claim("f", .v4, 7000, 7000))?.guest == "g")
        #expect(shared.first(overlapping: claim("x", .v4, 7000, 7000, host: "198.51.100.11"))?.guest == "g")
        #expect(shared.first(overlapping: claim("x", .v4, 7000, 7000, host: "198.51.100.12"))?.guest == "h")
        #expect(shared.first(overlapping: claim("x", .v4, 7001, 7001, host: "198.51.100.10"))?.guest == "h")
        #expect(shared.first(overlapping: claim("x", .v6, 6990, 7010))?.guest == "i")
        #expect(shared.first(overlapping: claim("x", .v4, 7000, 7000, proto: .udp))?.guest == "j")
        #expect(shared.first(overlapping: claim("x", .v4, 7000, 7000, proto: .sctp)) == nil)
    }
}
