/// virtgate's nftables table as the kernel has it, read from `nft -p list table inet virtgate`.
public struct NftState: Hashable, Sendable {
    public var exists = false
    /// The layout marker chain's name, nil when there is none.
    public var layout: String?
    /// How many of the layout's base chains (`NftLayout.baseChains`) the table has: all of them once
    /// it held a forward, none while it has held only networks' gateways.
    public var baseChains = 0
    /// Every element of virtgate's maps and sets, keys and values in the form virtgate renders.
    public var elements: [NftElement] = []
    /// Elements left out of `elements` by a scoped read (`NftReadScope`): owners this change does
    /// not touch. While there are any, the table is not the change's to remove.
    public var unreadElements = 0

    public init() {}

    public init(exists: Bool, layout: String?, baseChains: Int = NftLayout.baseChains.count, elements: [NftElement]) {
        self.exists = exists
        self.layout = layout
        self.baseChains = baseChains
        self.elements = elements
    }

    /// Elements per owner id, as `NftTransaction` wants them.
    public var ownerElements: DesiredElements {
        Dictionary(grouping: elements, by: \.owner)
    }

    /// Parses nft's listing of the table (`nft -p list table inet virtgate`: protocols as numbers).
    /// Elements are printed there in the very syntax virtgate renders them in, so each key and value
    /// is taken as it stands. libnftables builds its JSON listing as a tree and prints it (at 5,000
    /// elements 394M instructions against 219M for this form), and reading the JSON back cost 55M
    /// more. Unknown objects and lines are ignored; an element virtgate cannot read is an error, since
    /// it could not be removed either.
    public init(listing: String) throws {
        var text = listing
        self = try text.withUTF8 { bytes in
            var reader = NftListingReader(bytes: bytes)
            return try reader.read()
        }
    }

    /// Parses nft's JSON listing (`nft -j list table inet virtgate`), the same way.
    public init(json: String) throws {
        var json = json
        let listing = try json.withUTF8 { bytes in
            var parser = JSONParser(bytes: bytes)
            return try parser.listing()
        }
        exists = listing.exists
        layout = listing.layout
        baseChains = listing.baseChains
        elements = listing.elements
    }

    /// The forwards guests hold in the kernel, for conflict checks (the first guest keeps a port).
    public func forwardClaims(names: [String: String] = [:]) -> [ForwardClaim] {
        var claims: [ForwardClaim] = []
        claims.reserveCapacity(elements.count)
        for element in elements {
            guard let (scope, family) = NftLayout.dnatMaps[element.set] else { continue }
            let parts = Self.fields(element.key)
            let count: Int = switch scope {
            case .any: 2
            case .address, .sourceAny: 3
            case .source: 4
            }
            guard parts.count == count, let number = UInt8(parts[count - 2]), let proto = TransportProtocol(number: number),
                  case .success(let ports) = PortRange.parse(parts[count - 1]) else { continue }
            let guest = names[element.owner] ?? element.owner
            let claim: ForwardClaim? = switch scope {
            case .any:
                ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: nil, hostPorts: ports, sources: [])
            case .address:
                ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: IPAddress(parts[0]), hostPorts: ports, sources: [])
            case .source:
                ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: IPNetwork(parsing: parts[1])?.address,
                             hostPorts: ports, sources: IPNetwork(parsing: parts[0]).map { [$0] } ?? [])
            case .sourceAny:
                ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: nil, hostPorts: ports,
                             sources: IPNetwork(parsing: parts[0]).map { [$0] } ?? [])
            }
            if let claim { claims.append(claim) }
        }
        return claims
    }

    /// The fields of a concatenated key, `a . b . c`.
    static func fields(_ key: String) -> [Substring] {
        var fields: [Substring] = []
        let bytes = key.utf8
        var start = bytes.startIndex, index = bytes.startIndex
        while index != bytes.endIndex {
            // " . " at index: a field ends before it.
            let second = bytes.index(after: index)
            if bytes[index] == 0x20, second != bytes.endIndex, bytes[second] == UInt8(ascii: "."),
               case let third = bytes.index(after: second), third != bytes.endIndex, bytes[third] == 0x20 {
                fields.append(key[start..<index])
                index = bytes.index(after: third)
                start = index
            } else {
                index = second
            }
        }
        fields.append(key[start...])
        return fields
    }
}

/// Base chains of other nftables tables that drop forwarded packets by policy, from
/// `nft -j list chains`. iptables-nft's own tables (`ip filter`, `ip6 filter`) are left out: virtgate's
/// accepts live there, ahead of such a drop. So is virtgate's table.
public enum NftForeignChains {
    public static func forwardDrops(json: String) throws -> [String] {
        let document = try JSONValue.parse(json)
        guard case .array(let objects)? = document["nftables"] else { return [] }
        var result: [String] = []
        for object in objects {
            guard let chain = object["chain"], case .string(let family)? = chain["family"],
                  case .string(let table)? = chain["table"], case .string(let name)? = chain["name"],
                  case .string("forward")? = chain["hook"], case .string("drop")? = chain["policy"] else { continue }
            if (family == "ip" || family == "ip6") && table == "filter" { continue }
            if family == "inet" && table == NftLayout.table { continue }
            result.append("\(family) \(table) \(name)")
        }
        return result
    }
}

/// nft's text listing of virtgate's table, line by line: `table … {` opens it, a line ending in `{`
/// inside it opens an object (`map NAME {`, `set NAME {`, `chain NAME {`, anything else nft prints),
/// a lone `}` closes one. Rules print their anonymous sets on their own line, so only a set's
/// `elements = { … }` spans lines; it is read element by element: `KEY [statements] [comment "…"]
/// [: VALUE]`, where a key or value is tokens joined by ` . `.
struct NftListingReader {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0

    init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    func failure(_ what: String) -> VirtGateError {
        VirtGateError(.firewall, "nft list table: \(what) at byte \(position)")
    }

    mutating func read() throws -> NftState {
        var state = NftState()
        var depth = 0
        // The map or set whose block this is.
        var set: String?
        while position < bytes.count {
            var start = position
            while start < bytes.count, bytes[start] == 0x20 || bytes[start] == 0x09 { start += 1 }
            var end = start
            while end < bytes.count, bytes[end] != 0x0A { end += 1 }
            var last = end
            while last > start, bytes[last - 1] == 0x20 || bytes[last - 1] == 0x09 { last -= 1 }
            let line = UnsafeBufferPointer(rebasing: bytes[start..<last])
            position = end < bytes.count ? end + 1 : end
            if line.count == 1, line[0] == UInt8(ascii: "}") {
                depth = max(depth - 1, 0)
                if depth < 2 { set = nil }
                continue
            }
            let opens = line.last == UInt8(ascii: "{")
            switch depth {
            case 0:
                if opens, Self.word(line, 0) == "table" {
                    state.exists = true
                    depth = 1
                }
            case 1:
                guard opens else { continue }
                depth = 2
                let kind = Self.word(line, 0)
                if kind == "map" || kind == "set" {
                    set = Self.word(line, 1)
                } else if kind == "chain", let name = Self.word(line, 1) {
                    if name.hasPrefix("layout-") { state.layout = name }
                    if NftLayout.baseChains.contains(name) { state.baseChains += 1 }
                }
            default:
                guard let set, Self.hasPrefix(line, "elements = {") else {
                    if opens { depth += 1 }
                    continue
                }
                // The elements start on this line and may end on a later one.
                position = start + "elements = {".utf8.count
                try elements(of: set, into: &state.elements)
                skipLine()
            }
        }
        return state
    }

    /// The `index`th space-separated word of `line`.
    static func word(_ line: UnsafeBufferPointer<UInt8>, _ index: Int) -> String? {
        var count = 0, start = 0
        while start < line.count {
            var end = start
            while end < line.count, line[end] != 0x20 { end += 1 }
            if end > start {
                if count == index { return String(decoding: UnsafeBufferPointer(rebasing: line[start..<end]), as: UTF8.self) }
                count += 1
            }
            start = end + 1
        }
        return nil
    }

    static func hasPrefix(_ line: UnsafeBufferPointer<UInt8>, _ prefix: StaticString) -> Bool {
        let count = prefix.utf8CodeUnitCount
        return line.count >= count && (0..<count).allSatisfy { line[$0] == prefix.utf8Start[$0] }
    }

    mutating func skipLine() {
        while position < bytes.count, bytes[position] != 0x0A { position += 1 }
        if position < bytes.count { position += 1 }
    }

    mutating func skipSpace() {
        while position < bytes.count, bytes[position] == 0x20 || bytes[position] == 0x09 || bytes[position] == 0x0A {
            position += 1
        }
    }

    static func isSpace(_ byte: UInt8) -> Bool { byte == 0x20 || byte == 0x09 || byte == 0x0A }

    /// After `elements = {`, up to and including the closing `}`.
    mutating func elements(of set: String, into elements: inout [NftElement]) throws {
        skipSpace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "}") { position += 1; return }
        while true {
            var element = NftElement(set: set, key: try concatenation(), value: nil, comment: "")
            // What may follow the key: statements virtgate never writes (counter, timeout, expires…:
            // skipped, as the JSON reader did), then the comment, then the value.
            var commented = false
            while true {
                skipSpace()
                guard position < bytes.count else { throw failure("unterminated elements") }
                let byte = bytes[position]
                if byte == UInt8(ascii: ",") || byte == UInt8(ascii: "}") {
                    position += 1
                    elements.append(element)
                    if byte == UInt8(ascii: "}") { return }
                    skipSpace()
                    break
                }
                guard element.value == nil else { throw failure("unexpected text after an element's value") }
                if byte == UInt8(ascii: ":"), position + 1 < bytes.count, Self.isSpace(bytes[position + 1]) {
                    position += 1
                    skipSpace()
                    element.value = try concatenation()
                    continue
                }
                guard !commented else { throw failure("unexpected text after an element's comment") }
                if byte == UInt8(ascii: "\"") {
                    _ = try quoted()
                    continue
                }
                let word = token()
                if word.count == 7, Self.equal(word, "comment") {
                    skipSpace()
                    guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else {
                        throw failure("comment without a quoted string")
                    }
                    element.comment = try quoted()
                    commented = true
                }
            }
        }
    }

    static func equal(_ bytes: UnsafeBufferPointer<UInt8>, _ word: StaticString) -> Bool {
        bytes.count == word.utf8CodeUnitCount && (0..<bytes.count).allSatisfy { bytes[$0] == word.utf8Start[$0] }
    }

    /// A run of bytes up to a space, `,` or `}`.
    mutating func token() -> UnsafeBufferPointer<UInt8> {
        let start = position
        while position < bytes.count {
            let byte = bytes[position]
            if Self.isSpace(byte) || byte == UInt8(ascii: ",") || byte == UInt8(ascii: "}") { break }
            position += 1
        }
        return UnsafeBufferPointer(rebasing: bytes[start..<position])
    }

    /// `a . b . c` as it stands: the form virtgate renders keys and values in.
    mutating func concatenation() throws -> String {
        let start = position
        while true {
            guard !token().isEmpty else { throw failure("an element part is missing") }
            // " . " continues the concatenation.
            guard position + 2 < bytes.count, bytes[position] == 0x20, bytes[position + 1] == UInt8(ascii: "."),
                  bytes[position + 2] == 0x20 else { break }
            position += 3
        }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
    }

    /// `"…"`: nft prints a comment between quotes as it is (its own syntax has no escapes).
    mutating func quoted() throws -> String {
        position += 1
        let start = position
        while position < bytes.count, bytes[position] != UInt8(ascii: "\"") {
            guard bytes[position] != 0x0A else { throw failure("unterminated string") }
            position += 1
        }
        guard position < bytes.count else { throw failure("unterminated string") }
        defer { position += 1 }
        return String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
    }
}
