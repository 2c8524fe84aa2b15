/// Turns the XML libvirt hands to hooks (and keeps in its state files) into the model.
public enum LibvirtXML {
    public static let metadataNamespace = "urn:virtgate:forwards:1"

    // MARK: Networks

    /// Accepts a bare `<network>`, the network hook's `<hookData>` and libvirt's `<networkstatus>`
    /// state file: the first `<network>` element wins.
    public static func network(fromXML text: String) throws -> NetworkDefinition {
        let root: XMLElement
        do {
            root = try XMLTree.parse(text)
        } catch {
            throw VirtGateError(InputProblem(.network("?"), field: "xml", value: String(text.prefix(40)), reason: error.description))
        }
        guard let network = root.first(where: { $0.name == "network" && $0.namespaceURI == nil }) else {
            throw VirtGateError(InputProblem(.network("?"), field: "xml", value: root.name, reason: "no <network> element"))
        }
        return try parseNetwork(network)
    }

    static func parseNetwork(_ element: XMLElement) throws -> NetworkDefinition {
        let name = element.child("name")?.text.trimmingWhitespace() ?? ""
        let subject = InputProblem.Subject.network(name)
        guard Names.isSafeObjectName(name) else {
            throw VirtGateError(InputProblem(subject, field: "name", value: name, reason: "not a usable network name"))
        }
        var bridge: String?
        if let value = element.child("bridge")?["name"] {
            guard Names.isValidInterfaceName(value) else {
                throw VirtGateError(InputProblem(subject, field: "bridge name", value: value, reason: "not a valid interface name"))
            }
            bridge = value
        }
        let mode: NetworkDefinition.ForwardMode
        if let forward = element.child("forward") {
            switch forward["mode"] ?? "nat" {
            case "nat": mode = .nat
            case "route": mode = .route
            case "open": mode = .open
            case let other: mode = .other(other)
            }
        } else {
            mode = .isolated
        }
        var subnets: [NetworkDefinition.Subnet] = []
        var reservations: [MACAddress: IPAddress] = [:]
        var namedReservations: [String: IPAddress] = [:]
        for ip in element.children("ip") {
            guard let addressText = ip["address"] else { continue }
            let familyText = ip["family"] ?? "ipv4"
            guard let family = IPFamily(rawValue: familyText) else {
                throw VirtGateError(InputProblem(subject, field: "ip family", value: familyText, reason: "expected ipv4 or ipv6"))
            }
            guard let address = IPAddress(addressText), address.family == family else {
                throw VirtGateError(InputProblem(subject, field: "ip address", value: addressText, reason: "not an \(family.label) address"))
            }
            let prefix: Int
            if let text = ip["prefix"] {
                guard let value = Int(text), (0...family.bits).contains(value) else {
                    throw VirtGateError(InputProblem(subject, field: "ip prefix", value: text, reason: "not a prefix length 0-\(family.bits)"))
                }
                prefix = value
            } else if let text = ip["netmask"], family == .v4 {
                guard let mask = IPAddress(text), let value = IPNetwork.prefix(ofNetmask: mask) else {
                    throw VirtGateError(InputProblem(subject, field: "ip netmask", value: text, reason: "not a contiguous netmask"))
                }
                prefix = value
            } else {
                // libvirt's defaults: classful for IPv4, /64 for IPv6.
                prefix = family == .v4 ? address.classfulPrefix : 64
            }
            subnets.append(.init(gateway: address, network: IPNetwork(address: address, prefix: prefix)))
            for host in ip.child("dhcp")?.children("host") ?? [] {
                guard let ipText = host["ip"] else { continue }
                guard let reserved = IPAddress(ipText), reserved.family == family else {
                    throw VirtGateError(InputProblem(subject, field: "dhcp host ip", value: ipText, reason: "not an \(family.label) address"))
                }
                if let macText = host["mac"] {
                    guard let mac = MACAddress(macText) else {
                        throw VirtGateError(InputProblem(subject, field: "dhcp host mac", value: macText, reason: "not a MAC address"))
                    }
                    reservations[mac] = reserved
                } else if family == .v6, let hostName = host["name"] {
                    // DHCPv6 hosts are identified by DUID or name, never by MAC: virtgate binds a
                    // name reservation to the guest of that name.
                    namedReservations[hostName] = reserved
                }
            }
        }
        return NetworkDefinition(name: name, bridge: bridge, mode: mode, subnets: subnets, reservations: reservations,
                                 namedReservations: namedReservations)
    }

    // MARK: Domains

    /// Parses a domain's XML. Problems in the whole document (not XML, no name) throw; problems in
    /// single forwards are collected in `problems` so that policy decides what happens to them.
    /// `wholeTree` builds every element (only the fuzzer's cross-check wants that).
    public static func guest(fromXML text: String, name expectedName: String? = nil,
                             wholeTree: Bool = false) throws -> GuestDefinition {
        let fallback = expectedName ?? "?"
        var root: XMLElement
        var keep: (([String], String) -> Bool)?
        if !wholeTree { keep = { ancestors, name in guestParts(ancestors, name) } }
        do {
            root = try XMLTree.parse(text, keep: keep)
        } catch {
            throw VirtGateError(InputProblem(.guest(fallback), field: "xml", value: String(text.prefix(40)), reason: error.description))
        }
        // libvirt's state file for a running guest (/run/libvirt/qemu/NAME.xml) wraps the domain.
        if root.name == "domstatus", let domain = root.child("domain") { root = domain }
        guard root.name == "domain", root.namespaceURI == nil else {
            throw VirtGateError(InputProblem(.guest(fallback), field: "xml", value: root.name, reason: "root element is not <domain>"))
        }
        let name = root.child("name")?.text.trimmingWhitespace() ?? expectedName ?? ""
        let subject = InputProblem.Subject.guest(name)
        guard Names.isSafeObjectName(name) else {
            throw VirtGateError(InputProblem(subject, field: "name", value: name, reason: "not a usable guest name"))
        }
        if let expectedName, expectedName != name {
            throw VirtGateError(InputProblem(subject, field: "name", value: expectedName, reason: "hook argument does not match <name>"))
        }

        var interfaces: [GuestInterface] = []
        for nic in root.child("devices")?.children("interface") ?? [] {
            let type = nic["type"] ?? ""
            guard type == "network" || type == "bridge", let macText = nic.child("mac")?["address"] else { continue }
            guard let mac = MACAddress(macText) else {
                throw VirtGateError(InputProblem(subject, field: "interface mac", value: macText, reason: "not a MAC address (xx:xx:xx:xx:xx:xx, ASCII hex)"))
            }
            let source = nic.child("source")
            var bridge = source?["bridge"]
            if let value = bridge, !Names.isValidInterfaceName(value) {
                throw VirtGateError(InputProblem(subject, field: "interface bridge", value: value, reason: "not a valid interface name"))
            }
            if bridge?.isEmpty == true { bridge = nil }
            let tap = nic.child("target")?["dev"]
            if let value = tap, !Names.isValidInterfaceName(value) {
                throw VirtGateError(InputProblem(subject, field: "interface target dev", value: value, reason: "not a valid interface name"))
            }
            interfaces.append(GuestInterface(mac: mac, network: type == "network" ? source?["network"] : nil,
                                             bridge: bridge, tap: tap))
        }

        let container = root.child("metadata")?.children.first {
            $0.name == "forwards" && $0.namespaceURI == metadataNamespace
        }
        let (forwards, problems) = forwards(in: container?.children ?? [], subject: subject)
        return GuestDefinition(name: name, interfaces: interfaces, forwards: forwards, problems: problems)
    }

    /// The elements `guest(fromXML:)` reads, given their ancestors' local names: `<name>`,
    /// `<metadata>`'s `<forwards>` with all its children, and `<devices>`' `<interface>`s with their
    /// `<mac>`, `<source>` and `<target>` (inside libvirt's `<domstatus>` wrapper too). A domain's
    /// disks, controllers, CPU and the rest are never built into the tree.
    static func guestParts(_ ancestors: [String], _ name: String) -> Bool {
        var path = ancestors[...]
        if path.first == "domstatus" {
            path = path.dropFirst()
            if path.isEmpty { return name == "domain" }
        }
        switch path.count {
        case 1: return name == "name" || name == "metadata" || name == "devices"
        case 2:
            switch path.last {
            case "metadata": return name == "forwards"
            case "devices": return name == "interface"
            default: return false
            }
        case 3:
            switch path[path.startIndex + 1] {
            case "metadata": return true
            case "devices": return name == "mac" || name == "source" || name == "target"
            default: return false
            }
        default: return false
        }
    }

    /// The `<forward>` children of a `<forwards>` element, valid ones in order and one problem per
    /// invalid one. Elements are matched by local name: libvirt hands the element back without
    /// its namespace from virDomainGetMetadata, and with it in the domain XML.
    static func forwards(in elements: [XMLElement], subject: InputProblem.Subject) -> ([ForwardSpec], [InputProblem]) {
        var forwards: [ForwardSpec] = []
        var problems: [InputProblem] = []
        for (index, element) in elements.enumerated() {
            guard element.name == "forward", element.namespaceURI == nil || element.namespaceURI == metadataNamespace else {
                problems.append(InputProblem(subject, field: "forward #\(index + 1) element", value: element.name,
                                             reason: "expected <forward>"))
                continue
            }
            switch ForwardSpec.parse(attributes: element.attributes, subject: subject, position: index + 1) {
            case .success(let forward): forwards.append(forward)
            case .failure(let problem): problems.append(problem)
            }
        }
        return (forwards, problems)
    }
}

extension IPAddress {
    /// libvirt's default when an `<ip>` has neither prefix nor netmask.
    var classfulPrefix: Int {
        switch value >> 24 {
        case 0..<128: 8
        case 128..<192: 16
        default: 24
        }
    }
}

extension ForwardSpec {
    /// Validates one `<forward>` element's attributes. Unknown attributes are errors: a typo such as
    /// `hostport` must not silently turn into a different forward.
    public static func parse(attributes: [String: String], subject: InputProblem.Subject,
                             position: Int) -> Result<ForwardSpec, InputProblem> {
        func problem(_ field: String, _ value: String, _ reason: String) -> Result<ForwardSpec, InputProblem> {
            .failure(InputProblem(subject, field: "forward #\(position) \(field)", value: value, reason: reason))
        }
        // One pass over the attributes, by name: no hashing (a sync reads thousands of forwards).
        var protoText, hostText, guestText, hostAddressText, sourceText, guestAddressText, macText: String?
        var unknown: (name: String, value: String)?
        for (name, value) in attributes {
            switch name {
            case "proto": protoText = value
            case "host-port": hostText = value
            case "guest-port": guestText = value
            case "host-address": hostAddressText = value
            case "source": sourceText = value
            case "guest-address": guestAddressText = value
            case "mac": macText = value
            // The first in name order is named, whatever the hash order.
            default: if unknown.map({ name < $0.name }) ?? true { unknown = (name, value) }
            }
        }
        if let unknown { return problem(unknown.name, unknown.value, "unknown attribute") }
        var proto = TransportProtocol.tcp
        if let text = protoText {
            guard let value = TransportProtocol(rawValue: text) else {
                return problem("proto", text, "expected tcp, udp or sctp")
            }
            proto = value
        }
        guard let hostText else { return problem("host-port", "", "missing") }
        let hostPorts: PortRange
        switch PortRange.parse(hostText) {
        case .success(let range): hostPorts = range
        case .failure(let error): return problem("host-port", hostText, error.reason)
        }
        var guestPorts = hostPorts
        if let text = guestText {
            switch PortRange.parse(text) {
            case .success(let range): guestPorts = range
            case .failure(let error): return problem("guest-port", text, error.reason)
            }
            guard guestPorts.count == hostPorts.count else {
                return problem("guest-port", text, "range length differs from host-port \(hostPorts)")
            }
        }
        var hostAddress: IPAddress?
        if let text = hostAddressText {
            guard let value = IPAddress(text) else { return problem("host-address", text, "not an IP address") }
            if let reason = value.unusableAsLocalDestination { return problem("host-address", text, reason) }
            hostAddress = value
        }
        var sources: [IPNetwork] = []
        if let text = sourceText {
            let entries = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" })
            guard !entries.isEmpty else { return problem("source", text, "empty allow-list") }
            for entry in entries {
                guard let network = IPNetwork(parsing: entry) else {
                    return problem("source", String(entry), "not an IP network (CIDR) with zero host bits")
                }
                if !sources.contains(network) { sources.append(network) }
            }
        }
        var guestAddress: IPAddress?
        if let text = guestAddressText {
            guard let value = IPAddress(text) else { return problem("guest-address", text, "not an IP address") }
            if let hostAddress, hostAddress.family != value.family {
                return problem("guest-address", text, "\(value.family.label) address, but host-address is \(hostAddress.family.label)")
            }
            guestAddress = value
        }
        // A forward that names an address is of that family; its sources must be too.
        if let family = hostAddress?.family ?? guestAddress?.family,
           let other = sources.first(where: { $0.family != family }) {
            return problem("source", other.description, "\(other.family.label) network in an \(family.label) forward")
        }
        var mac: MACAddress?
        if let text = macText {
            guard let value = MACAddress(text) else { return problem("mac", text, "not a MAC address (xx:xx:xx:xx:xx:xx, ASCII hex)") }
            mac = value
        }
        var forward = ForwardSpec(proto: proto, hostPorts: hostPorts, guestPorts: guestPorts,
                                  hostAddress: hostAddress, sources: sources, guestAddress: guestAddress, mac: mac)
        forward.position = position
        return .success(forward)
    }
}

extension PortRange.ParseError {
    var reason: String {
        switch self {
        case .notANumber: "expected a port N or a range N-M"
        case .outOfRange: "port out of range 1-65535"
        case .reversed: "range is reversed"
        }
    }
}
