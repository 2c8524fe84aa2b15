import CLibvirt
#if canImport(Glibc)
import Glibc
#endif

/// A domain (guest), freed when the last reference goes. libvirt's domain keeps its connection
/// open, so it outlives the `LibvirtConnection` it came from.
///
/// `@unchecked Sendable`: see `LibvirtConnection`; `name` is copied once, the rest is libvirt's.
public final class LibvirtDomain: @unchecked Sendable {
    let library: LibvirtLibrary
    let pointer: OpaquePointer
    public let name: String

    /// Takes ownership of `pointer`: it is freed here on failure as well.
    init(taking pointer: OpaquePointer, library: LibvirtLibrary) throws(LibvirtError) {
        guard let name = library.call({ library.domainGetName(pointer) }) else {
            let error = library.lastError()
            _ = library.domainFree(pointer)
            throw error
        }
        self.name = String(cString: name)
        self.library = library
        self.pointer = pointer
    }

    deinit {
        _ = library.call { library.domainFree(pointer) }
    }

    public func isActive() throws(LibvirtError) -> Bool {
        try flag(library.call { library.domainIsActive(pointer) })
    }

    public func isPersistent() throws(LibvirtError) -> Bool {
        try flag(library.call { library.domainIsPersistent(pointer) })
    }

    /// The live definition, or with `inactive` the persistent one the next start uses.
    public func xml(inactive: Bool = false) throws(LibvirtError) -> String {
        let flags = inactive ? VIR_DOMAIN_XML_INACTIVE.rawValue : 0
        return try library.take(library.call { library.domainGetXMLDesc(pointer, flags) })
    }

    /// The element virtgate stores in namespace `uri`; nil when the domain has none (VIR_ERR_NO_DOMAIN_METADATA is not an error).
    /// libvirt returns it without its namespace prefix or declaration.
    public func metadata(namespaceURI: String, inactive: Bool = false) throws(LibvirtError) -> String? {
        let flags = inactive ? VIR_DOMAIN_AFFECT_CONFIG.rawValue : VIR_DOMAIN_AFFECT_CURRENT.rawValue
        guard let element = library.call({ library.domainGetMetadata(pointer, metadataElement, namespaceURI, flags) }) else {
            let error = library.lastError()
            if error.code == Int32(VIR_ERR_NO_DOMAIN_METADATA.rawValue) { return nil }
            throw error
        }
        defer { free(element) }
        return String(cString: element)
    }

    /// Writes (or with nil removes) the metadata element, to the live domain when running AND to the persistent config when persistent (VIR_DOMAIN_AFFECT_LIVE/CONFIG chosen from the domain's state).
    /// `xml` is the element without a namespace, as `metadata` returns it: libvirt puts it and its
    /// children in `namespaceURI` with prefix `key` (one that already declares that prefix is
    /// refused, "failed to create a new XML namespace"). A domain that starts or stops between
    /// the state check and the write makes the write fail rather than half-apply.
    public func setMetadata(_ xml: String?, key: String, namespaceURI: String) throws(LibvirtError) {
        var flags = VIR_DOMAIN_AFFECT_CURRENT.rawValue
        if try isActive() { flags |= VIR_DOMAIN_AFFECT_LIVE.rawValue }
        if try isPersistent() { flags |= VIR_DOMAIN_AFFECT_CONFIG.rawValue }
        guard library.call({ library.domainSetMetadata(pointer, metadataElement, xml, key, namespaceURI, flags) }) == 0 else {
            throw library.lastError()
        }
    }

    /// Addresses by interface from DHCP leases (VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE): MAC (lower case) → [IP address strings].
    /// Only running domains have them; a shut off one throws (`LibvirtError.Code.operationInvalid`).
    public func leaseAddresses() throws(LibvirtError) -> [(mac: String, addresses: [String])] {
        var interfaces: UnsafeMutablePointer<virDomainInterfacePtr?>?
        let count = library.call {
            library.domainInterfaceAddresses(pointer, &interfaces, UInt32(VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE.rawValue), 0)
        }
        guard count >= 0 else { throw library.lastError() }
        defer { free(interfaces) }
        var result: [(mac: String, addresses: [String])] = []
        for index in 0..<Int(count) {
            guard let interface = interfaces?[index] else { continue }
            defer { library.call { library.domainInterfaceFree(interface) } }
            // Addresses are only useful matched to a NIC by MAC; one without a MAC has no match.
            guard let mac = interface.pointee.hwaddr else { continue }
            let addresses = (0..<Int(interface.pointee.naddrs)).compactMap { slot in
                interface.pointee.addrs[slot].addr.map { String(cString: $0) }
            }
            result.append((mac: String(cString: mac).lowercased(), addresses: addresses))
        }
        return result
    }

    private var metadataElement: Int32 { Int32(VIR_DOMAIN_METADATA_ELEMENT.rawValue) }

    private func flag(_ answer: Int32) throws(LibvirtError) -> Bool {
        guard answer >= 0 else { throw library.lastError() }
        return answer == 1
    }
}
