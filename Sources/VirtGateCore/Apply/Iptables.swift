#if canImport(Glibc)
import Glibc
#endif

/// The iptables family the host's other rules live in. Rules added through the other family are
/// invisible to, and do not override, a DROP in this one (measured: see firewall-coexistence notes).
public enum IptablesVariant: String, Sendable {
    case nft, legacy

    /// Reads which variant `/usr/sbin/iptables` is, from its alternatives link rather than by
    /// listing tables: listing legacy tables creates them and leaves the host with mixed tables.
    public static func detect(iptables: String = "/usr/sbin/iptables") -> IptablesVariant? {
        guard let resolved = realpath(iptables, nil) else { return nil }
        defer { free(resolved) }
        let target = String(cString: resolved)
        if target.hasSuffix("nft-multi") || target.hasSuffix("-nft") { return .nft }
        if target.hasSuffix("legacy-multi") || target.hasSuffix("-legacy") { return .legacy }
        return nil
    }

    public func save(_ family: IPFamily) -> String { "/usr/sbin/\(family.tool)-\(rawValue)-save" }
    public func restore(_ family: IPFamily) -> String { "/usr/sbin/\(family.tool)-\(rawValue)-restore" }
}

extension IPFamily {
    /// iptables or ip6tables.
    public var tool: String { self == .v4 ? "iptables" : "ip6tables" }
}

/// Reads and writes the kernel's iptables rules through one `iptables-save` and one
/// `iptables-restore --noflush` per family and change.
public struct IptablesCommands: Sendable {
    public let variant: IptablesVariant
    public let runner: any CommandRunner

    public init(variant: IptablesVariant, runner: any CommandRunner) {
        self.variant = variant
        self.runner = runner
    }

    public func snapshot() async throws -> IptablesSnapshot {
        // Both families' tools run at once: each is a process of its own (its start and the kernel's
        // dump, ~2 ms), and neither needs the other's answer.
        async let v4 = save(.v4)
        async let v6 = save(.v6)
        let outputs = try await [(IPFamily.v4, v4), (IPFamily.v6, v6)]
        var snapshot = IptablesSnapshot()
        for (family, output) in outputs { snapshot.add(parsing: output, family: family) }
        return snapshot
    }

    private func save(_ family: IPFamily) async throws -> String {
        let tool = variant.save(family)
        let result = try await runner.run(tool, [], input: nil)
        guard result.status == 0 else {
            throw VirtGateError(.firewall, "\(tool) failed (exit \(result.status)): \(result.error.oneLine)")
        }
        return result.output
    }

    public func restore(_ text: String, family: IPFamily) async throws {
        let tool = variant.restore(family)
        let result = try await runner.run(tool, ["-w", "--noflush"], input: text)
        guard result.status == 0 else {
            throw VirtGateError(.firewall, "\(tool) failed (exit \(result.status)): \(result.error.oneLine)")
        }
    }
}

extension String {
    /// Multi-line tool output folded into one log line.
    var oneLine: String {
        // Every log line goes through here: one ASCII line with no white space at either end (the
        // common case) is already what the general path would make of it, without its Unicode work.
        let bytes = utf8
        if let first = bytes.first, let last = bytes.last, first != 0x20, first != 0x09, last != 0x20, last != 0x09,
           bytes.allSatisfy({ $0 < 0x80 && !(0x0A...0x0D).contains($0) }) {
            return self
        }
        return split(whereSeparator: \.isNewline).map { $0.trimmingWhitespace() }.filter { !$0.isEmpty }.joined(separator: " | ")
    }
}
