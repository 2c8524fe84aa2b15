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
            // Nothing planned, everything else removed: both backends' objects go.
            let outcome = try await local.run(EngineInput(exclusive: true, addresses: NoAddresses()), dryRun: dryRun)
            if dryRun {
                writeAll(1, outcome.transaction.isEmpty ? "# nothing to remove\n" : outcome.transaction.text)
            } else if outcome.applied {
                local.log.info("flush: removed every virtgate chain")
            } else {
                local.log.info("flush: no virtgate rules present")
            }
        }
    }
}
