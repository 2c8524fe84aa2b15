import Testing
@testable import Libvirt

@Suite("libvirt domain")
struct DomainTests {
    let connection: LibvirtConnection

    init() throws {
        connection = try Fixture.connection()
    }

    @Test("xml is the domain's definition")
    func xml() throws {
        let xml = try connection.domain(named: "web").xml()
        #expect(xml.contains("<name>web</name>"))
        #expect(xml.contains("52:54:00:aa:00:01"))
    }

    @Test("metadata of a domain that has it is the element; of one without, nil")
    func metadataRead() throws {
        let web = try #require(try connection.domain(named: "web").metadata(namespaceURI: Fixture.namespace))
        #expect(web.contains(#"host-port="2222""#))
        #expect(web.contains(#"guest-port="22""#))
        #expect(try connection.domain(named: "web").metadata(namespaceURI: Fixture.namespace, inactive: true) != nil)
        #expect(try connection.domain(named: "web").metadata(namespaceURI: "urn:other") == nil)
        #expect(try connection.domain(named: "db").metadata(namespaceURI: Fixture.namespace) == nil)
        #expect(try connection.domain(named: "parked").metadata(namespaceURI: Fixture.namespace) == nil)
    }

    @Test("setMetadata writes, replaces and removes, live and in the config of a running persistent domain")
    func metadataWriteRunning() throws {
        let db = try connection.domain(named: "db")
        func forwards(_ port: Int) -> String {
            #"<forwards><forward host-port="\#(port)" guest-port="80"/></forwards>"#
        }

        try db.setMetadata(forwards(8080), key: "vg", namespaceURI: Fixture.namespace)
        #expect(try db.metadata(namespaceURI: Fixture.namespace)?.contains(#"host-port="8080""#) == true)
        #expect(try db.metadata(namespaceURI: Fixture.namespace, inactive: true)?.contains(#"host-port="8080""#) == true)
        let persistent = try db.xml(inactive: true)
        #expect(persistent.contains(#"<vg:forwards xmlns:vg="urn:virtgate:forwards:1">"#))
        #expect(persistent.contains(#"<vg:forward host-port="8080""#))
        #expect(try db.xml().contains(#"host-port="8080""#))

        try db.setMetadata(forwards(9090), key: "vg", namespaceURI: Fixture.namespace)
        for inactive in [false, true] {
            let element = try #require(try db.metadata(namespaceURI: Fixture.namespace, inactive: inactive))
            #expect(element.contains(#"host-port="9090""#))
            #expect(!element.contains("8080"))
        }

        try db.setMetadata(nil, key: "vg", namespaceURI: Fixture.namespace)
        #expect(try db.metadata(namespaceURI: Fixture.namespace) == nil)
        #expect(try db.metadata(namespaceURI: Fixture.namespace, inactive: true) == nil)
        #expect(try !db.xml(inactive: true).contains(Fixture.namespace))
        #expect(try !db.xml().contains(Fixture.namespace))
    }

    @Test("setMetadata on a shut off domain writes its config only")
    func metadataWriteShutOff() throws {
        let parked = try connection.domain(named: "parked")
        try parked.setMetadata(
            #"<forwards><forward host-port="2200" guest-port="22"/></forwards>"#,
            key: "vg", namespaceURI: Fixture.namespace)
        #expect(try parked.metadata(namespaceURI: Fixture.namespace)?.contains(#"host-port="2200""#) == true)
        #expect(try parked.xml(inactive: true).contains(#"host-port="2200""#))
    }

    @Test("an element that declares the key's prefix itself is refused")
    func metadataWithOwnNamespace() throws {
        let web = try connection.domain(named: "web")
        let error = #expect(throws: LibvirtError.self) {
            try web.setMetadata(
                #"<vg:forwards xmlns:vg="urn:virtgate:forwards:1"/>"#, key: "vg", namespaceURI: Fixture.namespace)
        }
        #expect(error?.description.contains("namespace") == true)
    }

    @Test("malformed metadata is refused with libvirt's message")
    func metadataMalformed() throws {
        let web = try connection.domain(named: "web")
        let error = #expect(throws: LibvirtError.self) {
            try web.setMetadata("<vg:forwards", key: "vg", namespaceURI: Fixture.namespace)
        }
        #expect(error?.description.isEmpty == false)
        #expect(try web.metadata(namespaceURI: Fixture.namespace)?.contains(#"host-port="2222""#) == true)
    }

    // The test driver makes addresses up from the network's DHCP range instead of reading
    // dnsmasq's lease file; these are the ones libvirt 9.0.0 reports for the fixture.
    @Test("lease addresses by MAC, as the test driver reports them")
    func leaseAddresses() throws {
        let web = try connection.domain(named: "web").leaseAddresses()
        #expect(web.map(\.mac) == ["52:54:00:aa:00:01"])
        #expect(web.map(\.addresses) == [["192.168.122.101"]])

        let db = try connection.domain(named: "db").leaseAddresses()
        #expect(db.map(\.mac) == ["52:54:00:aa:00:02", "52:54:00:bb:00:02"])
        #expect(db.map(\.addresses) == [["192.168.122.121"], ["10.10.0.122"]])
    }

    @Test("a shut off domain has no lease addresses: libvirt says it is not running")
    func leaseAddressesShutOff() throws {
        let parked = try connection.domain(named: "parked")
        let error = #expect(throws: LibvirtError.self) { try parked.leaseAddresses() }
        #expect(error?.code == LibvirtError.Code.operationInvalid)
        #expect(error?.description.contains("not running") == true)
    }
}
