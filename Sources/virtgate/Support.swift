import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

func readFile(_ path: String) throws -> String {
    guard let file = fopen(path, "rb") else {
        throw VirtGateError(.input, "\(path): \(String(cString: strerror(errno)))")
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = fread(&buffer, 1, buffer.count, file)
        if count == 0 { break }
        bytes += buffer[0..<count]
    }
    return String(decoding: bytes, as: UTF8.self)
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
