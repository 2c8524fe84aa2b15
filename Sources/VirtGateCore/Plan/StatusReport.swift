/// What `virtgate status` shows: for every guest with forwards, each forward and its state; for
/// every active network, whether its rules are in place; and virtgate rules nobody owns any more.
/// Field names are the stable JSON of `status --json`.
public struct StatusReport: Codable, Sendable, Equatable {
    public struct Forward: Codable, Sendable, Equatable {
        public var position: Int
        public var proto: String?
        public var hostAddress: String?
        public var hostPorts: String?
        public var guestAddress: String?
        public var guestPorts: String?
        public var sources: [String]
        /// active, pending, conflict, invalid or drift.
        public var state: String
        public var detail: String?
        public var warnings: [String]
    }

    public struct Guest: Codable, Sendable, Equatable {
        public var name: String
        public var forwards: [Forward]
    }

    public struct Network: Codable, Sendable, Equatable {
        public var name: String
        public var bridge: String?
        public var mode: String
        public var subnets: [String]
        /// in-place, missing, drift or not-needed.
        public var rules: String
    }

    public var backend: String
    public var networks: [Network]
    public var guests: [Guest]
    /// virtgate chains whose network or guest is not running: removed by the next `sync`.
    public var orphans: [String]
    /// false when a jump into virtgate's chains is missing or not first.
    public var jumpsInPlace: Bool
}

extension StatusReport {
    /// Compares what `sync` would make with what the kernel has. `listening` holds `proto/port` of
    /// host sockets, to warn that a forward hides a local service.
    /// `nft` is virtgate's nftables table when guests' forwards live there (the nft backend).
    /// `plan` is everything `sync` would plan; `desired` what the backend makes of it.
    public static func build(plan everything: EnginePlan, desired: DesiredState, snapshot: IptablesSnapshot,
                             nft: NftState? = nil, backend: String, listening: [HostSocket] = []) -> StatusReport {
        let desiredChains = desired.chains ?? [:]
        func kernelRules(_ table: IptablesTable, _ chain: String) -> [String]? {
            guard let dump = snapshot.tables[table], dump.chains.contains(chain) else { return nil }
            return dump.rules[chain] ?? []
        }
        var networks: [Network] = []
        for (network, plan) in everything.networks.map({ ($0.network, $0.plan) }) {
            let chains = IptablesRules.chains(for: plan).filter { !$0.rules.isEmpty }
            let state: String
            if chains.isEmpty {
                state = "not-needed"
            } else if chains.allSatisfy({ kernelRules($0.table, $0.name) == $0.rules }) {
                state = "in-place"
            } else if chains.allSatisfy({ kernelRules($0.table, $0.name) == nil }) {
                state = "missing"
            } else {
                state = "drift"
            }
            networks.append(Network(name: network.name, bridge: network.bridge, mode: network.mode.name,
                                    subnets: network.subnets.map(\.network.description), rules: state))
        }

        var guests: [Guest] = []
        for (guest, plan) in everything.guests.map({ ($0.guest, $0.plan) }).sorted(by: { $0.0.name < $1.0.name }) {
            var forwards: [Forward] = []
            for problem in guest.problems {
                forwards.append(Forward(position: problem.position ?? 0, sources: [], state: "invalid",
                                        detail: problem.description, warnings: []))
            }
            for spec in guest.forwards {
                var entry = Forward(position: spec.position, proto: spec.proto.rawValue,
                                    hostAddress: spec.hostAddress?.description, hostPorts: spec.hostPorts.description,
                                    guestAddress: spec.guestAddress?.description, guestPorts: spec.guestPorts.description,
                                    sources: spec.sources.map(\.description), state: "active", detail: nil, warnings: [])
                for family in spec.families {
                    let claim = ForwardClaim(guest: guest.name, family: family, proto: spec.proto, hostAddress: spec.hostAddress,
                                             hostPorts: spec.hostPorts, sources: [])
                    for socket in listening where socket.isHidden(by: claim) {
                        let warning = "a host process holds \(socket.summary); the forward hides it"
                        if !entry.warnings.contains(warning) { entry.warnings.append(warning) }
                    }
                }
                if let problem = plan.problems.first(where: { $0.position == spec.position }) {
                    entry.state = problem.reason.hasPrefix("conflicts with") ? "conflict" : "invalid"
                    entry.detail = problem.reason
                } else if let pending = plan.pending.first(where: { $0.forward.position == spec.position }) {
                    entry.state = "pending"
                    entry.detail = pending.reason
                } else {
                    let intents = plan.plan.intents.filter { $0.forward?.position == spec.position }
                    var addresses: [String] = []
                    for case let address? in intents.map({ $0.forward?.guestAddress.description }) where !addresses.contains(address) {
                        addresses.append(address)
                    }
                    entry.guestAddress = addresses.isEmpty ? nil : addresses.joined(separator: " ")
                    let forwardPlan = OwnerPlan(owner: plan.plan.owner, intents: intents)
                    let missing: Int
                    if let nft {
                        let have = Set(nft.elements)
                        missing = NftRules.elements(for: forwardPlan).filter { !have.contains($0) }.count
                    } else {
                        missing = IptablesRules.chains(for: forwardPlan).flatMap { chain in
                            chain.rules.filter { !(kernelRules(chain.table, chain.name) ?? []).contains($0) }
                        }.count
                    }
                    if missing > 0 {
                        entry.state = "drift"
                        entry.detail = "\(missing) \(nft == nil ? "rule" : "element")(s) missing from the kernel; run virtgate sync"
                    }
                }
                forwards.append(entry)
            }
            // Rules in the guest's chains that no forward explains (edited by hand, stale).
            let extra: Int
            if let nft {
                let wanted = Set(NftRules.elements(for: plan.plan))
                extra = nft.elements.filter { $0.owner == ChainNames.id(for: guest.name) && !wanted.contains($0) }.count
            } else {
                let wanted = IptablesRules.chains(for: plan.plan)
                extra = wanted.flatMap { chain in (kernelRules(chain.table, chain.name) ?? []).filter { !chain.rules.contains($0) } }.count
            }
            if extra > 0 {
                forwards.append(Forward(position: 0, sources: [], state: "drift",
                                        detail: "\(extra) \(nft == nil ? "rule" : "element")(s) in the kernel that no forward declares; run virtgate sync",
                                        warnings: []))
            }
            if !forwards.isEmpty {
                guests.append(Guest(name: guest.name, forwards: forwards.sorted { $0.position < $1.position }))
            }
        }

        let owned = Set(snapshot.ownerChains.flatMap { table, chains in chains.keys.map { "\(table.rawValue)/\($0)" } })
        let wanted = Set(desiredChains.flatMap { table, chains in chains.keys.map { "\(table.rawValue)/\($0)" } })
        var orphans = owned.subtracting(wanted).sorted()
        if let nft {
            let running = Set(everything.guests.map { ChainNames.id(for: $0.guest.name) })
            orphans += Set(nft.elements.map(\.owner)).subtracting(running).subtracting([NftLayout.gatewayOwner]).sorted().map { "nft/\($0)" }
        }
        // The jumps sync would (re)insert: missing or displaced ones, for the chains it wants.
        let jumpsInPlace = !IptablesTransaction.render(from: snapshot, to: desiredChains)
            .split(separator: "\n").contains { $0.hasPrefix("-I ") }
        return StatusReport(backend: backend, networks: networks, guests: guests, orphans: orphans, jumpsInPlace: jumpsInPlace)
    }
}

extension Intent {
    /// The forward a guest intent serves.
    var forward: BoundForward? {
        switch self {
        case .dnat(let forward), .allowForwarded(let forward), .hairpinMasquerade(let forward): forward
        default: nil
        }
    }
}

extension NetworkDefinition.ForwardMode {
    public var name: String {
        switch self {
        case .nat: "nat"
        case .route: "route"
        case .open: "open"
        case .isolated: "isolated"
        case .other(let mode): mode
        }
    }
}

extension InputProblem {
    /// The metadata position named in the field (`forward #3 host-port` → 3).
    var position: Int? {
        guard field.hasPrefix("forward #") else { return nil }
        return Int(field.dropFirst("forward #".count).prefix { $0.isNumber })
    }
}
