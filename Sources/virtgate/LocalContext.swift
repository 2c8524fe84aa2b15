import VirtGateCore

/// Settings, log and firewall: what every command that touches the rules needs, the hook included.
/// Building it asks nothing of libvirt.
struct LocalContext {
    let settings: Settings
    let log: Log
    let firewall: Firewall
    /// virtgate's nftables table, when nft is installed (see `HookHandler.nftables`).
    let nftables: NftFirewall?

    init(settings: Settings, log: Log? = nil) throws {
        self.settings = settings
        self.log = log ?? Log(syslog: settings.syslog)
        guard let variant = settings.iptablesVariant ?? IptablesVariant.detect() else {
            throw FirewallError("cannot tell whether /usr/sbin/iptables is iptables-nft or iptables-legacy")
        }
        firewall = Firewall(backend: IptablesBackend(variant: variant, runner: ProcessRunner()), log: self.log)
        nftables = NftFirewall.ifInstalled(settings: settings, runner: ProcessRunner(), log: self.log)
        if settings.backend == .nft && nftables == nil {
            throw FirewallError("BACKEND=nft, but \(NftBackend.defaultPath) is not installed")
        }
    }

    /// `backend` is the `--backend` flag, which wins over the config and the environment.
    static func load(backend: BackendKind? = nil) async throws -> LocalContext {
        var settings = try await Settings.load(environment: ProcessEnvironment.current())
        if let backend {
            settings.backend = backend
            settings.backendReason = "set by --backend"
        }
        return try LocalContext(settings: settings)
    }

    var store: StateStore { StateStore(directory: settings.stateDirectory) }

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
}
