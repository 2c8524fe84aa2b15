import Testing
@testable import VirtGateCore

@Suite("Forward shorthand and the metadata element")
struct ForwardMetadataTests {
    @Test("Shorthand that is valid", arguments: [
        ("8080:80/tcp", "tcp 8080 -> 80"),
        ("8080:80", "tcp 8080 -> 80"),
        ("2222", "tcp 2222 -> 2222"),
        ("198.51.100.10:53:53/udp", "udp 198.51.100.10:53 -> 53"),
        ("198.51.100.10:53/udp", "udp 198.51.100.10:53 -> 53"),
        ("5000-5009:6000-6009", "tcp 5000-5009 -> 6000-6009"),
        ("3868/sctp", "sctp 3868 -> 3868"),
        ("[2001:db8::10]:443", "tcp [2001:db8::10]:443 -> 443"),
        ("[2001:db8::10]:8443:443/tcp", "tcp [2001:db8::10]:8443 -> 443"),
    ])
    func valid(text: String, summary: String) throws {
        let forward = try ForwardMetadata.parseShorthand(text, guest: "web").get()
        #expect(forward.summary == summary)
    }

    @Test("Shorthand that is refused names the field and value", arguments: [
        ("70000", "host-port", "70000"),
        ("0:22", "host-port", "0"),
        ("8080:80/icmp", "proto", "icmp"),
        ("5000-5009:6000", "guest-port", "6000"),
        ("9000-8000", "host-port", "9000-8000"),
        ("1.2.3:80", "host-address", "1.2.3"),
        ("a:b:c:d", "forward", "a:b:c:d"),
        ("", "host-port", ""),
        ("80:", "guest-port", ""),
        ("[2001:db8::zz]:443", "host-address", "2001:db8::zz"),
        ("[2001:db8::10]", "forward", "[2001:db8::10]"),
        ("[2001:db8::10]:1:2:3", "forward", "[2001:db8::10]:1:2:3"),
    ])
    func invalid(text: String, field: String, value: String) {
        switch ForwardMetadata.parseShorthand(text, guest: "web") {
        case .success(let forward): Issue.record("accepted \(text) as \(forward.summary)")
        case .failure(let problem):
            #expect(problem.field == field)
            #expect(problem.value == value)
            #expect(problem.description.hasPrefix(#"guest "web": "#))
        }
    }

    @Test func sourcesAndOptionsAreValidatedToo() {
        #expect(throws: InputProblem.self) {
            try ForwardMetadata.parseShorthand("80", sources: ["10.0.0.1/8"], guest: "web").get()
        }
        #expect(throws: InputProblem.self) {
            try ForwardMetadata.parseShorthand("80", mac: "zz:zz", guest: "web").get()
        }
        let forward = try? ForwardMetadata.parseShorthand("80", sources: ["203.0.113.0/24", "198.51.100.7"],
                                                           guestAddress: "10.0.0.5", guest: "web").get()
        #expect(forward?.sources.map(\.description) == ["203.0.113.0/24", "198.51.100.7/32"])
        #expect(forward?.guestAddress?.description == "10.0.0.5")
    }

    @Test("The element written back parses to the same forwards")
    func roundTrip() throws {
        let original = try LibvirtXML.guest(fromXML: Files.fixture("domain-web-start.xml")).forwards
        let element = ForwardMetadata.element(original)
        #expect(element.hasPrefix("<forwards>\n  <forward proto=\"tcp\" host-port=\"2222\" guest-port=\"22\"/>"))
        let namespaced = element.replacing("<forwards>", with: "<vg:forwards xmlns:vg=\"urn:virtgate:forwards:1\">")
            .replacing("<forward ", with: "<vg:forward ").replacing("</forwards>", with: "</vg:forwards>")
        let back = try ForwardMetadata.forwards(fromElement: namespaced, guest: "web")
        #expect(back.problems.isEmpty)
        #expect(back.forwards.map(\.summary) == original.map(\.summary))
        #expect(back.forwards.map(\.sources) == original.map(\.sources))
        #expect(back.forwards.map(\.mac) == original.map(\.mac))
        // virDomainGetMetadata hands the element back bare, as it was written.
        let bare = try ForwardMetadata.forwards(fromElement: element, guest: "web")
        #expect(bare.forwards.map(\.summary) == original.map(\.summary))
        #expect(throws: VirtGateError.self) { try ForwardMetadata.forwards(fromElement: "<other/>", guest: "web") }
    }
}
