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

    func path(_ kind: String, _ name: String) -> String { "\(directory)/\(kind)/\(name).xml" }

    public func prepare() throws {
        for sub in ["", "/networks", "/guests"] {
            try FileManager.default.createDirectory(atPath: directory + sub, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        }
    }

    public func rememberNetwork(_ name: String, xml: String) throws { try write(path("networks", name), xml) }
    public func forgetNetwork(_ name: String) { try? FileManager.default.removeItem(atPath: path("networks", name)) }
    public func networkXML(_ name: String) -> String? { read(path("networks", name)) }

    public func rememberGuest(_ name: String, xml: String) throws { try write(path("guests", name), xml) }
    public func forgetGuest(_ name: String) { try? FileManager.default.removeItem(atPath: path("guests", name)) }
    public func guestXML(_ name: String) -> String? { read(path("guests", name)) }

    /// Remembered guests, by name.
    public func guests() -> [(name: String, xml: String)] { list("guests") }

    /// Names of remembered guests, from the directory listing alone (no file is read).
    public func guestNames() -> [String] {
        let files = (try? FileManager.default.contentsOfDirectory(atPath: directory + "/guests")) ?? []
        return files.filter { $0.hasSuffix(".xml") }.map { String($0.dropLast(4)) }.sorted()
    }

    /// Remembered networks, by name.
    public func networks() -> [(name: String, xml: String)] { list("networks") }

    private func list(_ kind: String) -> [(name: String, xml: String)] {
        let folder = directory + "/" + kind
        let files = (try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? []
        return files.filter { $0.hasSuffix(".xml") }.sorted().compactMap { file in
            read(folder + "/" + file).map { (String(file.dropLast(4)), $0) }
        }
    }

    private func write(_ path: String, _ text: String) throws {
        try Data(text.utf8).write(to: URL(filePath: path), options: .atomic)
    }
}

func read(_ path: String) -> String? {
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return String(decoding: data, as: UTF8.self)
}

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
            let sources: [(String, String?)] = [
                ("remembered", store.networkXML(name)),
                (runDirectory, read("\(runDirectory)/\(name).xml")),
                (configDirectory, read("\(configDirectory)/\(name).xml")),
            ]
            for (origin, text) in sources {
                guard let text else { continue }
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

    /// dnsmasq's status file for the bridge (a JSON array written by libvirt's leaseshelper).
    public func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? {
        if leases[bridge] == nil {
            var table: [MACAddress: [IPAddress]] = [:]
            if let data = FileManager.default.contents(atPath: "\(dnsmasqDirectory)/\(bridge).status"), !data.isEmpty {
                do {
                    for lease in try JSONDecoder().decode([Lease].self, from: data) {
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
        return leases[bridge]?[mac]?.first { $0.family == family }
    }
}
