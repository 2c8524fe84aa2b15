import ArgumentParser
import VirtGateCore

extension VirtGate {
    struct Flush: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove every chain and rule virtgate owns, in one transaction (used by uninstall).",
            discussion: "Rules of libvirt, UFW and anyone else stay as they are. Running guests lose their forwards."
        )

        @Flag(help: "Print the iptables-restore input instead of applying it.")
        var dryRun = false

        func run() async throws {
            let settings = try await Settings.load(environment: ProcessEnvironment.current())
            let log = Log(syslog: settings.syslog)
            guard let variant = settings.iptablesVariant ?? IptablesVariant.detect() else {
                throw FirewallError("cannot tell whether /usr/sbin/iptables is iptables-nft or iptables-legacy")
            }
            let firewall = Firewall(backend: IptablesBackend(variant: variant, runner: ProcessRunner()), log: log)
            let store = StateStore(directory: settings.stateDirectory)
            var lock: FileLock?
            if !dryRun {
                try store.prepare()
                lock = try FileLock(path: store.lockPath)
            }
            let outcome = try await firewall.replaceAll(with: [:], dryRun: dryRun)
            withExtendedLifetime(lock) {}
            if dryRun {
                writeAll(1, outcome.transaction.isEmpty ? "# nothing to remove\n" : outcome.transaction)
            } else if outcome.applied {
                log.info("flush: removed every virtgate chain")
            } else {
                log.info("flush: no virtgate rules present")
            }
        }
    }
}
