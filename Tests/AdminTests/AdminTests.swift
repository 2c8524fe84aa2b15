import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif
import Libvirt
import Testing
@testable import VirtGateAdmin
@testable import VirtGateCore

/// A fresh in-memory libvirt per connection, from our own state file (networks with reservations,
/// guests with and without metadata, one shut off).
func testConnection() throws -> LibvirtConnection {
    let path = URL(filePath: #filePath).deletingLastPathComponent().appending(path: "Fixtures/test-node.xml").path
    return try LibvirtConnection(uri: "test://\(path)")
}

@Suite("Admin logic on libvirt's test:/// driver")
struct AdminTests {
    @Test func stateIsReadThroughTheAPI() throws {
        let state = try LibvirtState.load(try testConnection())
        #expect(state.input.networks.map(\.name).sorted() == ["default", "isolated"])
        #expect(state.input.guests.map(\.name).sorted() == ["db", "web"])
        #expect(state.problems.isEmpty)
        let web = try #require(state.input.guests.first { $0.name == "web" })
        #expect(web.forwards.map(\.summary) == ["tcp 2222 -> 22"])
        // The test driver has no network leases; the guest's own lease addresses fill in.
        #expect(state.input.leases["virbr0"]?[MACAddress("52:54:00:aa:00:01")!] == [IPAddress("192.168.122.101")!])
    }

    /// The engine's sync of `state` against `kernel` (by default an empty one), as `virtgate sync` plans it.
    static func sync(_ state: LibvirtState, kernel: KernelState = KernelState(iptables: IptablesSnapshot())) -> Firewall.Preview {
        var input = EngineInput.everything(state.input)
        input.names = state.chainNames
        return Firewall.preview(input, backend: IptablesChainBackend(), state: kernel, mark: 0x0020_0000)
    }

    @Test func syncPlansEveryRunningGuestAndActiveNetwork() throws {
        let state = try LibvirtState.load(try testConnection())
        let desired = try #require(Self.sync(state).desired.chains)
        // The reservation wins over the lease.
        // Traffic to the networks' own addresses (guests' DNS) skips the forward on any address.
        #expect(desired[.nat]?["VGD-web"] == ["-A VGD-web -d 10.10.0.1/32 -j RETURN", "-A VGD-web -d 192.168.122.1/32 -j RETURN",
                                              "-A VGD-web -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.10:22"])
        #expect(desired[.filter]?.keys.sorted() == ["VGF-web", "VGN-default", "VGN-isolated"])
        // db has no forwards: no guest chains.
        #expect(desired[.nat]?["VGD-db"] == nil)
    }

    @Test("Sync equals the sequence of hook events over the same state")
    func syncEqualsHookSequence() throws {
        let state = try LibvirtState.load(try testConnection())
        let book = SyncAddressBook(input: state.input)
        let backend = IptablesChainBackend()
        // Each event planned by the engine against what the previous ones left in the "kernel".
        var kernel = IptablesSnapshot()
        func event(_ input: EngineInput) {
            var input = input
            input.gateways = state.input.networks.flatMap { $0.subnets.map(\.gateway) }
            let desired = Firewall.preview(input, backend: backend, state: KernelState(iptables: kernel), mark: 0x0020_0000).desired
            kernel = IptablesSnapshot(chains: desired.chains ?? [:])
        }
        for network in state.input.networks { event(EngineInput(networks: [network], addresses: book)) }
        for guest in state.input.guests.reversed() {
            event(.guest(guest, addresses: book, assertNetwork: { _ in true }))
        }
        #expect(Self.sync(state).desired.chains?.filter { !$0.value.isEmpty } == kernel.ownerChains)
    }

    @Test func forwardAddWritesMetadataLiveAndConfig() throws {
        let connection = try testConnection()
        let editor = ForwardEditor(connection: connection)
        let spec = try ForwardMetadata.parseShorthand("8080:80/tcp", sources: ["203.0.113.0/24"], guest: "web").get()
        let updated = try editor.add(spec, to: "web", others: [])
        #expect(updated.map(\.summary) == ["tcp 2222 -> 22", "tcp 8080 -> 80"])
        let web = try connection.domain(named: "web")
        for inactive in [false, true] {
            let element = try #require(try web.metadata(namespaceURI: LibvirtXML.metadataNamespace, inactive: inactive))
            let back = try ForwardMetadata.forwards(fromElement: element, guest: "web")
            #expect(back.forwards.map(\.summary) == ["tcp 2222 -> 22", "tcp 8080 -> 80"])
            #expect(back.forwards[1].sources.map(\.description) == ["203.0.113.0/24"])
        }
        // The live XML, which hooks and sync read, carries it too.
        let guest = try LibvirtXML.guest(fromXML: try web.xml())
        #expect(guest.forwards.count == 2)
    }

    @Test func forwardAddToAGuestThatIsShutOff() throws {
        let connection = try testConnection()
        let spec = try ForwardMetadata.parseShorthand("5432", guest: "parked").get()
        _ = try ForwardEditor(connection: connection).add(spec, to: "parked", others: [])
        let listing = try ForwardEditor(connection: connection).list(guest: "parked")
        #expect(listing.first?.running == false)
        #expect(listing.first?.forwards.map(\.summary) == ["tcp 5432 -> 5432"])
    }

    @Test("Conflicts and overlaps are refused, naming both, and nothing is written")
    func refusals() throws {
        let connection = try testConnection()
        let state = try LibvirtState.load(connection)
        let editor = ForwardEditor(connection: connection)
        let taken = try ForwardMetadata.parseShorthand("2222/tcp", guest: "db").get()
        #expect {
            _ = try editor.add(taken, to: "db", others: state.claims(except: "db"))
        } throws: { error in
            "\(error)".contains(#"guest "db""#) && "\(error)".contains(#"guest "web""#) && "\(error)".contains("nothing written")
        }
        #expect(try connection.domain(named: "db").metadata(namespaceURI: LibvirtXML.metadataNamespace) == nil)

        let overlap = try ForwardMetadata.parseShorthand("2000-2300:3000-3300", guest: "web").get()
        #expect(throws: VirtGateError.self) { _ = try editor.add(overlap, to: "web", others: []) }
        #expect(try editor.list(guest: "web").first?.forwards.count == 1)
    }

    @Test func forwardRemove() throws {
        let connection = try testConnection()
        let editor = ForwardEditor(connection: connection)
        let spec = try ForwardMetadata.parseShorthand("2222", guest: "web").get()
        #expect(try editor.remove(spec, from: "web").isEmpty)
        #expect(try connection.domain(named: "web").metadata(namespaceURI: LibvirtXML.metadataNamespace) == nil)
        #expect(throws: VirtGateError.self) { _ = try editor.remove(spec, from: "web") }
    }

    @Test func invalidExistingMetadataIsNeverOverwritten() throws {
        let connection = try testConnection()
        let web = try connection.domain(named: "web")
        try web.setMetadata("<forwards><forward host-port=\"70000\"/></forwards>", key: "vg", namespaceURI: LibvirtXML.metadataNamespace)
        let spec = try ForwardMetadata.parseShorthand("8080", guest: "web").get()
        #expect(throws: VirtGateError.self) { _ = try ForwardEditor(connection: connection).add(spec, to: "web", others: []) }
        #expect(try web.metadata(namespaceURI: LibvirtXML.metadataNamespace)?.contains("70000") == true)
    }

    @Test func unknownGuestIsAnError() throws {
        let spec = try ForwardMetadata.parseShorthand("8080", guest: "nope").get()
        #expect(throws: LibvirtError.self) { _ = try ForwardEditor(connection: try testConnection()).add(spec, to: "nope", others: []) }
    }

    @Test func statusOfAFreshHostShowsMissingRules() throws {
        let state = try LibvirtState.load(try testConnection())
        let preview = Self.sync(state)
        let empty = StatusReport.build(plan: preview.plan, desired: preview.desired, snapshot: IptablesSnapshot(),
                                       backend: "test", listening: [HostSocket(proto: .tcp, address: IPAddress("0.0.0.0")!, port: 2222)])
        #expect(empty.networks.map(\.rules) == ["missing", "missing"])
        #expect(empty.guests.first?.forwards.first?.state == "drift")
        #expect(empty.guests.first?.forwards.first?.warnings.count == 1)
        #expect(empty.jumpsInPlace == false, "sync wants jumps the kernel lacks")
    }

    /// Guests are fetched in order and parsed in batches on other threads: the state must be what
    /// parsing each guest's XML in turn gives, in libvirt's order, with an unusable guest left out
    /// and named. 40 guests span full batches and a partial one.
    @Test func guestsParsedInBatchesKeepLibvirtsOrder() throws {
        var domains = ""
        for index in 0..<40 {
            let bridge = index == 17 ? "br:bad" : "vgtbr0"
            let forwards = (0..<(index % 4)).map { "<vg:forward host-port='\(20000 + index * 10 + $0)' guest-port='\(80 + $0)'/>" }
            domains += """
                <domain type="test"><name>g\(index)</name><memory>131072</memory><os><type>hvm</type></os>
                <metadata><vg:forwards xmlns:vg="urn:virtgate:forwards:1">\(forwards.joined())</vg:forwards></metadata>
                <devices><interface type="bridge"><mac address="52:54:00:ee:00:\(index + 10)"/>
                <source bridge="\(bridge)"/></interface></devices></domain>
                """
        }
        let path = FileManager.default.temporaryDirectory.appending(path: "vgt-admin-\(UUID().uuidString)-batches.xml").path
        try Data("<node>\(domains)</node>".utf8).write(to: URL(filePath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        let connection = try LibvirtConnection(uri: "test://\(path)")

        let state = try LibvirtState.load(connection)
        var expected: [GuestDefinition] = []
        var problems: [String] = []
        for domain in try connection.runningDomains() {
            do {
                expected.append(try LibvirtXML.guest(fromXML: try domain.xml(), name: domain.name))
            } catch {
                problems.append("\(error); guest left out")
            }
        }
        #expect(expected.count == 39 && problems.count == 1 && problems[0].contains("g17"))
        let names = { (guests: [GuestDefinition]) in guests.map { $0.name } }
        #expect(names(state.input.guests) == names(expected))
        let forwards = { (guests: [GuestDefinition]) in guests.map { $0.forwards.map { $0.summary } } }
        #expect(forwards(state.input.guests) == forwards(expected))
        let interfaces = { (guests: [GuestDefinition]) in guests.map { $0.interfaces } }
        #expect(interfaces(state.input.guests) == interfaces(expected))
        #expect(state.problems == problems)
        #expect(Set(state.guestXML.keys) == Set(names(expected)))
    }

    /// After a sync, what virtgate remembers is libvirt's state: differing or missing XML written,
    /// guests no longer running forgotten, files that already match left as they are.
    @Test func syncBringsWhatIsRememberedToLibvirtsState() throws {
        let state = try LibvirtState.load(try testConnection())
        let directory = FileManager.default.temporaryDirectory.appending(path: "vgt-admin-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = StateStore(directory: directory)
        try store.prepare()
        try store.rememberNetwork("default", xml: try #require(state.networkXML["default"]))
        try store.rememberNetwork("isolated", xml: "<network>older</network>")
        try store.rememberGuest("web", xml: try #require(state.guestXML["web"]))
        try store.rememberGuest("db", xml: "<domain>older</domain>")
        try store.rememberGuest("gone", xml: "<domain>gone</domain>")
        func inode(_ path: String) -> UInt64 {
            var status = stat()
            return stat(directory + "/" + path, &status) == 0 ? UInt64(status.st_ino) : 0
        }
        let unchanged = (inode("networks/default.xml"), inode("guests/web.xml"))

        try RememberedState(comparing: store, with: state).update(store)

        #expect(store.networkXML("isolated") == state.networkXML["isolated"])
        #expect(store.guestXML("db") == state.guestXML["db"])
        #expect(store.guestNames() == ["db", "web"])
        // Files that matched were not rewritten (a rewrite replaces the file: a new inode).
        #expect(inode("networks/default.xml") == unchanged.0 && inode("guests/web.xml") == unchanged.1)
        #expect(unchanged.0 != 0 && unchanged.1 != 0)
    }
}
