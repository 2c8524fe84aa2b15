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
            // since (`Firewall.readAhead`). No thread outlives the command.
            let libvirt = LibvirtLoad(local: local, options: connection)
            defer { libvirt.finished() }
            let ahead = await local.firewall.readAhead(local.backend.reads(for: .everything(SyncInput(networks: [], guests: [], leases: [:]))))
            let hostSockets = ListeningSockets.current()
            let state = try libvirt.state()
            // What virtgate remembers is compared with libvirt's state on another core while the
            // transaction is planned and applied: for 1,000 guests, 1,000 files read.
            let remembered = dryRun ? nil : RememberedState.compare(local.store, with: state)
            let outcome = try await local.run(state.everything(hostSockets: hostSockets), dryRun: dryRun, ahead: ahead)
            guard let remembered else { // a dry run: nothing compared, nothing remembered
                writeAll(1, outcome.transaction.isEmpty ? "# sync: no changes\n" : outcome.transaction.text)
                return
            }
            // Hooks work from what virtgate remembers; after a sync that is exactly libvirt's state.
            do {
                try remembered.update(local.store)
            } catch {
                local.log.warning("cannot update \(local.store.directory): \(error)")
            }
            if outcome.applied {
                local.log.info("sync: applied \(outcome.transaction.summary) (backend \(local.settings.backend.rawValue))")
            } else {
                local.log.info("sync: already in sync")
            }
        }
    }
}

/// libvirt's state, read on a thread of its own from the moment it is made. That thread closes the
/// connection once the state is handed on, while the caller plans: closing can take libvirt a while
/// (the test driver frees every guest it holds: 25-35 ms for 1,000). `finished()` waits for that.
final class LibvirtLoad: @unchecked Sendable {
    private var outcome: Result<LibvirtState, any Error>?
    private let loaded = DispatchSemaphore(value: 0)
    private let closed = DispatchSemaphore(value: 0)

    init(local: LocalContext, options: ConnectionOptions) {
        // A queue of its own runs on a thread of its own, beside the shared pool that parses guests.
        DispatchQueue(label: "virtgate.libvirt").async {
            defer { self.closed.signal() }
            do {
                let context = try AdminContext(local: local, options: options)
                // The connection lives until the state was handed on, and is closed after.
                withExtendedLifetime(context) {
                    self.outcome = Result { try context.loadState() }
                    self.loaded.signal()
                }
            } catch {
                self.outcome = .failure(error)
                self.loaded.signal()
            }
        }
    }

    /// Waits for the state; libvirt's error is thrown here.
    func state() throws -> LibvirtState {
        loaded.wait()
        return try outcome!.get()
    }

    /// Waits until the connection is closed.
    func finished() {
        closed.wait()
    }
}
