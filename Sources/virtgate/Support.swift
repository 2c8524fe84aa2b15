import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

/// A file an admin names (`plan --domain/--network`) or one in /proc, capped like every input:
/// a file over `InputLimits.maximumBytes` comes back longer than that and the XML parser refuses it.
func readFile(_ path: String) throws -> String {
    guard let text = InputLimits.readText(path: path) else {
        throw VirtGateError(.input, "\(path): \(String(cString: strerror(errno)))")
    }
    return text
}

/// Writes all of `bytes` to a file descriptor, retrying short writes; the bytes as they are.
func writeBytes(_ descriptor: Int32, _ bytes: [UInt8]) {
    var rest = bytes[...]
    while !rest.isEmpty {
        let written = rest.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress, $0.count) }
        if written < 0 && errno == EINTR { continue }
        guard written > 0 else { return }
        rest = rest.dropFirst(written)
    }
}

func printError(_ line: String) {
    writeAll(2, line + "\n")
}

/// Addresses known from the files an admin passes to `virtgate plan`: reservations only, no leases.
struct StaticAddressBook: AddressBook {
    let networks: [NetworkDefinition]

    func network(named name: String) -> NetworkDefinition? { networks.first { $0.name == name } }
    func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? { nil }
}

extension Duration {
    /// Whole milliseconds, rounded, for log lines.
    var milliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1000 + (attoseconds + 500_000_000_000_000) / 1_000_000_000_000_000
    }
}
