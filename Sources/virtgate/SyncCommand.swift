import ArgumentParser
import Dispatch
#if canImport(Glibc)
import Glibc
#endif
import Libvirt
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
            let libvirt = LibvirtLoad(local: local, options: connection, comparingWith: dryRun ? nil : local.store)
            defer { libvirt.finished() }
            // What sync reads does not depend on libvirt's answers: it plans everything.
            let reads = local.backend.reads(for: .everything(SyncInput(networks: [], guests: [], leases: [:])))
            let ahead = await local.firewall.readAhead(reads)
            let hostSockets = ListeningSockets.current()
            let state = try libvirt.state()
            let outcome = try await local.run(state.everything(hostSockets: hostSockets), dryRun: dryRun, ahead: ahead)
            let remembered = libvirt.remembered()
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
            // The connection's close is libvirt's work (the test driver frees every guest it holds); the
            // part this command waits for belongs in the figure below.
            libvirt.finished()
            // How long libvirt's answers took tells an admin whether a slow sync was libvirt or virtgate.
            let libvirtTime = "libvirt's calls took \(Libvirt.timeInCalls.milliseconds) ms"
            if outcome.applied {
                local.log.info("sync: applied \(outcome.transaction.summary) (backend \(local.settings.backend.rawValue); \(libvirtTime))")
            } else {
                local.log.info("sync: already in sync (\(libvirtTime))")
            }
        }
    }
}

/// libvirt's state, read on a thread of its own from the moment it is made. Once the state is handed
/// on, that thread compares what virtgate remembers with it (1,000 files read for 1,000 guests) and
/// closes the connection (the test driver then frees every guest it holds: 25-35 ms for 1,000),
/// both at the lowest priority while the caller plans and applies: they take a core the caller's
/// work leaves idle, not one it could use. `finished()` waits for all of it.
final class LibvirtLoad: @unchecked Sendable {
    private var outcome: Result<LibvirtState, any Error>?
    private var comparison: RememberedState?
    private let loaded = DispatchSemaphore(value: 0)
    private let compared = DispatchSemaphore(value: 0)
    private let closed = DispatchSemaphore(value: 0)

    /// `store`: what virtgate remembers, to compare with the state; nil compares nothing.
    init(local: LocalContext, options: ConnectionOptions, comparingWith store: StateStore?) {
        // A queue of its own runs on a thread of its own, beside the shared pool.
        DispatchQueue(label: "virtgate.libvirt").async {
            defer { self.closed.signal() }
            do {
                let context = try AdminContext(local: local, options: options)
                // The connection lives until the state was handed on and compared, and is closed after.
                withExtendedLifetime(context) {
                    self.outcome = Result { try context.loadState() }
                    self.loaded.signal()
                    // On Linux a nice value is the calling thread's, not the process's.
                    _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, 19)
                    if let store, case .success(let state) = self.outcome {
                        self.comparison = RememberedState(comparing: store, with: state)
                    }
                    self.compared.signal()
                }
            } catch {
                self.outcome = .failure(error)
                self.loaded.signal()
                self.compared.signal()
            }
        }
    }

    /// Waits for the state; libvirt's error is thrown here.
    func state() throws -> LibvirtState {
        loaded.wait()
        return try outcome!.get()
    }

    /// Waits for the comparison with what virtgate remembers; nil when none was asked for.
    func remembered() -> RememberedState? {
        compared.wait()
        return comparison
    }

    /// Waits until the connection is closed, the wait counted as libvirt's time; returns at once after
    /// the first call.
    func finished() {
        Libvirt.timeWaiting { closed.wait() }
        closed.signal()
    }
}
