import Subprocess
import SystemPackage

public struct CommandResult: Sendable {
    public var status: Int32
    public var output: String
    public var error: String

    public init(status: Int32, output: String, error: String) {
        self.status = status
        self.output = output
        self.error = error
    }
}

/// The one seam through which virtgate changes the system: production runs real programs; unit
/// tests record the calls. Dry-run never gets this far for writes.
public protocol CommandRunner: Sendable {
    func run(_ executable: String, _ arguments: [String], input: String?) async throws -> CommandResult
}

public struct ProcessRunner: CommandRunner {
    /// iptables-save of a large host is a few MiB; anything beyond this is not a ruleset.
    static let outputLimit = 256 << 20

    public init() {}

    public func run(_ executable: String, _ arguments: [String], input: String?) async throws -> CommandResult {
        // A fixed environment: libvirt gives hooks a scrubbed one anyway, and iptables must not pick
        // up locale or XTABLES_* variables from an admin's shell.
        let environment = Environment.custom(["PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"])
        let result = try await Subprocess.run(
            .path(FilePath(executable)), arguments: Arguments(arguments), environment: environment,
            input: .string(input ?? ""), output: .bytes(limit: Self.outputLimit),
            error: .bytes(limit: 1 << 20))
        let status: Int32 = switch result.terminationStatus {
        case .exited(let code): code
        case .signaled(let signal): 128 + signal
        }
        // Bytes, decoded here: Subprocess's string output decodes through a lazy map, byte by byte
        // (2,000M instructions for the 2 MB iptables-save of 1,000 guests).
        return CommandResult(status: status, output: String(decoding: result.standardOutput, as: UTF8.self),
                             error: String(decoding: result.standardError, as: UTF8.self))
    }
}
