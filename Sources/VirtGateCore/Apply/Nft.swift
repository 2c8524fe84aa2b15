#if canImport(Glibc)
import Glibc
#endif

/// Reads and writes virtgate's own nftables table: one `nft -p list table` to read, one `nft -f`
/// per change. nft applies a script as one kernel transaction: all of it or nothing.
public struct NftCommands: Sendable {
    public let transport: any NftTransport

    public static let defaultPath = "/usr/sbin/nft"

    /// Through `runner` (tests, namespaces).
    public init(runner: any CommandRunner, executable: String = NftCommands.defaultPath) {
        transport = NftProcess(runner: runner, executable: executable)
    }

    public init(transport: any NftTransport) {
        self.transport = transport
    }

    /// The table, or with `scope` only its elements that scope names (by netlink; nft's listing
    /// always reads all of it).
    public func state(scope: NftReadScope? = nil) async throws -> NftState {
        // In-process, the table is read over netlink when it is of the current layout; nft's
        // listing reads anything else (an older layout, a shape virtgate never writes).
        if transport is PreferLibNftables, let netlink = NftNetlink.shared, let state = try? netlink.state(scope: scope) {
            return state
        }
        let result = try await transport.list()
        guard result.status == 0 else {
            if result.error.contains("No such file or directory") { return NftState() }
            throw VirtGateError(.firewall, "nft list table inet \(NftLayout.table) failed (exit \(result.status)): \(result.error.oneLine)")
        }
        return try NftState(listing: result.output)
    }

    /// Writes `changes` over netlink in one batch where libnftables is the transport (as a hook
    /// does); otherwise, or for elements netlink cannot encode, as their script.
    public func apply(_ changes: NftChanges) async throws {
        if transport is PreferLibNftables, let netlink = NftNetlink.shared, try netlink.apply(changes) {
            return
        }
        try await apply(changes.script)
    }

    /// Applies an `nft -f` script.
    public func apply(_ script: String) async throws {
        let result = try await transport.apply(script)
        guard result.status == 0 else {
            throw VirtGateError(.firewall, "nft -f failed (exit \(result.status)): \(result.error.oneLine)")
        }
    }
}

extension NftCommands {
    /// libnftables in-process when it loads (a guest event then starts no program), else `nft`;
    /// nil when nft is not installed.
    public static func ifInstalled(runner: any CommandRunner) -> NftCommands? {
        guard access(NftCommands.defaultPath, X_OK) == 0 else { return nil }
        return NftCommands(transport: PreferLibNftables(fallback: NftProcess(runner: runner)))
    }
}
