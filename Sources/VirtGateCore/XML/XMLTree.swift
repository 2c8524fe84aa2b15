import CExpat
#if canImport(Glibc)
import Glibc
#endif

/// A read-only element tree copied out of expat's events, so no C pointer outlives `parse`.
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

    /// Parser messages may quote the input: kept to one short line, so the error that carries it
    /// stays within a log line.
    init(description: String) {
        let line = description.split(whereSeparator: \.isNewline).joined(separator: " ")
        self.description = line.count <= Self.maximumLength ? line : String(line.prefix(Self.maximumLength)) + "…"
    }

    static let maximumLength = 300
}

public enum XMLTree {
    /// Hook input is at most a domain definition: the one cap for every input (`InputLimits`).
    public static let maximumInputBytes = InputLimits.maximumBytes
    /// Elements nested deeper than this are refused (libvirt's documents nest about ten deep), so
    /// neither the tree nor anything that walks it recursively can run out of stack.
    public static let maximumDepth = 256

    /// Parses a whole document with expat (the parser behind Python's ElementTree: no ICU, no C++),
    /// namespace-aware. It loads nothing from outside the input: no external entities, no DTD, no
    /// network. A document with a DOCTYPE is refused whole: libvirt never writes one, and an entity
    /// declared in it would otherwise vanish from a value (`host-port="80&p;"` read as 80) instead of
    /// being refused; so no entity but the predefined and character ones is ever expanded (expat's
    /// own limits against expansion attacks stay on behind that). Errors are returned, never printed.
    ///
    /// `keep`, when given, is asked for each element below the root, with the local names of its
    /// open ancestors (root first) and its own local name: an element it declines is left out of
    /// the tree with everything inside it. expat still reads and checks all of it (well-formedness,
    /// the depth bound); only no tree is built for it, which is most of the work for a domain's XML.
    public static func parse(_ text: String, keep: ((_ ancestors: [String], _ name: String) -> Bool)? = nil)
        throws(XMLParseError) -> XMLElement {
        var text = text
        let count = text.utf8.count
        guard count <= maximumInputBytes else {
            throw XMLParseError(description: "input larger than \(InputLimits.label) (\(maximumInputBytes) bytes)")
        }
        guard count > 0 else { throw XMLParseError(description: "empty input") }
        // The document's own encoding declaration is overridden: a Swift string is UTF-8.
        guard let parser = XML_ParserCreateNS("UTF-8", TreeBuilder.separator) else {
            throw XMLParseError(description: "out of memory")
        }
        defer { XML_ParserFree(parser) }
        let builder = TreeBuilder(parser: parser, keep: keep)
        let context = Unmanaged.passUnretained(builder).toOpaque()
        XML_SetUserData(parser, context)
        XML_SetElementHandler(parser, { context, name, attributes in
            TreeBuilder.from(context).start(name, attributes)
        }, { context, _ in
            TreeBuilder.from(context).end()
        })
        XML_SetCharacterDataHandler(parser, { context, bytes, length in
            TreeBuilder.from(context).characters(bytes, length)
        })
        XML_SetStartDoctypeDeclHandler(parser, { context, _, _, _, _ in
            TreeBuilder.from(context).stop("a DOCTYPE or entity declaration is not allowed")
        })
        // Never reached with the DOCTYPE refused; kept so that no change above can make expat read a file.
        XML_SetParamEntityParsing(parser, XML_PARAM_ENTITY_PARSING_NEVER)
        let status = text.withUTF8 { buffer in
            buffer.withMemoryRebound(to: CChar.self) {
                XML_Parse(parser, $0.baseAddress, Int32($0.count), 1)
            }
        }
        return try withExtendedLifetime(builder) { () throws(XMLParseError) -> XMLElement in
            if let problem = builder.problem { throw XMLParseError(description: problem) }
            guard status == XML_STATUS_OK, let root = builder.root else {
                throw XMLParseError(description: errorMessage(parser))
            }
            return root
        }
    }

    private static func errorMessage(_ parser: XML_Parser) -> String {
        let message = XML_ErrorString(XML_GetErrorCode(parser)).map { String(cString: $0) } ?? "not well-formed XML"
        let line = XML_GetCurrentLineNumber(parser)
        return line > 0 ? "line \(line): \(message)" : message
    }
}

/// Collects expat's events into `XMLElement`s: one open element per level on a stack.
private final class TreeBuilder {
    /// Between a namespace URI and a local name in the names expat reports: a control character,
    /// which XML 1.0 allows in neither (expat refuses a URI that contains the separator).
    static let separator: XML_Char = 0x01

    struct Open {
        var element: XMLElement
        var text: [UInt8] = []
    }

    // Only expat's callbacks on this one thread touch the state below, one at a time: the runtime's
    // exclusivity checks on each access were a tenth of a guest's parse (`@exclusivity(unchecked)`).
    let parser: XML_Parser
    let keep: (([String], String) -> Bool)?
    @exclusivity(unchecked) var stack: [Open] = []
    /// The local names of the open elements in `stack`, for `keep`.
    @exclusivity(unchecked) var names: [String] = []
    /// How deep the parser is inside an element `keep` declined (0: not inside one).
    @exclusivity(unchecked) var skipped = 0
    @exclusivity(unchecked) var root: XMLElement?
    @exclusivity(unchecked) var problem: String?
    /// The last namespace URI seen: a document names few, so each is made a string once.
    @exclusivity(unchecked) var namespace = ""

    init(parser: XML_Parser, keep: (([String], String) -> Bool)?) {
        self.parser = parser
        self.keep = keep
    }

    static func from(_ context: UnsafeMutableRawPointer?) -> TreeBuilder {
        Unmanaged<TreeBuilder>.fromOpaque(context!).takeUnretainedValue()
    }

    func stop(_ reason: String) {
        if problem == nil { problem = reason }
        XML_StopParser(parser, 0)
    }

    /// `URI\u{1}local` or `local`.
    func split(_ name: UnsafePointer<XML_Char>) -> (namespace: String?, local: String) {
        let length = strlen(name)
        return name.withMemoryRebound(to: UInt8.self, capacity: length) { start in
            let bytes = UnsafeBufferPointer(start: start, count: length)
            guard let mark = bytes.lastIndex(of: UInt8(Self.separator)) else {
                return (nil, String(decoding: bytes, as: UTF8.self))
            }
            let uri = UnsafeBufferPointer(rebasing: bytes[..<mark])
            if !namespace.utf8.elementsEqual(uri) { namespace = String(decoding: uri, as: UTF8.self) }
            return (namespace, String(decoding: bytes[(mark + 1)...], as: UTF8.self))
        }
    }

    /// The local part of `URI\u{1}local` or `local`.
    static func local(_ name: UnsafePointer<XML_Char>) -> String {
        let length = strlen(name)
        return name.withMemoryRebound(to: UInt8.self, capacity: length) { start in
            let bytes = UnsafeBufferPointer(start: start, count: length)
            guard let mark = bytes.lastIndex(of: UInt8(separator)) else { return String(decoding: bytes, as: UTF8.self) }
            return String(decoding: bytes[(mark + 1)...], as: UTF8.self)
        }
    }

    func start(_ name: UnsafePointer<XML_Char>?, _ attributes: UnsafeMutablePointer<UnsafePointer<XML_Char>?>?) {
        guard problem == nil, let name else { return }
        guard stack.count + skipped < XMLTree.maximumDepth else {
            stop("line \(XML_GetCurrentLineNumber(parser)): elements nested deeper than \(XMLTree.maximumDepth)")
            return
        }
        if skipped > 0 {
            skipped += 1
            return
        }
        let (namespace, local) = split(name)
        if let keep, !stack.isEmpty, !keep(names, local) {
            skipped = 1
            return
        }
        // Name, value, name, value, …, NULL. Attributes we read are unprefixed; a namespaced
        // attribute keeps its local name. Predefined and character entities are decoded by expat.
        var count = 0
        while attributes?[count] != nil { count += 2 }
        // Sized once: a dictionary grown from empty is rehashed at its first few inserts.
        var values = count == 0 ? [:] : [String: String](minimumCapacity: count / 2)
        var index = 0
        while let attribute = attributes?[index], let value = attributes?[index + 1] {
            values[Self.local(attribute)] = String(cString: value)
            index += 2
        }
        stack.append(Open(element: XMLElement(name: local, namespaceURI: namespace, attributes: values,
                                              children: [], text: "")))
        if keep != nil { names.append(local) }
    }

    func characters(_ bytes: UnsafePointer<XML_Char>?, _ length: Int32) {
        guard problem == nil, skipped == 0, let bytes, length > 0, !stack.isEmpty else { return }
        bytes.withMemoryRebound(to: UInt8.self, capacity: Int(length)) {
            stack[stack.count - 1].text.append(contentsOf: UnsafeBufferPointer(start: $0, count: Int(length)))
        }
    }

    func end() {
        guard problem == nil else { return }
        if skipped > 0 {
            skipped -= 1
            return
        }
        guard var open = stack.popLast() else { return }
        if keep != nil { names.removeLast() }
        open.element.text = String(decoding: open.text, as: UTF8.self)
        if stack.isEmpty {
            root = open.element
        } else {
            stack[stack.count - 1].element.children.append(open.element)
        }
    }
}

extension StringProtocol {
    func trimmingWhitespace() -> String {
        let scalars = String(self).unicodeScalars
        guard let start = scalars.firstIndex(where: { !$0.isUnicodeWhitespace }) else { return "" }
        let end = scalars.lastIndex(where: { !$0.isUnicodeWhitespace })!
        // Through Substring, not `String.UnicodeScalarView(…)`: that initialiser appends through an
        // unspecialised generic whose first use has the runtime look up protocol conformances by
        // scanning all of the binary's (~190K instructions of every guest event, measured).
        return String(Substring(scalars[start...end]))
    }
}

extension Unicode.Scalar {
    /// Unicode's White_Space. ASCII is answered without the property tables, whose first lookup
    /// in a process costs more than the rest of a guest name's parsing.
    var isUnicodeWhitespace: Bool {
        value < 0x80 ? value == 0x20 || (0x09...0x0D).contains(value) : properties.isWhitespace
    }
}
