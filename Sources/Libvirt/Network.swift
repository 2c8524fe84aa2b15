import CLibvirt
#if canImport(Glibc)
import Glibc
#endif

/// A virtual network, freed when the last reference goes. libvirt's network keeps its connection
/// open, so it outlives the `LibvirtConnection` it came from.
///
/// `@unchecked Sendable`: see `LibvirtConnection`; `name` is copied once, the rest is libvirt's.
public final class LibvirtNetwork: @unchecked Sendable {
    let library: LibvirtLibrary
    let pointer: OpaquePointer
    public let name: String

    /// Takes ownership of `pointer`: it is freed here on failure as well.
    init(taking pointer: OpaquePointer, library: LibvirtLibrary) throws(LibvirtError) {
        guard let name = library.call({ library.networkGetName(pointer) }) else {
            let error = library.lastError()
            _ = library.networkFree(pointer)
            throw error
        }
        self.name = String(cString: name)
        self.library = library
        self.pointer = pointer
    }

    deinit {
        _ = library.call { library.networkFree(pointer) }
    }

    public func xml() throws(LibvirtError) -> String {
        try library.take(library.call { library.networkGetXMLDesc(pointer, 0) })
    }

    public func bridgeName() throws(LibvirtError) -> String {
        try library.take(library.call { library.networkGetBridgeName(pointer) })
    }

    public struct Lease: Sendable, Equatable {
        /// Lower case, as libvirt writes MACs.
        public var mac: String
        public var ipAddress: String
        public var prefix: Int
        public var hostname: String?
        /// Seconds since the epoch.
        public var expiryTime: Int64

        public init(mac: String, ipAddress: String, prefix: Int, hostname: String?, expiryTime: Int64) {
            self.mac = mac
            self.ipAddress = ipAddress
            self.prefix = prefix
            self.hostname = hostname
            self.expiryTime = expiryTime
        }
    }

    /// The network's current DHCP leases. Drivers without lease tracking (the test:/// driver)
    /// throw `LibvirtError.Code.noSupport`.
    public func dhcpLeases() throws(LibvirtError) -> [Lease] {
        var leases: UnsafeMutablePointer<virNetworkDHCPLeasePtr?>?
        let count = library.call { library.networkGetDHCPLeases(pointer, nil, &leases, 0) }
        guard count >= 0 else { throw library.lastError() }
        defer { free(leases) }
        var result: [Lease] = []
        for index in 0..<Int(count) {
            guard let lease = leases?[index] else { continue }
            defer { library.call { library.networkDHCPLeaseFree(lease) } }
            // A lease without an address or MAC names nothing a rule could use.
            guard let mac = lease.pointee.mac, let address = lease.pointee.ipaddr else { continue }
            result.append(Lease(
                mac: String(cString: mac).lowercased(),
                ipAddress: String(cString: address),
                prefix: Int(lease.pointee.prefix),
                hostname: lease.pointee.hostname.map { String(cString: $0) },
                expiryTime: lease.pointee.expirytime))
        }
        return result
    }
}
