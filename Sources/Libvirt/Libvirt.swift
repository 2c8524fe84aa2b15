import CLibvirt

/// The only Swift code that sees libvirt's C API. Admin commands use it; hooks never do (libvirt
/// waits for the hook, so a call back into it deadlocks).
public enum Libvirt {
    /// The version of the libvirt library linked at run time, e.g. "9.0.0".
    public static func libraryVersion() throws(LibvirtError) -> String {
        var version: UInt = 0
        guard virGetVersion(&version, nil, nil) == 0 else { throw LibvirtError.last() }
        return "\(version / 1_000_000).\(version / 1000 % 1000).\(version % 1000)"
    }
}

public struct LibvirtError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let description: String

    /// libvirt's last error on this thread; it can be absent, so there is a fallback message.
    static func last() -> LibvirtError {
        guard let error = virGetLastError() else {
            return LibvirtError(code: -1, description: "libvirt reported an unknown error")
        }
        let message = error.pointee.message.map { String(cString: $0) } ?? "libvirt error \(error.pointee.code)"
        return LibvirtError(code: error.pointee.code, description: message)
    }
}
