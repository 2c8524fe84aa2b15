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

    /// A new path in the process's temporary directory ($TMPDIR): `Tests/run.sh` gives `swift test` one of
    /// its own and removes it, so even what a crashed test leaves goes with it.
    static func scratch(_ name: String, suffix: String = "") -> String {
        FileManager.default.temporaryDirectory.appending(path: "\(name)-\(UInt32.random(in: 0...UInt32.max))\(suffix)").path
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
    func leaseHolder(bridge: String, address: IPAddress) -> MACAddress? {
        leases[bridge]?.first { $0.value == address }?.key
    }
}

func mac(_ text: String) -> MACAddress { MACAddress(text)! }
func ip(_ text: String) -> IPAddress { IPAddress(text)! }
/// A small deterministic generator, so a failing mutant can be reproduced.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
