import Testing
@testable import VirtGateCore

/// The element tree as expat's events build it: names and namespaces, attributes, text, and the
/// limits that keep a hostile document from costing more than its size.
@Suite("XML tree")
struct XMLTreeTests {
    @Test("Namespaces: elements carry their URI, attributes their local name, xmlns declarations are no attributes")
    func namespaces() throws {
        let root = try XMLTree.parse("""
            <domain xmlns:other="urn:example"><metadata>
            <vg:forwards xmlns:vg="urn:virtgate:forwards:1"><vg:forward vg:host-port="80" guest-port="8080"/></vg:forwards>
            <forwards xmlns="urn:virtgate:forwards:1"><forward host-port="81"/></forwards>
            <other:forwards/></metadata><name>web</name></domain>
            """)
        #expect(root.name == "domain" && root.namespaceURI == nil && root.attributes.isEmpty)
        let metadata = try #require(root.child("metadata"))
        #expect(metadata.children.map(\.name) == ["forwards", "forwards", "forwards"])
        #expect(metadata.children.map(\.namespaceURI) == ["urn:virtgate:forwards:1", "urn:virtgate:forwards:1", "urn:example"])
        #expect(metadata.child("forwards") == nil)
        #expect(metadata.children[0].children[0].attributes == ["host-port": "80", "guest-port": "8080"])
        #expect(metadata.children[1].children[0].attributes == ["host-port": "81"])
        #expect(root.child("name")?.text == "web")
    }

    @Test("Text: direct text and CDATA concatenated untrimmed, entities and character references decoded")
    func text() throws {
        let root = try XMLTree.parse("<a> x&amp;<b>inner</b>&#x41;<![CDATA[<c>]]><!-- skipped -->&lt;\u{E4} </a>")
        #expect(root.text == " x&A<c><\u{E4} ")
        #expect(root.children.map(\.text) == ["inner"])
        let attributes = try XMLTree.parse("<a v=\"1&#10;2&quot;\" w='\u{E4}'/>").attributes
        #expect(attributes == ["v": "1\n2\"", "w": "\u{E4}"])
    }

    @Test("keep: declined elements are left out with all they hold; the rest, and their text, as without it")
    func keep() throws {
        let xml = """
            <domain><name>web<x>no</x></name><os><type>hvm</type></os><devices><disk><source file='a'/></disk>
            <interface type='network'><mac address='52:54:00:00:00:01'/><model type='virtio'/></interface></devices></domain>
            """
        var asked: [String] = []
        let root = try XMLTree.parse(xml) { ancestors, name in
            asked.append((ancestors + [name]).joined(separator: "/"))
            return name != "os" && name != "disk" && name != "model" && name != "x"
        }
        // Nothing inside a declined element is asked about.
        #expect(asked == ["domain/name", "domain/name/x", "domain/os", "domain/devices", "domain/devices/disk",
                          "domain/devices/interface", "domain/devices/interface/mac", "domain/devices/interface/model"])
        #expect(root.children.map(\.name) == ["name", "devices"])
        #expect(root.child("name")?.text == "web")
        #expect(root.child("devices")?.children.map(\.name) == ["interface"])
        #expect(root.child("devices")?.child("interface")?.children.map(\.name) == ["mac"])
        #expect(root.text == (try XMLTree.parse(xml)).text)
        // Declined parts are still read: not well-formed is refused, and so is nesting past the bound.
        #expect(throws: XMLParseError.self) { _ = try XMLTree.parse("<a><b><c></b></a>") { _, name in name != "b" } }
        let deep = "<a>" + String(repeating: "<e>", count: XMLTree.maximumDepth) + String(repeating: "</e>", count: XMLTree.maximumDepth) + "</a>"
        #expect(throws: XMLParseError.self) { _ = try XMLTree.parse(deep) { _, _ in false } }
    }

    @Test("A document's encoding declaration does not change how a string is read")
    func encodingDeclaration() throws {
        let root = try XMLTree.parse("<?xml version='1.0' encoding='ISO-8859-1'?><name>g\u{E4}st</name>")
        #expect(root.text == "g\u{E4}st")
    }

    @Test("Refused: not well-formed, unbound prefixes, undeclared entities, several roots, nothing", arguments: [
        "<a>", "<a></b>", "<vg:forward host-port='1'/>", "<a vg:x='1'/>", "<a>&p;</a>", "<a/><b/>", "   ",
        "<a x='1' x='2'/>", "<a xmlns:p='urn:x' xmlns:q='urn:x' p:x='1' q:x='2'/>", "text",
    ])
    func refused(xml: String) {
        #expect(throws: XMLParseError.self) { _ = try XMLTree.parse(xml) }
    }

    @Test("An error is one short line that names the line")
    func errorLine() {
        #expect {
            _ = try XMLTree.parse("<domain>\n<name>web</nam>\n</domain>")
        } throws: { error in
            let text = "\(error)"
            return text.hasPrefix("line 2: ") && !text.contains("\n") && text.count <= XMLParseError.maximumLength + 1
        }
    }

    @Test("Nesting is bounded: at the limit parsed, one deeper refused")
    func depth() throws {
        func nested(_ depth: Int) -> String {
            String(repeating: "<e>", count: depth) + String(repeating: "</e>", count: depth)
        }
        var element = try XMLTree.parse(nested(XMLTree.maximumDepth))
        var depth = 1
        while let child = element.children.first {
            element = child
            depth += 1
        }
        #expect(depth == XMLTree.maximumDepth)
        #expect {
            _ = try XMLTree.parse(nested(XMLTree.maximumDepth + 1))
        } throws: { error in
            "\(error)".contains("nested deeper than \(XMLTree.maximumDepth)")
        }
        // As deep as the input cap allows: refused at once, not recursed into.
        #expect(throws: XMLParseError.self) { _ = try XMLTree.parse(nested(InputLimits.maximumBytes / 8)) }
    }

    @Test("The DOCTYPE refusal comes before anything in it is read: no file, no expansion")
    func doctypeBeforeContent() {
        for xml in [
            "<!DOCTYPE a SYSTEM \"/dev/zero\"><a/>",
            "<!DOCTYPE a [<!ENTITY % p SYSTEM \"/etc/passwd\"> %p;]><a/>",
            "<!DOCTYPE a PUBLIC \"-//x//y\" \"http://example.invalid/a.dtd\"><a/>",
        ] {
            #expect {
                _ = try XMLTree.parse(xml)
            } throws: { error in
                "\(error)" == "a DOCTYPE or entity declaration is not allowed"
            }
        }
    }
}

@Suite("SHA-256 through nettle")
struct SHA256Tests {
    /// The three short FIPS 180-4 examples are in `InputValidationTests`; this is the long one.
    @Test("A million 'a's; a slice hashes as the array")
    func longMessage() {
        let digest = SHA256.hash(data: [UInt8](repeating: 0x61, count: 1_000_000))
        #expect(ChainNames.base64url(digest) == "zcduXJkU-5KBocfihNc-Z_GAmkiklyAOBG05zMcRLNA")
        #expect(SHA256.hash(data: Array("abc".utf8)[1...]) == SHA256.hash(data: Array("bc".utf8)))
    }
}
