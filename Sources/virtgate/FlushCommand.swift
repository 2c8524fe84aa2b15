import ArgumentParser
import VirtGateCore

extension VirtGate {
    struct Flush: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove every chain and rule virtgate owns, in one transaction (used by uninstall).",
            discussion: "Rules of libvirt, UFW and anyone else stay as they are. Running guests lose their forwards."
        )

        @Flag(help: "Print the iptables-restore and nft input instead of applying it.")
        var dryRun = false

        func run() async throws {
            let local = try await LocalContext.load()
            let outcomes = try await local.locked(dryRun: dryRun) {
                var outcomes = [try await local.firewall.replaceAll(with: [:], dryRun: dryRun)]
                if let nft = local.nftables { outcomes.append(try await nft.remove(dryRun: dryRun)) }
                return outcomes
            }
            let text = outcomes.map(\.transaction).filter { !$0.isEmpty }.joined(separator: "# nft -f\n")
            if dryRun {
                writeAll(1, text.isEmpty ? "# nothing to remove\n" : text)
            } else if outcomes.contains(where: \.applied) {
                local.log.info("flush: removed every virtgate chain")
            } else {
                local.log.info("flush: no virtgate rules present")
            }
        }
    }
}
