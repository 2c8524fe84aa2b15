import Libvirt
import VirtGateCore

/// libvirt's current state as the planner needs it: every active network and running guest, their
/// XML, and DHCP leases. Read through the API; only admin commands do this, never hooks.
public struct LibvirtState: Sendable {
    public var input: SyncInput
    public var networkXML: [String: String]
    public var guestXML: [String: String]
    /// XML that could not be used, one line each; those objects are left out.
    public var problems: [String]

    public static func load(_ connection: LibvirtConnection) throws(LibvirtError) -> LibvirtState {
        var state = LibvirtState(input: SyncInput(networks: [], guests: [], leases: [:]), networkXML: [:],
                                 guestXML: [:], problems: [])
        var networkLeasesWork = true
        for network in try connection.activeNetworks() {
            let xml = try network.xml()
            do {
                let definition = try LibvirtXML.network(fromXML: xml)
                state.input.networks.append(definition)
                state.networkXML[definition.name] = xml
                guard let bridge = definition.bridge else { continue }
                do {
                    for lease in try network.dhcpLeases() {
                        if let mac = MACAddress(lease.mac), let address = IPAddress(lease.ipAddress) {
                            state.input.leases[bridge, default: [:]][mac, default: []].append(address)
                        }
                    }
                } catch {
                    networkLeasesWork = false
                }
            } catch {
                state.problems.append("\(error); network left out")
            }
        }
        for domain in try connection.runningDomains() {
            let xml = try domain.xml()
            do {
                let guest = try LibvirtXML.guest(fromXML: xml, name: domain.name)
                state.input.guests.append(guest)
                state.guestXML[domain.name] = xml
                // Drivers without network leases (the test driver, some remote setups) still report
                // each guest's addresses from its leases.
                if !networkLeasesWork, !guest.forwards.isEmpty {
                    state.addLeases(of: guest, from: (try? domain.leaseAddresses()) ?? [])
                }
            } catch {
                state.problems.append("\(error); guest left out")
            }
        }
        return state
    }

    mutating func addLeases(of guest: GuestDefinition, from interfaces: [(mac: String, addresses: [String])]) {
        guard !interfaces.isEmpty else { return }
        // Each reported MAC parsed once, not once per NIC it is compared with.
        let reported = interfaces.map { (mac: MACAddress($0.mac), addresses: $0.addresses) }
        for nic in guest.interfaces {
            guard let bridge = nic.bridge ?? nic.network.flatMap({ name in input.networks.first { $0.name == name }?.bridge }),
                  input.leases[bridge]?[nic.mac] == nil,
                  let entry = reported.first(where: { $0.mac == nic.mac }),
                  case let addresses = entry.addresses.compactMap(IPAddress.init), !addresses.isEmpty else { continue }
            input.leases[bridge, default: [:]][nic.mac] = addresses
        }
    }

    /// Chain id → guest name, so claims read from the kernel carry names.
    public var chainNames: [String: String] {
        Dictionary(input.guests.map { (ChainNames.id(for: $0.name), $0.name) }, uniquingKeysWith: { first, _ in first })
    }
}
