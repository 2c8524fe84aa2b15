/// The one error type of virtgate: what kind of thing failed (so callers and exit statuses can tell
/// bad input from a firewall or libvirt failure), a one-line message, and the error behind it.
public struct VirtGateError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// XML, metadata, a config value or an argument is not valid.
        case input
        /// Reading or writing the kernel's rules failed.
        case firewall
        /// virtgate's lock could not be taken.
        case lock
        /// libvirt's API failed (admin commands only: hooks never call libvirt).
        case libvirt
    }

    public let code: Code
    public let message: String
    public let cause: (any Error & Sendable)?

    public init(_ code: Code, _ message: String, cause: (any Error & Sendable)? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    /// Bad input, named by guest or network, field and value.
    public init(_ problem: InputProblem) {
        self.init(.input, problem.description)
        self.problem = problem
    }

    /// The input problem, for bad input.
    public private(set) var problem: InputProblem?

    public var description: String {
        guard let cause else { return message.cappedLine }
        return "\(message): \(cause)".cappedLine
    }
}

extension String {
    /// Error text as one line of bounded length, whatever a tool or an input printed.
    var cappedLine: String {
        let line = split(whereSeparator: \.isNewline).joined(separator: " ")
        return line.count <= 1000 ? line : String(line.prefix(1000)) + "…"
    }
}
