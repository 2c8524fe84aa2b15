#if canImport(Glibc)
import Glibc
#endif

/// Reads and writes virtgate's own nftables table: one `nft -j list table` to read, one `nft -f`
/// per change. nft applies a script as one kernel transaction: all of it or nothing.
public struct NftBackend: Sendable {
    public let transport: any NftTransport

    public static let defaultPath = "/usr/sbin/nft"

    /// Through `runner` (tests, namespaces).
    public init(runner: any CommandRunner, executable: String = NftBackend.defaultPath) {
        transport = NftProcess(runner: runner, executable: executable)
    }

    public init(transport: any NftTransport) {
        self.transport = transport
    }

    public func state() async throws -> NftState {
        let result = try await transport.list()
        guard result.status == 0 else {
            if result.error.contains("No such file or directory") { return NftState() }
            throw FirewallError("nft list table inet \(NftLayout.table) failed (exit \(result.status)): \(result.error.oneLine)")
        }
        return try NftState(json: result.output)
    }

    public func apply(_ script: String) async throws {
        let result = try await transport.apply(script)
        guard result.status == 0 else {
            throw FirewallError("nft -f failed (exit \(result.status)): \(result.error.oneLine)")
        }
    }
}

/// Applies guests' forwards as map elements: read the table, compute the exact difference, write it
/// in one nft transaction. A failed transaction changes nothing, so there is nothing to roll back.
public struct NftFirewall: Sendable {
    public let backend: NftBackend
    public let mark: UInt32
    public let log: Log

    public init(backend: NftBackend, mark: UInt32, log: Log) {
        self.backend = backend
        self.mark = mark
        self.log = log
    }

    /// nil when nft is not installed.
    public static func ifInstalled(settings: Settings, runner: any CommandRunner, log: Log) -> NftFirewall? {
        guard access(NftBackend.defaultPath, X_OK) == 0 else { return nil }
        return NftFirewall(backend: NftBackend(transport: PreferLibNftables(fallback: NftProcess(runner: runner))),
                           mark: settings.connectionMark, log: log)
    }

    /// `desired` maps the kernel's table to the elements virtgate wants; nil writes nothing.
    public func apply(dryRun: Bool, desired: (NftState) -> DesiredElements?) async throws -> Firewall.Outcome {
        if dryRun {
            let state: NftState
            do {
                state = try await backend.state()
            } catch {
                log.warning("dry-run: \(error); showing changes against an empty ruleset")
                state = NftState()
            }
            guard let target = desired(state) else { return .init(transaction: "", applied: false) }
            return .init(transaction: NftTransaction.render(from: state, to: target, mark: mark), applied: false)
        }
        // Another writer between our read and our write makes the transaction fail as a whole (a
        // deleted element is gone, an added one exists): a second round sees their change.
        for attempt in 1...2 {
            let state = try await backend.state()
            guard let target = desired(state) else { return .init(transaction: "", applied: false) }
            let script = NftTransaction.render(from: state, to: target, mark: mark)
            if script.isEmpty { return .init(transaction: "", applied: false) }
            do {
                try await backend.apply(script)
                return .init(transaction: script, applied: true)
            } catch {
                if attempt == 2 { throw error }
                log.warning("\(error); retrying once")
            }
        }
        fatalError("unreachable")
    }

    /// Removes virtgate's table (switching to the iptables backend, or `flush`).
    public func remove(dryRun: Bool) async throws -> Firewall.Outcome {
        let state = try await backend.state()
        let script = NftTransaction.removal(from: state)
        if script.isEmpty || dryRun { return .init(transaction: script, applied: false) }
        try await backend.apply(script)
        return .init(transaction: script, applied: true)
    }
}
