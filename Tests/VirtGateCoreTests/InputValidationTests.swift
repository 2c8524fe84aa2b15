import FoundationEssentials
import Synchronization
import Testing
@testable import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

/// Every value is validated as what it is: hook arguments are data, stdin is bytes, interface
/// names are what the kernel takes (and iptables does not widen), host addresses are ones a
/// connection can be addressed to, MACs are ASCII hex, documents carry no DTD, names of any length
/// are remembered, error lines are bounded, and one size cap holds for every input.
@Suite("Input validation: every value as what it is")
struct InputValidationTests {
    static func domain(_ name: String = "web", nic: String? = nil, forwards: String = "") -> String {
        let interface = nic ?? "<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='default' bridge='virbr0'/><target dev='vnet0'/></interface>"
        return """
            <domain type='kvm'><name>\(name)</name><metadata><vg:forwards xmlns:vg="urn:virtgate:forwards:1">\(forwards)</vg:forwards></metadata>
            <devices>\(interface)</devices></domain>
            """
    }

    static func field(of body: () throws -> Void) -> String? {
        do {
            try body()
            return nil
        } catch {
            return (error as? VirtGateError)?.problem?.field ?? "\(error)"
        }
    }

    // MARK: hook arguments are positional

    @Test("virtgate hook: the arguments after the driver are data, never options", arguments: [
        (["qemu", "--help", "start", "begin", "-"], HookDriver.qemu, ["--help", "start", "begin", "-"], false),
        (["qemu", "-h", "start", "begin", "-"], .qemu, ["-h", "start", "begin", "-"], false),
        (["--dry-run", "qemu", "--help", "start", "begin", "-"], .qemu, ["--help", "start", "begin", "-"], true),
        (["network", "--version", "started", "begin", "-"], .network, ["--version", "started", "begin", "-"], false),
        (["qemu", "web", "--dry-run", "begin", "-"], .qemu, ["web", "--dry-run", "begin", "-"], false),
    ])
    func positionalHookArguments(arguments: [String], driver: HookDriver, expected: [String], dryRun: Bool) throws {
        let parsed = try #require(HookCommandLine(afterHook: arguments))
        #expect(parsed.driver == driver)
        #expect(parsed.arguments == expected)
        #expect(parsed.dryRun == dryRun)
        let invocation = try #require(HookInvocation(driver: parsed.driver, arguments: parsed.arguments))
        #expect(invocation.object == expected[0])
    }

    @Test("What is not a hook event is left to the command-line parser (virtgate hook --help)", arguments: [
        ["--help"], ["-h"], [], ["--dry-run"], ["qemu"], ["xen", "web", "start", "begin", "-"],
    ])
    func notAHookEvent(arguments: [String]) {
        #expect(HookCommandLine(afterHook: arguments) == nil)
    }

    @Test("Invoked as …/hooks/qemu, a guest named --help is a guest: its forwards are planned")
    func guestNamedHelp() async throws {
        let harness = Harness()
        defer { harness.cleanUp() }
        #expect(HookDriver.fromInvocationPath("/etc/libvirt/hooks/qemu") == .qemu)
        for name in ["--help", "-h"] {
            let invocation = try #require(HookInvocation(driver: .qemu, arguments: [name, "start", "begin", "-"]))
            let xml = Self.domain(name, forwards: #"<vg:forward host-port="2222" guest-port="22" guest-address="192.168.122.10"/>"#)
            let output = OutputCollector()
            #expect(await harness.handler(dryRun: true, output: output).handle(invocation, input: Array(xml.utf8)) { _ in } == 0)
            #expect(output.value.contains("--dport 2222"), "guest \(name): its forward is rendered")
        }
    }

    // MARK: migrate/restore stdin is bytes

    @Test("migrate and restore hand stdin back byte for byte, also bytes that are not UTF-8", arguments: ["migrate", "restore"])
    func filterIsByteExact(operation: String) async throws {
        let harness = Harness(failingRunner: true)
        defer { harness.cleanUp() }
        var bytes = Array("<domain><name>web</name><description>".utf8)
        bytes += [0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82, 0x80, 0xed, 0xa0, 0x80, 0x00, 0x80]
        bytes += Array("</description></domain>".utf8)
        #expect(String(validating: bytes, as: UTF8.self) == nil, "the input is not UTF-8")
        let collected = Mutex<[UInt8]>([])
        let invocation = HookInvocation(driver: .qemu, arguments: ["web", operation, "begin", "-"])!
        #expect(await harness.handler().handle(invocation, input: bytes) { more in collected.withLock { $0 += more } } == 0)
        #expect(collected.withLock { $0 } == bytes)
        #expect(harness.runner.callCount == 0)
    }

    @Test("A filter input over the cap is not handed back cut off: nothing is printed, libvirt keeps its XML")
    func filterOverCap() async {
        let harness = Harness(failingRunner: true)
        defer { harness.cleanUp() }
        let bytes = [UInt8](repeating: 0x20, count: InputLimits.maximumBytes + 1)
        let printed = Mutex(0)
        let invocation = HookInvocation(driver: .qemu, arguments: ["web", "migrate", "begin", "-"])!
        #expect(await harness.handler().handle(invocation, input: bytes) { more in printed.withLock { $0 += more.count } } == 0)
        #expect(printed.withLock { $0 } == 0)
    }

    // MARK: interface names

    @Test("Interface names as the kernel takes them, and never an iptables wildcard", arguments: [
        ("virbr0", true), ("br-lan", true), ("a+b", true), ("vnet15", true), (String(repeating: "x", count: 15), true),
        ("+", false), ("virbr+", false), ("eth0++", false), (String(repeating: "x", count: 16), false), ("", false),
        ("a/b", false), ("a b", false), ("a:b", false), ("a\tb", false), (".", false), ("..", false), ("bröd", false),
    ])
    func interfaceNames(name: String, valid: Bool) {
        #expect(Names.isValidInterfaceName(name) == valid)
    }

    @Test("A network bridge or a NIC's source bridge or target dev ending in + is refused, naming the field", arguments: [
        ("<network><name>n</name><bridge name='+'/></network>", "bridge name", "+"),
        ("<network><name>n</name><bridge name='virbr+'/></network>", "bridge name", "virbr+"),
    ])
    func wildcardBridges(xml: String, field: String, value: String) {
        #expect {
            _ = try LibvirtXML.network(fromXML: xml)
        } throws: { error in
            guard let problem = (error as? VirtGateError)?.problem else { return false }
            return problem.field == field && problem.value == value && problem.description.hasPrefix(#"network "n": "#)
        }
    }

    @Test("A NIC's source bridge or target dev that iptables would widen is refused", arguments: [
        ("<interface type='bridge'><mac address='52:54:00:aa:00:01'/><source bridge='br+'/></interface>", "interface bridge", "br+"),
        ("<interface type='bridge'><mac address='52:54:00:aa:00:01'/><source bridge='+'/></interface>", "interface bridge", "+"),
        ("<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='default' bridge='virbr0'/><target dev='vnet+'/></interface>",
         "interface target dev", "vnet+"),
        ("<interface type='network'><mac address='52:54:00:aa:00:01'/><source network='default' bridge='virbr0'/><target dev='a very long name'/></interface>",
         "interface target dev", "a very long name"),
    ])
    func wildcardNICs(nic: String, field: String, value: String) {
        #expect {
            _ = try LibvirtXML.guest(fromXML: Self.domain(nic: nic))
        } throws: { error in
            guard let problem = (error as? VirtGateError)?.problem else { return false }
            return problem.field == field && problem.value == value && problem.description.hasPrefix(#"guest "web": "#)
        }
    }

    @Test("The hook refuses a wildcard bridge: no rule is written, exit status by policy")
    func hookRefusesWildcardBridge() async throws {
        for policy in [Settings.InvalidPolicy.warn, .refuse] {
            let harness = Harness()
            defer { harness.cleanUp() }
            let network = HookInvocation(driver: .network, arguments: ["n", "started", "begin", "-"])!
            let xml = "<network><name>n</name><forward mode='nat'/><bridge name='virbr+'/><ip address='10.9.0.1' prefix='24'/></network>"
            let status = await harness.handler(policy: policy).handle(network, input: Array(xml.utf8)) { _ in }
            #expect(status == (policy == .refuse ? 1 : 0))
            #expect(harness.runner.restores.isEmpty && harness.runner.restores6.isEmpty)
        }
    }

    // MARK: host-address

    @Test("A host-address no connection can be addressed to is refused, naming field, value and why", arguments: [
        ("127.0.0.1", "loopback"), ("127.1.2.3", "loopback"), ("::1", "loopback"),
        ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"), ("ff0e::101", "multicast"),
        ("255.255.255.255", "broadcast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
        ("::ffff:198.51.100.10", "IPv4-mapped"),
    ])
    func unusableHostAddresses(address: String, why: String) throws {
        let guest = try LibvirtXML.guest(fromXML: Self.domain(forwards: #"<vg:forward host-port="80" host-address="\#(address)"/>"#))
        #expect(guest.forwards.isEmpty)
        let problem = try #require(guest.problems.first)
        #expect(problem.field == "forward #1 host-address")
        #expect(problem.value == address)
        #expect(problem.reason.contains(why))
        // The command line goes through the same check.
        let shorthand = address.contains(":") ? "[\(address)]:80" : "\(address):80"
        guard case .failure(let failure) = ForwardMetadata.parseShorthand(shorthand, guest: "web") else {
            Issue.record("\(shorthand) was accepted")
            return
        }
        #expect(failure.field == "host-address")
    }

    @Test("Host addresses a connection can reach stay accepted", arguments: [
        "198.51.100.10", "10.0.0.1", "192.168.122.1", "223.255.255.255", "240.0.0.1", "2001:db8::10", "fe80::1", "fd00::1",
    ])
    func usableHostAddresses(address: String) throws {
        let guest = try LibvirtXML.guest(fromXML: Self.domain(forwards: #"<vg:forward host-port="80" host-address="\#(address)"/>"#))
        #expect(guest.problems.isEmpty)
        #expect(guest.forwards.first?.hostAddress == IPAddress(address))
    }

    // MARK: DOCTYPE and entities

    static let entityDomain = """
        <!DOCTYPE domain [<!ENTITY p "22">]>
        <domain><name>web</name><metadata><vg:forwards xmlns:vg="urn:virtgate:forwards:1">
        <vg:forward host-port="80&p;"/></vg:forwards></metadata></domain>
        """

    @Test("A document with a DOCTYPE or entity declaration is refused whole, not read with the entity dropped", arguments: [
        entityDomain,
        "<!DOCTYPE domain><domain><name>web</name></domain>",
        "<!DOCTYPE domain SYSTEM \"domain.dtd\"><domain><name>web</name></domain>",
        "<!DOCTYPE domain [<!ENTITY n \"web\">]><domain><name>&n;</name></domain>",
        "<!DOCTYPE domain [<!ATTLIST forward host-port CDATA \"22\">]><domain><name>web</name></domain>",
        "<domain><name>web</name><metadata><vg:forwards xmlns:vg=\"urn:virtgate:forwards:1\"><vg:forward host-port=\"80&p;\"/></vg:forwards></metadata></domain>",
    ])
    func doctypeRefused(xml: String) {
        #expect {
            _ = try LibvirtXML.guest(fromXML: xml, name: "web")
        } throws: { error in
            guard let problem = (error as? VirtGateError)?.problem else { return false }
            return problem.field == "xml" && problem.description.hasPrefix(#"guest "web": xml="#)
        }
        #expect(throws: VirtGateError.self) { _ = try LibvirtXML.network(fromXML: xml.replacing("domain", with: "network")) }
        #expect(throws: XMLParseError.self) { _ = try XMLTree.parse(xml) }
    }

    @Test("The DOCTYPE refusal says why")
    func doctypeReason() {
        #expect {
            _ = try XMLTree.parse(Self.entityDomain)
        } throws: { error in
            "\(error)".contains("DOCTYPE")
        }
    }

    @Test("Metadata read back through libvirt with a DTD is refused too")
    func doctypeInMetadataElement() {
        let element = "<!DOCTYPE forwards [<!ENTITY p \"22\">]><forwards><forward host-port=\"80&p;\"/></forwards>"
        #expect(throws: VirtGateError.self) { _ = try ForwardMetadata.forwards(fromElement: element, guest: "web") }
    }

    // MARK: long and unusual names in the state directory

    static let longName = String(repeating: "g", count: 255)
    static let oddNames = [
        longName, String(repeating: "ä", count: 127), "guest with spaces", "gäst", "caf\u{E9}", "cafe\u{301}",
        ".hidden", "x.named", "-h", "--help", "a\u{202E}b", "name\\with\\backslashes", String(repeating: "z", count: 129),
    ]

    @Test("Names of any length or text are remembered and listed back by their real names")
    func stateStoreNames() throws {
        let directory = Files.scratch("vgt-in-unit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = StateStore(directory: directory)
        try store.prepare()
        for (index, name) in Self.oddNames.enumerated() {
            try store.rememberGuest(name, xml: "<domain><name>\(index)</name></domain>")
            try store.rememberNetwork(name, xml: "<network>\(index)</network>")
        }
        // "café" and "café" are equal as Swift strings but two names to libvirt: both are kept.
        let expected = Self.oddNames.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        #expect(store.guests().map { Array($0.name.utf8) } == expected.map { Array($0.utf8) })
        #expect(store.networks().count == Self.oddNames.count)
        #expect(Set(store.guestNames().map { Array($0.utf8) }) == Set(Self.oddNames.map { Array($0.utf8) }))
        #expect(Set(store.networkNames().map { Array($0.utf8) }) == Set(Self.oddNames.map { Array($0.utf8) }))
        for (index, name) in Self.oddNames.enumerated() {
            #expect(store.guestXML(name) == "<domain><name>\(index)</name></domain>", "\(name)")
            #expect(store.networkXML(name) == "<network>\(index)</network>")
        }
        for file in try FileManager.default.contentsOfDirectory(atPath: directory + "/guests") {
            #expect(file.utf8.count <= 255)
        }
        for name in Self.oddNames { store.forgetGuest(name) }
        #expect(store.guestNames().isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/guests").isEmpty)
        #expect(store.networks().count == Self.oddNames.count)
        #expect(Set(store.networkNames().map { Array($0.utf8) }) == Set(Self.oddNames.map { Array($0.utf8) }))
    }

    @Test("A state file whose name inside does not match its digest is not taken for another guest")
    func stateStoreNameMismatch() throws {
        let directory = Files.scratch("vgt-in-unit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let store = StateStore(directory: directory)
        try store.prepare()
        let file = directory + "/guests/" + StateStore.fileName(for: Self.longName)
        try Data(Array("someone else\n<domain/>".utf8)).write(to: URL(filePath: file))
        #expect(store.guestXML(Self.longName) == nil)
        #expect(store.guestNames().isEmpty)
    }

    @Test("State file names use SHA-256 (FIPS 180-4 test vectors)")
    func sha256() {
        #expect(StateStore.sha256Hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(StateStore.sha256Hex([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(StateStore.sha256Hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
    }

    @Test("The hook remembers a guest with a 255-byte name, and a stop forgets it")
    func hookRemembersLongName() async throws {
        let harness = Harness()
        defer { harness.cleanUp() }
        for name in [Self.longName, String(repeating: "ö", count: 127)] {
            let xml = Self.domain(name, forwards: #"<vg:forward host-port="2222" guest-address="192.168.122.10"/>"#)
            let start = HookInvocation(driver: .qemu, arguments: [name, "start", "begin", "-"])!
            #expect(await harness.handler().handle(start, input: Array(xml.utf8)) { _ in } == 0)
            #expect(harness.store.guestNames().contains(name))
            #expect(harness.store.guestXML(name) == xml)
            let stop = HookInvocation(driver: .qemu, arguments: [name, "stopped", "end", "-"])!
            #expect(await harness.handler().handle(stop, input: Array(xml.utf8)) { _ in } == 0)
            #expect(!harness.store.guestNames().contains(name))
        }
    }

    // MARK: error lines are bounded

    @Test("A very long element name in bad XML gives one bounded line", arguments: [40_000, 1_000_000])
    func longElementName(length: Int) {
        let name = String(repeating: "a", count: length)
        for xml in ["<domain><\(name)></domain>", "<\(name)><x></\(name)y>", "<domain><name>web</name><\(name) x='1' x='2'/></domain>"] {
            for error in [Self.error { _ = try LibvirtXML.guest(fromXML: xml, name: "web") },
                          Self.error { _ = try LibvirtXML.network(fromXML: xml) },
                          Self.error { _ = try ForwardMetadata.forwards(fromElement: xml, guest: "web") }] {
                let line = "\(error)"
                #expect(line.count <= 1000, "\(line.count) characters")
                #expect(!line.contains("\n"))
                if let problem = (error as? VirtGateError)?.problem { #expect(problem.description.count <= 1000) }
            }
        }
    }

    @Test("An input problem is one bounded line whatever its parts")
    func problemLinesAreCapped() throws {
        let long = String(repeating: "x", count: 50_000)
        let problem = InputProblem(.guest(long), field: long, value: long, reason: long + "\n" + long)
        #expect(problem.description.count <= InputProblem.maximumLength + 1)
        // The attribute name of an unknown attribute is part of the field: bounded too.
        let attribute = String(repeating: "a", count: 40_000)
        let guest = try LibvirtXML.guest(fromXML: Self.domain(forwards: #"<vg:forward host-port="80" \#(attribute)="1"/>"#))
        #expect(guest.problems.first.map { "\($0); forward skipped".count <= 1000 } == true)
        #expect(!problem.description.contains("\n"))
    }

    static func error(_ body: () throws -> Void) -> any Error {
        do {
            try body()
        } catch {
            return error
        }
        Issue.record("no error thrown")
        return VirtGateError(.input, "none")
    }

    // MARK: MAC addresses

    @Test("MACs only as ASCII hex xx:xx:xx:xx:xx:xx", arguments: [
        ("52:54:00:aa:bb:cc", "52:54:00:aa:bb:cc"), ("52:54:00:AA:Bb:cC", "52:54:00:aa:bb:cc"),
        ("５２:54:00:aa:bb:cc", nil), ("52:54:00:aa:bb:ｃｃ", nil), ("52:54:00:aa:bb:c", nil), ("52:54:00:aa:bb:ccc", nil),
        ("52-54-00-aa-bb-cc", nil), ("52:54:00:aa:bb:cg", nil), ("52:54:00:aa:bb:٣٣", nil), ("52:54:00:aa:bb:c\u{301}c", nil),
        ("5254.00aa.bbcc", nil), ("", nil), ("52:54:00:aa:bb:cc:", nil),
    ] as [(String, String?)])
    func macs(text: String, expected: String?) {
        #expect(MACAddress(text)?.description == expected)
    }

    @Test("A non-ASCII MAC is refused in a forward, a NIC and a reservation, naming the field")
    func nonASCIIMACs() throws {
        let fullwidth = "５２:５４:００:aa:bb:cc"
        let guest = try LibvirtXML.guest(fromXML: Self.domain(forwards: #"<vg:forward host-port="80" mac="\#(fullwidth)"/>"#))
        #expect(guest.problems.map(\.field) == ["forward #1 mac"])
        #expect(guest.problems.first?.value == fullwidth)
        let nic = "<interface type='network'><mac address='\(fullwidth)'/><source network='default'/></interface>"
        #expect(Self.field { _ = try LibvirtXML.guest(fromXML: Self.domain(nic: nic)) } == "interface mac")
        let network = "<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><host mac='\(fullwidth)' ip='10.0.0.2'/></dhcp></ip></network>"
        #expect(Self.field { _ = try LibvirtXML.network(fromXML: network) } == "dhcp host mac")
    }

    // MARK: one size cap

    @Test("One size cap, 4 MiB, for the parser and every reader")
    func oneCap() {
        #expect(InputLimits.maximumBytes == 4 << 20)
        #expect(XMLTree.maximumInputBytes == InputLimits.maximumBytes)
    }

    @Test("A domain over the cap is refused by virtgate's own limit, naming it; one under it parses", arguments: [
        InputLimits.maximumBytes + 1, 15_000_000,
    ])
    func overCap(size: Int) throws {
        let head = "<domain><name>web</name><description>"
        let tail = "</description></domain>"
        let big = head + String(repeating: "x", count: size - head.utf8.count - tail.utf8.count) + tail
        #expect(big.utf8.count == size)
        #expect {
            _ = try LibvirtXML.guest(fromXML: big, name: "web")
        } throws: { error in
            "\(error)".contains("larger than 4 MiB")
        }
        let fits = head + String(repeating: "x", count: InputLimits.maximumBytes - head.utf8.count - tail.utf8.count) + tail
        #expect(try LibvirtXML.guest(fromXML: fits, name: "web").name == "web")
    }

    @Test("Readers stop after cap + 1 bytes: files and pipes are never read unbounded")
    func boundedReads() throws {
        let path = Files.scratch("vgt-in-unit", suffix: ".xml")
        defer { unlink(path) }
        try Data(repeating: 0x61, count: 6 << 20).write(to: URL(filePath: path))
        #expect(InputLimits.read(path: path)?.count == InputLimits.maximumBytes + 1)
        #expect(InputLimits.read(path: "/nonexistent/file") == nil)

        // An endless stream: the reader must stop on its own.
        let zero = open("/dev/zero", O_RDONLY)
        #expect(zero >= 0)
        defer { close(zero) }
        let bytes = InputLimits.read(fileDescriptor: zero)
        #expect(bytes.count == InputLimits.maximumBytes + 1)
    }

    @Test("An over-long remembered file or network file is refused by the cap, not read whole")
    func overCapFiles() throws {
        let harness = Harness()
        defer { harness.cleanUp() }
        try harness.store.prepare()
        let big = "<network><name>big</name><description>" + String(repeating: "x", count: InputLimits.maximumBytes) + "</description></network>"
        try harness.store.rememberNetwork("big", xml: big)
        let settings = harness.settings()
        let book = FileAddressBook(store: harness.store, settings: settings)
        #expect(book.network(named: "big") == nil)
        #expect(book.problems.count == 1)
        #expect(book.problems.first?.contains("larger than 4 MiB") == true)
        #expect(book.problems.allSatisfy { $0.count <= 1200 })
    }

    @Test("A network is taken from what virtgate remembers, else libvirt's run directory, else its config; an unusable file is a problem and the next is read")
    func networkSources() throws {
        let harness = Harness()
        defer { harness.cleanUp() }
        try harness.store.prepare()
        let settings = harness.settings()
        for folder in [settings.networkRunDirectory, settings.networkConfigDirectory] {
            #expect(mkdir(folder, 0o700) == 0)
        }
        func xml(_ bridge: String) -> String {
            "<network><name>default</name><forward mode='nat'/><bridge name='\(bridge)'/><ip address='192.168.122.1' netmask='255.255.255.0'/></network>"
        }
        func write(_ path: String, _ text: String) throws { try StateFiles.replace(path, with: Array(text.utf8)) }
        func bridge() -> (String?, [String]) {
            let book = FileAddressBook(store: harness.store, settings: settings)
            return (book.network(named: "default")?.bridge, book.problems)
        }
        try write(settings.networkConfigDirectory + "/default.xml", xml("fromconfig"))
        #expect(bridge().0 == "fromconfig")
        try write(settings.networkRunDirectory + "/default.xml", xml("fromrun"))
        #expect(bridge().0 == "fromrun")
        try harness.store.rememberNetwork("default", xml: xml("remembered"))
        #expect(bridge().0 == "remembered")
        #expect(bridge().1.isEmpty)
        try harness.store.rememberNetwork("default", xml: "<network>")
        let (found, problems) = bridge()
        #expect(found == "fromrun")
        #expect(problems.count == 1)
        #expect(problems.first?.hasPrefix("remembered XML of network") == true)
    }

    @Test("Gateways kept out of forwards on any address: every remembered network's, but the one excepted")
    func knownGateways() throws {
        let harness = Harness()
        defer { harness.cleanUp() }
        try harness.store.prepare()
        func xml(_ name: String, _ bridge: String, _ gateway: String) -> String {
            "<network><name>\(name)</name><forward mode='nat'/><bridge name='\(bridge)'/><ip address='\(gateway)' netmask='255.255.255.0'/></network>"
        }
        try harness.store.rememberNetwork("default", xml: xml("default", "virbr0", "192.168.122.1"))
        try harness.store.rememberNetwork("other", xml: xml("other", "virbr1", "192.168.50.1"))
        let handler = harness.handler()
        let book = FileAddressBook(store: harness.store, settings: harness.settings())
        #expect(handler.knownGateways(book).map(\.description) == ["192.168.122.1", "192.168.50.1"])
        #expect(handler.knownGateways(book, except: "default").map(\.description) == ["192.168.50.1"])
    }

    @Test("An over-long stdin on a start is invalid input: nothing written, exit status by policy; a stop still removes by name")
    func overCapHookInput() async throws {
        let bytes = Array(("<domain><name>web</name><description>" + String(repeating: "x", count: InputLimits.maximumBytes)).utf8)
        for policy in [Settings.InvalidPolicy.warn, .refuse] {
            let harness = Harness()
            defer { harness.cleanUp() }
            let start = HookInvocation(driver: .qemu, arguments: ["web", "start", "begin", "-"])!
            #expect(await harness.handler(policy: policy).handle(start, input: bytes) { _ in } == (policy == .refuse ? 1 : 0))
            #expect(harness.runner.restores.isEmpty)
            let stop = HookInvocation(driver: .qemu, arguments: ["web", "stopped", "end", "-"])!
            #expect(await harness.handler(policy: policy).handle(stop, input: bytes) { _ in } == 0)
        }
    }
}

/// A hook handler against a recording runner, with its own state directory and a captured log.
final class Harness: Sendable {
    let directory = Files.scratch("vgt-in-unit")
    let runner: RecordingRunner

    init(failingRunner: Bool = false) { runner = RecordingRunner(failing: failingRunner) }

    var store: StateStore { StateStore(directory: directory + "/state") }

    func settings(policy: Settings.InvalidPolicy = .warn) -> Settings {
        var settings = Settings()
        settings.onInvalid = policy
        settings.stateDirectory = directory + "/state"
        settings.networkRunDirectory = directory + "/run"
        settings.networkConfigDirectory = directory + "/etc"
        settings.dnsmasqDirectory = directory + "/dnsmasq"
        return settings
    }

    func handler(policy: Settings.InvalidPolicy = .warn, dryRun: Bool = false, output: OutputCollector = OutputCollector()) -> HookHandler {
        let log = Log(syslog: false, stderr: false)
        return HookHandler(settings: settings(policy: policy),
                           firewall: Firewall(iptables: IptablesCommands(variant: .nft, runner: runner), nft: nil, log: log),
                           backend: IptablesChainBackend(), log: log, dryRun: dryRun) { output.append($0) }
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: directory) }
}

/// The refused inputs driven through the hook path (`HookHandler.handle(_:input:filterOutput:)`,
/// what the installed hook runs) against the real kernel in a throw-away namespace, on both
/// backends and under both policies: after a valid network and guest are in place, not one rule
/// changes, and the exit status is the policy's.
@Suite("Refused input changes no rule in the kernel", .enabled(if: Root.isRoot || Root.required), .serialized)
struct InputValidationKernelTests {
    let runner = ProcessRunner()

    init() {
        Root.removeStaleNamespaces(prefix: "vgt-in-")
    }

    static func guest(_ name: String, _ forwards: String, nic: String? = nil) -> [UInt8] {
        Array(InputValidationTests.domain(name, nic: nic, forwards: forwards).utf8)
    }

    /// Each event carries one refused value; each would otherwise reach the kernel.
    static let cases: [(label: String, invocation: HookInvocation, input: [UInt8])] = {
        var cases: [(String, HookInvocation, [UInt8])] = []
        func qemu(_ name: String) -> HookInvocation { HookInvocation(driver: .qemu, arguments: [name, "start", "begin", "-"])! }
        let wildcardNetwork = "<network><name>wild</name><forward mode='nat'/><bridge name='virbr+'/><ip address='10.9.0.1' prefix='24'/></network>"
        cases.append(("network bridge virbr+", HookInvocation(driver: .network, arguments: ["wild", "started", "begin", "-"])!,
                      Array(wildcardNetwork.utf8)))
        let plusDefault = EngineTests.network.replacing("virbr0", with: "+")
        cases.append(("network default updated to bridge +", HookInvocation(driver: .network, arguments: ["default", "updated", "begin", "-"])!,
                      Array(plusDefault.utf8)))
        cases.append(("NIC source bridge br+", qemu("g-bridge"), guest("g-bridge", #"<vg:forward host-port="3000" guest-address="203.0.113.5"/>"#,
            nic: "<interface type='bridge'><mac address='52:54:00:aa:00:09'/><source bridge='br+'/><target dev='vnet9'/></interface>")))
        cases.append(("NIC target dev vnet+", qemu("g-tap"), guest("g-tap", #"<vg:forward host-port="3001" guest-address="192.168.122.30"/>"#,
            nic: "<interface type='network'><mac address='52:54:00:aa:00:02'/><source network='default' bridge='virbr0'/><target dev='vnet+'/></interface>")))
        for address in ["127.0.0.1", "::1", "224.0.0.1", "ff02::1", "255.255.255.255", "0.0.0.0", "::"] {
            let guestAddress = address.contains(":") ? "fd00::30" : "192.168.122.30"
            cases.append(("host-address \(address)", qemu("g-addr"),
                          guest("g-addr", #"<vg:forward host-port="3002" host-address="\#(address)" guest-address="\#(guestAddress)"/>"#)))
        }
        cases.append(("entity in host-port", qemu("g-entity"), Array("""
            <!DOCTYPE domain [<!ENTITY p "22">]>
            \(InputValidationTests.domain("g-entity", forwards: #"<vg:forward host-port="80&p;" guest-address="192.168.122.30"/>"#))
            """.utf8)))
        cases.append(("fullwidth MAC in a forward", qemu("g-mac"),
                      guest("g-mac", #"<vg:forward host-port="3003" mac="５２:54:00:aa:00:01"/>"#)))
        cases.append(("fullwidth MAC on the NIC", qemu("g-nic"), guest("g-nic", #"<vg:forward host-port="3004"/>"#,
            nic: "<interface type='network'><mac address='52:54:00:aa:00:０１'/><source network='default' bridge='virbr0'/><target dev='vnet3'/></interface>")))
        cases.append(("domain over the size cap", qemu("g-big"), Array(("<domain><name>g-big</name><description>"
            + String(repeating: "x", count: InputLimits.maximumBytes) + "</description></domain>").utf8)))
        return cases
    }()

    func sh(_ namespace: String, _ arguments: [String]) async throws -> String {
        let result = try await NamespaceRunner(namespace: namespace, base: runner).run("/usr/bin/env", arguments, input: nil)
        #expect(result.status == 0, "\(arguments): \(result.error)")
        return result.output
    }

    /// Every rule of the namespace: the whole nft ruleset (iptables-nft's tables included) and
    /// what iptables-save prints for both families, without its dated comments.
    func ruleset(_ namespace: String) async throws -> String {
        var text = try await sh(namespace, ["nft", "list", "ruleset"])
        for tool in ["iptables-nft-save", "ip6tables-nft-save"] {
            text += try await sh(namespace, [tool]).split(separator: "\n").filter { !$0.hasPrefix("#") }.joined(separator: "\n")
        }
        return text
    }

    @Test("Refused input through the hook leaves every rule as it was", arguments: ["iptables", "nft"])
    func noRuleChanges(backendName: String) async throws {
        try #require(Root.isRoot, "needs root to create a network namespace")
        let namespace = "vgt-in-\(getpid())-\(backendName)"
        #expect(try await runner.run("/usr/bin/env", ["ip", "netns", "add", namespace], input: nil).status == 0)
        defer { _ = system("ip netns del \(namespace) 2>/dev/null") }
        let inside = NamespaceRunner(namespace: namespace, base: runner)
        let log = Log(syslog: false, stderr: false)
        let firewall = Firewall(iptables: IptablesCommands(variant: .nft, runner: inside), nft: NftCommands(runner: inside), log: log)
        let backend: any Backend = backendName == "nft" ? NftMapBackend(mark: firewall.mark) : IptablesChainBackend()
        let harness = Harness()
        defer { harness.cleanUp() }
        func handler(_ policy: Settings.InvalidPolicy) -> HookHandler {
            HookHandler(settings: harness.settings(policy: policy), firewall: firewall, backend: backend, log: log,
                        dryRun: false) { _ in }
        }

        // A valid network and guest first, so that there are rules a refused event could disturb.
        let network = HookInvocation(driver: .network, arguments: ["default", "started", "begin", "-"])!
        #expect(await handler(.warn).handle(network, input: Array(EngineTests.network.utf8)) { _ in } == 0)
        let good = HookInvocation(driver: .qemu, arguments: ["good", "start", "begin", "-"])!
        #expect(await handler(.warn).handle(good, input: Self.guest("good", #"<vg:forward host-port="2222" guest-port="22"/>"#)) { _ in } == 0)
        let baseline = try await ruleset(namespace)
        #expect(baseline.contains("2222"), "the valid guest's forward is in the kernel")

        for (label, invocation, input) in Self.cases {
            for policy in [Settings.InvalidPolicy.warn, .refuse] {
                let status = await handler(policy).handle(invocation, input: input) { _ in }
                #expect(status == (policy == .refuse ? 1 : 0), "\(label), \(policy): exit status")
                let after = try await ruleset(namespace)
                #expect(after == baseline, "\(label), \(policy): no rule changed")
            }
        }
        #expect(!(try await ruleset(namespace)).contains("3002"))
    }
}
