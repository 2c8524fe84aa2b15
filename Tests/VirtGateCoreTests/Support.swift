import FoundationEssentials
import Testing
@testable import VirtGateCore

enum Files {
    static let testsDirectory = URL(filePath: #filePath).deletingLastPathComponent()

    static func fixture(_ name: String) throws -> String {
        try String(contentsOf: testsDirectory.appending(path: "Fixtures/\(name)"), encoding: .utf8)
    }

    static func goldenURL(_ name: String) -> URL {
        testsDirectory.appending(path: "Golden/\(name)")
    }
}

/// Addresses for planner tests: networks and leases held in memory.
struct MemoryAddressBook: AddressBook {
    var networks: [NetworkDefinition] = []
    var leases: [String: [MACAddress: IPAddress]] = [:]

    func network(named name: String) -> NetworkDefinition? { networks.first { $0.name == name } }
    func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? {
        leases[bridge]?[mac].flatMap { $0.family == family ? $0 : nil }
    }
}

func mac(_ text: String) -> MACAddress { MACAddress(text)! }
func ip(_ text: String) -> IPAddress { IPAddress(text)! }
