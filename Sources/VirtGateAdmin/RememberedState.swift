import VirtGateCore

/// What virtgate remembers (its state directory), brought to libvirt's state by a sync: the
/// networks and guests whose remembered XML differs or is missing are written, guests remembered
/// that no longer run are forgotten. The comparison reads every remembered file (1,000 for 1,000
/// guests); sync makes it on libvirt's thread while it plans and applies the transaction, and
/// `update` writes only what differs.
public struct RememberedState: Sendable {
    struct Stale {
        var networks: [String] = []
        var guests: [String] = []
        var gone: [String] = []
    }

    private let state: LibvirtState
    private let stale: Stale

    /// Compares `store` with `state`: reads, writes nothing.
    public init(comparing store: StateStore, with state: LibvirtState) {
        self.state = state
        var stale = Stale()
        stale.networks = state.networkXML.keys.filter { store.networkXML($0) != state.networkXML[$0] }
        stale.guests = state.guestXML.keys.filter { store.guestXML($0) != state.guestXML[$0] }
        stale.gone = store.guestNames().filter { state.guestXML[$0] == nil }
        self.stale = stale
    }

    /// Writes what the comparison found stale into `store` (a re-sync of thousands of guests
    /// rewrites no file).
    public func update(_ store: StateStore) throws {
        try store.prepare()
        for name in stale.networks {
            try store.rememberNetwork(name, xml: state.networkXML[name]!)
        }
        for name in stale.guests {
            do {
                try store.rememberGuest(name, xml: state.guestXML[name]!)
            } catch {
                // A stop trusts a remembered XML without forwards to hold nothing: an older one
                // must not outlive a failed write.
                store.forgetGuest(name)
                throw error
            }
        }
        for name in stale.gone {
            store.forgetGuest(name)
        }
    }
}
