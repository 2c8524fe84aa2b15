import Testing
@testable import VirtGateCore

@Suite("Addresses and ports")
struct AddressTests {
    @Test("IPv4 addresses parse strictly", arguments: [
        ("10.0.0.1", true), ("255.255.255.255", true), ("0.0.0.0", true),
        ("256.0.0.1", false), ("10.0.0", false), ("10.0.0.1.2", false), ("010.0.0.1", false),
        ("", false), ("a.b.c.d", false), ("10.0.0.-1", false), ("1e1.0.0.1", false), ("10.0.0.1/32", false),
        ("10.0.0.1 ", false), ("١٠.0.0.1", false),
    ])
    func ipv4(text: String, valid: Bool) {
        #expect((IPAddress(text) != nil) == valid)
        if valid { #expect(IPAddress(text)!.description == text) }
    }

    @Test("IPv6 addresses parse and print in the compressed form the firewall tools print", arguments: [
        ("::1", "::1"), ("fd00:0:0:1::10", "fd00:0:0:1::10"), ("FD00::A", "fd00::a"), ("2001:db8:0:0:0:0:0:1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1"), ("fd00::1%eth0", nil), ("[fd00::1]", nil), ("fd00:::1", nil), ("fd00::g", nil), ("", nil),
    ] as [(String, String?)])
    func ipv6(text: String, expected: String?) {
        #expect(IPAddress(text)?.description == expected)
        if expected != nil { #expect(IPAddress(text)?.family == .v6) }
    }

    @Test("IPv6 networks", arguments: [
        ("fd00::/64", "fd00::/64"), ("fd00::1", "fd00::1/128"), ("::/0", "::/0"), ("fd00::1/64", nil), ("fd00::/129", nil), ("fd00::/064", nil),
    ] as [(String, String?)])
    func ipv6Networks(text: String, expected: String?) {
        #expect(IPNetwork(parsing: text)?.description == expected)
    }

    @Test func familiesNeverContainEachOther() {
        #expect(IPNetwork(parsing: "::/0")!.contains(ip("10.0.0.1")) == false)
        #expect(IPNetwork(parsing: "0.0.0.0/0")!.contains(ip("::1")) == false)
        #expect(IPNetwork(parsing: "fd00::/8")!.contains(ip("fd12::1")))
    }

    @Test("CIDRs need zero host bits and a prefix 0-32", arguments: [
        ("203.0.113.0/24", "203.0.113.0/24"), ("198.51.100.7", "198.51.100.7/32"), ("0.0.0.0/0", "0.0.0.0/0"),
        ("10.0.0.1/8", nil), ("10.0.0.0/33", nil), ("10.0.0.0/", nil), ("10.0.0.0/-1", nil), ("10.0.0.0/8/8", nil),
    ] as [(String, String?)])
    func cidr(text: String, expected: String?) {
        #expect(IPNetwork(parsing: text)?.description == expected)
    }

    @Test func netmaskToPrefix() {
        #expect(IPNetwork.prefix(ofNetmask: ip("255.255.255.0")) == 24)
        #expect(IPNetwork.prefix(ofNetmask: ip("255.255.0.0")) == 16)
        #expect(IPNetwork.prefix(ofNetmask: ip("255.0.255.0")) == nil)
    }

    @Test("Port ranges", arguments: [
        ("22", PortRange.ParseError?.none, "22"), ("8000-8009", nil, "8000-8009"), ("65535", nil, "65535"),
        ("0", .outOfRange, ""), ("70000", .outOfRange, ""), ("9000-8000", .reversed, ""),
        ("", .notANumber, ""), ("a", .notANumber, ""), ("1-2-3", .notANumber, ""), ("-5", .notANumber, ""),
        ("+5", .notANumber, ""), ("99999999999999999999", .notANumber, ""),
    ])
    func ports(text: String, error: PortRange.ParseError?, printed: String) {
        switch PortRange.parse(text) {
        case .success(let range):
            #expect(error == nil)
            #expect(range.description == printed)
        case .failure(let failure):
            #expect(failure == error)
        }
    }

    @Test("A range's ports, each once, lowest first, up to 65535")
    func portsOfARange() {
        #expect(Array(PortRange(22, 22).ports) == [22])
        #expect(Array(PortRange(8000, 8003).ports) == [8000, 8001, 8002, 8003])
        #expect(Array(PortRange(65534, 65535).ports) == [65534, 65535])
        #expect(Array(PortRange(1, 65535).ports) == (1...65535).map { UInt16($0) })
    }

    @Test func macNormalisesCase() {
        #expect(MACAddress("52:54:00:AA:bb:0C")?.description == "52:54:00:aa:bb:0c")
        #expect(MACAddress("52:54:00:aa:bb") == nil)
        #expect(MACAddress("52-54-00-aa-bb-cc") == nil)
        #expect(MACAddress("52:54:00:aa:bb:cg") == nil)
    }
}
