import VirtGateCore

/// Settings, log, the firewall and the backend: what every command that touches the rules needs,
/// the hook included. The backend is chosen here, once. Building it asks nothing of libvirt.
struct LocalContext {
    let settings: Settings
    let log: Log
    let firewall: Firewall
    let backend: any Backend

    init(settings: Settings, log: Log? = nil) throws {
        self.settings = settings
        self.log = log ?? Log(syslog: settings.syslog)
        guard let variant = settings.iptablesVariant ?? IptablesVariant.detect() else {
            throw VirtGateError(.firewall, "cannot tell whether /usr/sbin/iptables is iptables-nft or iptables-legacy")
        }
        let nft = NftCommands.ifInstalled(runner: ProcessRunner())
        if settings.backend == .nft && nft == nil {
            throw VirtGateError(.input, "BACKEND=nft, but \(NftCommands.defaultPath) is not installed")
        }
        firewall = Firewall(iptables: IptablesCommands(variant: variant, runner: ProcessRunner()), nft: nft,
                            mark: settings.connectionMark, log: self.log)
        backend = Backends.make(settings, nftInstalled: nft != nil)
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

    /// One change through the engine, under the lock (not for dry-runs); problems and pending
    /// forwards are logged.
    func run(_ input: EngineInput, dryRun: Bool, ahead: Firewall.ReadAhead? = nil) async throws -> Firewall.Outcome {
        let outcome = try await firewall.run(input, backend: backend, dryRun: dryRun, store: dryRun ? nil : store, ahead: ahead)
        log.report(outcome.plan)
        return outcome
    }

    func handler(dryRun: Bool, output: @escaping @Sendable (String) -> Void) -> HookHandler {
        HookHandler(settings: settings, firewall: firewall, backend: backend, log: log, dryRun: dryRun, output: output)
    }
}
