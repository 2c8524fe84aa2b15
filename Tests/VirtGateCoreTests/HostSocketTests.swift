#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import VirtGateCore

/// The kernel's socket diagnostics against /proc/net, on real sockets this test opens: both must
/// see the same listening TCP and bound UDP sockets, and neither a connected one.
@Suite("Host sockets from the kernel")
struct HostSocketTests {
    /// A socket of `type` bound to `address` (v4 dotted or v6 text) on an ephemeral port; its fd and port.
    static func bound(_ type: Int32, _ address: String) throws -> (fd: Int32, port: UInt16) {
        let v6 = address.contains(":")
        let fd = socket(v6 ? AF_INET6 : AF_INET, type | Int32(SOCK_CLOEXEC.rawValue), 0)
        try #require(fd >= 0)
        var storage = sockaddr_storage()
        var length = socklen_t(0)
        withUnsafeMutablePointer(to: &storage) { pointer in
            if v6 {
                pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                    $0.pointee.sin6_family = sa_family_t(AF_INET6)
                    _ = inet_pton(AF_INET6, address, &$0.pointee.sin6_addr)
                }
                length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            } else {
                pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                    $0.pointee.sin_family = sa_family_t(AF_INET)
                    _ = inet_pton(AF_INET, address, &$0.pointee.sin_addr)
                }
                length = socklen_t(MemoryLayout<sockaddr_in>.size)
            }
        }
        let result = withUnsafePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) }
        }
        try #require(result == 0, "bind \(address): errno \(errno)")
        var actual = length
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &actual) }
        }
        let port = withUnsafePointer(to: &storage) { pointer in
            v6 ? pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_port }
               : pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port }
        }
        return (fd, UInt16(bigEndian: port))
    }

    @Test func diagnosticsMatchProcNet() throws {
        let stream = Int32(SOCK_STREAM.rawValue), datagram = Int32(SOCK_DGRAM.rawValue)
        var open: [Int32] = []
        defer { open.forEach { close($0) } }
        let tcp4 = try Self.bound(stream, "127.0.0.1"); open.append(tcp4.fd)
        #expect(listen(tcp4.fd, 4) == 0)
        let tcp6 = try Self.bound(stream, "::"); open.append(tcp6.fd)
        #expect(listen(tcp6.fd, 4) == 0)
        let udp4 = try Self.bound(datagram, "0.0.0.0"); open.append(udp4.fd)
        let udp6 = try Self.bound(datagram, "::1"); open.append(udp6.fd)
        // Bound but not listening, and a connected UDP socket: neither is a host service.
        let idle = try Self.bound(stream, "127.0.0.1"); open.append(idle.fd)
        let connected = try Self.bound(datagram, "127.0.0.1"); open.append(connected.fd)
        var peer = sockaddr_in()
        peer.sin_family = sa_family_t(AF_INET)
        peer.sin_port = udp4.port.bigEndian
        _ = inet_pton(AF_INET, "127.0.0.1", &peer.sin_addr)
        let linked = withUnsafePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(connected.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(linked == 0)

        let ours: Set<UInt16> = [tcp4.port, tcp6.port, udp4.port, udp6.port, idle.port, connected.port]
        let expected: Set = [
            HostSocket(proto: .tcp, address: IPAddress("127.0.0.1")!, port: tcp4.port),
            HostSocket(proto: .tcp, address: IPAddress("::")!, port: tcp6.port),
            HostSocket(proto: .udp, address: IPAddress("0.0.0.0")!, port: udp4.port),
            HostSocket(proto: .udp, address: IPAddress("::1")!, port: udp6.port),
        ]
        guard let diagnostics = SocketDiagnostics() else {
            Issue.record("no NETLINK_SOCK_DIAG socket: errno \(errno)")
            return
        }
        var fromDiagnostics: [HostSocket] = []
        for (proto, family) in [(TransportProtocol.tcp, IPFamily.v4), (.tcp, .v6), (.udp, .v4), (.udp, .v6)] {
            let dumped = diagnostics.dump(proto: proto, family: family)
            #expect(dumped != nil, "\(proto) \(family)")
            fromDiagnostics += dumped ?? []
        }
        // Other processes' sockets come and go while the test runs: compare on this test's ports.
        func mine(_ sockets: [HostSocket]) -> Set<HostSocket> {
            Set(sockets.filter { ours.contains($0.port) && ($0.address.isLoopback || $0.isWildcard) })
        }
        #expect(mine(fromDiagnostics) == expected)
        #expect(mine(ListeningSockets.fromProc()) == expected)
        #expect(mine(ListeningSockets.current()) == expected)
    }
}
