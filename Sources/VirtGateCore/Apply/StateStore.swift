#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif

/// What virtgate remembers between hook runs, under /run (gone at reboot, like the rules):
/// the network XML from the network hook (the qemu hook needs reservations and subnets, and must
/// not ask libvirt) and each running guest's domain XML (so `updated` can re-bind its forwards).
public struct StateStore: Sendable {
    public let directory: String

    public init(directory: String) { self.directory = directory }

    public var lockPath: String { directory + "/lock" }

    /// Where an object's XML is kept. A short, plain ASCII name is its own file, `NAME.xml`. Any
    /// other name (libvirt allows 255 bytes and any text but '/', so `NAME.xml` could exceed the
    /// file system's 255-byte NAME_MAX; non-ASCII names could compare equal as text yet differ as
    /// bytes) goes under the SHA-256 of its UTF-8 bytes, `HEX.named`, whose first line is the name
    /// and the rest the XML. Both forms have a bounded length, and listing reads back the real names.
    func path(_ kind: String, _ name: String) -> String {
        "\(directory)/\(kind)/\(Self.fileName(for: name))"
    }

    static let plainNameLimit = 128

    static func fileName(for name: String) -> String {
        if isPlain(name) { return name + ".xml" }
        return sha256Hex(Array(name.utf8)) + ".named"
    }

    static func isPlain(_ name: String) -> Bool {
        (1...plainNameLimit).contains(name.utf8.count) && name != "." && name != ".."
            && name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f && $0 != UInt8(ascii: "/") }
    }

    /// Creates the directory (and any missing parent) and its two folders, mode 0700. Plain system
    /// calls, as everything a hook run does to the state directory: Foundation's file layer cost a
    /// hook run 0.7M instructions here (callgrind), more than the rest of a start without forwards.
    public func prepare() throws {
        // Every run but the first finds both: two stats, not a mkdir and a stat per path component.
        if StateFiles.isDirectory(directory + "/networks") && StateFiles.isDirectory(directory + "/guests") { return }
        try StateFiles.makeDirectories(directory)
        for sub in ["/networks", "/guests"] {
            try StateFiles.makeDirectory(directory + sub)
        }
    }

    public func rememberNetwork(_ name: String, xml: String) throws { try write("networks", name, xml) }
    public func forgetNetwork(_ name: String) { forget("networks", name) }
    public func networkXML(_ name: String) -> String? { read("networks", name) }

    public func rememberGuest(_ name: String, xml: String) throws { try write("guests", name, xml) }
    public func forgetGuest(_ name: String) { forget("guests", name) }
    public func guestXML(_ name: String) -> String? { read("guests", name) }

    /// Remembered guests, by name.
    public func guests() -> [(name: String, xml: String)] { list("guests") }

    /// Names of remembered guests. Plain names come from the directory listing alone; only the
    /// files of other names are opened, for their first line.
    public func guestNames() -> [String] { names("guests") }

    /// Names of remembered networks, as `guestNames`.
    public func networkNames() -> [String] { names("networks") }

    private func names(_ kind: String) -> [String] {
        let folder = directory + "/" + kind
        return StateFiles.names(in: folder).compactMap { file -> String? in
            if file.hasSuffix(".xml") { return String(file.dropLast(4)) }
            guard file.hasSuffix(".named"), let bytes = InputLimits.read(path: folder + "/" + file) else { return nil }
            return Self.decodeNamed(bytes, file: file)?.name
        }.sorted()
    }

    /// Remembered networks, by name.
    public func networks() -> [(name: String, xml: String)] { list("networks") }

    private func list(_ kind: String) -> [(name: String, xml: String)] {
        let folder = directory + "/" + kind
        return StateFiles.names(in: folder).compactMap { file -> (name: String, xml: String)? in
            if file.hasSuffix(".xml") {
                return InputLimits.readText(path: folder + "/" + file).map { (String(file.dropLast(4)), $0) }
            }
            guard file.hasSuffix(".named"), let bytes = InputLimits.read(path: folder + "/" + file) else { return nil }
            return Self.decodeNamed(bytes, file: file)
        }.sorted { Array($0.name.utf8).lexicographicallyPrecedes(Array($1.name.utf8)) }
    }

    private func read(_ kind: String, _ name: String) -> String? {
        let file = Self.fileName(for: name)
        guard let bytes = InputLimits.read(path: "\(directory)/\(kind)/\(file)") else {
            // Kept by an earlier version as NAME.xml, whatever the name.
            return Self.isPlain(name) || !Self.fitsLegacyFile(name) ? nil : InputLimits.readText(path: legacyPath(kind, name))
        }
        if Self.isPlain(name) { return String(decoding: bytes, as: UTF8.self) }
        // The name inside must be the one asked for: the digest names the file, the name proves it.
        guard let stored = Self.decodeNamed(bytes, file: file), stored.name.utf8.elementsEqual(name.utf8) else { return nil }
        return stored.xml
    }

    private func write(_ kind: String, _ name: String, _ xml: String) throws {
        guard Names.isSafeObjectName(name) else {
            throw VirtGateError(.input, "cannot remember \(InputProblem.quoted(name)): not a usable name")
        }
        let bytes = Self.isPlain(name) ? Array(xml.utf8) : Array(name.utf8) + [0x0a] + Array(xml.utf8)
        try StateFiles.replace(path(kind, name), with: bytes)
    }

    private func forget(_ kind: String, _ name: String) {
        unlink(path(kind, name))
        if !Self.isPlain(name), Self.fitsLegacyFile(name) { unlink(legacyPath(kind, name)) }
    }

    static func fitsLegacyFile(_ name: String) -> Bool { Names.isSafeObjectName(name) && name.utf8.count + 4 <= 255 }
    private func legacyPath(_ kind: String, _ name: String) -> String { "\(directory)/\(kind)/\(name).xml" }

    /// `NAME\nXML` from a `.named` file, when its name is one whose digest is the file's name.
    static func decodeNamed(_ bytes: [UInt8], file: String) -> (name: String, xml: String)? {
        guard let newline = bytes.firstIndex(of: 0x0a) else { return nil }
        let nameBytes = Array(bytes[..<newline])
        guard sha256Hex(nameBytes) + ".named" == file, let name = String(validating: nameBytes, as: UTF8.self) else { return nil }
        return (name, String(decoding: bytes[(newline + 1)...], as: UTF8.self))
    }

    /// Hex SHA-256 of a name, for state file names that cannot overflow or be forged.
    static func sha256Hex(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { byte in
            let digits = Array("0123456789abcdef")
            return String([digits[Int(byte >> 4)], digits[Int(byte & 15)]])
        }.joined()
    }
}

/// The state directory's file operations as system calls.
enum StateFiles {
    struct Failure: Error, CustomStringConvertible, Sendable {
        let description: String

        init(_ operation: String, _ path: String, errno code: Int32 = errno) {
            description = "\(operation) \(path): \(String(cString: strerror(code)))"
        }
    }

    /// `mkdir -p` with mode 0700 for what it creates; an existing directory is left as it is.
    static func makeDirectories(_ path: String) throws {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            // String + String: appending a Substring goes through the generic append, whose first
            // use costs the runtime ~0.2M instructions of type lookups in every hook run.
            prefix += "/" + String(component)
            try makeDirectory(prefix)
        }
    }

    static func isDirectory(_ path: String) -> Bool {
        var status = stat()
        return stat(path, &status) == 0 && status.st_mode & S_IFMT == S_IFDIR
    }

    static func makeDirectory(_ path: String) throws {
        if mkdir(path, 0o700) == 0 { return }
        let code = errno
        var status = stat()
        guard code == EEXIST, stat(path, &status) == 0, status.st_mode & S_IFMT == S_IFDIR else {
            throw Failure("cannot create directory", path, errno: code)
        }
    }

    /// Replaces `path` atomically: a new file beside it (mode 0666 less the umask, as Foundation's
    /// atomic write made it), written whole, then renamed over it.
    static func replace(_ path: String, with bytes: [UInt8]) throws {
        let temporary = path + ".\(getpid()).tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o666)
        guard descriptor >= 0 else { throw Failure("cannot create", temporary) }
        var written = 0
        var failure: Int32 = 0
        bytes.withUnsafeBytes { buffer in
            while written < buffer.count {
                let count = write(descriptor, buffer.baseAddress! + written, buffer.count - written)
                if count < 0 {
                    if errno == EINTR { continue }
                    failure = errno
                    return
                }
                written += count
            }
        }
        if close(descriptor) != 0, failure == 0 { failure = errno }
        if failure == 0, rename(temporary, path) != 0 { failure = errno }
        if failure != 0 {
            unlink(temporary)
            throw Failure("cannot write", path, errno: failure)
        }
    }

    /// The names in a directory but `.` and `..`; none when it cannot be read.
    static func names(in path: String) -> [String] {
        guard let folder = opendir(path) else { return [] }
        defer { closedir(folder) }
        var names: [String] = []
        while let entry = readdir(folder) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }
}

func read(_ path: String) -> String? { InputLimits.readText(path: path) }

/// Network definitions and DHCP leases from the files libvirt and dnsmasq keep, never through
/// libvirt's API (a hook that calls libvirt deadlocks it).
public final class FileAddressBook: AddressBook {
    let store: StateStore
    let runDirectory: String
    let configDirectory: String
    let dnsmasqDirectory: String
    private var networks: [String: NetworkDefinition?] = [:]
    private var leases: [String: [MACAddress: [IPAddress]]] = [:]
    /// Files that exist but could not be used, for the log.
    public private(set) var problems: [String] = []

    public init(store: StateStore, settings: Settings) {
        self.store = store
        runDirectory = settings.networkRunDirectory
        configDirectory = settings.networkConfigDirectory
        dnsmasqDirectory = settings.dnsmasqDirectory
    }

    /// Prefers what the network hook told us, then libvirt's live state, then the persistent
    /// definition (which may differ from the running network, hence last).
    public func network(named name: String) -> NetworkDefinition? {
        if let cached = networks[name] { return cached }
        var found: NetworkDefinition?
        if Names.isSafeObjectName(name) {
            // Each read only when the one before has nothing usable.
            let sources: [(String, () -> String?)] = [
                ("remembered", { self.store.networkXML(name) }),
                (runDirectory, { InputLimits.readText(path: "\(self.runDirectory)/\(name).xml") }),
                (configDirectory, { InputLimits.readText(path: "\(self.configDirectory)/\(name).xml") }),
            ]
            for (origin, load) in sources {
                guard let text = load() else { continue }
                do {
                    found = try LibvirtXML.network(fromXML: text)
                    break
                } catch {
                    problems.append("\(origin) XML of network \(InputProblem.quoted(name)): \(error)")
                }
            }
        }
        networks[name] = found
        return found
    }

    struct Lease: Decodable {
        var ip: String?
        var mac: String?
        enum CodingKeys: String, CodingKey {
            case ip = "ip-address"
            case mac = "mac-address"
        }
    }

    public func leaseHolder(bridge: String, address: IPAddress) -> MACAddress? {
        loadLeases(bridge)
        return leases[bridge]?.first { $0.value.contains(address) }?.key
    }

    /// dnsmasq's status file for the bridge (a JSON array written by libvirt's leaseshelper).
    public func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? {
        loadLeases(bridge)
        return leases[bridge]?[mac]?.first { $0.family == family }
    }

    private func loadLeases(_ bridge: String) {
        if leases[bridge] == nil {
            var table: [MACAddress: [IPAddress]] = [:]
            let path = "\(dnsmasqDirectory)/\(bridge).status"
            let bytes = InputLimits.read(path: path) ?? []
            if bytes.count > InputLimits.maximumBytes {
                problems.append("lease file \(path): larger than \(InputLimits.label)")
            } else if !bytes.isEmpty {
                do {
                    for lease in try JSONDecoder().decode([Lease].self, from: Data(bytes)) {
                        if let mac = lease.mac.flatMap(MACAddress.init), let ip = lease.ip.flatMap(IPAddress.init) {
                            table[mac, default: []].append(ip)
                        }
                    }
                } catch {
                    problems.append("lease file \(dnsmasqDirectory)/\(bridge).status: not a lease list")
                }
            }
            leases[bridge] = table
        }
    }
}
