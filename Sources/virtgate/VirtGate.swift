import ArgumentParser
import Libvirt
import VirtGateCore

struct VirtGate: AsyncParsableCommand {
    static let version = "0.1.0"

    static let configuration = CommandConfiguration(
        commandName: "virtgate",
        abstract: "Keep KVM guests reachable behind a host firewall: NAT, forward-accepts and port forwards per libvirt network and guest.",
        version: versionText(),
        subcommands: [Hook.self, Plan.self, Sync.self, Status.self, Forward.self, Reapply.self, Doctor.self, Flush.self]
    )

    static func versionText() -> String {
        let libvirt = (try? Libvirt.libraryVersion()) ?? "unavailable"
        return "virtgate \(version) (libvirt \(libvirt))"
    }
}
