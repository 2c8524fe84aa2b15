import Testing
@testable import Libvirt

@Suite("libvirt connection")
struct ConnectionTests {
    @Test("a bad URI fails with libvirt's own message")
    func badURI() throws {
        let error = #expect(throws: LibvirtError.self) { try LibvirtConnection(uri: "test:///nonexistent/file.xml") }
        #expect(error?.description.contains("failed to parse xml document '/nonexistent/file.xml'") == true)
        #expect((error?.code ?? 0) > 0)
    }

    /// In a child process, so only libvirt's output lands in the stderr observed.
    @Test("libvirt prints nothing itself when a call fails")
    func nothingOnStandardError() async throws {
        let result = try #require(await #expect(processExitsWith: .success, observing: [\.standardErrorContent]) {
            _ = try? LibvirtConnection(uri: "test:///nonexistent/file.xml")
            let connection = try LibvirtConnection(uri: Fixture.nodeURI)
            _ = try? connection.domain(named: "nope")
            _ = try connection.domain(named: "db").metadata(namespaceURI: Fixture.namespace)
        })
        let stderr = String(decoding: result.standardErrorContent, as: UTF8.self)
        // libvirt's default handler would print "libvirt: Test Driver error : …". libxml2's own
        // "I/O warning" for the missing file is not libvirt's handler and does still appear.
        #expect(!stderr.contains("libvirt:"), "\(stderr)")
        #expect(!stderr.contains("not found"), "\(stderr)")
        #expect(!stderr.contains("failed to parse"), "\(stderr)")
    }

    @Test("the URI is the one libvirt resolved")
    func uri() throws {
        #expect(try Fixture.connection().uri == Fixture.nodeURI)
    }

    @Test("a read-only connection reads")
    func readOnly() throws {
        let connection = try LibvirtConnection(uri: Fixture.nodeURI, readOnly: true)
        #expect(try connection.runningDomains().map(\.name).sorted() == ["db", "web"])
    }

    @Test("running domains, all domains and active networks are listed by name")
    func listing() throws {
        let connection = try Fixture.connection()
        #expect(try connection.runningDomains().map(\.name).sorted() == ["db", "web"])
        #expect(try connection.allDomains().map(\.name).sorted() == ["db", "parked", "web"])
        #expect(try connection.activeNetworks().map(\.name).sorted() == ["default", "isolated"])
    }

    @Test("domain state: running and persistent, or shut off and persistent")
    func state() throws {
        let connection = try Fixture.connection()
        let web = try connection.domain(named: "web")
        #expect(try web.isActive())
        #expect(try web.isPersistent())
        let parked = try connection.domain(named: "parked")
        #expect(try !parked.isActive())
        #expect(try parked.isPersistent())
    }

    @Test("unknown domains and networks throw libvirt's not-found errors")
    func unknownNames() throws {
        let connection = try Fixture.connection()
        let domainError = #expect(throws: LibvirtError.self) { try connection.domain(named: "nope") }
        #expect(domainError?.code == LibvirtError.Code.noDomain)
        #expect(domainError?.description.contains("nope") == true)
        let networkError = #expect(throws: LibvirtError.self) { try connection.network(named: "nope") }
        #expect(networkError?.code == LibvirtError.Code.noNetwork)
    }

    @Test("domains and networks outlive their connection object")
    func outliveConnection() throws {
        var connection: LibvirtConnection? = try Fixture.connection()
        let web = try #require(try connection?.domain(named: "web"))
        let network = try #require(try connection?.network(named: "default"))
        connection = nil
        #expect(try web.isActive())
        #expect(try network.bridgeName() == "virbr0")
    }
}
