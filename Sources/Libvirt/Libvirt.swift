import CLibvirt
#if canImport(Glibc)
import Glibc
#endif

/// The only Swift code that sees libvirt's C API. Admin commands use it; hooks never do (libvirt
/// waits for the hook, so a call back into it deadlocks).
public enum Libvirt {
    /// The version of the libvirt library loaded at run time, e.g. "9.0.0".
    public static func libraryVersion() throws(LibvirtError) -> String {
        let library = try LibvirtLibrary.shared.get()
        var version: UInt = 0
        guard library.getVersion(&version, nil, nil) == 0 else { throw library.lastError() }
        return "\(version / 1_000_000).\(version / 1000 % 1000).\(version % 1000)"
    }
}

public struct LibvirtError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let description: String
}

/// libvirt's shared library, opened on first use with the function types of libvirt-dev's header.
/// Each entry point is resolved once; a missing one is an error naming it, not a crash.
final class LibvirtLibrary: Sendable {
    static let soname = "libvirt.so.0"

    static let shared: Result<LibvirtLibrary, LibvirtError> = Result { () throws(LibvirtError) in
        try LibvirtLibrary()
    }

    typealias GetVersion = @convention(c) (UnsafeMutablePointer<UInt>?, UnsafePointer<CChar>?, UnsafeMutablePointer<UInt>?) -> Int32
    typealias GetLastError = @convention(c) () -> virErrorPtr?

    let getVersion: GetVersion
    let getLastError: GetLastError

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
    }

    /// libvirt's last error on this thread; it can be absent, so there is a fallback message.
    func lastError() -> LibvirtError {
        guard let error = getLastError() else {
            return LibvirtError(code: -1, description: "libvirt reported an unknown error")
        }
        let message = error.pointee.message.map { String(cString: $0) } ?? "libvirt error \(error.pointee.code)"
        return LibvirtError(code: error.pointee.code, description: message)
    }
}
