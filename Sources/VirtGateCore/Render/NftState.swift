#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// virtgate's nftables table as the kernel has it, read from `nft -j list table inet virtgate`.
public struct NftState: Hashable, Sendable {
    public var exists = false
    /// The layout marker chain's name, nil when there is none.
    public var layout: String?
    /// Every element of virtgate's maps and sets, keys and values in the form virtgate renders.
    public var elements: [NftElement] = []

    public init() {}

    public init(exists: Bool, layout: String?, elements: [NftElement]) {
        self.exists = exists
        self.layout = layout
        self.elements = elements
    }

    /// Elements per owner id, as `NftTransaction` wants them.
    public var ownerElements: DesiredElements {
        Dictionary(grouping: elements, by: \.owner)
    }

    /// Parses nft's JSON listing. Unknown objects are ignored; an element virtgate cannot read is
    /// an error, since it could not be removed either.
    public init(json: String) throws {
        let document = try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8))
        guard case .array(let objects)? = document["nftables"] else {
            throw VirtGateError(.firewall, "nft -j: no nftables array")
        }
        for object in objects {
            if object["table"] != nil { exists = true }
            if case .string(let name)? = object["chain"]?["name"], name.hasPrefix("layout-") { layout = name }
            for kind in ["map", "set"] {
                guard let set = object[kind], case .string(let name)? = set["name"] else { continue }
                guard case .array(let items)? = set["elem"] else { continue }
                for item in items {
                    elements.append(try Self.element(item, set: name, isMap: kind == "map"))
                }
            }
        }
    }

    static func element(_ item: JSONValue, set: String, isMap: Bool) throws -> NftElement {
        var keyPart = item
        var value: String?
        if isMap {
            guard case .array(let pair) = item, pair.count == 2 else { throw VirtGateError(.firewall, "nft -j: unreadable element in \(set)") }
            keyPart = pair[0]
            value = try text(pair[1])
        }
        // An element added by hand has no comment: it belongs to no guest, so guest events leave it
        // alone and sync or reapply (which rebuild every owner) remove it.
        if let elem = keyPart["elem"], let val = elem["val"] {
            var comment = ""
            if case .string(let text)? = elem["comment"] { comment = text }
            return NftElement(set: set, key: try text(val), value: value, comment: comment)
        }
        return NftElement(set: set, key: try text(keyPart), value: value, comment: "")
    }

    /// A key or value in the textual form `NftRules` renders.
    static func text(_ value: JSONValue) throws -> String {
        switch value {
        case .string(let text): return text
        case .number(let number): return String(Int(number))
        case .object:
            if case .array(let parts)? = value["concat"] { return try parts.map(text).joined(separator: " . ") }
            if let prefix = value["prefix"], let addr = prefix["addr"], case .number(let length)? = prefix["len"] {
                return "\(try text(addr))/\(Int(length))"
            }
            if case .array(let bounds)? = value["range"], bounds.count == 2 {
                return "\(try text(bounds[0]))-\(try text(bounds[1]))"
            }
        default: break
        }
        throw VirtGateError(.firewall, "nft -j: unexpected element part")
    }

    /// The forwards guests hold in the kernel, for conflict checks (the first guest keeps a port).
    public func forwardClaims(names: [String: String] = [:]) -> [ForwardClaim] {
        var claims: [ForwardClaim] = []
        for element in elements {
            let guest = names[element.owner] ?? element.owner
            let parts = element.key.components(separatedBy: " . ")
            for family in IPFamily.allCases {
                let claim: ForwardClaim?
                func ports(_ text: String) -> PortRange? {
                    if case .success(let range) = PortRange.parse(text) { return range }
                    return nil
                }
                switch element.set {
                case NftLayout.map(.any, family, ranges: false) where parts.count == 2,
                     NftLayout.map(.any, family, ranges: true) where parts.count == 2:
                    claim = UInt8(parts[0]).flatMap(TransportProtocol.init(number:)).flatMap { proto in ports(parts[1]).map {
                        ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: nil, hostPorts: $0, sources: [])
                    } }
                case NftLayout.map(.address, family, ranges: false) where parts.count == 3,
                     NftLayout.map(.address, family, ranges: true) where parts.count == 3:
                    claim = UInt8(parts[1]).flatMap(TransportProtocol.init(number:)).flatMap { proto in ports(parts[2]).map {
                        ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: IPAddress(parts[0]), hostPorts: $0, sources: [])
                    } }
                case NftLayout.map(.source, family, ranges: false) where parts.count == 4,
                     NftLayout.map(.source, family, ranges: true) where parts.count == 4:
                    claim = UInt8(parts[2]).flatMap(TransportProtocol.init(number:)).flatMap { proto in ports(parts[3]).map {
                        ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: IPNetwork(parsing: parts[1])?.address,
                                     hostPorts: $0, sources: IPNetwork(parsing: parts[0]).map { [$0] } ?? [])
                    } }
                case NftLayout.map(.sourceAny, family, ranges: false) where parts.count == 3,
                     NftLayout.map(.sourceAny, family, ranges: true) where parts.count == 3:
                    claim = UInt8(parts[1]).flatMap(TransportProtocol.init(number:)).flatMap { proto in ports(parts[2]).map {
                        ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: nil, hostPorts: $0,
                                     sources: IPNetwork(parsing: parts[0]).map { [$0] } ?? [])
                    } }
                default:
                    claim = nil
                }
                if let claim { claims.append(claim) }
            }
        }
        return claims
    }
}

/// Base chains of other nftables tables that drop forwarded packets by policy, from
/// `nft -j list chains`. iptables-nft's own tables (`ip filter`, `ip6 filter`) are left out: virtgate's
/// accepts live there, ahead of such a drop. So is virtgate's table.
public enum NftForeignChains {
    public static func forwardDrops(json: String) throws -> [String] {
        let document = try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8))
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

/// Just enough JSON for nft's listing.
indirect enum JSONValue: Decodable, Hashable {
    case string(String), number(Double), bool(Bool), null, array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        // Tried in the order nft's listing uses them most (strings, objects, numbers): every failed
        // attempt is a thrown decoding error, and a table of thousands of elements has many nodes.
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([String: JSONValue].self) { self = .object(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .bool(try container.decode(Bool.self)) }
    }

    subscript(key: String) -> JSONValue? {
        if case .object(let members) = self { return members[key] }
        return nil
    }
}
