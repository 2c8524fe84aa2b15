/// Applies owner plans as one `iptables-restore` transaction: read the kernel's rules, compute the
/// exact difference for virtgate's chains, write it, and put the previous state back if the write
/// fails half way (iptables-restore commits table by table).
public struct Firewall: Sendable {
    public let backend: IptablesBackend
    public let log: Log

    public init(backend: IptablesBackend, log: Log) {
        self.backend = backend
        self.log = log
    }

    public struct Outcome: Sendable {
        /// The `iptables-restore` input; empty when the kernel already had the desired rules.
        public var transaction: String
        public var applied: Bool
    }

    /// `changes` replace each owner's chains (an empty chain list removes the owner).
    public func apply(_ changes: [(Owner, [OwnedChain])], dryRun: Bool) async throws -> Outcome {
        try await apply(dryRun: dryRun) { snapshot in
            var desired = snapshot.ownerChains
            for (owner, chains) in changes {
                desired = IptablesTransaction.desired(desired, replacing: owner, with: chains)
            }
            return desired
        }
    }

    /// Makes virtgate's chains exactly `desired`, removing every owner not in it.
    public func replaceAll(with desired: DesiredChains, dryRun: Bool) async throws -> Outcome {
        try await apply(dryRun: dryRun) { _ in desired }
    }

    /// `desired` maps the kernel's rules to what virtgate wants; nil means write nothing at all.
    public func apply(dryRun: Bool, desired: (IptablesSnapshot) -> DesiredChains?) async throws -> Outcome {
        if dryRun {
            let snapshot: IptablesSnapshot
            do {
                snapshot = try await backend.snapshot()
            } catch {
                // Without root the kernel's rules cannot be read: show the rules as a first run would.
                log.warning("dry-run: \(error); showing changes against an empty ruleset")
                snapshot = IptablesSnapshot()
            }
            guard let target = desired(snapshot) else { return Outcome(transaction: "", applied: false) }
            return Outcome(transaction: IptablesTransaction.render(from: snapshot, to: target), applied: false)
        }
        // Someone else (libvirt, ufw, an admin) may change a built-in chain between our read and our
        // write; the transaction then fails as a whole table and a second round sees their change.
        for attempt in 1...2 {
            let snapshot = try await backend.snapshot()
            guard let target = desired(snapshot) else { return Outcome(transaction: "", applied: false) }
            let texts = IPFamily.allCases.map { IptablesTransaction.render(from: snapshot, to: target, family: $0) }
            if texts.allSatisfy(\.isEmpty) { return Outcome(transaction: "", applied: false) }
            do {
                for (family, text) in zip(IPFamily.allCases, texts) where !text.isEmpty {
                    try await backend.restore(text, family: family)
                }
                return Outcome(transaction: IptablesTransaction.render(from: snapshot, to: target), applied: true)
            } catch {
                try await rollback(to: snapshot)
                if attempt == 2 { throw error }
                log.warning("\(error); retrying once")
            }
        }
        fatalError("unreachable")
    }

    /// Puts virtgate's chains back as they were in `snapshot` (tables committed before the failure).
    func rollback(to snapshot: IptablesSnapshot) async throws {
        let now = try await backend.snapshot()
        do {
            for family in IPFamily.allCases {
                let text = IptablesTransaction.render(from: now, to: snapshot.ownerChains, family: family)
                if !text.isEmpty { try await backend.restore(text, family: family) }
            }
        } catch {
            throw FirewallError("rollback failed, virtgate's rules may be incomplete (run the event again): \(error)")
        }
    }
}
