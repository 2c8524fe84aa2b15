import ArgumentParser
import Dispatch
import VirtGateAdmin
import VirtGateCore

extension VirtGate {
    struct Sync: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make virtgate's rules match libvirt's current state: every active network and running guest.",
            discussion: """
            One transaction. Rules of guests and networks that are gone (a crash, a missed stop, a renamed guest) \
            are removed; running it twice changes nothing.
            """
        )

        @OptionGroup var connection: ConnectionOptions

        @Flag(help: "Print the iptables-restore and nft input instead of applying it.")
        var dryRun = false

        func run() async throws {
            let context = try await AdminContext(connection)
            let state = try context.loadState()
            // What virtgate remembers is compared with libvirt's state on another core while the
            // transaction is planned and applied: for 1,000 guests, 1,000 files read.
            let stale = dryRun ? nil : StaleMemory.compare(context.store, with: state)
            let outcome = try await context.local.run(context.everything(state), dryRun: dryRun)
            guard let stale else { // a dry run: nothing compared, nothing remembered
                writeAll(1, outcome.transaction.isEmpty ? "# sync: no changes\n" : outcome.transaction.text)
                return
            }
            rememberState(context, state, stale.result())
            if outcome.applied {
                context.log.info("sync: applied \(outcome.transaction.summary) (backend \(context.settings.backend.rawValue))")
            } else {
                context.log.info("sync: already in sync")
            }
        }

        /// Hooks work from what virtgate remembers; after a sync that is exactly libvirt's state.
        func rememberState(_ context: AdminContext, _ state: LibvirtState, _ stale: StaleMemory.Result) {
            do {
                try context.store.prepare()
                // Only what changed is written: a re-sync of thousands of guests rewrites no file.
                for name in stale.networks {
                    try context.store.rememberNetwork(name, xml: state.networkXML[name]!)
                }
                for name in stale.guests {
                    do {
                        try context.store.rememberGuest(name, xml: state.guestXML[name]!)
                    } catch {
                        // A stop trusts a remembered XML without forwards to hold nothing: an older one
                        // must not outlive a failed write.
                        context.store.forgetGuest(name)
                        throw error
                    }
                }
                for name in stale.gone {
                    context.store.forgetGuest(name)
                }
            } catch {
                context.log.warning("cannot update \(context.store.directory): \(error)")
            }
        }
    }
}

/// The objects whose remembered XML differs from libvirt's state (or is missing), and the guests
/// remembered that no longer run: found on another thread, waited for by `result()`.
final class StaleMemory: @unchecked Sendable {
    struct Result {
        var networks: [String] = []
        var guests: [String] = []
        var gone: [String] = []
    }

    private let group = DispatchGroup()
    /// Written by the comparing thread, read after `group` is waited for (which orders the two).
    private var found = Result()

    static func compare(_ store: StateStore, with state: LibvirtState) -> StaleMemory {
        let comparison = StaleMemory()
        let (networks, guests) = (state.networkXML, state.guestXML)
        DispatchQueue.global().async(group: comparison.group) {
            var found = Result()
            found.networks = networks.keys.filter { store.networkXML($0) != networks[$0] }
            found.guests = guests.keys.filter { store.guestXML($0) != guests[$0] }
            found.gone = store.guestNames().filter { guests[$0] == nil }
            comparison.found = found
        }
        return comparison
    }

    func result() -> Result {
        group.wait()
        return found
    }
}
