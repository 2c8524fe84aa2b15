import VirtGateCore

/// virtgate's nftables table as a model: applies the scripts `NftTransaction` renders, checking
/// their shape line by line, and lists the table in the forms `nft -p list table` and `nft -j list
/// table` print (as far as virtgate reads them: the layout chain, the base chains, maps and their elements with
/// comments), so that what was written is read back through `NftState(listing:)`, the reader
/// conflict checks depend on, and `NftState(json:)` agrees with it.
///
/// This is a model, not nft: it holds the script to the grammar virtgate uses (the fixed table
/// definition, `add element`/`delete element` lines with one key form per map), and each key and
/// value to the characters and part counts of its map's type. The real nft is run on golden scripts
/// by the root tests.
public struct NftKernel {
    public var exists = false
    public var layout: String?
    /// Whether the table has its base chains (`NftLayout.baseChains`).
    public var hooked = false
    /// map or set name → key → (value, comment); a set's elements have no value ("").
    var maps: [String: [String: (value: String, comment: String)]] = [:]

    let mark: UInt32

    public init(mark: UInt32) { self.mark = mark }

    /// Map name → (address type per key part: "a" address, "n" network, "p" protocol number, "s" port).
    static func keyShape(_ map: String) -> [Character]? {
        let base = map.hasSuffix("range") ? String(map.dropLast(5)) : map
        switch base {
        case "fwd4", "fwd6": return ["a", "p", "s"]
        case "fwd4any", "fwd6any": return ["p", "s"]
        case "fwd4src", "fwd6src": return ["n", "n", "p", "s"]
        case "fwd4srcany", "fwd6srcany": return ["n", "p", "s"]
        case "gw4", "gw6": return ["a"]
        default: return nil
        }
    }

    /// Maps keyed by port intervals (layout 3) map to the guest address alone.
    static func valueShape(_ map: String) -> [Character] { map.hasSuffix("range") ? ["a"] : ["a", "s"] }

    /// The gateway sets: keys alone, no value.
    static func isSet(_ name: String) -> Bool { name == "gw4" || name == "gw6" }

    public mutating func apply(_ script: String) {
        guard !script.isEmpty else { return }
        require(script.hasSuffix("\n"), "nft script: no final newline")
        var rest = Substring(script)
        let drop = "table inet \(NftLayout.table)\ndelete table inet \(NftLayout.table)\n"
        if rest.hasPrefix(drop) {
            require(exists, "nft script deletes a table that was not there")
            exists = false
            layout = nil
            hooked = false
            maps = [:]
            rest = rest.dropFirst(drop.count)
        }
        for withHooks in [true, false] {
            let definition = NftLayout.definition(mark: mark, hooked: withHooks)
            if rest.hasPrefix(definition) {
                require(!exists, "nft script defines the table over an existing one of the same layout")
                exists = true
                layout = NftLayout.marker(mark: mark)
                hooked = withHooks
                rest = rest.dropFirst(definition.count)
                break
            }
        }
        let hooks = NftLayout.baseChainDefinition(mark: mark)
        if rest.hasPrefix(hooks) {
            require(exists && layout == NftLayout.marker(mark: mark) && !hooked, "nft script adds base chains the table has, or to no table")
            hooked = true
            rest = rest.dropFirst(hooks.count)
        }
        for line in rest.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            let context = "nft line \(InputProblem.quoted(String(line)))"
            require(exists && layout == NftLayout.marker(mark: mark), "\(context): element line without the table")
            let add = "add element inet \(NftLayout.table) ", delete = "delete element inet \(NftLayout.table) "
            let isAdd = line.hasPrefix(add)
            require(isAdd || line.hasPrefix(delete), "\(context): not an element line")
            let body = line.dropFirst(isAdd ? add.count : delete.count)
            guard let open = body.firstIndex(of: " ") else { violated("\(context): no map name") }
            let map = String(body[..<open])
            guard let shape = Self.keyShape(map) else { violated("\(context): unknown map \(map)") }
            var items = body[body.index(after: open)...]
            require(items.hasPrefix("{ ") && items.hasSuffix(" }"), "\(context): no element list")
            items = items.dropFirst(2).dropLast(2)
            for item in items.split(separator: ", ", omittingEmptySubsequences: false).map(String.init) {
                if isAdd {
                    guard let quote = item.firstRange(of: " comment \"") else { violated("\(context): element without a comment") }
                    let key = String(item[..<quote.lowerBound])
                    let tail = item[quote.upperBound...]
                    guard let close = tail.firstIndex(of: "\"") else { violated("\(context): unterminated comment") }
                    let comment = String(tail[..<close])
                    let after = tail[tail.index(after: close)...]
                    let value: String
                    if Self.isSet(map) {
                        require(after.isEmpty, "\(context): set element with a value")
                        value = ""
                    } else {
                        require(after.hasPrefix(" : "), "\(context): map element without a value")
                        value = String(after.dropFirst(3))
                        checkKey(value, shape: Self.valueShape(map), context)
                    }
                    checkKey(key, shape: shape, context)
                    require(!comment.isEmpty && comment.utf8.count <= 128, "\(context): comment length \(comment.utf8.count)")
                    require(comment.unicodeScalars.allSatisfy(Self.isCommentCharacter),
                            "\(context): comment \(InputProblem.quoted(comment)) has characters nft would misread")
                    require(maps[map]?[key] == nil, "\(context): adds element \(key) that is already there")
                    maps[map, default: [:]][key] = (value, comment)
                } else {
                    checkKey(item, shape: shape, context)
                    require(maps[map]?[item] != nil, "\(context): deletes element \(item) that is not there")
                    maps[map]![item] = nil
                }
            }
        }
    }

    /// Printable ASCII without space, quote or backslash: what an element comment can hold unquoted.
    static func isCommentCharacter(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value > 0x20 && scalar.value < 0x7f && scalar != "\"" && scalar != "\\"
    }

    func checkKey(_ key: String, shape: [Character], _ context: String) {
        let parts = key.split(separator: " . ", omittingEmptySubsequences: false).map(String.init)
        require(parts.count == shape.count, "\(context): \(InputProblem.quoted(key)) has \(parts.count) parts, not \(shape.count)")
        for (part, kind) in zip(parts, shape) {
            let ok: Bool = switch kind {
            case "a": IPAddress(part) != nil
            case "n": IPAddress(part) != nil || IPNetwork(parsing: part) != nil
            case "p": UInt8(part).map { [6, 17, 132].contains($0) } ?? false
            default: Self.ports(part) != nil
            }
            require(ok, "\(context): key part \(InputProblem.quoted(part)) of \(InputProblem.quoted(key)) is not a \(kind)")
        }
    }

    /// A port or an interval `N-M` (N < M), as nft prints them.
    static func ports(_ text: String) -> (Int, Int)? {
        let bounds = text.split(separator: "-", omittingEmptySubsequences: false)
        guard (1...2).contains(bounds.count), let low = UInt16(bounds[0]), low > 0 else { return nil }
        guard bounds.count == 2 else { return (Int(low), Int(low)) }
        guard let high = UInt16(bounds[1]), high > low else { return nil }
        return (Int(low), Int(high))
    }

    /// As `nft -j list table inet virtgate` lists it (the parts virtgate reads).
    public var json: String {
        guard exists else { return "{\"nftables\": [{\"metainfo\": {\"json_schema_version\": 1}}]}" }
        var objects = ["{\"metainfo\": {\"json_schema_version\": 1}}",
                       "{\"table\": {\"family\": \"inet\", \"name\": \"\(NftLayout.table)\", \"handle\": 1}}"]
        if let layout { objects.append("{\"chain\": {\"family\": \"inet\", \"table\": \"\(NftLayout.table)\", \"name\": \"\(layout)\", \"handle\": 2}}") }
        for (index, chain) in (hooked ? NftLayout.baseChains : []).enumerated() {
            objects.append("{\"chain\": {\"family\": \"inet\", \"table\": \"\(NftLayout.table)\", \"name\": \"\(chain)\", \"handle\": \(3 + index), \"hook\": \"forward\"}}")
        }
        for (map, elements) in maps.sorted(by: { $0.key < $1.key }) where !elements.isEmpty {
            let set = Self.isSet(map)
            let items = elements.sorted { $0.key < $1.key }.map { key, entry in
                let element = "{\"elem\": {\"val\": \(Self.json(key)), \"comment\": \(Self.string(entry.comment))}}"
                return set ? element : "[\(element), \(Self.json(entry.value))]"
            }
            objects.append("{\"\(set ? "set" : "map")\": {\"family\": \"inet\", \"name\": \"\(map)\", \"table\": \"\(NftLayout.table)\", \"elem\": [\(items.joined(separator: ", "))]}}")
        }
        return "{\"nftables\": [\(objects.joined(separator: ", "))]}"
    }

    /// A key or value (`a . b . c`) as nft's JSON prints it: a concatenation of numbers, address
    /// strings and prefixes.
    static func json(_ text: String) -> String {
        let parts = text.split(separator: " . ", omittingEmptySubsequences: false).map(String.init).map { part -> String in
            if let slash = part.firstIndex(of: "/") {
                return "{\"prefix\": {\"addr\": \(string(String(part[..<slash]))), \"len\": \(part[part.index(after: slash)...])}}"
            }
            if let number = Int(part) { return "\(number)" }
            if part.contains("-"), let (low, high) = ports(part) { return "{\"range\": [\(low), \(high)]}" }
            return string(part)
        }
        return parts.count == 1 ? parts[0] : "{\"concat\": [\(parts.joined(separator: ", "))]}"
    }

    static func string(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// As `nft -p list table inet virtgate` lists it (the parts virtgate reads, in nft's layout:
    /// objects indented by a tab, long element lists wrapped).
    public var listing: String {
        guard exists else { return "" }
        var text = "table inet \(NftLayout.table) {\n"
        for (map, elements) in maps.sorted(by: { $0.key < $1.key }) {
            let set = Self.isSet(map)
            text += "\t\(set ? "set" : "map") \(map) {\n\t\ttype \(map)\n"
            if !elements.isEmpty {
                let items = elements.sorted { $0.key < $1.key }.map { key, entry in
                    "\(key)" + (entry.comment.isEmpty ? "" : " comment \"\(entry.comment)\"") + (set ? "" : " : \(entry.value)")
                }
                text += "\t\telements = { " + items.joined(separator: ",\n\t\t\t     ") + " }\n"
            }
            text += "\t}\n\n"
        }
        if let layout { text += "\tchain \(layout) {\n\t}\n" }
        for chain in hooked ? NftLayout.baseChains : [] { text += "\n\tchain \(chain) {\n\t\ttype filter hook forward priority 0; policy accept;\n\t}\n" }
        return text + "}\n"
    }

    /// What virtgate reads back; the JSON listing must say the same.
    public func state() -> NftState {
        let state: NftState
        do {
            state = try NftState(listing: listing)
        } catch {
            violated("nft listing of what was written is unreadable: \(error)")
        }
        let viaJSON: NftState
        do {
            viaJSON = try NftState(json: json)
        } catch {
            violated("nft JSON listing of what was written is unreadable: \(error)")
        }
        require(viaJSON == state, "nft's text and JSON listings of what was written are read differently")
        return state
    }
}
