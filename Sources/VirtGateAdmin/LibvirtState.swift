import Dispatch
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
        // The networks' XML and leases are fetched here and the XML parsed on another core while
        // libvirt lists and serves the guests: a network's definition holds every DHCP reservation
        // (a thousand are milliseconds to parse), and this thread's time is libvirt's to use.
        var networks: [(xml: String, leases: [LibvirtNetwork.Lease]?)] = []
        for network in try connection.activeNetworks() {
            let xml = try network.xml()
            networks.append((xml, try? network.dhcpLeases()))
        }
        let parsedNetworks = NetworkDocuments(networks.map(\.xml))
        // Folded into the state before the first guest is, whose leases may be looked up by its
        // networks' bridges; in libvirt's order, as before.
        var networkLeasesWork = true
        var networksFolded = false
        func foldNetworks() {
            guard !networksFolded else { return }
            networksFolded = true
            for (network, parsed) in zip(networks, parsedNetworks.results()) {
                do {
                    let definition = try parsed.get()
                    state.input.networks.append(definition)
                    state.networkXML[definition.name] = network.xml
                    guard let bridge = definition.bridge else { continue }
                    guard let leases = network.leases else {
                        networkLeasesWork = false
                        continue
                    }
                    for lease in leases {
                        if let mac = MACAddress(lease.mac), let address = IPAddress(lease.ipAddress) {
                            state.input.leases[bridge, default: [:]][mac, default: []].append(address)
                        }
                    }
                } catch {
                    state.problems.append("\(error); network left out")
                }
            }
        }
        // Every network parse handed out is waited for, also when a libvirt call fails.
        defer { _ = parsedNetworks.results() }
        let domains = try connection.runningDomains()
        try GuestDocuments.fetchAndParse(domains) { domain, xml, parsed in
            foldNetworks()
            do {
                let guest = try parsed.get()
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
        foldNetworks()
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

/// Networks' XML parsed on another core; `results()` waits for them, in the order given.
final class NetworkDocuments: @unchecked Sendable {
    private var parsed: [Result<NetworkDefinition, any Error>] = []
    private let done = DispatchGroup()

    init(_ documents: [String]) {
        guard !documents.isEmpty else { return }
        DispatchQueue.global().async(group: done) {
            self.parsed = documents.map { xml in Result { try LibvirtXML.network(fromXML: xml) } }
        }
    }

    /// The parsed networks; waits until they are done (the group's wait orders the write before this read).
    func results() -> [Result<NetworkDefinition, any Error>] {
        done.wait()
        return parsed
    }
}

/// Guests' XML fetched from libvirt and parsed, handed on in the order of `domains`. The fetches
/// stay on the calling thread, one after another, as libvirt's connection serves them; each batch
/// of fetched documents is parsed on another core meanwhile, and each parsed batch is handed on
/// (on the calling thread, which may ask libvirt for more, such as leases) as soon as it and
/// those before it are done. Parsing is pure and was most of what a sync of 1,000 guests added to
/// libvirt's own time.
enum GuestDocuments {
    /// Documents handed to a parsing thread at a time: enough to make a hand-off's cost small,
    /// few enough that the last batch does not leave the other cores idle for long.
    static let batchSize = 16

    static func fetchAndParse(
        _ domains: [LibvirtDomain],
        _ consume: (_ domain: LibvirtDomain, _ xml: String, _ guest: Result<GuestDefinition, any Error>) -> Void
    ) throws(LibvirtError) {
        let results = Slots(count: domains.count)
        var batches: [(documents: Range<Int>, parsed: DispatchGroup)] = []
        // Every batch handed out is waited for, also when a fetch fails: none may outlive `results`.
        defer { for batch in batches { batch.parsed.wait() } }
        var handedOn = 0
        /// Hands on the parsed batches in order; without `wait`, only those done already.
        func handOn(wait: Bool) {
            while handedOn < batches.count {
                let batch = batches[handedOn]
                if wait {
                    batch.parsed.wait()
                } else if batch.parsed.wait(timeout: .now()) == .timedOut {
                    return
                }
                for index in batch.documents {
                    let (xml, guest) = results.get(index)
                    consume(domains[index], xml, guest)
                }
                handedOn += 1
            }
        }
        var start = 0
        while start < domains.count {
            let documents = start..<min(start + batchSize, domains.count)
            var batch: [(index: Int, xml: String, name: String)] = []
            for index in documents {
                batch.append((index, try domains[index].xml(), domains[index].name))
            }
            let fetched = batch
            let parsed = DispatchGroup()
            DispatchQueue.global().async(group: parsed) {
                for document in fetched {
                    results.set(document.index, Result {
                        try LibvirtXML.guest(fromXML: document.xml, name: document.name)
                    }, xml: document.xml)
                }
            }
            batches.append((documents, parsed))
            handOn(wait: false)
            start = documents.upperBound
        }
        handOn(wait: true)
    }

    /// One slot per domain, each written by exactly one parsing thread and read only after its
    /// batch's group was waited for (which orders the writes before the reads).
    final class Slots: @unchecked Sendable {
        private let xml: UnsafeMutableBufferPointer<String>
        private let guests: UnsafeMutableBufferPointer<Result<GuestDefinition, any Error>?>

        init(count: Int) {
            xml = .allocate(capacity: count)
            xml.initialize(repeating: "")
            guests = .allocate(capacity: count)
            guests.initialize(repeating: nil)
        }

        deinit {
            xml.deinitialize().deallocate()
            guests.deinitialize().deallocate()
        }

        func set(_ index: Int, _ guest: Result<GuestDefinition, any Error>, xml text: String) {
            xml[index] = text
            guests[index] = guest
        }

        func get(_ index: Int) -> (String, Result<GuestDefinition, any Error>) { (xml[index], guests[index]!) }
    }
}
