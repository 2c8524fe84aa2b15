/// A host socket a forward would hide: a DNAT in PREROUTING wins over a local listener on the same
/// port, as a second `bind` would fail. Listening TCP sockets, bound UDP and SCTP sockets.
public struct HostSocket: Hashable, Sendable {
    public var proto: TransportProtocol
    public var address: IPAddress
    public var port: UInt16

    public init(proto: TransportProtocol, address: IPAddress, port: UInt16) {
        self.proto = proto
        self.address = address
        self.port = port
    }

    /// Bound to every address of its family (`0.0.0.0`, `::`; the latter also takes IPv4 unless
    /// the socket is IPv6-only, which /proc does not show: counted for both, to be safe).
    public var isWildcard: Bool { address.value == 0 }

    /// Whether a forward claiming `claim` would take this socket's traffic. Loopback-bound sockets
    /// never are: virtgate does not DNAT loopback destinations.
    public func isHidden(by claim: ForwardClaim) -> Bool {
        guard proto == claim.proto, claim.hostPorts.lower <= port, port <= claim.hostPorts.upper else { return false }
        if isWildcard { return address.family == claim.family || address.family == .v6 }
        guard address.family == claim.family, !address.isLoopback else { return false }
        return claim.hostAddress == nil || claim.hostAddress == address
    }

    public var summary: String { "\(proto.rawValue) \(address.bracketed):\(port)" }
}

/// Host sockets from /proc/net of the namespace virtgate runs in.
public enum ListeningSockets {
    /// Sockets of one /proc/net/{tcp,udp}[6] table: listening TCP (state 0A), bound UDP (state 07).
    public static func parse(_ table: String, proto: TransportProtocol, family: IPFamily) -> [HostSocket] {
        var result: [HostSocket] = []
        let wantedState = proto == .udp ? "07" : "0A"
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count > 3, fields[3] == wantedState,
                  let colon = fields[1].lastIndex(of: ":"),
                  let port = UInt16(fields[1][fields[1].index(after: colon)...], radix: 16),
                  let address = kernelHexAddress(fields[1][..<colon], family: family) else { continue }
            result.append(HostSocket(proto: proto, address: address, port: port))
        }
        return result
    }

    /// /proc/net/sctp/eps: `ENDPT SOCK STY SST HBKT LPORT UID INODE LADDRS…`, addresses in text.
    public static func parseSCTP(_ table: String) -> [HostSocket] {
        var result: [HostSocket] = []
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count > 8, let port = UInt16(fields[5]) else { continue }
            for text in fields[8...] {
                if let address = IPAddress(text) { result.append(HostSocket(proto: .sctp, address: address, port: port)) }
            }
        }
        return result
    }

    /// The kernel's hex form: IPv4 one 32-bit word, IPv6 four, each in host (little-endian) order.
    static func kernelHexAddress(_ text: Substring, family: IPFamily) -> IPAddress? {
        let digits = Array(text.utf8)
        guard digits.count == (family == .v4 ? 8 : 32) else { return nil }
        var value: UInt128 = 0
        for word in stride(from: 0, to: digits.count, by: 8) {
            guard let host = UInt32(String(decoding: digits[word..<word + 8], as: UTF8.self), radix: 16) else { return nil }
            value = value << 32 | UInt128(host.byteSwapped)
        }
        return IPAddress(family: family, value: value)
    }

    public static func current(procNet: String = "/proc/net") -> [HostSocket] {
        var result: [HostSocket] = []
        for (file, proto, family) in [("tcp", TransportProtocol.tcp, IPFamily.v4), ("tcp6", .tcp, .v6),
                                      ("udp", .udp, .v4), ("udp6", .udp, .v6)] {
            if let text = read("\(procNet)/\(file)") { result += parse(text, proto: proto, family: family) }
        }
        if let text = read("\(procNet)/sctp/eps") { result += parseSCTP(text) }
        return result
    }
}

extension IPAddress {
    var isLoopback: Bool {
        family == .v4 ? value >> 24 == 127 : value == 1
    }
}
