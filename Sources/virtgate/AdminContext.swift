import ArgumentParser
import Libvirt
import VirtGateAdmin
import VirtGateCore

struct ConnectionOptions: ParsableArguments {
    @Option(help: "libvirt connection URI.")
    var connect = "qemu:///system"

    @Option(help: "Where forwards live: nft or iptables (default: config BACKEND, else auto).")
    var backend: BackendKind?
}

extension BackendKind: ExpressibleByArgument {}

/// What every admin command needs: settings, the firewall, the state directory and a libvirt
/// connection. Admin commands run outside libvirt's hook callbacks, so they may call libvirt.
struct AdminContext {
    let local: LocalContext
    let connection: LibvirtConnection

    var settings: Settings { local.settings }
    var log: Log { local.log }
    var firewall: Firewall { local.firewall }
    var store: StateStore { local.store }

    init(_ options: ConnectionOptions) async throws {
        local = try await LocalContext.load(backend: options.backend)
        connection = try LibvirtConnection(uri: options.connect)
    }

    /// libvirt's current state; XML that cannot be used is logged and left out.
    func loadState() throws -> LibvirtState {
        let state = try LibvirtState.load(connection)
        for problem in state.problems { log.error(problem) }
        return state
    }

    func locked<T>(dryRun: Bool, _ body: () async throws -> T) async throws -> T {
        try await local.locked(dryRun: dryRun, body)
    }

    func report(_ result: SyncResult) {
        for (_, plan) in result.guestPlans {
            for problem in plan.problems { log.warning("\(problem); forward skipped") }
        }
        for (guest, plan) in result.guestPlans {
            for problem in guest.problems { log.warning("\(problem); forward skipped") }
            for pending in plan.pending {
                log.info("guest \(InputProblem.quoted(guest.name)): forward #\(pending.forward.position) \(pending.forward.summary) pending: \(pending.reason)")
            }
        }
    }
}
