#if canImport(Glibc)
import Glibc
#endif

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

    /// The namespace's host sockets. TCP and UDP come from the kernel's socket diagnostics
    /// (NETLINK_SOCK_DIAG), asked for listening TCP and unconnected UDP only: the kernel then walks
    /// its listening and UDP tables, not every established connection as reading /proc/net/tcp
    /// does (about 2 ms per family on a host, on each hook run that places forwards). A table the
    /// diagnostics cannot dump (inet_diag not available) is read from /proc/net instead.
    public static func current(procNet: String = "/proc/net") -> [HostSocket] {
        var result: [HostSocket] = []
        let diagnostics = SocketDiagnostics()
        for (file, proto, family) in [("tcp", TransportProtocol.tcp, IPFamily.v4), ("tcp6", .tcp, .v6),
                                      ("udp", .udp, .v4), ("udp6", .udp, .v6)] {
            if let sockets = diagnostics?.dump(proto: proto, family: family) {
                result += sockets
            } else if let text = read("\(procNet)/\(file)") {
                result += parse(text, proto: proto, family: family)
            }
        }
        if let text = read("\(procNet)/sctp/eps") { result += parseSCTP(text) }
        return result
    }

    /// The same tables from /proc/net only (the reference the diagnostics are tested against).
    public static func fromProc(procNet: String = "/proc/net") -> [HostSocket] {
        var result: [HostSocket] = []
        for (file, proto, family) in [("tcp", TransportProtocol.tcp, IPFamily.v4), ("tcp6", .tcp, .v6),
                                      ("udp", .udp, .v4), ("udp6", .udp, .v6)] {
            if let text = read("\(procNet)/\(file)") { result += parse(text, proto: proto, family: family) }
        }
        return result
    }
}

/// A NETLINK_SOCK_DIAG socket: dumps of one protocol and family, filtered by socket state in the
/// kernel. The request and reply layouts are the kernel's `inet_diag_req_v2` and `inet_diag_msg`
/// (linux/inet_diag.h), a stable ABI.
public struct SocketDiagnostics: ~Copyable {
    private let descriptor: Int32
    /// For every answer (not initialised: the kernel writes what is read).
    private let buffer: UnsafeMutableRawBufferPointer

    public init?() {
        descriptor = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 4 /* NETLINK_SOCK_DIAG */)
        guard descriptor >= 0 else { return nil }
        buffer = .allocate(byteCount: 32768, alignment: 8)
    }

    deinit {
        close(descriptor)
        buffer.deallocate()
    }

    /// Listening TCP sockets (state LISTEN) or bound, unconnected UDP sockets (state CLOSE, as
    /// /proc/net/udp's 07) of one family; nil when the kernel cannot answer.
    public func dump(proto: TransportProtocol, family: IPFamily) -> [HostSocket]? {
        let states: UInt32 = proto == .udp ? 1 << 7 : 1 << 10
        let protocolNumber: UInt8 = proto == .udp ? 17 : proto == .tcp ? 6 : 0
        guard protocolNumber != 0 else { return nil }
        let addressFamily = UInt8(family == .v4 ? AF_INET : AF_INET6)
        // nlmsghdr (16 bytes) + inet_diag_req_v2 (56 bytes): family, protocol, ext, pad, states, id.
        var request = [UInt8](repeating: 0, count: 72)
        Self.put32(&request, 0, 72)
        Self.put16(&request, 4, 20)                 // SOCK_DIAG_BY_FAMILY
        Self.put16(&request, 6, 0x1 | 0x300)        // NLM_F_REQUEST | NLM_F_DUMP
        Self.put32(&request, 8, 1)                  // sequence number
        request[16] = addressFamily
        request[17] = protocolNumber
        Self.put32(&request, 20, states)
        // No address: an unconnected netlink socket sends to the kernel.
        let sent = request.withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, 0) }
        guard sent == request.count else { return nil }
        var result: [HostSocket] = []
        while true {
            let count = recv(descriptor, buffer.baseAddress, buffer.count, 0)
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { return nil }
            var offset = 0
            while offset + 16 <= count {
                let length = Int(Self.get32(buffer, offset))
                let type = Self.get16(buffer, offset + 4)
                guard length >= 16, offset + length <= count else { return nil }
                switch type {
                case 3:                                 // NLMSG_DONE
                    return result
                case 2:                                 // NLMSG_ERROR: no handler for this protocol, say
                    return nil
                default:
                    // inet_diag_msg: family, state, timer, retrans, then sport and dport (big-endian),
                    // then the source and destination addresses (16 bytes each).
                    guard length >= 16 + 72 else { return nil }
                    let body = offset + 16
                    let port = UInt16(buffer[body + 4]) << 8 | UInt16(buffer[body + 5])
                    var value: UInt128 = 0
                    for index in 0..<(family == .v4 ? 4 : 16) { value = value << 8 | UInt128(buffer[body + 8 + index]) }
                    result.append(HostSocket(proto: proto, address: IPAddress(family: family, value: value), port: port))
                }
                offset += (length + 3) & ~3
            }
        }
    }

    // Netlink headers are in the host's byte order.
    private static func put16(_ bytes: inout [UInt8], _ at: Int, _ value: UInt16) {
        withUnsafeBytes(of: value) { bytes.replaceSubrange(at..<at + 2, with: $0) }
    }

    private static func put32(_ bytes: inout [UInt8], _ at: Int, _ value: UInt32) {
        withUnsafeBytes(of: value) { bytes.replaceSubrange(at..<at + 4, with: $0) }
    }

    private static func get16(_ bytes: UnsafeMutableRawBufferPointer, _ at: Int) -> UInt16 {
        bytes.loadUnaligned(fromByteOffset: at, as: UInt16.self)
    }

    private static func get32(_ bytes: UnsafeMutableRawBufferPointer, _ at: Int) -> UInt32 {
        bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self)
    }
}

extension IPAddress {
    var isLoopback: Bool {
        family == .v4 ? value >> 24 == 127 : value == 1
    }
}
