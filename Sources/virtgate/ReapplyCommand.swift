import ArgumentParser
import VirtGateCore

extension VirtGate {
    struct Reapply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Re-assert the rules of every network and guest virtgate remembers, bound to current DHCP leases.",
            discussion: """
            Uses only virtgate's state and the lease files, like the hooks, so it works while libvirt is down. \
            systemd runs it when lease files change (virtgate-leases.path): a guest without a reservation gets \
            its forwards once dnsmasq leases it an address, and keeps them when the lease moves. UFW's after.init \
            runs it too. `virtgate sync` asks libvirt instead and also removes what is gone.
            """
        )

        @Option(help: "Where forwards live: nft or iptables (default: config BACKEND, else auto).")
        var backend: BackendKind?

        @Flag(help: "Print the iptables-restore input instead of applying it.")
        var dryRun = false

        func run() async throws {
            let local = try await LocalContext.load(backend: backend)
            guard await local.handler(dryRun: dryRun, output: { writeAll(1, $0) }).reapplyAll() else { throw ExitCode(1) }
        }
    }
}
