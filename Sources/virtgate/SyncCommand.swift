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
            // What virtgate remembers is compared with libvirt's state on another core while the
            // transaction is planned and applied: for 1,000 guests, 1,000 files read.
            let remembered = dryRun ? nil : RememberedState.compare(context.store, with: state)
            let outcome = try await context.local.run(context.everything(state), dryRun: dryRun)
            guard let remembered else { // a dry run: nothing compared, nothing remembered
                writeAll(1, outcome.transaction.isEmpty ? "# sync: no changes\n" : outcome.transaction.text)
                return
            }
            // Hooks work from what virtgate remembers; after a sync that is exactly libvirt's state.
            do {
                try remembered.update(context.store)
            } catch {
                context.log.warning("cannot update \(context.store.directory): \(error)")
            }
            if outcome.applied {
                context.log.info("sync: applied \(outcome.transaction.summary) (backend \(context.settings.backend.rawValue))")
            } else {
                context.log.info("sync: already in sync")
            }
        }
    }
}

