import ArgumentParser
import VirtGateAdmin
import VirtGateCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif

extension VirtGate {
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show every forward and its state (active, pending, conflict, invalid, drift) and each network's rules.",
            discussion: "Compares what `virtgate sync` would make with the kernel's rules. Changes nothing."
        )

        @OptionGroup var connection: ConnectionOptions

        @Flag(help: "Stable JSON instead of a table.")
        var json = false

        func run() async throws {
            let context = try await AdminContext(connection)
            let state = try context.loadState()
            let preview = try await context.local.firewall.preview(state.everything(), backend: context.local.backend,
                                                                   dryRun: false)
            let settings = context.settings
            let variant = context.local.firewall.iptables.variant.rawValue
            let nft = context.local.backend.kind == .nft
            let backend = nft
                ? "nft: forwards in table inet \(NftLayout.table), filtering in iptables-\(variant) (\(settings.backendReason))"
                : "iptables-\(variant) (\(settings.backendReason))"
            let report = StatusReport.build(plan: preview.plan, desired: preview.desired,
                                            snapshot: preview.state.iptables ?? IptablesSnapshot(),
                                            nft: nft ? preview.state.nft ?? NftState() : nil, backend: backend,
                                            listening: ListeningSockets.current())
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                writeAll(1, String(decoding: try encoder.encode(report), as: UTF8.self) + "\n")
            } else {
                writeAll(1, Self.table(report))
            }
        }

        static func table(_ report: StatusReport) -> String {
            var out = "backend: \(report.backend)\(report.jumpsInPlace ? "" : "  (jumps missing or displaced: run virtgate sync)")\n\n"
            out += "NETWORK".padded(16) + "BRIDGE".padded(12) + "MODE".padded(10) + "SUBNETS".padded(22) + "RULES\n"
            for network in report.networks {
                out += network.name.padded(16) + (network.bridge ?? "-").padded(12) + network.mode.padded(10)
                    + network.subnets.joined(separator: ",").padded(22) + network.rules + "\n"
            }
            out += "\n" + "GUEST".padded(16) + "#".padded(4) + "PROTO".padded(7) + "HOST".padded(24) + "GUEST ADDRESS".padded(24)
                + "SOURCE".padded(20) + "STATE\n"
            for guest in report.guests {
                for forward in guest.forwards {
                    let host = (forward.hostAddress.map { "\($0):" } ?? "*:") + (forward.hostPorts ?? "?")
                    let target = (forward.guestAddress.map { "\($0):" } ?? "?:") + (forward.guestPorts ?? "?")
                    let source = forward.sources.isEmpty ? "any" : forward.sources.joined(separator: ",")
                    let state = forward.state + (forward.detail.map { " (\($0))" } ?? "")
                    out += guest.name.padded(16) + "\(forward.position)".padded(4) + (forward.proto ?? "-").padded(7)
                        + host.padded(24) + target.padded(24) + source.padded(20) + state + "\n"
                    for warning in forward.warnings { out += "".padded(16) + "warning: \(warning)\n" }
                }
            }
            if !report.orphans.isEmpty {
                out += "\norphaned chains (removed by virtgate sync): \(report.orphans.joined(separator: ", "))\n"
            }
            return out
        }
    }
}

extension String {
    func padded(_ width: Int) -> String {
        count >= width ? self + " " : self + String(repeating: " ", count: width - count)
    }
}
