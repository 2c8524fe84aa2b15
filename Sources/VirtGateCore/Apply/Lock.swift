#if canImport(Glibc)
import Glibc
#endif

/// Serialises virtgate's read-modify-write of the firewall: libvirt runs hooks for different guests
/// concurrently and takes no lock of its own.
public final class FileLock {
    private let descriptor: Int32

    /// Waits up to `timeout` seconds. A hook must not block libvirt forever behind a stuck run.
    public init(path: String, timeout: Double = 30) throws {
        descriptor = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw VirtGateError(.lock, "cannot open lock \(path): \(String(cString: strerror(errno)))")
        }
        var waited = 0.0
        while flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK || errno == EINTR, waited < timeout else {
                close(descriptor)
                throw VirtGateError(.lock, "lock \(path) still held after \(Int(timeout)) s")
            }
            usleep(10_000)
            waited += 0.01
        }
    }

    deinit {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }
}
