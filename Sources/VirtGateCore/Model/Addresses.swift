/// Value types for the addresses and ports that appear in libvirt XML and in virtgate's metadata.
/// Each parses strictly: anything it does not accept returns nil, and the caller reports the field.

public struct IPv4Address: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let value: UInt32

    public init(_ value: UInt32) { self.value = value }

    /// Dotted quad only: exactly four decimal octets, no leading zeros (which some tools read as octal).
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  !(part.count > 1 && part.first == "0"),
                  let octet = UInt32(part), octet <= 255 else { return nil }
            value = value << 8 | octet
        }
        self.value = value
    }

    public var description: String {
        "\(value >> 24).\(value >> 16 & 0xff).\(value >> 8 & 0xff).\(value & 0xff)"
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.value < rhs.value }
}

/// An IPv4 network in CIDR form. `init(parsing:)` requires the host bits to be zero, as iptables would
/// silently mask them and the admin most likely mistyped.
public struct IPv4Network: Hashable, Sendable, CustomStringConvertible {
    public let address: IPv4Address
    public let prefix: Int

    public init(address: IPv4Address, prefix: Int) {
        precondition((0...32).contains(prefix))
        self.address = IPv4Address(address.value & Self.mask(prefix))
        self.prefix = prefix
    }

    /// "a.b.c.d/n" or a bare address (a /32).
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count <= 2, let address = IPv4Address(parts[0]) else { return nil }
        var prefix = 32
        if parts.count == 2 {
            guard !parts[1].isEmpty, parts[1].count <= 2, parts[1].allSatisfy({ $0.isASCII && $0.isNumber }),
                  let value = Int(parts[1]), (0...32).contains(value) else { return nil }
            prefix = value
        }
        guard address.value & ~Self.mask(prefix) == 0 else { return nil }
        self.init(address: address, prefix: prefix)
    }

    public static func mask(_ prefix: Int) -> UInt32 {
        prefix == 0 ? 0 : UInt32.max << UInt32(32 - prefix)
    }

    /// Prefix length of a dotted netmask such as 255.255.255.0; nil for a non-contiguous mask.
    public static func prefix(ofNetmask netmask: IPv4Address) -> Int? {
        let ones = netmask.value.nonzeroBitCount
        return mask(ones) == netmask.value ? ones : nil
    }

    public func contains(_ other: IPv4Address) -> Bool {
        other.value & Self.mask(prefix) == address.value
    }

    /// The form iptables-save prints: always with the prefix length.
    public var description: String { "\(address)/\(prefix)" }
}

public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    /// Lower-case, colon separated, as libvirt prints it.
    public let description: String

    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6, parts.allSatisfy({ $0.count == 2 && $0.allSatisfy(\.isHexDigit) }) else {
            return nil
        }
        description = parts.joined(separator: ":").lowercased()
    }
}

public struct PortRange: Hashable, Sendable, CustomStringConvertible {
    public let lower: UInt16
    public let upper: UInt16

    public init(_ lower: UInt16, _ upper: UInt16) {
        precondition(lower >= 1 && lower <= upper)
        self.lower = lower
        self.upper = upper
    }

    public enum ParseError: Error, Equatable {
        case notANumber, outOfRange, reversed
    }

    /// "N" or "N-M", 1...65535, N <= M.
    public static func parse(_ text: some StringProtocol) -> Result<PortRange, ParseError> {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2 else { return .failure(.notANumber) }
        var values: [Int] = []
        for part in parts {
            guard !part.isEmpty, part.count <= 5, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let value = Int(part) else { return .failure(.notANumber) }
            guard (1...65535).contains(value) else { return .failure(.outOfRange) }
            values.append(value)
        }
        let lower = values[0], upper = values.last!
        guard lower <= upper else { return .failure(.reversed) }
        return .success(PortRange(UInt16(lower), UInt16(upper)))
    }

    public var count: Int { Int(upper) - Int(lower) + 1 }
    public var isSingle: Bool { lower == upper }

    /// "N" or "N-M" as written in metadata.
    public var description: String { isSingle ? "\(lower)" : "\(lower)-\(upper)" }
    /// "N" or "N:M" as iptables matches take it.
    public var matchSyntax: String { isSingle ? "\(lower)" : "\(lower):\(upper)" }
}

public enum TransportProtocol: String, Hashable, Sendable, CaseIterable {
    case tcp, udp, sctp
}
