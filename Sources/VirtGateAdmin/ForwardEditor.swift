import Libvirt
import VirtGateCore

/// Reads and writes a guest's forwards in its domain metadata through libvirt. Every change is
/// validated first, and nothing is written when anything is wrong: the metadata is the admin's data.
public struct ForwardEditor {
    public let connection: LibvirtConnection

    public init(connection: LibvirtConnection) { self.connection = connection }

    public struct Listing: Sendable {
        public var guest: String
        public var running: Bool
        public var forwards: [ForwardSpec]
        public var problems: [InputProblem]
    }

    /// The forwards of one guest, or of every guest (running or not) that has any.
    public func list(guest name: String?) throws -> [Listing] {
        let domains = try name.map { [try connection.domain(named: $0)] } ?? connection.allDomains()
        var result: [Listing] = []
        for domain in domains.sorted(by: { $0.name < $1.name }) {
            let running = try domain.isActive()
            let (forwards, problems) = try current(domain, running: running)
            if name != nil || !forwards.isEmpty || !problems.isEmpty {
                result.append(Listing(guest: domain.name, running: running, forwards: forwards, problems: problems))
            }
        }
        return result
    }

    /// Appends `forward`; refused when it overlaps one of the guest's own forwards or one that a
    /// running guest in `others` holds. Returns the guest's new list.
    public func add(_ forward: ForwardSpec, to name: String, others: [ForwardClaim]) throws -> [ForwardSpec] {
        let domain = try connection.domain(named: name)
        let (forwards, problems) = try current(domain, running: try domain.isActive())
        try requireClean(name, problems)
        let claims = forward.claims(name)
        for (index, existing) in forwards.enumerated()
        where existing.claims(name).contains(where: { mine in claims.contains { mine.overlaps($0) } }) {
            throw VirtGateError(.input, "guest \(InputProblem.quoted(name)): \(forward.summary) overlaps its forward #\(index + 1) \(existing.summary); nothing written")
        }
        if let holder = others.first(where: { holder in holder.guest != name && claims.contains { holder.overlaps($0) } }) {
            throw VirtGateError(.input, "guest \(InputProblem.quoted(name)): \(forward.summary) conflicts with guest \(InputProblem.quoted(holder.guest)), which holds \(holder.summary); nothing written")
        }
        var updated = forwards
        updated.append(forward)
        try write(updated, to: domain)
        return updated
    }

    /// Removes the forwards with the same protocol, host address and host ports as `forward`.
    public func remove(_ forward: ForwardSpec, from name: String) throws -> [ForwardSpec] {
        let domain = try connection.domain(named: name)
        let (forwards, problems) = try current(domain, running: try domain.isActive())
        try requireClean(name, problems)
        let kept = forwards.filter {
            !($0.proto == forward.proto && $0.hostPorts == forward.hostPorts && $0.hostAddress == forward.hostAddress)
        }
        guard kept.count < forwards.count else {
            throw VirtGateError(.input, "guest \(InputProblem.quoted(name)) has no forward \(forward.proto.rawValue) \(forward.hostAddress.map { "\($0):" } ?? "")\(forward.hostPorts); nothing written")
        }
        try write(kept, to: domain)
        return kept
    }

    /// The metadata as it applies now: the live definition of a running guest, else the persistent
    /// one. When a running, persistent guest's two copies differ, editing one would silently
    /// overwrite the other, so that is refused.
    func current(_ domain: LibvirtDomain, running: Bool) throws -> ([ForwardSpec], [InputProblem]) {
        let namespace = LibvirtXML.metadataNamespace
        let live = try domain.metadata(namespaceURI: namespace, inactive: !running)
        if running, try domain.isPersistent() {
            let saved = try domain.metadata(namespaceURI: namespace, inactive: true)
            if try parse(saved, domain.name).0 != parse(live, domain.name).0 {
                throw VirtGateError(.input, "guest \(InputProblem.quoted(domain.name)): the running and the saved definition have different forwards; align them with virsh metadata --live/--config first; nothing written")
            }
        }
        return try parse(live, domain.name)
    }

    func parse(_ element: String?, _ guest: String) throws -> ([ForwardSpec], [InputProblem]) {
        guard let element else { return ([], []) }
        let parsed = try ForwardMetadata.forwards(fromElement: element, guest: guest)
        return (parsed.forwards, parsed.problems)
    }

    func requireClean(_ name: String, _ problems: [InputProblem]) throws {
        // Rewriting would drop the invalid entries: the admin's data is never lost silently.
        guard problems.isEmpty else {
            throw VirtGateError(.input, "\(problems[0]); fix or remove it with virsh metadata first; nothing written")
        }
    }

    func write(_ forwards: [ForwardSpec], to domain: LibvirtDomain) throws {
        let element = forwards.isEmpty ? nil : ForwardMetadata.element(forwards)
        try domain.setMetadata(element, key: "vg", namespaceURI: LibvirtXML.metadataNamespace)
    }
}

extension ForwardSpec {
    /// One claim per family the forward applies to.
    func claims(_ guest: String) -> [ForwardClaim] {
        families.map { family in
            ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: hostAddress, hostPorts: hostPorts,
                         sources: sources.filter { $0.family == family })
        }
    }
}

extension LibvirtState {
    /// What running guests other than `name` declare, for conflict checks when editing.
    public func claims(except name: String) -> [ForwardClaim] {
        input.guests.filter { $0.name != name }.flatMap { guest in guest.forwards.flatMap { $0.claims(guest.name) } }
    }
}
