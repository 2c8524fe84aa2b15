import ArgumentParser
import Libvirt
import VirtGateAdmin
import VirtGateCore

struct ConnectionOptions: ParsableArguments {
    @Option(help: "libvirt connection URI.")
    var connect = "qemu:///system"
}

/// What every admin command needs: settings, the firewall, the state directory and a libvirt
/// connection. Admin commands run outside libvirt's hook callbacks, so they may call libvirt.
struct AdminContext {
    let settings: Settings
    let log: Log
    let firewall: Firewall
    let store: StateStore
    let connection: LibvirtConnection

    init(connect uri: String) async throws {
        settings = try await Settings.load(environment: ProcessEnvironment.current())
        log = Log(syslog: settings.syslog)
        guard let variant = settings.iptablesVariant ?? IptablesVariant.detect() else {
            throw FirewallError("cannot tell whether /usr/sbin/iptables is iptables-nft or iptables-legacy")
        }
        firewall = Firewall(backend: IptablesBackend(variant: variant, runner: ProcessRunner()), log: log)
        store = StateStore(directory: settings.stateDirectory)
        connection = try LibvirtConnection(uri: uri)
    }

    /// libvirt's current state; XML that cannot be used is logged and left out.
    func loadState() throws -> LibvirtState {
        let state = try LibvirtState.load(connection)
        for problem in state.problems { log.error(problem) }
        return state
    }

    /// Runs `body` holding virtgate's lock (not for dry-runs, which change nothing).
    func locked<T>(dryRun: Bool, _ body: () async throws -> T) async throws -> T {
        var lock: FileLock?
        if !dryRun {
            try store.prepare()
            lock = try FileLock(path: store.lockPath)
        }
        defer { withExtendedLifetime(lock) {} }
        return try await body()
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
