/// virtgate's nftables table as the kernel has it, read from `nft -j list table inet virtgate`.
public struct NftState: Hashable, Sendable {
    public var exists = false
    /// The layout marker chain's name, nil when there is none.
    public var layout: String?
    /// Every element of virtgate's maps and sets, keys and values in the form virtgate renders.
    public var elements: [NftElement] = []
    /// Elements left out of `elements` by a scoped read (`NftReadScope`): owners this change does
    /// not touch. While there are any, the table is not the change's to remove.
    public var unreadElements = 0

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
        var json = json
        let listing = try json.withUTF8 { bytes in
            var parser = JSONParser(bytes: bytes)
            return try parser.listing()
        }
        exists = listing.exists
        layout = listing.layout
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
