import ArgumentParser
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
            let outcome = try await context.local.run(context.everything(state), dryRun: dryRun)
            if dryRun {
                writeAll(1, outcome.transaction.isEmpty ? "# sync: no changes\n" : outcome.transaction.text)
                return
            }
            rememberState(context, state)
            if outcome.applied {
                context.log.info("sync: applied \(outcome.transaction.summary) (backend \(context.settings.backend.rawValue))")
            } else {
                context.log.info("sync: already in sync")
            }
        }

        /// Hooks work from what virtgate remembers; after a sync that is exactly libvirt's state.
        func rememberState(_ context: AdminContext, _ state: LibvirtState) {
            do {
                try context.store.prepare()
                // Only what changed is written: a re-sync of thousands of guests rewrites no file.
                for (name, xml) in state.networkXML where context.store.networkXML(name) != xml {
                    try context.store.rememberNetwork(name, xml: xml)
                }
                for (name, xml) in state.guestXML where context.store.guestXML(name) != xml {
                    do {
                        try context.store.rememberGuest(name, xml: xml)
                    } catch {
                        // A stop trusts a remembered XML without forwards to hold nothing: an older one
                        // must not outlive a failed write.
                        context.store.forgetGuest(name)
                        throw error
                    }
                }
                for remembered in context.store.guestNames() where state.guestXML[remembered] == nil {
                    context.store.forgetGuest(remembered)
                }
            } catch {
                context.log.warning("cannot update \(context.store.directory): \(error)")
            }
        }
    }
}
