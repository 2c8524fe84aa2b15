import Dispatch
import VirtGateCore

/// What virtgate remembers (its state directory), brought to libvirt's state by a sync: the
/// networks and guests whose remembered XML differs or is missing are written, guests remembered
/// that no longer run are forgotten. The comparison reads every remembered file (1,000 for 1,000
/// guests), so it runs on another thread from `compare` on, while the sync's transaction is planned
/// and applied; `update` waits for it and writes only what differs.
public final class RememberedState: @unchecked Sendable {
    struct Stale {
        var networks: [String] = []
        var guests: [String] = []
        var gone: [String] = []
    }

    private let state: LibvirtState
    private let group = DispatchGroup()
    /// Written by the comparing thread, read after `group` is waited for (which orders the two).
    private var stale = Stale()

    private init(_ state: LibvirtState) { self.state = state }

    public static func compare(_ store: StateStore, with state: LibvirtState) -> RememberedState {
        let comparison = RememberedState(state)
        let (networks, guests) = (state.networkXML, state.guestXML)
        DispatchQueue.global().async(group: comparison.group) {
            var stale = Stale()
            stale.networks = networks.keys.filter { store.networkXML($0) != networks[$0] }
            stale.guests = guests.keys.filter { store.guestXML($0) != guests[$0] }
            stale.gone = store.guestNames().filter { guests[$0] == nil }
            comparison.stale = stale
        }
        return comparison
    }

    /// Writes what the comparison found stale into `store` (a re-sync of thousands of guests
    /// rewrites no file).
    public func update(_ store: StateStore) throws {
        group.wait()
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
