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
            let settings = context.settings
            var result: SyncResult?
            let outcomes = try await context.locked(dryRun: dryRun) {
                // Claims of both backends count: after a switch, guests keep the ports they held.
                let nftState = context.local.nftables == nil ? NftState() : (try? await context.local.nftables!.backend.state()) ?? NftState()
                var outcomes: [Firewall.Outcome] = []
                if settings.backend == .nft, let nft = context.local.nftables {
                    // Forwards first, then the filter side (which also drops guests' iptables chains).
                    outcomes.append(try await nft.apply(dryRun: dryRun) { nftState in
                        let planned = SyncPlanner.plan(state.input, settings: settings.planner,
                                                       incumbents: nftState.forwardClaims(names: state.chainNames))
                        result = planned
                        return planned.elements
                    })
                    outcomes.append(try await context.firewall.apply(dryRun: dryRun) { _ in result?.networkChains })
                } else {
                    outcomes.append(try await context.firewall.apply(dryRun: dryRun) { snapshot in
                        let planned = SyncPlanner.plan(state.input, settings: settings.planner,
                                                       incumbents: snapshot.forwardClaims(names: state.chainNames)
                                                           + nftState.forwardClaims(names: state.chainNames))
                        result = planned
                        return planned.desired
                    })
                    // Nothing of the other backend stays.
                    if let nft = context.local.nftables { outcomes.append(try await nft.remove(dryRun: dryRun)) }
                }
                return outcomes
            }
            if let result { context.report(result) }
            let text = outcomes.map(\.transaction).filter { !$0.isEmpty }.joined(separator: "# nft -f\n")
            if dryRun {
                writeAll(1, text.isEmpty ? "# sync: no changes\n" : text)
                return
            }
            rememberState(context, state)
            if outcomes.contains(where: \.applied) {
                context.log.info("sync: applied \(text.split(separator: "\n").count) lines (backend \(settings.backend.rawValue))")
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
