import ArgumentParser
import Libvirt
import VirtGateAdmin
import VirtGateCore

struct ConnectionOptions: ParsableArguments {
    @Option(help: "libvirt connection URI.")
    var connect = "qemu:///system"

    @Option(help: "Where forwards live: nft or iptables (default: config BACKEND, else auto).")
    var backend: BackendKind?
}

extension BackendKind: ExpressibleByArgument {}

/// What every admin command needs: the local context and a libvirt connection. Admin commands run
/// outside libvirt's hook callbacks, so they may call libvirt.
struct AdminContext {
    let local: LocalContext
    let connection: LibvirtConnection

    var settings: Settings { local.settings }
    var log: Log { local.log }
    var store: StateStore { local.store }

    init(_ options: ConnectionOptions) async throws {
        try self.init(local: await LocalContext.load(backend: options.backend), options: options)
    }

    init(local: LocalContext, options: ConnectionOptions) throws {
        self.local = local
        do {
            connection = try LibvirtConnection(uri: options.connect)
        } catch {
            throw VirtGateError(.libvirt, "cannot connect to \(options.connect)", cause: error)
        }
    }

    /// libvirt's current state; XML that cannot be used is logged and left out.
    func loadState() throws -> LibvirtState {
        let state: LibvirtState
        do {
            state = try LibvirtState.load(connection)
        } catch {
            throw VirtGateError(.libvirt, "cannot read libvirt's state", cause: error)
        }
        for problem in state.problems { log.error(problem) }
        return state
    }
}

extension LibvirtState {
    /// Everything libvirt runs now, as `sync` applies it and `status` compares it; `hostSockets`
    /// when they were read already.
    func everything(hostSockets: [HostSocket]? = nil) -> EngineInput {
        var input = EngineInput.everything(self.input)
        input.names = chainNames
        input.hostSockets = hostSockets ?? ListeningSockets.current()
        return input
    }
}

/// libvirt's own errors as virtgate's (code `libvirt`); virtgate's pass as they are.
func libvirt<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as VirtGateError {
        throw error
    } catch let error as LibvirtError {
        throw VirtGateError(.libvirt, "libvirt", cause: error)
    }
}
