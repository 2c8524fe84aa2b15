import ArgumentParser
import VirtGateCore

extension VirtGate {
    struct Rebind: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-bind running guests' forwards to their current DHCP leases (run when lease files change).",
            discussion: """
            Uses only virtgate's state and the lease files, like the hooks: systemd runs it from \
            virtgate-leases.path, so a guest without a reservation gets its forwards once dnsmasq leases \
            it an address, and keeps them when the lease moves.
            """
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
            let handler = HookHandler(settings: settings, firewall: firewall, log: log, dryRun: dryRun) { writeAll(1, $0) }
            guard await handler.rebindAll() else { throw ExitCode(1) }
        }
    }
}
