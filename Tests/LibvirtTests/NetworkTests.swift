import Testing
@testable import Libvirt

@Suite("libvirt network")
struct NetworkTests {
    let connection: LibvirtConnection

    init() throws {
        connection = try Fixture.connection()
    }

    @Test("xml holds the bridge and the DHCP reservations")
    func xml() throws {
        let xml = try connection.network(named: "default").xml()
        #expect(xml.contains("<bridge name='virbr0'"))
        #expect(xml.contains("192.168.122.10"))
        #expect(xml.contains("52:54:00:aa:00:01"))
    }

    @Test("bridge names")
    func bridgeName() throws {
        #expect(try connection.network(named: "default").bridgeName() == "virbr0")
        #expect(try connection.network(named: "isolated").bridgeName() == "virbr1")
    }

    // libvirt 9.0.0's test driver has no networkGetDHCPLeases, so libvirt answers for it.
    @Test("DHCP leases: the test driver does not support them, and says so")
    func dhcpLeases() throws {
        let network = try connection.network(named: "default")
        let error = #expect(throws: LibvirtError.self) { try network.dhcpLeases() }
        #expect(error?.code == LibvirtError.Code.noSupport)
        #expect(error?.description.contains("virNetworkGetDHCPLeases") == true)
    }
}
