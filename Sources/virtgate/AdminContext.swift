import ArgumentParser
import Libvirt
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

    /// Every active network and running guest, with leases, as libvirt reports them now. XML that
    /// cannot be used is reported and left out rather than stopping the whole run.
    func loadState() throws -> (input: SyncInput, networkXML: [String: String], guestXML: [String: String]) {
        var networks: [NetworkDefinition] = []
        var networkXML: [String: String] = [:]
        var leases: [String: [MACAddress: IPv4Address]] = [:]
        for network in try connection.activeNetworks() {
            let xml = try network.xml()
            do {
                let definition = try LibvirtXML.network(fromXML: xml)
                networks.append(definition)
                networkXML[definition.name] = xml
                if let bridge = definition.bridge {
                    for lease in (try? network.dhcpLeases()) ?? [] {
                        if let mac = MACAddress(lease.mac), let address = IPv4Address(lease.ipAddress) {
                            leases[bridge, default: [:]][mac] = address
                        }
                    }
                }
            } catch {
                log.error("\(error); network left out")
            }
        }
        var guests: [GuestDefinition] = []
        var guestXML: [String: String] = [:]
        for domain in try connection.runningDomains() {
            let xml = try domain.xml()
            do {
                guests.append(try LibvirtXML.guest(fromXML: xml, name: domain.name))
                guestXML[domain.name] = xml
            } catch {
                log.error("\(error); guest left out")
            }
        }
        return (SyncInput(networks: networks, guests: guests, leases: leases), networkXML, guestXML)
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

    /// Chain id → guest name for the guests given, so claims read from the kernel carry names.
    static func names(_ guests: [GuestDefinition]) -> [String: String] {
        Dictionary(guests.map { (ChainNames.id(for: $0.name), $0.name) }, uniquingKeysWith: { first, _ in first })
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
