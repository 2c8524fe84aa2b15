#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// How virtgate talks to nftables: the `nft` program, or libnftables (what `nft` itself is built
/// on) in the same process, which saves two process starts on every guest event.
public protocol NftTransport: Sendable {
    /// `nft -p list table inet virtgate` (the text listing, protocols as numbers).
    func list() async throws -> CommandResult
    /// `nft -f -` with `script`.
    func apply(_ script: String) async throws -> CommandResult
}

/// The `nft` program through a command runner (the test seam; also the fallback).
public struct NftProcess: NftTransport {
    public let runner: any CommandRunner
    public let executable: String

    public init(runner: any CommandRunner, executable: String = NftCommands.defaultPath) {
        self.runner = runner
        self.executable = executable
    }

    public func list() async throws -> CommandResult {
        try await runner.run(executable, ["-p", "list", "table", "inet", NftLayout.table], input: nil)
    }

    public func apply(_ script: String) async throws -> CommandResult {
        try await runner.run(executable, ["-f", "-"], input: script)
    }
}

/// libnftables in-process when it loads (it comes with nft), the program otherwise. The library is
/// opened on first use only, so runs that never touch nftables never pay for loading it.
public struct PreferLibNftables: NftTransport {
    public let fallback: NftProcess

    public init(fallback: NftProcess) { self.fallback = fallback }

    var chosen: any NftTransport { LibNftables.shared ?? fallback }

    public func list() async throws -> CommandResult { try await chosen.list() }
    public func apply(_ script: String) async throws -> CommandResult { try await chosen.apply(script) }
}

/// libnftables.so.1 (from the nftables package), opened on first use. A context is not thread-safe:
/// each call holds a lock.
public final class LibNftables: NftTransport, Sendable {
    typealias New = @convention(c) (UInt32) -> OpaquePointer?
    typealias Free = @convention(c) (OpaquePointer?) -> Void
    typealias Buffer = @convention(c) (OpaquePointer?) -> Int32
    typealias GetBuffer = @convention(c) (OpaquePointer?) -> UnsafePointer<CChar>?
    typealias SetFlags = @convention(c) (OpaquePointer?, UInt32) -> Void
    typealias Run = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Int32

    /// NFT_CTX_OUTPUT_NUMERIC_PROTO in libnftables.h: protocols as numbers, as virtgate writes them
    /// (a name costs a read of /etc/protocols per element).
    static let outputNumericProtocol: UInt32 = 1 << 7

    struct Functions {
        let new: New, free: Free, bufferOutput: Buffer, bufferError: Buffer
        let output: GetBuffer, error: GetBuffer, setFlags: SetFlags, run: Run
    }

    private let functions: Functions
    /// One context (each costs a netlink socket and reads of /etc/iproute2's tables), its output
    /// flags set per call: numeric protocols for listing, none for commands.
    private let context: Mutex<UInt>

    /// nil when the library cannot be loaded (then `nft` is run instead).
    public static let shared: LibNftables? = LibNftables()

    private init?() {
        guard let handle = dlopen("libnftables.so.1", RTLD_NOW | RTLD_LOCAL) else { return nil }
        func symbol<T>(_ name: String, _: T.Type) -> T? {
            dlsym(handle, name).map { unsafeBitCast($0, to: T.self) }
        }
        guard let new = symbol("nft_ctx_new", New.self), let free = symbol("nft_ctx_free", Free.self),
              let bufferOutput = symbol("nft_ctx_buffer_output", Buffer.self),
              let bufferError = symbol("nft_ctx_buffer_error", Buffer.self),
              let output = symbol("nft_ctx_get_output_buffer", GetBuffer.self),
              let error = symbol("nft_ctx_get_error_buffer", GetBuffer.self),
              let setFlags = symbol("nft_ctx_output_set_flags", SetFlags.self),
              let run = symbol("nft_run_cmd_from_buffer", Run.self) else { return nil }
        functions = Functions(new: new, free: free, bufferOutput: bufferOutput, bufferError: bufferError,
                              output: output, error: error, setFlags: setFlags, run: run)
        guard let created = new(0) else { return nil }
        _ = bufferOutput(created)
        _ = bufferError(created)
        context = Mutex(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(created))))
    }

    func run(_ command: String, listing: Bool) -> CommandResult {
        context.withLock { address in
            let context = OpaquePointer(bitPattern: address)
            functions.setFlags(context, listing ? Self.outputNumericProtocol : 0)
            let status = functions.run(context, command)
            let output = functions.output(context).map { String(cString: $0) } ?? ""
            let error = functions.error(context).map { String(cString: $0) } ?? ""
            return CommandResult(status: status == 0 ? 0 : 1, output: output, error: error)
        }
    }

    public func list() async throws -> CommandResult {
        run("list table inet \(NftLayout.table)", listing: true)
    }

    public func apply(_ script: String) async throws -> CommandResult {
        run(script, listing: false)
    }
}
