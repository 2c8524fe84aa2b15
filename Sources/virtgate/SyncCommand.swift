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
            let local = try await LocalContext.load(backend: connection.backend)
            // libvirt is asked on another thread while this one reads the kernel and the host's
            // sockets: libvirt's answers are most of a sync's time, and the reads need none of them.
            // The kernel read stands in for the one under the lock only if nothing was committed
            // since (`Firewall.readAhead`).
            let options = connection
            let loading = Background { () throws -> (AdminContext, LibvirtState) in
                let context = try AdminContext(local: local, options: options)
                return (context, try context.loadState())
            }
            let ahead = await local.firewall.readAhead(local.backend.reads(for: .everything(SyncInput(networks: [], guests: [], leases: [:]))))
            let hostSockets = ListeningSockets.current()
            let (context, state) = try loading.result()
            // What virtgate remembers is compared with libvirt's state on another core while the
            // transaction is planned and applied: for 1,000 guests, 1,000 files read.
            let remembered = dryRun ? nil : RememberedState.compare(context.store, with: state)
            let outcome = try await context.local.run(context.everything(state, hostSockets: hostSockets), dryRun: dryRun,
                                                      ahead: ahead)
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


/// Work started on a thread of its own at once, its result taken later (`result()` waits for it).
final class Background<Value>: @unchecked Sendable {
    private var outcome: Result<Value, any Error>?
    private let done = DispatchSemaphore(value: 0)

    init(_ work: @escaping @Sendable () throws -> Value) {
        // A queue of its own runs on a thread of its own, beside the shared pool that parses guests.
        DispatchQueue(label: "virtgate.background").async {
            self.outcome = Result { try work() }
            self.done.signal()
        }
    }

    /// Waits for the work; its error is thrown here. Once only.
    func result() throws -> Value {
        done.wait()
        return try outcome!.get()
    }
}
