/// libvirt event → firewall action. Every path ends in an exit status chosen for what libvirt does
/// with it (see the hook notes): a failing `reconnect` would kill a running guest, so it never fails.
public struct HookHandler: Sendable {
    public let settings: Settings
    public let firewall: Firewall
    /// virtgate's nftables table; nil when nft is not installed. Guests' forwards live there when
    /// `settings.backend` is `.nft`; with `.iptables` only `reapply` touches it, to remove it.
    public let nftables: NftFirewall?
    public let store: StateStore
    public let log: Log
    public let dryRun: Bool
    /// Where dry-run transactions and filter output (migrate/restore) go.
    public let output: @Sendable (String) -> Void

    public init(settings: Settings, firewall: Firewall, nftables: NftFirewall? = nil, log: Log, dryRun: Bool,
                output: @escaping @Sendable (String) -> Void) {
        self.settings = settings
        self.firewall = firewall
        self.nftables = nftables
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
        switch QemuOperation(invocation.operation) {
        case .migrate, .restore:
            // libvirt reads our stdout as the (possibly rewritten) domain XML: hand it back untouched.
            output(stdin)
            return 0
        case .prepare:
            guard let guest = parseGuest(name, stdin) else { return refuseOrPass() }
            return report(guest.problems) ? 0 : 1
        case .start, .started:
            return await assertGuest(name, stdin: stdin, failureStatus: settings.onInvalid == .refuse ? 1 : 0)
        case .reconnect, .attach:
            return await assertGuest(name, stdin: stdin, failureStatus: 0, networks: invocation.operation == "reconnect")
        case .stopped, .release:
            // Remove by name only: the metadata may have changed while the guest ran.
            guard Names.isSafeObjectName(name) else {
                log.error(InputProblem(.guest(name), field: "name", value: name, reason: "not a usable guest name").description)
                return 0
            }
            let event = "\(invocation: invocation)"
            let done = if let nft = activeNft {
                await apply(nft, event: event) { NftTransaction.desired($0.ownerElements, replacing: .guest(name), with: []) }
            } else {
                await apply([(.guest(name), [])], event: event)
            }
            if done && !dryRun { store.forgetGuest(name) }
            return 0
        case .other(let operation):
            log.info("qemu \(InputProblem.quoted(name)) \(operation): nothing to do")
            return 0
        }
    }

    func parseGuest(_ name: String, _ xml: String) -> GuestDefinition? {
        do {
            return try LibvirtXML.guest(fromXML: xml, name: name)
        } catch {
            log.error("\(error)")
            return nil
        }
    }

    /// Logs each problem; false when the policy says the guest must not start because of them.
    func report(_ problems: [InputProblem]) -> Bool {
        let refuse = settings.onInvalid == .refuse
        for problem in problems {
            refuse ? log.error("\(problem)") : log.warning("\(problem); forward skipped")
        }
        return problems.isEmpty || !refuse
    }

    func refuseOrPass() -> Int32 { settings.onInvalid == .refuse ? 1 : 0 }

    /// `networks`: with the nftables backend, also re-assert the filter rules of the guest's networks
    /// in iptables (on `reconnect`: a libvirtd restart has just put libvirt's own rules first again).
    /// Not on every `started`: that would add an iptables round to every guest start. With iptables
    /// they always go in the guest's own transaction, at no extra cost.
    func assertGuest(_ name: String, stdin: String, failureStatus: Int32, networks: Bool = false) async -> Int32 {
        guard let guest = parseGuest(name, stdin) else { return failureStatus }
        if settings.onInvalid == .refuse && !guest.problems.isEmpty {
            _ = report(guest.problems)
            return failureStatus
        }
        if !dryRun {
            do {
                try store.prepare()
                try store.rememberGuest(name, xml: stdin)
            } catch {
                log.warning("cannot remember guest \(InputProblem.quoted(name)) in \(store.directory): \(error)")
            }
        }
        let addresses = FileAddressBook(store: store, settings: settings)
        var names: [String: String] = [:]
        for remembered in store.guestNames() { names[ChainNames.id(for: remembered)] = remembered }
        if let nft = activeNft {
            return await assertGuest(guest, nft: nft, addresses: addresses, names: names, failureStatus: failureStatus,
                                     networks: networks)
        }
        var guestPlan: GuestPlan?
        var refused = false
        // Planned under the lock, against the kernel's rules: other guests' forwards there decide
        // conflicts (the first guest keeps the port).
        let applied = await apply(event: "qemu \(InputProblem.quoted(name))") { snapshot in
            let plan = Planner.plan(guest: guest, addresses: addresses, taken: snapshot.forwardClaims(names: names))
            guestPlan = plan
            var desired = snapshot.ownerChains
            if settings.onInvalid == .refuse && !plan.problems.isEmpty {
                refused = true
                return nil
            }
            // The networks the guest uses get their rules in the same transaction: a network that
            // was running before virtgate was installed has none yet; re-asserting is free otherwise.
            for network in plan.networks.compactMap({ addresses.network(named: $0) }) {
                desired = IptablesTransaction.desired(desired, replacing: .network(network.name),
                    with: IptablesRules.chains(for: Planner.plan(network: network, settings: settings.planner)))
            }
            return IptablesTransaction.desired(desired, replacing: plan.plan.owner, with: IptablesRules.chains(for: plan.plan))
        }
        report(guest, guestPlan, addresses)
        return applied && !refused ? 0 : failureStatus
    }

    func report(_ guest: GuestDefinition, _ guestPlan: GuestPlan?, _ addresses: FileAddressBook) {
        for problem in addresses.problems { log.warning(problem) }
        if let guestPlan {
            _ = report(guest.problems + guestPlan.problems)
            for pending in guestPlan.pending {
                log.info("guest \(InputProblem.quoted(guest.name)): forward #\(pending.forward.position) \(pending.forward.summary) pending: \(pending.reason)")
            }
        }
    }

    /// The nftables backend, when it is the active one.
    var activeNft: NftFirewall? { settings.backend == .nft ? nftables : nil }

    /// The guest's forwards as map elements, planned against the elements other guests hold.
    func assertGuest(_ guest: GuestDefinition, nft: NftFirewall, addresses: FileAddressBook, names: [String: String],
                     failureStatus: Int32, networks reassert: Bool) async -> Int32 {
        var guestPlan: GuestPlan?
        var refused = false
        let applied = await apply(nft, event: "qemu \(InputProblem.quoted(guest.name))") { state in
            let plan = Planner.plan(guest: guest, addresses: addresses, taken: state.forwardClaims(names: names))
            guestPlan = plan
            if settings.onInvalid == .refuse && !plan.problems.isEmpty {
                refused = true
                return nil
            }
            return NftTransaction.desired(state.ownerElements, replacing: plan.plan.owner, with: NftRules.elements(for: plan.plan))
        }
        // A network that was running before virtgate was installed has no filter rules yet: it gets
        // them now (in iptables, where the DROP is). Networks the network hook reported have them,
        // unless libvirt or someone else moved them since (`reassert`).
        var networksDone = true
        if applied, !refused, let guestPlan {
            let unseen = guestPlan.networks.filter { reassert || store.networkXML($0) == nil }.compactMap { addresses.network(named: $0) }
            if !unseen.isEmpty {
                networksDone = await apply(unseen.map { network in
                    (.network(network.name), IptablesRules.chains(for: Planner.plan(network: network, settings: settings.planner)))
                }, event: "qemu \(InputProblem.quoted(guest.name)) networks")
            }
        }
        report(guest, guestPlan, addresses)
        return applied && !refused && networksDone ? 0 : failureStatus
    }

    // MARK: network

    func handleNetwork(_ invocation: HookInvocation, stdin: String) async -> Int32 {
        let name = invocation.object
        let operation = NetworkOperation(invocation.operation)
        switch operation {
        case .started, .updated:
            let failure: Int32 = settings.onInvalid == .refuse ? 1 : 0
            let network: NetworkDefinition
            do {
                network = try LibvirtXML.network(fromXML: stdin)
            } catch {
                log.error("\(error)")
                return failure
            }
            guard network.name == name else {
                log.error(InputProblem(.network(name), field: "name", value: network.name,
                                       reason: "XML names another network").description)
                return failure
            }
            if !dryRun {
                do {
                    try store.prepare()
                    try store.rememberNetwork(name, xml: stdin)
                } catch {
                    log.warning("cannot remember network \(InputProblem.quoted(name)): \(error)")
                }
            }
            var changes: [(Owner, [OwnedChain])] = [
                (.network(name), IptablesRules.chains(for: Planner.plan(network: network, settings: settings.planner))),
            ]
            // Reservations may have changed: re-bind the forwards of running guests on this network.
            let addresses = OverridingAddressBook(network: network,
                                                  base: FileAddressBook(store: store, settings: settings))
            var plans: [GuestPlan] = []
            for (guestName, xml) in store.guests() {
                guard let guest = try? LibvirtXML.guest(fromXML: xml, name: guestName),
                      guest.interfaces.contains(where: { $0.network == name }) else { continue }
                plans.append(Planner.plan(guest: guest, addresses: addresses))
            }
            let event = "network \(InputProblem.quoted(name)) \(invocation.operation)"
            guard let nft = activeNft else {
                changes += plans.map { ($0.plan.owner, IptablesRules.chains(for: $0.plan)) }
                return await apply(changes, event: event) ? 0 : failure
            }
            var done = await apply(changes, event: event)
            if !plans.isEmpty {
                done = await apply(nft, event: event) { state in
                    plans.reduce(state.ownerElements) { NftTransaction.desired($0, replacing: $1.plan.owner, with: NftRules.elements(for: $1.plan)) }
                } && done
            }
            return done ? 0 : failure
        case .stopped:
            guard Names.isSafeObjectName(name) else { return 0 }
            let done = await apply([(.network(name), [])], event: "network \(InputProblem.quoted(name)) stopped")
            if done && !dryRun { store.forgetNetwork(name) }
            return 0
        case .start, .portCreated, .portDeleted:
            return 0
        case .other(let text):
            log.info("network \(InputProblem.quoted(name)) \(text): nothing to do")
            return 0
        }
    }

    // MARK: re-applying

    /// Re-asserts everything virtgate remembers, networks and running guests, in one transaction,
    /// binding guests to their current addresses (reservations, lease files). Works from files
    /// only, like the hooks, so it also runs when libvirt is down or not yet up. Run when dnsmasq's
    /// lease files change (late binding: a guest without a reservation gets its forwards once it
    /// has a lease, and keeps them when the lease moves) and after UFW rebuilt its chains.
    public func reapplyAll() async -> Bool {
        let remembered = rememberedState()
        var plans: [GuestPlan] = []
        var done: Bool
        if let nft = activeNft {
            // Guests' elements first, then the filter side; rules a guest left in iptables (from
            // before a switch of backend) go in the same iptables transaction.
            done = await apply(nft, event: "reapply") { state in
                let guestPlans = remembered.guestPlans(incumbents: state.forwardClaims(names: remembered.chainNames),
                                                       settings: settings.planner)
                plans = guestPlans
                return guestPlans.reduce(into: state.ownerElements) {
                    NftTransaction.replace(&$0, owner: $1.plan.owner, with: NftRules.elements(for: $1.plan))
                }
            }
            done = await apply(event: "reapply") { snapshot in
                remembered.networkChains(on: snapshot.ownerChains.withoutGuests, settings: settings.planner)
            } && done
        } else {
            done = await apply(event: "reapply") { snapshot in
                let (desired, guestPlans) = remembered.desired(on: snapshot, settings: settings.planner)
                plans = guestPlans
                return desired
            }
            if let nftables {
                done = await removeTable(nftables, event: "reapply") && done
            }
        }
        for plan in plans {
            for problem in plan.problems { log.warning("\(problem); forward skipped") }
            for pending in plan.pending {
                log.info("\(plan.plan.owner): forward #\(pending.forward.position) \(pending.forward.summary) pending: \(pending.reason)")
            }
        }
        return done
    }

    /// The networks and guests virtgate remembers, parsed; unusable files are logged and skipped.
    public func rememberedState() -> RememberedState {
        var state = RememberedState(addresses: FileAddressBook(store: store, settings: settings))
        for (name, xml) in store.networks() {
            do {
                state.networks.append(try LibvirtXML.network(fromXML: xml))
            } catch {
                log.warning("remembered XML of network \(InputProblem.quoted(name)) unusable: \(error)")
            }
        }
        for (name, xml) in store.guests() {
            do {
                state.guests.append(try LibvirtXML.guest(fromXML: xml, name: name))
            } catch {
                log.warning("remembered XML of guest \(InputProblem.quoted(name)) unusable: \(error)")
            }
        }
        return state
    }

    // MARK: applying

    /// One locked transaction replacing whole owners. Returns false (after logging) when it could not be applied.
    func apply(_ changes: [(Owner, [OwnedChain])], event: String) async -> Bool {
        await apply(event: event) { snapshot in
            var desired = snapshot.ownerChains
            for (owner, chains) in changes {
                desired = IptablesTransaction.desired(desired, replacing: owner, with: chains)
            }
            return desired
        }
    }

    /// One locked transaction: `desired` maps the kernel's current rules to what virtgate wants.
    func apply(event: String, desired: (IptablesSnapshot) -> DesiredChains?) async -> Bool {
        await transaction(event: event) { try await firewall.apply(dryRun: dryRun, desired: desired) }
    }

    /// One locked nft transaction: `desired` maps virtgate's table to the elements it wants.
    func apply(_ nft: NftFirewall, event: String, desired: (NftState) -> DesiredElements?) async -> Bool {
        await transaction(event: event) { try await nft.apply(dryRun: dryRun, desired: desired) }
    }

    /// Removes virtgate's nftables table if there is one: nothing of the other backend stays.
    func removeTable(_ nft: NftFirewall, event: String) async -> Bool {
        await transaction(event: event) { try await nft.remove(dryRun: dryRun) }
    }

    func transaction(event: String, _ body: () async throws -> Firewall.Outcome) async -> Bool {
        do {
            var lock: FileLock?
            if !dryRun {
                try store.prepare()
                lock = try FileLock(path: store.lockPath)
            }
            let outcome = try await body()
            withExtendedLifetime(lock) {}
            if dryRun {
                output(outcome.transaction.isEmpty ? "# \(event): no changes\n" : outcome.transaction)
            } else if outcome.applied {
                log.info("\(event): applied \(Self.summary(of: outcome.transaction))")
            }
            return true
        } catch {
            log.error("\(event): \(error); no rules changed")
            return false
        }
    }

    /// "+3 -1 rules in VGD-web, VGF-web" style summary of a transaction, for the one log line.
    static func summary(of transaction: String) -> String {
        if transaction.hasPrefix("add element") || transaction.hasPrefix("delete element") || transaction.hasPrefix("table inet") {
            return nftSummary(of: transaction)
        }
        var added = 0, removed = 0
        var chains: [String] = []
        for line in transaction.split(separator: "\n") {
            if line.hasPrefix("-A ") || line.hasPrefix("-I ") { added += 1 }
            if line.hasPrefix("-D ") { removed += 1 }
            if line.hasPrefix(":") { chains.append(String(line.dropFirst().prefix { $0 != " " })) }
            if line.hasPrefix("-X ") { removed += 1 }
        }
        let touched = chains.filter { TopChain(rawValue: $0) == nil }
        return "\(added) rules written, \(removed) removed" + (touched.isEmpty ? "" : " (\(touched.joined(separator: ", ")))")
    }
}

extension HookHandler {
    /// "5 elements added, 2 removed" for an nft script.
    static func nftSummary(of script: String) -> String {
        var added = 0, removed = 0
        var created = false, deleted = false
        for line in script.split(separator: "\n") {
            let count = line.split(separator: ",").count
            if line.hasPrefix("add element") { added += count }
            if line.hasPrefix("delete element") { removed += count }
            if line.hasPrefix("table inet") && line.hasSuffix("{") { created = true }
            if line.hasPrefix("delete table") { deleted = true }
        }
        if deleted && !created { return "table inet \(NftLayout.table) removed (its last forward went)" }
        return "\(added) elements added, \(removed) removed" + (created ? " (table inet \(NftLayout.table) created)" : "")
    }
}

extension DesiredChains {
    /// Without guests' chains: with the nftables backend, guests have none in iptables.
    public var withoutGuests: DesiredChains {
        mapValues { chains in chains.filter { !["VGD-", "VGF-", "VGS-"].contains(String($0.key.prefix(4))) } }
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
}

/// Networks and running guests as the hooks last reported them, with file-based addresses.
public struct RememberedState {
    public var networks: [NetworkDefinition] = []
    public var guests: [GuestDefinition] = []
    let addresses: FileAddressBook

    init(addresses: FileAddressBook) { self.addresses = addresses }

    /// Every remembered network and guest re-planned against `snapshot`, incumbents first (the
    /// first guest keeps a contested port), on top of `base` (by default what the kernel has, so
    /// owners virtgate does not remember are left alone).
    public func desired(on snapshot: IptablesSnapshot, settings: PlannerSettings,
                        base: DesiredChains? = nil) -> (DesiredChains, [GuestPlan]) {
        var desired = networkChains(on: base ?? snapshot.ownerChains, settings: settings)
        let plans = guestPlans(incumbents: snapshot.forwardClaims(names: chainNames), settings: settings)
        for plan in plans {
            IptablesTransaction.replace(&desired, owner: plan.plan.owner, with: IptablesRules.chains(for: plan.plan))
        }
        return (desired, plans)
    }

    /// `base` with every remembered network's chains replaced.
    public func networkChains(on base: DesiredChains, settings: PlannerSettings) -> DesiredChains {
        networks.reduce(into: base) { desired, network in
            IptablesTransaction.replace(&desired, owner: .network(network.name),
                with: IptablesRules.chains(for: Planner.plan(network: network, settings: settings)))
        }
    }

    /// Chain id → guest name.
    public var chainNames: [String: String] {
        Dictionary(guests.map { (ChainNames.id(for: $0.name), $0.name) }, uniquingKeysWith: { first, _ in first })
    }

    /// Every remembered guest planned, those holding forwards in the kernel (`incumbents`) first.
    public func guestPlans(incumbents: [ForwardClaim], settings: PlannerSettings) -> [GuestPlan] {
        let holders = Set(incumbents.map(\.guest))
        var taken = ClaimIndex()
        var plans: [GuestPlan] = []
        for guest in guests.sorted(by: { (holders.contains($0.name) ? 0 : 1, $0.name) < (holders.contains($1.name) ? 0 : 1, $1.name) }) {
            let plan = Planner.plan(guest: guest, addresses: addresses, taken: taken)
            for claim in plan.claims { taken.insert(claim) }
            plans.append(plan)
        }
        return plans
    }
}
