/// Just enough JSON for nft's listings, parsed in one pass over the bytes. A table of thousands of
/// elements is hundreds of thousands of nodes: a Codable decoder (a container, a coding path and a
/// thrown error for every attempted type of every node) spent most of a re-sync on them.
indirect enum JSONValue: Equatable {
    case string(String), number(Double), bool(Bool), null, array([JSONValue]), object([Member])

    struct Member: Equatable {
        var key: String
        var value: JSONValue
    }

    /// The member named `key` of an object (nft's objects have a handful of members: a linear
    /// search is cheaper than hashing); nil for anything else.
    subscript(key: String) -> JSONValue? {
        guard case .object(let members) = self else { return nil }
        for member in members where member.key == key { return member.value }
        return nil
    }

    /// Parses a whole document; anything that is not JSON is an error.
    static func parse(_ text: String) throws -> JSONValue {
        var text = text
        return try text.withUTF8 { bytes in
            var parser = JSONParser(bytes: bytes)
            let value = try parser.value(depth: 0)
            parser.skipWhitespace()
            guard parser.position == bytes.count else { throw parser.failure("trailing characters") }
            return value
        }
    }
}

struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0
    /// nft nests a few levels; a bound keeps a hostile document from exhausting the stack.
    static let maximumDepth = 64

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    func failure(_ what: String) -> VirtGateError {
        VirtGateError(.firewall, "nft -j: not JSON (\(what) at byte \(position))")
    }

    mutating func skipWhitespace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x09, 0x0A, 0x0D: position += 1
            default: return
            }
        }
    }

    mutating func expect(_ byte: UInt8) throws {
        skipWhitespace()
        guard position < bytes.count, bytes[position] == byte else {
            throw failure("expected '\(Character(Unicode.Scalar(byte)))'")
        }
        position += 1
    }

    mutating func literal(_ word: StaticString, _ value: JSONValue) throws -> JSONValue {
        let count = word.utf8CodeUnitCount
        guard position + count <= bytes.count,
              (0..<count).allSatisfy({ bytes[position + $0] == word.utf8Start[$0] }) else { throw failure("unknown literal") }
        position += count
        return value
    }

    mutating func value(depth: Int) throws -> JSONValue {
        guard depth < Self.maximumDepth else { throw failure("nested too deep") }
        skipWhitespace()
        guard position < bytes.count else { throw failure("unexpected end") }
        switch bytes[position] {
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "{"):
            position += 1
            var members: [JSONValue.Member] = []
            skipWhitespace()
            if position < bytes.count, bytes[position] == UInt8(ascii: "}") {
                position += 1
                return .object(members)
            }
            while true {
                skipWhitespace()
                guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else { throw failure("expected a key") }
                let key = try string()
                try expect(UInt8(ascii: ":"))
                members.append(.init(key: key, value: try value(depth: depth + 1)))
                skipWhitespace()
                guard position < bytes.count else { throw failure("unexpected end") }
                if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
                if bytes[position] == UInt8(ascii: "}") { position += 1; return .object(members) }
                throw failure("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            position += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if position < bytes.count, bytes[position] == UInt8(ascii: "]") {
                position += 1
                return .array(items)
            }
            while true {
                items.append(try value(depth: depth + 1))
                skipWhitespace()
                guard position < bytes.count else { throw failure("unexpected end") }
                if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
                if bytes[position] == UInt8(ascii: "]") { position += 1; return .array(items) }
                throw failure("expected ',' or ']'")
            }
        case UInt8(ascii: "t"): return try literal("true", .bool(true))
        case UInt8(ascii: "f"): return try literal("false", .bool(false))
        case UInt8(ascii: "n"): return try literal("null", .null)
        default:
            return .number(try number())
        }
    }

    mutating func number() throws -> Double {
        let start = position
        var integer = true
        var magnitude: UInt64 = 0
        var digits = 0
        if position < bytes.count, bytes[position] == UInt8(ascii: "-") { position += 1 }
        scan: while position < bytes.count {
            let byte = bytes[position]
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                if digits < 18 { magnitude = magnitude &* 10 &+ UInt64(byte - UInt8(ascii: "0")) }
                digits += 1
            case UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E"), UInt8(ascii: "+"), UInt8(ascii: "-"):
                integer = false
            default:
                break scan
            }
            position += 1
        }
        guard digits > 0 else { throw failure("unexpected character") }
        // Integers, all nft writes, without a detour through text; anything else the standard way.
        if integer && digits <= 18 {
            return bytes[start] == UInt8(ascii: "-") ? -Double(magnitude) : Double(magnitude)
        }
        guard let value = Double(String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)) else {
            throw failure("not a number")
        }
        return value
    }

    mutating func string() throws -> String {
        position += 1  // the opening quote
        let start = position
        // Plain strings (no escapes), all nft writes for names, addresses and comments virtgate set.
        while position < bytes.count {
            let byte = bytes[position]
            if byte == UInt8(ascii: "\"") {
                let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
                position += 1
                return text
            }
            if byte == UInt8(ascii: "\\") { break }
            guard byte >= 0x20 else { throw failure("control character in a string") }
            position += 1
        }
        var scalars = Array(bytes[start..<position])
        while position < bytes.count {
            let byte = bytes[position]
            position += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: scalars, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard position < bytes.count else { throw failure("unexpected end") }
                let escape = bytes[position]
                position += 1
                switch escape {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): scalars.append(escape)
                case UInt8(ascii: "b"): scalars.append(0x08)
                case UInt8(ascii: "f"): scalars.append(0x0C)
                case UInt8(ascii: "n"): scalars.append(0x0A)
                case UInt8(ascii: "r"): scalars.append(0x0D)
                case UInt8(ascii: "t"): scalars.append(0x09)
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if (0xD800..<0xDC00).contains(code), position + 1 < bytes.count,
                       bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") {
                        position += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw failure("invalid surrogate pair") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    }
                    scalars.append(contentsOf: String(Character(Unicode.Scalar(code) ?? "\u{FFFD}")).utf8)
                default:
                    throw failure("unknown escape")
                }
            default:
                guard byte >= 0x20 else { throw failure("control character in a string") }
                scalars.append(byte)
            }
        }
        throw failure("unterminated string")
    }

    mutating func hex4() throws -> UInt32 {
        guard position + 4 <= bytes.count else { throw failure("unexpected end") }
        var code: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[position]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw failure("invalid \\u escape")
            }
            code = code << 4 | UInt32(digit)
            position += 1
        }
        return code
    }
}

/// nft's listing of virtgate's table read straight into `NftState`: tables, chains, maps and sets
/// are found as objects, but elements (all but a few dozen of a listing's nodes) go from the bytes
/// to their text form without a tree in between.
extension JSONParser {
    struct Listing {
        var exists = false
        var layout: String?
        var baseChains = 0
        var elements: [NftElement] = []
    }

    mutating func listing() throws -> Listing {
        var listing = Listing()
        var found = false
        try members(depth: 0) { parser, key, depth in
            guard key == "nftables" else { _ = try parser.value(depth: depth); return }
            found = true
            try parser.items(depth: depth) { parser, depth in
                try parser.listingObject(&listing, depth: depth)
            }
        }
        skipWhitespace()
        guard position == bytes.count else { throw failure("trailing characters") }
        guard found else { throw VirtGateError(.firewall, "nft -j: no nftables array") }
        return listing
    }

    /// One object of the `nftables` array: `{"table": …}`, `{"chain": …}`, `{"map": …}`, ….
    mutating func listingObject(_ listing: inout Listing, depth: Int) throws {
        skipWhitespace()
        guard position < bytes.count, bytes[position] == UInt8(ascii: "{") else { _ = try value(depth: depth); return }
        try members(depth: depth) { parser, kind, depth in
            switch kind {
            case "map", "set":
                try parser.setObject(isMap: kind == "map", into: &listing.elements, depth: depth)
            default:
                let object = try parser.value(depth: depth)
                if kind == "table" { listing.exists = true }
                if kind == "chain", case .string(let name)? = object["name"] {
                    if name.hasPrefix("layout-") { listing.layout = name }
                    if NftLayout.baseChains.contains(name) { listing.baseChains += 1 }
                }
            }
        }
    }

    /// A map's or set's members; its elements are appended to `elements` with its name.
    mutating func setObject(isMap: Bool, into elements: inout [NftElement], depth: Int) throws {
        skipWhitespace()
        guard position < bytes.count, bytes[position] == UInt8(ascii: "{") else { _ = try value(depth: depth); return }
        var name: String?
        var found: [NftElement] = []
        var hasElements = false
        try members(depth: depth) { parser, key, depth in
            switch key {
            case "name":
                if case .string(let text) = try parser.value(depth: depth) { name = text }
            case "elem":
                skipArray: do {
                    parser.skipWhitespace()
                    guard parser.position < parser.bytes.count, parser.bytes[parser.position] == UInt8(ascii: "[") else {
                        _ = try parser.value(depth: depth)
                        break skipArray
                    }
                    hasElements = true
                    try parser.items(depth: depth) { parser, depth in
                        found.append(try parser.element(isMap: isMap, depth: depth))
                    }
                }
            default:
                _ = try parser.value(depth: depth)
            }
        }
        // Elements count only in a set with a name (the tree reader skipped the others too).
        guard let name, hasElements else { return }
        for index in found.indices { found[index].set = name }
        elements += found
    }

    /// `[key, value]` in a map, `key` in a set; a key is `{"elem": {"val": …, "comment": …}}` or a
    /// bare value.
    mutating func element(isMap: Bool, depth: Int) throws -> NftElement {
        guard depth < Self.maximumDepth else { throw failure("nested too deep") }
        var element = NftElement(set: "", key: "", value: nil, comment: "")
        if isMap {
            try expect(UInt8(ascii: "["))
            try keyPart(&element, depth: depth + 1)
            try expect(UInt8(ascii: ","))
            element.value = try text(depth: depth + 1)
            try expect(UInt8(ascii: "]"))
        } else {
            try keyPart(&element, depth: depth)
        }
        return element
    }

    mutating func keyPart(_ element: inout NftElement, depth: Int) throws {
        skipWhitespace()
        guard position < bytes.count, bytes[position] == UInt8(ascii: "{") else {
            element.key = try text(depth: depth)
            return
        }
        // An element added by hand has no comment: it belongs to no guest, so guest events leave
        // it alone and sync or reapply (which rebuild every owner) remove it.
        var key: String?
        var comment = ""
        var plain = TextObject()
        try members(depth: depth) { parser, name, depth in
            if name == "elem" {
                parser.skipWhitespace()
                guard parser.position < parser.bytes.count, parser.bytes[parser.position] == UInt8(ascii: "{") else {
                    _ = try parser.value(depth: depth)
                    return
                }
                try parser.members(depth: depth) { parser, name, depth in
                    switch name {
                    case "val": key = try parser.text(depth: depth)
                    case "comment": if case .string(let text) = try parser.value(depth: depth) { comment = text }
                    default: _ = try parser.value(depth: depth)
                    }
                }
            } else {
                try parser.textMember(name, into: &plain, depth: depth)
            }
        }
        if let key {
            element.key = key
            element.comment = comment
        } else {
            element.key = try plain.text()
        }
    }

    /// What a key or value object can hold, in the order it is read.
    struct TextObject {
        var concat: String?, prefix: String?, range: String?

        func text() throws -> String {
            guard let text = concat ?? prefix ?? range else { throw VirtGateError(.firewall, "nft -j: unexpected element part") }
            return text
        }
    }

    /// A key or value in the textual form `NftRules` renders: a string as it is, a number in
    /// decimal, `a . b` for a concatenation, `addr/len` for a prefix, `a-b` for a range.
    mutating func text(depth: Int) throws -> String {
        guard depth < Self.maximumDepth else { throw failure("nested too deep") }
        skipWhitespace()
        guard position < bytes.count else { throw failure("unexpected end") }
        switch bytes[position] {
        case UInt8(ascii: "\""):
            return try string()
        case UInt8(ascii: "{"):
            var object = TextObject()
            try members(depth: depth) { parser, name, depth in
                try parser.textMember(name, into: &object, depth: depth)
            }
            return try object.text()
        case UInt8(ascii: "["), UInt8(ascii: "t"), UInt8(ascii: "f"), UInt8(ascii: "n"):
            _ = try value(depth: depth)
            throw VirtGateError(.firewall, "nft -j: unexpected element part")
        default:
            return try Self.integer(try number())
        }
    }

    /// A number as nft means it in a key: an integer, in decimal.
    static func integer(_ number: Double) throws -> String {
        guard number.isFinite, abs(number) < 9.2e18 else { throw VirtGateError(.firewall, "nft -j: unexpected element part") }
        return String(Int(number))
    }

    mutating func textMember(_ name: String, into object: inout TextObject, depth: Int) throws {
        switch name {
        case "concat":
            var parts: [String] = []
            var isArray = false
            skipWhitespace()
            if position < bytes.count, bytes[position] == UInt8(ascii: "[") {
                isArray = true
                try items(depth: depth) { parser, depth in parts.append(try parser.text(depth: depth)) }
            } else {
                _ = try value(depth: depth)
            }
            if isArray && object.concat == nil { object.concat = parts.joined(separator: " . ") }
        case "prefix":
            let prefix = try value(depth: depth)
            if let addr = prefix["addr"], case .number(let length)? = prefix["len"] {
                object.prefix = "\(try Self.text(addr))/\(try Self.integer(length))"
            }
        case "range":
            let range = try value(depth: depth)
            if case .array(let bounds) = range, bounds.count == 2 {
                object.range = "\(try Self.text(bounds[0]))-\(try Self.text(bounds[1]))"
            }
        default:
            _ = try value(depth: depth)
        }
    }

    /// The same for a value already in a tree (prefixes and ranges, which are few).
    static func text(_ value: JSONValue) throws -> String {
        switch value {
        case .string(let text): return text
        case .number(let number): return try integer(number)
        case .object:
            if case .array(let parts)? = value["concat"] { return try parts.map(text).joined(separator: " . ") }
            if let prefix = value["prefix"], let addr = prefix["addr"], case .number(let length)? = prefix["len"] {
                return "\(try text(addr))/\(try integer(length))"
            }
            if case .array(let bounds)? = value["range"], bounds.count == 2 {
                return "\(try text(bounds[0]))-\(try text(bounds[1]))"
            }
        default: break
        }
        throw VirtGateError(.firewall, "nft -j: unexpected element part")
    }

    /// Calls `body` for each member of the object at the current position, after its key.
    mutating func members(depth: Int, _ body: (inout JSONParser, String, Int) throws -> Void) throws {
        guard depth < Self.maximumDepth else { throw failure("nested too deep") }
        try expect(UInt8(ascii: "{"))
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "}") { position += 1; return }
        while true {
            skipWhitespace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else { throw failure("expected a key") }
            let key = try string()
            try expect(UInt8(ascii: ":"))
            try body(&self, key, depth + 1)
            skipWhitespace()
            guard position < bytes.count else { throw failure("unexpected end") }
            if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
            if bytes[position] == UInt8(ascii: "}") { position += 1; return }
            throw failure("expected ',' or '}'")
        }
    }

    /// Calls `body` for each item of the array at the current position.
    mutating func items(depth: Int, _ body: (inout JSONParser, Int) throws -> Void) throws {
        guard depth < Self.maximumDepth else { throw failure("nested too deep") }
        try expect(UInt8(ascii: "["))
        skipWhitespace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "]") { position += 1; return }
        while true {
            try body(&self, depth + 1)
            skipWhitespace()
            guard position < bytes.count else { throw failure("unexpected end") }
            if bytes[position] == UInt8(ascii: ",") { position += 1; continue }
            if bytes[position] == UInt8(ascii: "]") { position += 1; return }
            throw failure("expected ',' or ']'")
        }
    }
}
