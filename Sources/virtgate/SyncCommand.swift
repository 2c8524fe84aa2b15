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

        @Flag(help: "Print the iptables-restore input instead of applying it.")
        var dryRun = false

        func run() async throws {
            let context = try await AdminContext(connect: connection.connect)
            let state = try context.loadState()
            var result: SyncResult?
            let outcome = try await context.locked(dryRun: dryRun) {
                try await context.firewall.apply(dryRun: dryRun) { snapshot in
                    let planned = SyncPlanner.plan(state.input, settings: context.settings.planner,
                                                   incumbents: snapshot.forwardClaims(names: state.chainNames))
                    result = planned
                    return planned.desired
                }
            }
            if let result { context.report(result) }
            if dryRun {
                writeAll(1, outcome.transaction.isEmpty ? "# sync: no changes\n" : outcome.transaction)
                return
            }
            rememberState(context, state)
            if outcome.applied {
                context.log.info("sync: applied \(outcome.transaction.split(separator: "\n").count) lines")
            } else {
                context.log.info("sync: already in sync")
            }
        }

        /// Hooks work from what virtgate remembers; after a sync that is exactly libvirt's state.
        func rememberState(_ context: AdminContext, _ state: LibvirtState) {
            do {
                try context.store.prepare()
                for (name, xml) in state.networkXML { try context.store.rememberNetwork(name, xml: xml) }
                for (name, xml) in state.guestXML { try context.store.rememberGuest(name, xml: xml) }
                for remembered in context.store.guestNames() where state.guestXML[remembered] == nil {
                    context.store.forgetGuest(remembered)
                }
            } catch {
                context.log.warning("cannot update \(context.store.directory): \(error)")
            }
        }
    }
}
