#if canImport(Glibc)
import Glibc
#endif

/// One line per event to stderr (libvirt records a failing hook's stderr) and to syslog (journald),
/// where admins look for what changed on their firewall.
public struct Log: Sendable {
    public enum Level: Sendable { case info, warning, error }

    public var syslog: Bool
    public var stderr: Bool

    public init(syslog: Bool, stderr: Bool = true) {
        self.syslog = syslog
        self.stderr = stderr
        if syslog { openlog("virtgate", LOG_PID, LOG_DAEMON) }
    }

    public func info(_ message: String) { write(.info, message) }
    public func warning(_ message: String) { write(.warning, message) }
    public func error(_ message: String) { write(.error, message) }

    public func write(_ level: Level, _ message: String) {
        let line = message.oneLine
        let (priority, prefix): (Int32, String) = switch level {
        case .info: (LOG_INFO, "")
        case .warning: (LOG_WARNING, "warning: ")
        case .error: (LOG_ERR, "error: ")
        }
        if stderr { writeAll(2, "virtgate: \(prefix)\(line)\n") }
        if syslog {
            line.withCString { text in
                withVaList([text]) { vsyslog(priority, "%s", $0) }
            }
        }
    }
}

/// Writes all of `text` to a file descriptor (stdout, stderr), retrying short writes.
public func writeAll(_ descriptor: Int32, _ text: String) {
    var bytes = Array(text.utf8)[...]
    while !bytes.isEmpty {
        let written = bytes.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        bytes = bytes.dropFirst(written)
    }
}
