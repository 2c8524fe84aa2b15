/// libvirt event → engine input → one transaction. Every path ends in an exit status chosen for
/// what libvirt does with it (see `HookPolicy`): a failing `reconnect` would kill a running guest.
public struct HookHandler {
    public let settings: Settings
    public let firewall: Firewall
    /// Where forwards live, chosen once where the context was built.
    public let backend: any Backend
    public let store: StateStore
    public let log: Log
    public let dryRun: Bool
    /// Where dry-run transactions and filter output (migrate/restore) go.
    public let output: @Sendable (String) -> Void

    public init(settings: Settings, firewall: Firewall, backend: any Backend, log: Log, dryRun: Bool,
                output: @escaping @Sendable (String) -> Void) {
        self.settings = settings
        self.firewall = firewall
        self.backend = backend
        self.store = StateStore(directory: settings.stateDirectory)
        self.log = log
        self.dryRun = dryRun
        self.output = output
    }

    public func handle(_ invocation: HookInvocation, stdin: String) async -> Int32 {
        switch invocation.driver {
        case .qemu: await handleQemu(invocation, stdin: stdin)
        case .network: await handleNetwork(invocation, stdin: stdin)
        }
    }

    // MARK: qemu

    func handleQemu(_ invocation: HookInvocation, stdin: String) async -> Int32 {
        let name = invocation.object
        let operation = QemuOperation(invocation.operation)
        let policy = HookPolicy(settings.onInvalid)
        switch operation {
        case .migrate, .restore:
            // libvirt reads our stdout as the (possibly rewritten) domain XML: hand it back untouched.
            output(stdin)
            return 0
        case .prepare:
            guard let guest = parseGuest(name, stdin) else { return policy.status(operation, .invalidInput) }
            report(guest.problems)
            return policy.status(operation, guest.problems.isEmpty ? .done : .problems)
        case .start, .started, .reconnect, .attach:
            guard let guest = parseGuest(name, stdin) else { return policy.status(operation, .invalidInput) }
            if policy.refuses, !guest.problems.isEmpty {
                report(guest.problems)
                return policy.status(operation, .problems)
            }
            // libvirt hands most events of a running guest the same XML: remembered once, read back
            // once, and not rewritten while it stays the same.
            let remembered = store.guestXML(name)
            let unchanged = remembered.map { $0.utf8.elementsEqual(stdin.utf8) } ?? false
            let holdsNothing = holdsNothing(guest, remembered: unchanged ? nil : remembered)
            if !unchanged {
                // An older remembered XML must not outlive a failed write: a stop trusts it (below).
                remember(failing: { store.forgetGuest(name) }) { try store.rememberGuest(name, xml: stdin) }
            }
            if holdsNothing, operation != .reconnect {
                // No forwards now and none remembered: the plan is "nothing for this guest", so the
                // kernel is neither read nor written (nor is libnftables loaded). A stop still
                // removes by name, and a reconnect (libvirtd restarted) reads and re-asserts as ever.
                if dryRun { output("# qemu \(InputProblem.quoted(name)): no changes\n") }
                return policy.status(operation, .done)
            }
            let addresses = FileAddressBook(store: store, settings: settings)
            let input = guestInput(guest, addresses: addresses, reassertNetworks: operation == .reconnect)
            let result = await run(input, event: "qemu \(InputProblem.quoted(name))")
            for problem in addresses.problems { log.warning(problem) }
            return policy.status(operation, result)
        case .stopped, .release:
            // Remove by name only: the metadata may have changed while the guest ran.
            guard Names.isSafeObjectName(name) else {
                log.error(InputProblem(.guest(name), field: "name", value: name, reason: "not a usable guest name").description)
                return 0
            }
            // Remembered without valid forwards: it holds nothing in the kernel, so there is nothing to
            // remove and the kernel is not read. Every path that writes a guest's rules (its events,
            // sync, `forward`) remembers its XML first, and a failed write forgets the old one. The
            // XML stays remembered until `release` (libvirt's last event of a guest) for the same
            // reason; a guest virtgate does not remember at all is removed by name as ever.
            if let remembered = store.guestXML(name), let before = try? LibvirtXML.guest(fromXML: remembered, name: name),
               before.forwards.isEmpty {
                if operation == .release && !dryRun { store.forgetGuest(name) }
                if dryRun { output("# qemu \(InputProblem.quoted(name)): no changes\n") }
                return 0
            }
            // A `type='bridge'` NIC keeps its source bridge in the stop events' XML too: stdin tells.
            let guest = try? LibvirtXML.guest(fromXML: stdin, name: name)
            let input = EngineInput(removed: [.guest(name)], addresses: NoAddresses(), names: rememberedNames(except: name),
                                    removesPlainBridgeRules: guest.map(EngineInput.usesPlainBridge) ?? true)
            let result = await run(input, event: "\(invocation: invocation)")
            if result == .done && !dryRun { store.forgetGuest(name) }
            return policy.status(operation, result)
        case .other(let text):
            log.info("qemu \(InputProblem.quoted(name)) \(text): nothing to do")
            return 0
        }
    }

    /// A guest with no forwards and nothing to report, which virtgate does not remember with any
    /// either (its last start, or none since its last stop): whatever it held was removed by that
    /// stop, so there is nothing of it in the kernel and nothing to put there.
    /// `remembered`: the guest's remembered XML where it differs from this event's (nil: none, or the same).
    func holdsNothing(_ guest: GuestDefinition, remembered: String?) -> Bool {
        guard guest.forwards.isEmpty, guest.problems.isEmpty else { return false }
        guard let remembered else { return true }
        guard let before = try? LibvirtXML.guest(fromXML: remembered, name: guest.name) else { return false }
        return before.forwards.isEmpty
    }

    func parseGuest(_ name: String, _ xml: String) -> GuestDefinition? {
        do {
            return try LibvirtXML.guest(fromXML: xml, name: name)
        } catch {
            log.error("\(error)")
            return nil
        }
    }

    /// One guest's change: its forwards, and the rules of the networks they run through when the
    /// backend writes those at no extra cost, when virtgate has not seen that network (it was
    /// running before virtgate was installed), or on `reconnect`, which follows a libvirtd restart
    /// that has just put libvirt's own rules first again.
    func guestInput(_ guest: GuestDefinition, addresses: FileAddressBook, reassertNetworks: Bool) -> EngineInput {
        var input = EngineInput.guest(guest, addresses: addresses, names: rememberedNames(except: guest.name),
                                      assertNetwork: { backend.networksRideAlong || reassertNetworks || store.networkXML($0) == nil },
                                      refuseOnProblems: settings.onInvalid == .refuse)
        // Host sockets and gateways matter only to forwards: a guest without any (the common case,
        // and every guest event starts this binary) reads neither /proc nor the remembered networks.
        // Its removal of what it may have held leaves the kernel's gateway list as it is (nil).
        if !guest.forwards.isEmpty {
            input.hostSockets = ListeningSockets.current()
            input.gateways = knownGateways(addresses, guest: guest)
        }
        return input
    }

    /// The host's addresses on every network virtgate remembers (and on the guest's own networks):
    /// forwards on any address leave traffic to them alone.
    func knownGateways(_ addresses: any AddressBook, guest: GuestDefinition? = nil, except: String? = nil) -> [IPAddress] {
        let names = Set(store.networkNames() + (guest?.interfaces.compactMap(\.network) ?? [])).subtracting([except].compactMap { $0 })
        return names.sorted().compactMap { addresses.network(named: $0) }.flatMap { $0.subnets.map(\.gateway) }
    }

    /// Every remembered guest, parsed (unusable files are skipped: `rememberedInput` logs them).
    func rememberedGuests() -> [GuestDefinition] {
        store.guests().compactMap { name, xml in try? LibvirtXML.guest(fromXML: xml, name: name) }
    }

    /// Owner id → name of every guest virtgate remembers (but `except`), so conflicts name guests,
    /// not ids, and the engine can check that an id it is about to replace is the guest's own.
    func rememberedNames(except: String? = nil) -> [String: String] {
        var names: [String: String] = [:]
        for remembered in store.guestNames() where remembered != except { names[ChainNames.id(for: remembered)] = remembered }
        return names
    }

    func remember(failing: () -> Void = {}, _ body: () throws -> Void) {
        guard !dryRun else { return }
        do {
            try store.prepare()
            try body()
        } catch {
            log.warning("cannot remember state in \(store.directory): \(error)")
            failing()
        }
    }

    // MARK: network

    func handleNetwork(_ invocation: HookInvocation, stdin: String) async -> Int32 {
        let name = invocation.object
        let operation = NetworkOperation(invocation.operation)
        let policy = HookPolicy(settings.onInvalid)
        switch operation {
        case .started, .updated:
            let network: NetworkDefinition
            do {
                network = try LibvirtXML.network(fromXML: stdin)
            } catch {
                log.error("\(error)")
                return policy.status(operation, .invalidInput)
            }
            guard network.name == name else {
                log.error(InputProblem(.network(name), field: "name", value: network.name,
                                       reason: "XML names another network").description)
                return policy.status(operation, .invalidInput)
            }
            remember { try store.rememberNetwork(name, xml: stdin) }
            // Reservations may have changed: re-bind the forwards of running guests. All of them: the
            // network's own address is one every guest's forwards on any address must leave alone.
            let addresses = OverridingAddressBook(network: network, base: FileAddressBook(store: store, settings: settings))
            var input = EngineInput(networks: [network], guests: rememberedGuests(), addresses: addresses, names: rememberedNames())
            input.hostSockets = ListeningSockets.current()
            input.gateways = knownGateways(addresses)
            return policy.status(operation, await run(input, event: "network \(InputProblem.quoted(name)) \(invocation.operation)"))
        case .stopped:
            guard Names.isSafeObjectName(name) else { return 0 }
            // Guests' forwards on any address no longer need to leave its address alone.
            let addresses = FileAddressBook(store: store, settings: settings)
            var input = EngineInput(guests: rememberedGuests(), removed: [.network(name)], addresses: addresses,
                                    names: rememberedNames())
            input.hostSockets = ListeningSockets.current()
            input.gateways = knownGateways(addresses, except: name)
            let result = await run(input, event: "network \(InputProblem.quoted(name)) stopped")
            if result == .done && !dryRun { store.forgetNetwork(name) }
            return policy.status(operation, result)
        case .start, .portCreated, .portDeleted:
            return 0
        case .other(let text):
            log.info("network \(InputProblem.quoted(name)) \(text): nothing to do")
            return 0
        }
    }

    // MARK: re-applying

    /// Re-asserts everything virtgate remembers, networks and running guests, in one transaction,
    /// binding guests to their current addresses (reservations, lease files), and removes what the
    /// other backend holds. Works from files only, like the hooks, so it also runs when libvirt is
    /// down or not yet up. Run when dnsmasq's lease files change (late binding: a guest without a
    /// reservation gets its forwards once it has a lease, and keeps them when the lease moves) and
    /// after UFW rebuilt its chains.
    public func reapplyAll() async -> Bool {
        // Invalid forwards are logged and skipped, as at hook time; only a failed transaction fails.
        await run(rememberedInput(), event: "reapply") != .failed
    }

    /// Every network and guest virtgate remembers, parsed; unusable files are logged and skipped.
    public func rememberedInput(exclusive: Bool = false) -> EngineInput {
        let addresses = FileAddressBook(store: store, settings: settings)
        var input = EngineInput(exclusive: exclusive, addresses: addresses, names: rememberedNames(), clearsOtherBackend: true)
        input.hostSockets = ListeningSockets.current()
        input.gateways = knownGateways(addresses)
        for (name, xml) in store.networks() {
            do {
                input.networks.append(try LibvirtXML.network(fromXML: xml))
            } catch {
                log.warning("remembered XML of network \(InputProblem.quoted(name)) unusable: \(error)")
            }
        }
        for (name, xml) in store.guests() {
            do {
                input.guests.append(try LibvirtXML.guest(fromXML: xml, name: name))
            } catch {
                log.warning("remembered XML of guest \(InputProblem.quoted(name)) unusable: \(error)")
            }
        }
        return input
    }

    // MARK: applying

    /// One change through the engine; logs what it did, its problems and pending forwards.
    func run(_ input: EngineInput, event: String) async -> HookPolicy.Result {
        let outcome: Firewall.Outcome
        do {
            outcome = try await firewall.run(input, backend: backend, dryRun: dryRun, store: dryRun ? nil : store)
        } catch {
            log.error("\(event): \(error); no rules changed")
            return .failed
        }
        log.report(outcome.plan, refuse: settings.onInvalid == .refuse)
        if outcome.refused { return .problems }
        if dryRun {
            output(outcome.transaction.isEmpty ? "# \(event): no changes\n" : outcome.transaction.text)
        } else if outcome.applied {
            log.info("\(event): applied \(outcome.transaction.summary)")
        }
        return outcome.plan.problems.isEmpty ? .done : .problems
    }

    /// Logs each problem: an error when the policy refuses the guest, else a warning.
    func report(_ problems: [InputProblem]) {
        log.report(problems, refuse: settings.onInvalid == .refuse)
    }
}

/// The exit status of a hook event, from what happened and the `ON_INVALID` policy. One place,
/// because what a non-zero status does differs per event (see the hook notes): `prepare`/`start`
/// keep the guest from starting, `started` stops it again, `reconnect` would kill a running guest.
public struct HookPolicy: Sendable {
    public enum Result: Sendable, Equatable {
        /// Applied, or nothing to do.
        case done
        /// Some metadata was not valid: the rest was applied (warn), or nothing was (refuse).
        case problems
        /// The XML could not be read at all.
        case invalidInput
        /// The firewall could not be changed (nothing was).
        case failed
    }

    public let onInvalid: Settings.InvalidPolicy

    public init(_ onInvalid: Settings.InvalidPolicy) { self.onInvalid = onInvalid }

    public var refuses: Bool { onInvalid == .refuse }

    public func status(_ operation: QemuOperation, _ result: Result) -> Int32 {
        switch operation {
        case .prepare, .start, .started: result == .done || !refuses ? 0 : 1
        // reconnect/attach would kill a running guest; libvirt ignores the stop events' status.
        default: 0
        }
    }

    public func status(_ operation: NetworkOperation, _ result: Result) -> Int32 {
        switch operation {
        // A guest's bad metadata (re-planned here) must not keep a network from starting: only the
        // network's own XML or a failed transaction can.
        case .started, .updated: result == .done || result == .problems || !refuses ? 0 : 1
        default: 0
        }
    }
}

extension DefaultStringInterpolation {
    mutating func appendInterpolation(invocation: HookInvocation) {
        appendLiteral(invocation.summary)
    }
}

/// The network hook knows the new definition before anything is stored: use it first.
struct OverridingAddressBook: AddressBook {
    let network: NetworkDefinition
    let base: any AddressBook

    func network(named name: String) -> NetworkDefinition? {
        name == network.name ? network : base.network(named: name)
    }

    func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? {
        base.leasedAddress(bridge: bridge, mac: mac, family: family)
    }

    func leaseHolder(bridge: String, address: IPAddress) -> MACAddress? {
        base.leaseHolder(bridge: bridge, address: address)
    }
}

