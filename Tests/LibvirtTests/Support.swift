#if canImport(Glibc)
import Glibc
#endif
@testable import Libvirt

/// The test driver's state file next to these tests; every open starts from it afresh.
enum Fixture {
    static let nodeURI: String = {
        let file = "\(#filePath)"
        let directory = file[..<(file.lastIndex(of: "/") ?? file.startIndex)]
        return "test://\(directory)/Fixtures/test-node.xml"
    }()

    static func connection() throws -> LibvirtConnection {
        try LibvirtConnection(uri: nodeURI)
    }

    static let namespace = "urn:virtgate:forwards:1"
}

/// Resident set size: the second field of /proc/self/statm, in pages.
func residentBytes() -> Int {
    let file = open("/proc/self/statm", O_RDONLY)
    guard file >= 0 else { return -1 }
    defer { close(file) }
    var buffer = [UInt8](repeating: 0, count: 128)
    let count = buffer.withUnsafeMutableBytes { read(file, $0.baseAddress, $0.count) }
    guard count > 0 else { return -1 }
    let fields = String(decoding: buffer[..<count], as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return -1 }
    return pages * sysconf(Int32(_SC_PAGESIZE))
}

func openFileDescriptors() -> Int {
    guard let directory = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(directory) }
    var count = 0
    while readdir(directory) != nil { count += 1 }
    return count
}
