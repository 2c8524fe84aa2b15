/// The engine's only effects: read virtgate's objects from the kernel, render the difference to
/// what the backend wants, and apply it as one transaction, putting the previous state back if a
/// part fails (iptables commits table by table; nft all or nothing, but after iptables).
public struct Firewall: Sendable {
    public let iptables: IptablesCommands
    /// nil where nft is not installed.
    public let nft: NftCommands?
    /// The nftables backend's connection mark, which its table's layout records.
    public let mark: UInt32
    public let log: Log

    /// The kernel's nf_tables ruleset generation (`NftNetlink.generation`); nil where it cannot be read.
    let generation: @Sendable () -> UInt32?

    public init(iptables: IptablesCommands, nft: NftCommands?, mark: UInt32 = Settings().connectionMark, log: Log) {
        self.init(iptables: iptables, nft: nft, mark: mark, log: log, generation: { try? NftNetlink.shared?.generation() })
    }

    init(iptables: IptablesCommands, nft: NftCommands?, mark: UInt32, log: Log, generation: @escaping @Sendable () -> UInt32?) {
        self.iptables = iptables
        self.nft = nft
        self.mark = mark
        self.log = log
        self.generation = generation
    }

    /// One change, rendered: `iptables-restore --noflush` input per family and one `nft -f` script.
    public struct Transaction: Sendable, Equatable {
        public var iptables: [IPFamily: String] = [:]
        /// What nft changes, as objects (see `NftTransaction.changes`).
        public var nftChanges: NftChanges?
        /// The same as an `nft -f` script, rendered when asked for.
        public var nft: String { nftChanges?.script ?? "" }
        /// One line for the log, counted from the difference itself.
        public var summary = ""

        public var isEmpty: Bool { nftChanges == nil && iptables.values.allSatisfy(\.isEmpty) }

        /// As a dry-run prints it: iptables-restore input (IPv6 after `# ip6tables-restore`), then
        /// the nft script after `# nft -f`.
        public var text: String {
            let v4 = iptables[.v4] ?? "", v6 = iptables[.v6] ?? ""
            let rules = v6.isEmpty ? v4 : v4 + "# ip6tables-restore\n" + v6
            guard let nftChanges else { return rules }
            return rules + "# nft -f\n" + nftChanges.script
        }
    }

    public struct Outcome: Sendable {
        public var plan: EnginePlan
        public var transaction: Transaction
        public var applied: Bool
        /// The plan had problems under `ON_INVALID=refuse`: nothing was written.
        public var refused: Bool
    }

    /// A change planned against the kernel and rendered, not yet applied.
    public struct Preview: Sendable {
        public var state: KernelState
        public var plan: EnginePlan
        public var desired: DesiredState
        public var transaction: Transaction
    }

    /// The kernel read before the lock is taken (`readAhead`), with the ruleset generation it was
    /// read at: valid for as long as the kernel's generation stays the same.
    public struct ReadAhead: Sendable {
        public var reads: KernelReads
        public var state: KernelState
        public var generation: UInt32
    }

    /// Reads `reads` now, unlocked, so that a command can read the kernel while it waits for
    /// something else (sync: for libvirt). nil when the ruleset generation does not cover all of it
    /// (iptables-legacy keeps its rules outside nf_tables) or cannot be read.
    public func readAhead(_ reads: KernelReads) async -> ReadAhead? {
        guard !reads.iptables || iptables.variant == .nft, let before = generation(),
              let state = try? await read(reads, dryRun: false) else { return nil }
        return ReadAhead(reads: reads, state: state, generation: before)
    }

    /// Reads what `input` needs, plans it (`Engine.plan`) and renders the difference. Changes nothing.
    /// `ahead` stands in for the read when it read the same and nothing was committed since.
    public func preview(_ input: EngineInput, backend: any Backend, dryRun: Bool, ahead: ReadAhead? = nil) async throws -> Preview {
        let reads = backend.reads(for: input)
        let state: KernelState
        if let ahead, ahead.reads == reads, generation() == ahead.generation {
            state = ahead.state
        } else {
            state = try await read(reads, dryRun: dryRun)
        }
        return Self.preview(input, backend: backend, state: state, mark: mark)
    }

    /// What `preview` does once the kernel was read. Pure: golden tests and `plan` use it directly.
    public static func preview(_ input: EngineInput, backend: any Backend, state: KernelState, mark: UInt32) -> Preview {
        let plan = Engine.plan(input, incumbents: state.claims(names: Engine.names(input)), settings: backend.plannerSettings)
        let desired = backend.desired(plan, on: state)
        return Preview(state: state, plan: plan, desired: desired, transaction: render(desired, on: state, mark: mark))
    }

    /// Plans `input` against the kernel and applies the difference, under virtgate's lock (`store`;
    /// none for dry-runs, which change nothing). Someone else (libvirt, UFW, an admin, another
    /// tool) may change the kernel between our read and our write; the transaction then fails as a
    /// whole and a second round sees their change.
    /// `ahead`, a read made before the lock, is used by the first attempt if it is still current.
    public func run(_ input: EngineInput, backend: any Backend, dryRun: Bool, store: StateStore?,
                    ahead: ReadAhead? = nil) async throws -> Outcome {
        var lock: FileLock?
        if !dryRun, let store {
            try store.prepare()
            lock = try FileLock(path: store.lockPath)
        }
        defer { withExtendedLifetime(lock) {} }
        for attempt in 1...2 {
            let preview = try await preview(input, backend: backend, dryRun: dryRun, ahead: attempt == 1 ? ahead : nil)
            if input.refuseOnProblems && !preview.plan.problems.isEmpty {
                return Outcome(plan: preview.plan, transaction: Transaction(), applied: false, refused: true)
            }
            if dryRun || preview.transaction.isEmpty {
                return Outcome(plan: preview.plan, transaction: preview.transaction, applied: false, refused: false)
            }
            do {
                try await apply(preview.transaction, on: preview.state)
                return Outcome(plan: preview.plan, transaction: preview.transaction, applied: true, refused: false)
            } catch {
                if attempt == 2 { throw error }
                log.warning("\(error); retrying once")
            }
        }
        fatalError("unreachable")
    }

    /// Reads what `reads` names. A dry-run that cannot read (no root) shows the change against an
    /// empty ruleset, as a first run would.
    public func read(_ reads: KernelReads, dryRun: Bool) async throws -> KernelState {
        do {
            var state = KernelState()
            if reads.iptables { state.iptables = try await iptables.snapshot() }
            if reads.nft, let nft { state.nft = try await nft.state(scope: reads.nftScope) }
            return state
        } catch where dryRun {
            log.warning("dry-run: \(error); showing changes against an empty ruleset")
            return KernelState(iptables: reads.iptables ? IptablesSnapshot() : nil, nft: reads.nft && nft != nil ? NftState() : nil)
        }
    }

    /// The difference between `state` and `desired`. Pure.
    public static func render(_ desired: DesiredState, on state: KernelState, mark: UInt32) -> Transaction {
        var transaction = Transaction()
        var summary: [String] = []
        if let chains = desired.chains {
            let snapshot = state.iptables ?? IptablesSnapshot()
            for family in IPFamily.allCases {
                transaction.iptables[family] = IptablesTransaction.render(from: snapshot, to: chains, family: family)
            }
            if !transaction.iptables.values.allSatisfy(\.isEmpty) {
                summary.append(IptablesTransaction.summary(from: snapshot, to: chains))
            }
        }
        if let elements = desired.elements {
            let current = state.nft ?? NftState()
            transaction.nftChanges = NftTransaction.changes(from: current, to: elements, mark: mark)
            // Counted from the difference itself: a re-sync of thousands of elements does not
            // build the sets of elements a second time.
            if let changes = transaction.nftChanges { summary.append(NftTransaction.summary(of: changes)) }
        }
        transaction.summary = summary.joinedText(separator: "; ")
        return transaction
    }

    /// iptables first (both families), then nft. If a later part fails, the iptables part is put
    /// back as `state` had it, so nothing stays half applied.
    public func apply(_ transaction: Transaction, on state: KernelState) async throws {
        var restored: [IPFamily] = []
        do {
            for family in IPFamily.allCases {
                guard let text = transaction.iptables[family], !text.isEmpty else { continue }
                restored.append(family)
                try await iptables.restore(text, family: family)
            }
            if let changes = transaction.nftChanges {
                guard let nft else { throw VirtGateError(.firewall, "\(NftCommands.defaultPath) is not installed") }
                try await nft.apply(changes)
            }
        } catch {
            if !restored.isEmpty, let snapshot = state.iptables { try await rollback(to: snapshot, families: restored) }
            throw error
        }
    }

    /// Puts virtgate's chains of `families` back as they were in `snapshot`.
    func rollback(to snapshot: IptablesSnapshot, families: [IPFamily]) async throws {
        do {
            let now = try await iptables.snapshot()
            for family in families {
                let text = IptablesTransaction.render(from: now, to: snapshot.ownerChains, family: family)
                if !text.isEmpty { try await iptables.restore(text, family: family) }
            }
        } catch {
            throw VirtGateError(.firewall, "rollback failed, virtgate's rules may be incomplete (run the event again)", cause: error)
        }
    }
}

extension IptablesTransaction {
    /// How many changed chains the summary names.
    static let namedChains = 10

    /// "3 rules written, 1 removed (VGD-web, VGF-web)": owner chains whose rules change.
    static func summary(from snapshot: IptablesSnapshot, to desired: DesiredChains) -> String {
        let have = snapshot.ownerChains
        var written = 0, removed = 0
        var touched: [String] = []
        var seen = Set<String>()
        for table in IptablesTable.allCases {
            let mine = have[table] ?? [:], want = desired[table] ?? [:]
            for chain in Set(mine.keys).union(want.keys).sorted() where mine[chain] != want[chain] {
                written += want[chain]?.count ?? 0
                removed += mine[chain]?.count ?? 0
                // A set beside the list: thousands of chains were each looked for in the whole list.
                if seen.insert(chain).inserted { touched.append(chain) }
            }
        }
        // At most a few chains named: a sync of thousands of guests is still one log line.
        let named = touched.count <= Self.namedChains ? touched.joined(separator: ", ")
            : touched.prefix(Self.namedChains).joined(separator: ", ") + " and \(touched.count - Self.namedChains) more"
        return "\(written) rules written, \(removed) removed" + (touched.isEmpty ? "" : " (\(named))")
    }
}

extension NftTransaction {
    /// "5 elements added, 2 removed" (or the table created or removed).
    static func summary(of changes: NftChanges) -> String {
        switch changes.table {
        case .kept: "\(changes.added.count) elements added, \(changes.removed.count) removed"
        case .hooked: "\(changes.added.count) elements added, \(changes.removed.count) removed (base chains of table inet \(NftLayout.table) added)"
        case .created(_, _, true): "\(changes.added.count) elements added (table inet \(NftLayout.table) created)"
        case .created: "\(changes.added.count) elements added (table inet \(NftLayout.table) created, without base chains until a forward)"
        case .removed: "table inet \(NftLayout.table) removed (no forward or network left)"
        }
    }
}
