import CLibvirt
#if canImport(Glibc)
import Glibc
#endif

/// An open connection to a libvirt driver, closed when the last reference goes.
///
/// `@unchecked Sendable`: libvirt objects are thread-safe since 0.6.0 (one connection may be used
/// from many threads at once), errors are kept per thread and read on the calling thread right
/// after the failing call, and this class has no mutable state of its own.
public final class LibvirtConnection: @unchecked Sendable {
    let library: LibvirtLibrary
    let pointer: OpaquePointer
    /// The URI libvirt resolved, e.g. "qemu:///system" when opened with nil.
    public let uri: String

    /// Opens `uri`, or libvirt's default URI (LIBVIRT_DEFAULT_URI, its config, then probing) for nil.
    public init(uri: String?, readOnly: Bool = false) throws(LibvirtError) {
        let library = try LibvirtLibrary.shared.get()
        let open = readOnly ? library.connectOpenReadOnly : library.connectOpen
        guard let pointer = library.call({ open(uri) }) else { throw library.lastError() }
        do {
            self.uri = try library.take(library.call { library.connectGetURI(pointer) })
        } catch {
            _ = library.connectClose(pointer)
            throw error
        }
        self.library = library
        self.pointer = pointer
    }

    deinit {
        _ = library.connectClose(pointer)
    }

    public func activeNetworks() throws(LibvirtError) -> [LibvirtNetwork] {
        try list(library.connectListAllNetworks, flags: VIR_CONNECT_LIST_NETWORKS_ACTIVE.rawValue) {
            (pointer) throws(LibvirtError) in try LibvirtNetwork(taking: pointer, library: library)
        }
    }

    public func runningDomains() throws(LibvirtError) -> [LibvirtDomain] {
        try list(library.connectListAllDomains, flags: VIR_CONNECT_LIST_DOMAINS_ACTIVE.rawValue) {
            (pointer) throws(LibvirtError) in try LibvirtDomain(taking: pointer, library: library)
        }
    }

    /// Running and defined (shut off) domains.
    public func allDomains() throws(LibvirtError) -> [LibvirtDomain] {
        try list(library.connectListAllDomains, flags: 0) {
            (pointer) throws(LibvirtError) in try LibvirtDomain(taking: pointer, library: library)
        }
    }

    /// Throws with code `LibvirtError.Code.noDomain` when there is no such domain.
    public func domain(named name: String) throws(LibvirtError) -> LibvirtDomain {
        guard let pointer = library.call({ library.domainLookupByName(self.pointer, name) }) else {
            throw library.lastError().naming("'\(name)'")
        }
        return try LibvirtDomain(taking: pointer, library: library)
    }

    /// Throws with code `LibvirtError.Code.noNetwork` when there is no such network.
    public func network(named name: String) throws(LibvirtError) -> LibvirtNetwork {
        guard let pointer = library.call({ library.networkLookupByName(self.pointer, name) }) else {
            throw library.lastError().naming("'\(name)'")
        }
        return try LibvirtNetwork(taking: pointer, library: library)
    }

    /// Runs one of libvirt's virConnectListAll* calls and wraps every object it returns. Each
    /// object is owned by its wrapper from then on (a wrapper that fails to build frees its own),
    /// so none leaks when one fails.
    private func list<Object>(
        _ listAll: LibvirtLibrary.ConnectListAll,
        flags: UInt32,
        wrap: (OpaquePointer) throws(LibvirtError) -> Object
    ) throws(LibvirtError) -> [Object] {
        var array: UnsafeMutablePointer<OpaquePointer?>?
        let count = library.call { listAll(pointer, &array, flags) }
        guard count >= 0 else { throw library.lastError() }
        defer { free(array) }
        var objects: [Object] = []
        var firstError: LibvirtError?
        for index in 0..<Int(count) {
            guard let object = array?[index] else { continue }
            do {
                objects.append(try wrap(object))
            } catch {
                firstError = firstError ?? error
            }
        }
        if let firstError { throw firstError }
        return objects
    }
}
