/// Value types for the addresses and ports that appear in libvirt XML and in virtgate's metadata.
/// Each parses strictly: anything it does not accept returns nil, and the caller reports the field.

#if canImport(Glibc)
import Glibc
#endif

public enum IPFamily: String, Hashable, Sendable, CaseIterable, Comparable {
    case v4 = "ipv4", v6 = "ipv6"

    public var bits: Int { self == .v4 ? 32 : 128 }
    /// "IPv4" / "IPv6", for messages.
    public var label: String { self == .v4 ? "IPv4" : "IPv6" }
    public var any: IPNetwork { IPNetwork(address: IPAddress(family: self, value: 0), prefix: 0) }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs == .v4 && rhs == .v6 }
}

/// An IPv4 or IPv6 address. IPv4 keeps its value in the low 32 bits.
public struct IPAddress: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let family: IPFamily
    public let value: UInt128

    public init(family: IPFamily, value: UInt128) {
        self.family = family
        self.value = family == .v4 ? value & 0xffff_ffff : value
    }

    public init(_ v4: UInt32) { self.init(family: .v4, value: UInt128(v4)) }

    /// IPv4: dotted quad only, exactly four decimal octets, no leading zeros (which some tools read
    /// as octal). IPv6: what inet_pton accepts, without zone or brackets.
    public init?(_ text: some StringProtocol) {
        if let v4 = Self.parseV4(text) {
            self.init(v4)
        } else if text.utf8.contains(UInt8(ascii: ":")), let v6 = Self.parseV6(String(text)) {
            self.init(family: .v6, value: v6)
        } else {
            return nil
        }
    }

    static func parseV4(_ text: some StringProtocol) -> UInt32? { parseV4(utf8: text.utf8) }

    static func parseV4<Bytes: Sequence<UInt8>>(utf8 bytes: Bytes) -> UInt32? {
        // Byte by byte: addresses are parsed for every guest, lease and kernel element.
        var value: UInt32 = 0
        var octets = 0, digits = 0
        var octet: UInt32 = 0
        var leadingZero = false
        for byte in bytes {
            if byte == UInt8(ascii: ".") {
                guard digits > 0, octets < 3 else { return nil }
                value = value << 8 | octet
                octets += 1
                digits = 0
                octet = 0
                continue
            }
            guard byte >= 0x30 && byte <= 0x39, digits < 3, !leadingZero || digits == 0 else { return nil }
            if digits == 0 { leadingZero = byte == 0x30 } else if leadingZero { return nil }
            octet = octet * 10 + UInt32(byte - 0x30)
            digits += 1
            guard octet <= 255 else { return nil }
        }
        guard octets == 3, digits > 0 else { return nil }
        return value << 8 | octet
    }

    static func parseV6(_ text: String) -> UInt128? {
        guard text.utf8.count <= 45, text.utf8.allSatisfy({ byte in
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"), UInt8(ascii: "A")...UInt8(ascii: "F"),
                 UInt8(ascii: ":"), UInt8(ascii: "."): true
            default: false
            }
        }) else { return nil }
        var raw = in6_addr()
        guard inet_pton(AF_INET6, text, &raw) == 1 else { return nil }
        return withUnsafeBytes(of: &raw) { bytes in bytes.reduce(UInt128(0)) { $0 << 8 | UInt128($1) } }
    }

    /// IPv4 dotted; IPv6 in the compressed lower-case form (RFC 5952) that ip6tables-save and nft print.
    public var description: String {
        if family == .v4 {
            let v = UInt32(truncatingIfNeeded: value)
            // At most 15 bytes, written directly: every rendered element and rule has addresses.
            return String(unsafeUninitializedCapacity: 15) { buffer in
                var count = 0
                for shift in [24, 16, 8, 0] as [UInt32] {
                    let octet = UInt8(truncatingIfNeeded: v >> shift)
                    if shift != 24 { buffer[count] = UInt8(ascii: "."); count += 1 }
                    if octet >= 100 { buffer[count] = 0x30 + octet / 100; count += 1 }
                    if octet >= 10 { buffer[count] = 0x30 + octet / 10 % 10; count += 1 }
                    buffer[count] = 0x30 + octet % 10
                    count += 1
                }
                return count
            }
        }
        var raw = in6_addr()
        withUnsafeMutableBytes(of: &raw) { bytes in
            for index in 0..<16 { bytes[index] = UInt8(truncatingIfNeeded: value >> UInt128(8 * (15 - index))) }
        }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(AF_INET6, &raw, &buffer, socklen_t(buffer.count))
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Why no connection can ever arrive for this address as a host's local destination (a DNAT
    /// match on it would never fire), or nil when it can: loopback (PREROUTING never sees it, OUTPUT
    /// excludes it), multicast, the limited broadcast, the unspecified address, and IPv4-mapped IPv6.
    public var unusableAsLocalDestination: String? {
        switch family {
        case .v4:
            let v = UInt32(truncatingIfNeeded: value)
            if v == 0 { return "the unspecified address; leave host-address out for any local address" }
            if v >> 24 == 127 { return "a loopback address; forwards match only traffic from outside the host" }
            if v >> 28 == 0xe { return "a multicast address, never a connection's local destination" }
            if v == 0xffff_ffff { return "the limited broadcast address, never a connection's local destination" }
        case .v6:
            if value == 0 { return "the unspecified address; leave host-address out for any local address" }
            if value == 1 { return "the loopback address; forwards match only traffic from outside the host" }
            if value >> 120 == 0xff { return "a multicast address, never a connection's local destination" }
            if value >> 32 == 0xffff { return "an IPv4-mapped address, never seen by the IPv6 firewall; write the IPv4 address" }
        }
        return nil
    }

    /// `[v6]` where a port may follow.
    public var bracketed: String { family == .v6 ? "[\(self)]" : description }

    public static func < (lhs: Self, rhs: Self) -> Bool { (lhs.family, lhs.value) < (rhs.family, rhs.value) }
}

/// An IPv4 or IPv6 network in CIDR form. `init(parsing:)` requires the host bits to be zero, as
/// iptables would silently mask them and the admin most likely mistyped.
public struct IPNetwork: Hashable, Sendable, CustomStringConvertible {
    public let address: IPAddress
    public let prefix: Int

    public var family: IPFamily { address.family }

    public init(address: IPAddress, prefix: Int) {
        precondition((0...address.family.bits).contains(prefix))
        self.address = IPAddress(family: address.family, value: address.value & Self.mask(prefix, address.family))
        self.prefix = prefix
    }

    /// "address/n" or a bare address (a host network).
    public init?(parsing text: some StringProtocol) {
        // By bytes, not Characters: every source network of every element goes through here.
        let slash = text.utf8.firstIndex(of: UInt8(ascii: "/"))
        guard let address = IPAddress(text[..<(slash ?? text.endIndex)]) else { return nil }
        var prefix = address.family.bits
        if let slash {
            let digits = text.utf8[text.utf8.index(after: slash)...]
            guard !digits.isEmpty, digits.count <= 3, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                  !(digits.count > 1 && digits.first == 0x30) else { return nil }
            let value = digits.reduce(0) { $0 * 10 + Int($1 - 0x30) }
            guard (0...address.family.bits).contains(value) else { return nil }
            prefix = value
        }
        guard address.value & ~Self.mask(prefix, address.family) == 0 else { return nil }
        self.init(address: address, prefix: prefix)
    }

    public init(host: IPAddress) { self.init(address: host, prefix: host.family.bits) }

    public static func mask(_ prefix: Int, _ family: IPFamily) -> UInt128 {
        let all: UInt128 = family == .v4 ? 0xffff_ffff : .max
        return prefix == 0 ? 0 : all & (all << UInt128(family.bits - prefix))
    }

    /// Prefix length of a dotted netmask such as 255.255.255.0; nil for a non-contiguous mask.
    public static func prefix(ofNetmask netmask: IPAddress) -> Int? {
        guard netmask.family == .v4 else { return nil }
        let ones = netmask.value.nonzeroBitCount
        return mask(ones, .v4) == netmask.value ? ones : nil
    }

    public func contains(_ other: IPAddress) -> Bool {
        other.family == family && other.value & Self.mask(prefix, family) == address.value
    }

    /// The form iptables-save prints: always with the prefix length.
    public var description: String { "\(address)/\(prefix)" }

    /// `self` covers all of `other`.
    public func covers(_ other: IPNetwork) -> Bool {
        family == other.family && prefix <= other.prefix && contains(other.address)
    }

    /// An allow-list as the kernel wants it, in its own order: no entry twice or covered by another
    /// (an interval set refuses overlapping elements), and empty (anyone) when an entry is a whole
    /// family (`0.0.0.0/0`: iptables prints no `-s` for it, so a rule with one never reads back the same).
    public static func normalizedAllowList(_ networks: [IPNetwork]) -> [IPNetwork] {
        if networks.contains(where: { $0.prefix == 0 }) { return [] }
        var kept: [IPNetwork] = []
        for (index, network) in networks.enumerated() {
            // Dropped when another entry covers it: a wider one, or the same one earlier in the list.
            let covered = networks.enumerated().contains { other, wider in
                other != index && wider.covers(network) && (wider.prefix < network.prefix || other < index)
            }
            if !covered { kept.append(network) }
        }
        return kept
    }
}

public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    /// The six bytes, the first one highest: compared and hashed as one integer (a sync looks up
    /// thousands of NICs in reservations and leases).
    let bits: UInt64

    public init?(_ text: some StringProtocol) {
        // Six pairs of ASCII hex digits (Character.isHexDigit would also take fullwidth ones)
        // separated by colons: exactly 17 bytes, checked byte by byte.
        var bits: UInt64 = 0
        var count = 0
        for byte in text.utf8 {
            guard count < 17 else { return nil }
            if count % 3 == 2 {
                guard byte == UInt8(ascii: ":") else { return nil }
            } else {
                guard let digit = Self.hexDigitValue(byte) else { return nil }
                bits = bits << 4 | UInt64(digit)
            }
            count += 1
        }
        guard count == 17 else { return nil }
        self.bits = bits
    }

    /// Lower-case, colon separated, as libvirt prints it.
    public var description: String {
        func digit(_ value: UInt64) -> UInt8 { value < 10 ? 0x30 + UInt8(value) : 0x57 + UInt8(value) }
        var text: [UInt8] = []
        text.reserveCapacity(17)
        for index in 0..<6 {
            if index > 0 { text.append(UInt8(ascii: ":")) }
            let byte = bits >> (40 - 8 * UInt64(index)) & 0xff
            text.append(digit(byte >> 4))
            text.append(digit(byte & 15))
        }
        return String(decoding: text, as: UTF8.self)
    }

    static func hexDigitValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case 0x30...0x39: byte - 0x30
        case 0x41...0x46: byte - 0x41 + 10
        case 0x61...0x66: byte - 0x61 + 10
        default: nil
        }
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
        // Byte by byte (every forward and every kernel element has ports): one or two parts of
        // 1-5 ASCII digits around one '-', each checked in order as the parts come.
        var values: [Int] = []
        var value = 0, digits = 0, parts = 1
        for byte in text.utf8 where byte == UInt8(ascii: "-") { parts += 1 }
        guard parts <= 2 else { return .failure(.notANumber) }
        func finish() -> ParseError? {
            guard digits > 0 else { return .notANumber }
            guard (1...65535).contains(value) else { return .outOfRange }
            values.append(value)
            value = 0
            digits = 0
            return nil
        }
        for byte in text.utf8 {
            if byte == UInt8(ascii: "-") {
                if let error = finish() { return .failure(error) }
                continue
            }
            guard byte >= 0x30 && byte <= 0x39, digits < 5 else {
                // The rest of this part decides nothing: it is not a number.
                return .failure(.notANumber)
            }
            value = value * 10 + Int(byte - 0x30)
            digits += 1
        }
        if let error = finish() { return .failure(error) }
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

extension PortRange {
    /// Each port, lowest first, by a plain counter: the planner walks the ports of thousands of
    /// claims, and a `ClosedRange<UInt16>` went through the standard library's unspecialised code.
    public var ports: Ports { Ports(current: UInt32(lower), upper: UInt32(upper)) }

    public struct Ports: Sequence, IteratorProtocol, Sendable {
        var current: UInt32
        let upper: UInt32

        public mutating func next() -> UInt16? {
            guard current <= upper else { return nil }
            defer { current += 1 }
            return UInt16(current)
        }
    }
}

public enum TransportProtocol: String, Hashable, Sendable, CaseIterable {
    case tcp, udp, sctp

    /// The IP protocol number.
    public var number: UInt8 {
        switch self {
        case .tcp: 6
        case .udp: 17
        case .sctp: 132
        }
    }

    public init?(number: UInt8) {
        guard let match = Self.allCases.first(where: { $0.number == number }) else { return nil }
        self = match
    }
}
