import CLibvirt

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

    /// Wall time this process has spent loading libvirt and in its calls, every thread's added up, and
    /// waiting for libvirt's work on another thread (`timeWaiting`). Closing a connection is not timed
    /// as a call: sync closes its connection beside its own work, and only the part it waits for is
    /// libvirt's share of its time. What a command took beyond this is its own.
    public static var timeInCalls: Duration {
        LibvirtLibrary.clock.total
    }

    /// Runs `wait`, in which the calling thread blocks until libvirt's work on another thread ends (a
    /// connection closing), and counts the time it blocked as libvirt's.
    public static func timeWaiting<T>(_ wait: () -> T) -> T {
        LibvirtLibrary.clock.time(wait)
    }
}

public struct LibvirtError: Error, CustomStringConvertible, Sendable {
    public let code: Int32
    public let description: String

    /// The same error naming `subject`, for libvirt messages that leave it out (virDomainLookupByName
    /// says only "Domain not found").
    func naming(_ subject: String) -> LibvirtError {
        description.contains(subject) ? self : LibvirtError(code: code, description: "\(description): \(subject)")
    }
}

extension LibvirtError {
    /// libvirt's numbers (virErrorNumber) for the errors callers tell apart.
    public enum Code {
        /// The driver behind the connection does not implement the call.
        public static let noSupport = Int32(VIR_ERR_NO_SUPPORT.rawValue)
        public static let noDomain = Int32(VIR_ERR_NO_DOMAIN.rawValue)
        public static let noNetwork = Int32(VIR_ERR_NO_NETWORK.rawValue)
        /// Not valid in the object's state, e.g. live data of a domain that is shut off.
        public static let operationInvalid = Int32(VIR_ERR_OPERATION_INVALID.rawValue)
    }
}
