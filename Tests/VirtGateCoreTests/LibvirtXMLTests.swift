import Testing
@testable import VirtGateCore

@Suite("libvirt XML and virtgate metadata")
struct LibvirtXMLTests {
    @Test func networkFromHookData() throws {
        let network = try LibvirtXML.network(fromXML: Files.fixture("network-default.xml"))
        #expect(network.name == "default")
        #expect(network.bridge == "virbr0")
        #expect(network.mode == .nat)
        #expect(network.subnets.map(\.network.description) == ["192.168.122.0/24"])
        #expect(network.subnets.first?.gateway == ip("192.168.122.1"))
        #expect(network.reservations == [mac("52:54:00:aa:bb:01"): ip("192.168.122.10")])
    }

    @Test func networkModes() throws {
        #expect(try LibvirtXML.network(fromXML: Files.fixture("network-routed.xml")).mode == .route)
        #expect(try LibvirtXML.network(fromXML: Files.fixture("network-isolated.xml")).mode == .isolated)
        let bridged = "<network><name>host</name><forward mode='bridge'/><bridge name='br0'/></network>"
        #expect(try LibvirtXML.network(fromXML: bridged).mode == .other("bridge"))
        let defaultMode = "<network><name>n</name><forward/><bridge name='b'/></network>"
        #expect(try LibvirtXML.network(fromXML: defaultMode).mode == .nat)
    }

    @Test("Networks that cannot be trusted are refused with the field named", arguments: [
        ("<network><name>n</name><bridge name='br0 -j ACCEPT'/></network>", "bridge name"),
        ("<network><name>n</name><bridge name='b'/><ip address='10.0.0.1' prefix='40'/></network>", "ip prefix"),
        ("<network><name>n</name><bridge name='b'/><ip address='10.0.0.1' netmask='255.0.255.0'/></network>", "ip netmask"),
        ("<network><name>n</name><ip address='10.0.0.300' prefix='24'/></network>", "ip address"),
        ("<network><name>../../etc</name></network>", "name"),
        ("<network><name>n</name><ip address='10.0.0.1' prefix='24'><dhcp><host mac='zz' ip='10.0.0.2'/></dhcp></ip></network>", "dhcp host mac"),
        ("<network><name>n</name>", "xml"),
        ("<hookData/>", "xml"),
    ])
    func badNetworks(xml: String, field: String) {
        #expect {
            _ = try LibvirtXML.network(fromXML: xml)
        } throws: { error in
            (error as? VirtGateError)?.problem?.field == field
        }
    }

    @Test("IPv6 subnets are read; DHCPv6 hosts are reserved by name")
    func ipv6Subnets() throws {
        let xml = """
        <network><name>n</name><bridge name='b'/><ip family='ipv6' address='fd00:0:0:1::1' prefix='64'>
        <dhcp><range start='fd00:0:0:1::100' end='fd00:0:0:1::1ff'/><host name='web' ip='fd00:0:0:1::10'/></dhcp></ip>
        <ip address='10.1.0.1' prefix='24'/><ip family='ipv6' address='fd00:0:0:2::1'/></network>
        """
        let network = try LibvirtXML.network(fromXML: xml)
        #expect(network.subnets.map(\.network.description) == ["fd00:0:0:1::/64", "10.1.0.0/24", "fd00:0:0:2::/64"])
        #expect(network.reservation(mac: mac("52:54:00:00:00:01"), guest: "web", family: .v6) == ip("fd00:0:0:1::10"))
        #expect(network.reservation(mac: mac("52:54:00:00:00:01"), guest: "web", family: .v4) == nil)
        #expect(network.reservation(mac: mac("52:54:00:00:00:01"), guest: "other", family: .v6) == nil)
    }

    @Test("An address of the wrong family is named", arguments: [
        ("<ip family='ipv6' address='10.0.0.1' prefix='64'/>", "ip address"),
        ("<ip address='fd00::1' prefix='24'/>", "ip address"),
        ("<ip family='ipv6' address='fd00::1' prefix='129'/>", "ip prefix"),
        ("<ip family='ipv5' address='fd00::1'/>", "ip family"),
    ])
    func wrongFamily(ip: String, field: String) {
        #expect {
            _ = try LibvirtXML.network(fromXML: "<network><name>n</name><bridge name='b'/>\(ip)</network>")
        } throws: { error in
            (error as? VirtGateError)?.problem?.field == field
        }
    }

    @Test func domainAtStart() throws {
        let guest = try LibvirtXML.guest(fromXML: Files.fixture("domain-web-start.xml"), name: "web")
        #expect(guest.name == "web")
        #expect(guest.problems.isEmpty)
        #expect(guest.interfaces == [GuestInterface(mac: mac("52:54:00:aa:bb:01"), network: "default",
                                                    bridge: "virbr0", tap: "vnet0")])
        #expect(guest.forwards.count == 6)
        let first = guest.forwards[0]
        #expect(first.proto == .tcp && first.hostPorts.description == "2222" && first.guestPorts.description == "22")
        #expect(guest.forwards[1].sources.map(\.description) == ["203.0.113.0/24", "198.51.100.7/32"])
        #expect(guest.forwards[2].hostAddress == ip("198.51.100.10"))
        #expect(guest.forwards[2].guestPorts == guest.forwards[2].hostPorts)
        #expect(guest.forwards[3].guestAddress == ip("192.168.122.50"))
        #expect(guest.forwards[4].proto == .sctp)
        #expect(guest.forwards[5].proto == .tcp)
        #expect(guest.forwards.map(\.position) == [1, 2, 3, 4, 5, 6])
    }

    @Test func domainAtStopHasNoBridge() throws {
        let guest = try LibvirtXML.guest(fromXML: Files.fixture("domain-web-stopped.xml"), name: "web")
        #expect(guest.interfaces.first?.bridge == nil)
        #expect(guest.interfaces.first?.tap == nil)
    }

    @Test func domstatusWrapperIsAccepted() throws {
        let inner = try Files.fixture("domain-web-start.xml")
        let wrapped = "<domstatus state='running' reason='booted' pid='1'>\(inner)</domstatus>"
        #expect(try LibvirtXML.guest(fromXML: wrapped).forwards.count == 6)
    }

    @Test("Every bad forward is reported with guest, field and value; good ones survive")
    func badMetadata() throws {
        let guest = try LibvirtXML.guest(fromXML: Files.fixture("domain-bad.xml"), name: "bad")
        let lines = guest.problems.map(\.description)
        #expect(lines == [
            #"guest "bad": forward #1 host-port="70000": port out of range 1-65535"#,
            #"guest "bad": forward #2 host-port="0": port out of range 1-65535"#,
            #"guest "bad": forward #3 host-port="9000-8000": range is reversed"#,
            #"guest "bad": forward #4 guest-port="22": range length differs from host-port 8000-8009"#,
            #"guest "bad": forward #5 proto="icmp": expected tcp, udp or sctp"#,
            #"guest "bad": forward #6 source="10.0.0.1/8": not an IP network (CIDR) with zero host bits"#,
            #"guest "bad": forward #7 host-address="not-an-ip": not an IP address"#,
            #"guest "bad": forward #8 hostport="82": unknown attribute"#,
        ])
        #expect(guest.forwards.map(\.position) == [9])
    }

    @Test("Hostile values stay on one line")
    func hostileValues() throws {
        let xml = """
        <domain><name>evil</name><metadata><forwards xmlns="urn:virtgate:forwards:1">
        <forward host-port="22&#10;-A FORWARD -j ACCEPT" />
        <forward host-port="80" source="10.0.0.0/8 -j ACCEPT"/>
        <forward host-port="81" mac="52:54:00:00:00:01&quot;"/>
        </forwards></metadata></domain>
        """
        let guest = try LibvirtXML.guest(fromXML: xml, name: "evil")
        #expect(guest.forwards.isEmpty)
        #expect(guest.problems.count == 3)
        for problem in guest.problems {
            #expect(!problem.description.contains("\n"))
        }
        #expect(guest.problems[0].description.contains(#"\xa-A FORWARD"#))
    }

    @Test("Unprefixed metadata as virsh metadata --key vg writes it")
    func virshStyleMetadata() throws {
        let xml = """
        <domain><name>web</name><metadata>
        <vg:forwards xmlns:vg="urn:virtgate:forwards:1"><vg:forward host-port="2222" guest-port="22"/></vg:forwards>
        <other:forwards xmlns:other="urn:example"><other:forward host-port="1"/></other:forwards>
        </metadata></domain>
        """
        #expect(try LibvirtXML.guest(fromXML: xml).forwards.map(\.hostPorts.description) == ["2222"])
    }

    @Test("Documents that are not a usable domain throw", arguments: [
        "", "not xml", "<domain>", "<network/>", "<domain><name>a/b</name></domain>", "<domain><name></name></domain>",
        // Entity expansion bombs are refused with their DOCTYPE, never expanded.
        """
        <!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d2 "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;"><!ENTITY e "&d2;&d2;&d2;&d2;&d2;&d2;&d2;&d2;&d2;&d2;">]><domain><name>&e;</name></domain>
        """,
        "<!DOCTYPE d [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><domain><name>&x;</name></domain>",
    ])
    func unusableDomains(xml: String) {
        #expect(throws: VirtGateError.self) { _ = try LibvirtXML.guest(fromXML: xml) }
    }

    @Test func nameMustMatchHookArgument() {
        #expect(throws: VirtGateError.self) {
            _ = try LibvirtXML.guest(fromXML: "<domain><name>web</name></domain>", name: "db")
        }
    }
}
