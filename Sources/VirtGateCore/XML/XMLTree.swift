import CLibXML2

/// A read-only element tree copied out of libxml2, so no C pointer outlives `parse`.
public struct XMLElement: Sendable {
    public var name: String
    public var namespaceURI: String?
    public var attributes: [String: String]
    public var children: [XMLElement]
    /// Concatenated direct text content, untrimmed.
    public var text: String

    public func child(_ name: String) -> XMLElement? {
        children.first { $0.name == name && $0.namespaceURI == nil }
    }

    public func children(_ name: String) -> [XMLElement] {
        children.filter { $0.name == name && $0.namespaceURI == nil }
    }

    /// The first element in document order, depth first, that satisfies `predicate` (self included).
    public func first(where predicate: (XMLElement) -> Bool) -> XMLElement? {
        if predicate(self) { return self }
        for child in children {
            if let found = child.first(where: predicate) { return found }
        }
        return nil
    }

    public subscript(attribute: String) -> String? { attributes[attribute] }
}

public struct XMLParseError: Error, Sendable, CustomStringConvertible {
    public let description: String

    /// libxml2's messages quote the input (a 40 KB element name comes back whole): kept to one
    /// short line, so the error that carries it stays within a log line.
    init(description: String) {
        let line = description.split(whereSeparator: \.isNewline).joined(separator: " ")
        self.description = line.count <= Self.maximumLength ? line : String(line.prefix(Self.maximumLength)) + "…"
    }

    static let maximumLength = 300
}

public enum XMLTree {
    /// Hook input is at most a domain definition: the one cap for every input (`InputLimits`).
    public static let maximumInputBytes = InputLimits.maximumBytes

    /// Parses a whole document. External entities, DTD loading and network access are off; libxml2's
    /// default limits against entity expansion attacks stay on; errors are returned, never printed.
    /// A document with a DOCTYPE is refused whole: libvirt never writes one, and an entity declared in
    /// it would otherwise vanish from a value (`host-port="80&p;"` read as 80) instead of being refused.
    public static func parse(_ text: String) throws(XMLParseError) -> XMLElement {
        let bytes = Array(text.utf8)
        guard bytes.count <= maximumInputBytes else {
            throw XMLParseError(description: "input larger than \(InputLimits.label) (\(maximumInputBytes) bytes)")
        }
        guard !bytes.isEmpty else { throw XMLParseError(description: "empty input") }
        let options = Int32(XML_PARSE_NONET.rawValue | XML_PARSE_NOERROR.rawValue | XML_PARSE_NOWARNING.rawValue
            | XML_PARSE_NOCDATA.rawValue)
        xmlResetLastError()
        let document = bytes.withUnsafeBufferPointer { buffer in
            buffer.withMemoryRebound(to: CChar.self) {
                xmlReadMemory($0.baseAddress, Int32($0.count), "input.xml", "UTF-8", options)
            }
        }
        guard let document else {
            throw XMLParseError(description: lastErrorMessage() ?? "not well-formed XML")
        }
        defer { xmlFreeDoc(document) }
        guard document.pointee.intSubset == nil, document.pointee.extSubset == nil else {
            throw XMLParseError(description: "a DOCTYPE or entity declaration is not allowed")
        }
        guard let root = xmlDocGetRootElement(document) else {
            throw XMLParseError(description: "no root element")
        }
        return element(root)
    }

    private static func lastErrorMessage() -> String? {
        guard let error = xmlGetLastError(), let message = error.pointee.message else { return nil }
        let text = String(cString: message).trimmingWhitespace()
        return error.pointee.line > 0 ? "line \(error.pointee.line): \(text)" : text
    }

    private static func string(_ pointer: UnsafePointer<xmlChar>?) -> String? {
        pointer.map { String(decodingCString: $0, as: UTF8.self) }
    }

    private static func element(_ node: xmlNodePtr) -> XMLElement {
        var attributes: [String: String] = [:]
        var attribute = node.pointee.properties
        while let current = attribute {
            // Attributes we read are unprefixed; a namespaced attribute keeps its local name.
            if let name = string(current.pointee.name) {
                // The value is the attribute's text children (predefined and character entities are
                // decoded by the parser; other entity references are not expanded, on purpose).
                var value = ""
                var part = current.pointee.children
                while let text = part {
                    if text.pointee.type == XML_TEXT_NODE { value += string(text.pointee.content) ?? "" }
                    part = text.pointee.next
                }
                attributes[name] = value
            }
            attribute = current.pointee.next
        }
        var children: [XMLElement] = []
        var text = ""
        var child = node.pointee.children
        while let current = child {
            switch current.pointee.type {
            case XML_ELEMENT_NODE:
                children.append(element(current))
            case XML_TEXT_NODE, XML_CDATA_SECTION_NODE:
                text += string(current.pointee.content) ?? ""
            default:
                break
            }
            child = current.pointee.next
        }
        return XMLElement(
            name: string(node.pointee.name) ?? "",
            namespaceURI: string(node.pointee.ns?.pointee.href),
            attributes: attributes,
            children: children,
            text: text
        )
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        let scalars = String(self).unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.isUnicodeWhitespace }) else { return "" }
        let end = scalars.lastIndex(where: { !$0.isUnicodeWhitespace })!
        return String(String.UnicodeScalarView(scalars[start...end]))
    }
}

extension Unicode.Scalar {
    /// Unicode's White_Space. ASCII is answered without the property tables, whose first lookup
    /// in a process costs more than the rest of a guest name's parsing.
    var isUnicodeWhitespace: Bool {
        value < 0x80 ? value == 0x20 || (0x09...0x0D).contains(value) : properties.isWhitespace
    }
}
