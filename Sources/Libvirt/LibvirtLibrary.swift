import CLibvirt
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// libvirt's shared library, opened on first use with the function types of libvirt-dev's header.
/// Each entry point is resolved once; a missing one is an error naming it, not a crash.
final class LibvirtLibrary: Sendable {
    static let soname = "libvirt.so.0"

    static let shared: Result<LibvirtLibrary, LibvirtError> = Result { () throws(LibvirtError) in
        // Loading libvirt and its ~50 libraries is libvirt's time, as it is a C program's at exec.
        try clock.time { () throws(LibvirtError) in try LibvirtLibrary() }
    }

    /// Wall time this process spent loading libvirt and in its calls (`Libvirt.timeInCalls`).
    static let clock = CallClock()

    /// Runs one libvirt call, its wall time added to `clock`.
    func call<T>(_ body: () -> T) -> T {
        Self.clock.time(body)
    }

    typealias Initialize = @convention(c) () -> Int32
    typealias GetVersion = @convention(c) (UnsafeMutablePointer<UInt>?, UnsafePointer<CChar>?, UnsafeMutablePointer<UInt>?) -> Int32
    typealias GetLastError = @convention(c) () -> virErrorPtr?
    typealias SetErrorFunc = @convention(c) (UnsafeMutableRawPointer?, virErrorFunc?) -> Void

    typealias ConnectOpen = @convention(c) (UnsafePointer<CChar>?) -> OpaquePointer?
    typealias ConnectClose = @convention(c) (OpaquePointer?) -> Int32
    typealias ConnectGetURI = @convention(c) (OpaquePointer?) -> UnsafeMutablePointer<CChar>?
    typealias ConnectListAll = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UnsafeMutablePointer<OpaquePointer?>?>?, UInt32) -> Int32
    typealias LookupByName = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> OpaquePointer?

    typealias ObjectFree = @convention(c) (OpaquePointer?) -> Int32
    typealias ObjectGetName = @convention(c) (OpaquePointer?) -> UnsafePointer<CChar>?
    typealias ObjectIs = @convention(c) (OpaquePointer?) -> Int32
    typealias ObjectGetXMLDesc = @convention(c) (OpaquePointer?, UInt32) -> UnsafeMutablePointer<CChar>?

    typealias DomainGetMetadata = @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UInt32) -> UnsafeMutablePointer<CChar>?
    typealias DomainSetMetadata = @convention(c) (OpaquePointer?, Int32, UnsafePointer<CChar>?, UnsafePointer<CChar>?, UnsafePointer<CChar>?, UInt32) -> Int32
    typealias DomainInterfaceAddresses = @convention(c) (OpaquePointer?, UnsafeMutablePointer<UnsafeMutablePointer<virDomainInterfacePtr?>?>?, UInt32, UInt32) -> Int32
    typealias DomainInterfaceFree = @convention(c) (virDomainInterfacePtr?) -> Void

    typealias NetworkGetBridgeName = @convention(c) (OpaquePointer?) -> UnsafeMutablePointer<CChar>?
    typealias NetworkGetDHCPLeases = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, UnsafeMutablePointer<UnsafeMutablePointer<virNetworkDHCPLeasePtr?>?>?, UInt32) -> Int32
    typealias NetworkDHCPLeaseFree = @convention(c) (virNetworkDHCPLeasePtr?) -> Void

    let getVersion: GetVersion
    let getLastError: GetLastError

    let connectOpen: ConnectOpen
    let connectOpenReadOnly: ConnectOpen
    let connectClose: ConnectClose
    let connectGetURI: ConnectGetURI
    let connectListAllDomains: ConnectListAll
    let connectListAllNetworks: ConnectListAll

    let domainLookupByName: LookupByName
    let domainFree: ObjectFree
    let domainGetName: ObjectGetName
    let domainIsActive: ObjectIs
    let domainIsPersistent: ObjectIs
    let domainGetXMLDesc: ObjectGetXMLDesc
    let domainGetMetadata: DomainGetMetadata
    let domainSetMetadata: DomainSetMetadata
    let domainInterfaceAddresses: DomainInterfaceAddresses
    let domainInterfaceFree: DomainInterfaceFree

    let networkLookupByName: LookupByName
    let networkFree: ObjectFree
    let networkGetName: ObjectGetName
    let networkGetXMLDesc: ObjectGetXMLDesc
    let networkGetBridgeName: NetworkGetBridgeName
    let networkGetDHCPLeases: NetworkGetDHCPLeases
    let networkDHCPLeaseFree: NetworkDHCPLeaseFree

    private init() throws(LibvirtError) {
        guard let handle = dlopen(Self.soname, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "not found"
            throw LibvirtError(code: -1, description: "cannot load \(Self.soname) (install libvirt0): \(reason)")
        }
        func resolve<T>(_ name: String, as type: T.Type) throws(LibvirtError) -> T {
            guard let symbol = dlsym(handle, name) else {
                throw LibvirtError(code: -1, description: "\(Self.soname) has no \(name)")
            }
            return unsafeBitCast(symbol, to: type)
        }
        getVersion = try resolve("virGetVersion", as: GetVersion.self)
        getLastError = try resolve("virGetLastError", as: GetLastError.self)

        connectOpen = try resolve("virConnectOpen", as: ConnectOpen.self)
        connectOpenReadOnly = try resolve("virConnectOpenReadOnly", as: ConnectOpen.self)
        connectClose = try resolve("virConnectClose", as: ConnectClose.self)
        connectGetURI = try resolve("virConnectGetURI", as: ConnectGetURI.self)
        connectListAllDomains = try resolve("virConnectListAllDomains", as: ConnectListAll.self)
        connectListAllNetworks = try resolve("virConnectListAllNetworks", as: ConnectListAll.self)

        domainLookupByName = try resolve("virDomainLookupByName", as: LookupByName.self)
        domainFree = try resolve("virDomainFree", as: ObjectFree.self)
        domainGetName = try resolve("virDomainGetName", as: ObjectGetName.self)
        domainIsActive = try resolve("virDomainIsActive", as: ObjectIs.self)
        domainIsPersistent = try resolve("virDomainIsPersistent", as: ObjectIs.self)
        domainGetXMLDesc = try resolve("virDomainGetXMLDesc", as: ObjectGetXMLDesc.self)
        domainGetMetadata = try resolve("virDomainGetMetadata", as: DomainGetMetadata.self)
        domainSetMetadata = try resolve("virDomainSetMetadata", as: DomainSetMetadata.self)
        domainInterfaceAddresses = try resolve("virDomainInterfaceAddresses", as: DomainInterfaceAddresses.self)
        domainInterfaceFree = try resolve("virDomainInterfaceFree", as: DomainInterfaceFree.self)

        networkLookupByName = try resolve("virNetworkLookupByName", as: LookupByName.self)
        networkFree = try resolve("virNetworkFree", as: ObjectFree.self)
        networkGetName = try resolve("virNetworkGetName", as: ObjectGetName.self)
        networkGetXMLDesc = try resolve("virNetworkGetXMLDesc", as: ObjectGetXMLDesc.self)
        networkGetBridgeName = try resolve("virNetworkGetBridgeName", as: NetworkGetBridgeName.self)
        networkGetDHCPLeases = try resolve("virNetworkGetDHCPLeases", as: NetworkGetDHCPLeases.self)
        networkDHCPLeaseFree = try resolve("virNetworkDHCPLeaseFree", as: NetworkDHCPLeaseFree.self)

        // Set-up functions, used here only, so they are not kept.
        let initialize = try resolve("virInitialize", as: Initialize.self)
        let setErrorFunc = try resolve("virSetErrorFunc", as: SetErrorFunc.self)
        // Only virConnectOpen and virGetVersion initialize libvirt by themselves; doing it here
        // means every other entry point (virGetLastError included) finds it initialized.
        guard initialize() == 0 else { throw Self.lastError(getLastError) }
        // libvirt's default handler prints every error to stderr, including ones this wrapper
        // handles (a domain without metadata); callers get them as LibvirtError instead.
        setErrorFunc(nil, { _, _ in })
    }

    /// libvirt's last error on this thread; it can be absent, so there is a fallback message.
    func lastError() -> LibvirtError {
        Self.lastError(getLastError)
    }

    private static func lastError(_ getLastError: GetLastError) -> LibvirtError {
        guard let error = getLastError() else {
            return LibvirtError(code: -1, description: "libvirt reported an unknown error")
        }
        let message = error.pointee.message.map { String(cString: $0) } ?? "libvirt error \(error.pointee.code)"
        return LibvirtError(code: error.pointee.code, description: message)
    }

    /// Copies a string libvirt allocated for the caller and frees it; nil (libvirt's failure
    /// signal) becomes the last error.
    func take(_ string: UnsafeMutablePointer<CChar>?) throws(LibvirtError) -> String {
        guard let string else { throw lastError() }
        defer { free(string) }
        return String(cString: string)
    }
}

/// Wall time of calls, every thread's added up.
final class CallClock: Sendable {
    private let nanoseconds = Atomic<Int64>(0)

    var total: Duration { .nanoseconds(nanoseconds.load(ordering: .relaxed)) }

    func time<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
        let start = ContinuousClock.now
        defer {
            let (seconds, attoseconds) = (ContinuousClock.now - start).components
            nanoseconds.add(seconds * 1_000_000_000 + attoseconds / 1_000_000_000, ordering: .relaxed)
        }
        return try body()
    }
}
