/// Generated guest sets: one libvirt NAT network, guests with forwards in their metadata, rendered as
/// the XML libvirt hands the hooks. Every address is a private or documentation range of the lab's.
enum Lab {
    static let network = "vgtdf"
    static let bridge = "vgtdf-br0"
    /// A host bridge that is no libvirt network (guests with `<interface type='bridge'>`).
    static let hostBridge = "vgtdf-br1"
    static let gateway4 = "10.91.0.1", gateway6 = "fd91::1", hostBridgeGateway = "10.92.0.1"
    static let hostWan4 = "198.51.100.1", hostAlt4 = "198.51.100.5"
    static let hostWan6 = "2001:db8:91::1", hostAlt6 = "2001:db8:91::5"
    static let wan4 = "198.51.100.2", wan6 = "2001:db8:91::2"
    /// The client on the network's bridge (hairpin), never a guest's address.
    static let lan4 = "10.91.0.250", lan6 = "fd91::250"
    static let hostAddresses4 = [hostWan4, hostAlt4, gateway4]
    static let hostAddresses6 = [hostWan6, hostAlt6, gateway6]
    static let slots = 20
    /// Ports many forwards pick from, so that guests and forwards collide often.
    static let hotPorts = [22, 53, 80, 443, 2222, 5000, 8000, 8080, 8090, 51820]
    /// Allow-list entries: some hold the lab's clients (wan, lan, the host's own addresses), some
    /// nest (`10.0.0.0/8` over `10.1.0.0/16`), some are a whole family.
    static let sources4 = ["198.51.100.0/24", "198.51.100.2/32", "198.51.100.128/25", "10.0.0.0/8", "10.1.0.0/16",
                           "10.91.0.0/24", "10.91.0.250/32", "192.0.2.0/24", "0.0.0.0/0"]
    static let sources6 = ["2001:db8:91::/64", "2001:db8:91::2/128", "2001:db8::/32", "fd91::/64", "fd91::250/128",
                           "2001:db8:ffff::/48", "::/0"]
}

struct Forward: Hashable, CustomStringConvertible {
    var proto: String
    var hostPorts: ClosedRange<Int>
    var guestPorts: ClosedRange<Int>
    var hostAddress: String?
    var sources: [String] = []
    var guestAddress: String?

    var description: String {
        func ports(_ range: ClosedRange<Int>) -> String {
            range.count == 1 ? "\(range.lowerBound)" : "\(range.lowerBound)-\(range.upperBound)"
        }
        var text = "<vg:forward proto=\"\(proto)\" host-port=\"\(ports(hostPorts))\""
        if guestPorts != hostPorts { text += " guest-port=\"\(ports(guestPorts))\"" }
        if let hostAddress { text += " host-address=\"\(hostAddress)\"" }
        if !sources.isEmpty { text += " source=\"\(sources.joined(separator: " "))\"" }
        if let guestAddress { text += " guest-address=\"\(guestAddress)\"" }
        return text + "/>"
    }
}

struct Guest: Hashable {
    /// The lab slot: decides name, MAC and the addresses the guest namespaces carry.
    var slot: Int
    /// A NIC of `type='bridge'` on the host bridge instead of one on the network.
    var onHostBridge = false
    var reserved4 = true
    var reserved6 = true
    var forwards: [Forward] = []

    var name: String { slot < 10 ? "g0\(slot)" : "g\(slot)" }
    var mac: String { "52:54:00:91:00:" + (slot < 16 ? "0" : "") + String(slot, radix: 16) }
    var address4: String { Guest.address4(slot: slot, onHostBridge: onHostBridge) }
    var address6: String { Guest.address6(slot: slot) }
    static func address4(slot: Int, onHostBridge: Bool) -> String { onHostBridge ? "10.92.0.\(100 + slot)" : "10.91.0.\(100 + slot)" }
    static func address6(slot: Int) -> String { "fd91::\(100 + slot)" }

    func domainXML() -> String {
        let nic = onHostBridge
            ? "<interface type='bridge'><mac address='\(mac)'/><source bridge='\(Lab.hostBridge)'/><target dev='vnet\(slot)'/><model type='virtio'/></interface>"
            : "<interface type='network'><mac address='\(mac)'/><source network='\(Lab.network)' portid='00000000-0000-4000-8000-0000000000\(slot + 10)' bridge='\(Lab.bridge)'/><target dev='vnet\(slot)'/><model type='virtio'/></interface>"
        return """
        <domain type='qemu' id='\(slot + 1)'>
          <name>\(name)</name>
          <uuid>00000000-0000-4000-8000-0000000091\(slot + 10)</uuid>
          <metadata>
            <vg:forwards xmlns:vg="urn:virtgate:forwards:1">
        \(forwards.map { "      \($0)" }.joined(separator: "\n"))
            </vg:forwards>
          </metadata>
          <memory unit='KiB'>131072</memory>
          <devices>
            \(nic)
          </devices>
        </domain>

        """
    }
}

struct Case: Hashable {
    var seed: UInt64
    /// The network has an IPv6 subnet (the lab's bridge always carries IPv6, so that an IPv6
    /// guest-address on an IPv4-only network is still reachable in principle).
    var ipv6: Bool
    var guests: [Guest]

    var forwardCount: Int { guests.map(\.forwards.count).reduce(0, +) }

    func networkXML() -> String {
        let hosts4 = guests.filter { !$0.onHostBridge && $0.reserved4 }
            .map { "        <host mac='\($0.mac)' name='\($0.name)' ip='\($0.address4)'/>" }.joined(separator: "\n")
        let hosts6 = guests.filter { !$0.onHostBridge && $0.reserved6 }
            .map { "        <host name='\($0.name)' ip='\($0.address6)'/>" }.joined(separator: "\n")
        let v6 = !ipv6 ? "" : """
            <ip family='ipv6' address='\(Lab.gateway6)' prefix='64'>
              <dhcp>
                <range start='fd91::200' end='fd91::240'/>
        \(hosts6)
              </dhcp>
            </ip>
        """
        return """
        <hookData>
          <network>
            <name>\(Lab.network)</name>
            <uuid>00000000-0000-4000-8000-000000009100</uuid>
            <forward mode='nat'><nat><port start='1024' end='65535'/></nat></forward>
            <bridge name='\(Lab.bridge)' stp='on' delay='0'/>
            <mac address='52:54:00:91:ff:01'/>
            <ip address='\(Lab.gateway4)' netmask='255.255.255.0'>
              <dhcp>
                <range start='10.91.0.200' end='10.91.0.240'/>
        \(hosts4)
              </dhcp>
            </ip>
        \(v6)
          </network>
        </hookData>

        """
    }

    /// The whole case as a reader needs it to reproduce a failure.
    var dump: String {
        "seed \(seed), \(guests.count) guests, \(forwardCount) forwards\n--- network \(Lab.network)\n" + networkXML()
            + guests.map { "--- domain \($0.name)\n" + $0.domainXML() }.joined()
    }
}

/// SplitMix64: small, fast and the same sequence for a seed everywhere, so a printed seed replays.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func chance(_ percent: Int) -> Bool { Int.random(in: 0..<100, using: &self) < percent }
    mutating func pick<T>(_ items: [T]) -> T { items[Int.random(in: 0..<items.count, using: &self)] }
}

enum CaseGenerator {
    static func generate(seed: UInt64) -> Case {
        var rng = SeededGenerator(seed: seed)
        let ipv6 = rng.chance(70)
        // Mostly small sets (quick to run, easy to read), sometimes the full 20.
        let count = rng.chance(20) ? Int.random(in: 8...Lab.slots, using: &rng) : Int.random(in: 1...6, using: &rng)
        let slots = Array(0..<Lab.slots).shuffled(using: &rng).prefix(count)
        var guests = slots.map { slot in
            Guest(slot: slot, onHostBridge: rng.chance(15), reserved4: rng.chance(90), reserved6: ipv6 && rng.chance(80))
        }
        for index in guests.indices {
            let forwards = rng.chance(15) ? 0 : Int.random(in: 1...12, using: &rng)
            guests[index].forwards = (0..<forwards).map { _ in forward(for: guests[index], among: guests, rng: &rng) }
        }
        return Case(seed: seed, ipv6: ipv6, guests: guests)
    }

    static func forward(for guest: Guest, among guests: [Guest], rng: inout SeededGenerator) -> Forward {
        let proto = rng.chance(50) ? "tcp" : rng.chance(70) ? "udp" : "sctp"
        let length = rng.chance(65) ? 1 : Int.random(in: 2...10, using: &rng)
        let hostLower = rng.chance(80) ? rng.pick(Lab.hotPorts) + Int.random(in: -2...2, using: &rng) : Int.random(in: 1024...65000, using: &rng)
        let guestLower = rng.chance(50) ? hostLower : rng.pick([22, 80, 81, 443, 9000, 53, hostLower + 1])
        var forward = Forward(proto: proto, hostPorts: hostLower...(hostLower + length - 1),
                              guestPorts: guestLower...(guestLower + length - 1))
        // Which family the forward names: none (both), or one through its addresses and sources.
        let family = guest.onHostBridge ? 4 : rng.chance(55) ? 0 : rng.chance(65) ? 4 : 6
        if family != 0, rng.chance(40) {
            forward.hostAddress = rng.pick(family == 4 ? Lab.hostAddresses4 : Lab.hostAddresses6)
        }
        // A guest on the host bridge has no reservation to bind to: it must name its address. Others
        // sometimes name their own, or that of another guest on the same bridge.
        if guest.onHostBridge || (family != 0 && rng.chance(35)) {
            let neighbours = guests.filter { $0.onHostBridge == guest.onHostBridge }
            let target = rng.chance(70) ? guest : rng.pick(neighbours)
            forward.guestAddress = family == 4 ? target.address4 : target.address6
        }
        if rng.chance(40) {
            let pool = family == 4 ? Lab.sources4 : family == 6 ? Lab.sources6 : Lab.sources4 + Lab.sources6
            forward.sources = (0..<Int.random(in: 1...3, using: &rng)).map { _ in rng.pick(pool) }
            forward.sources = forward.sources.enumerated().filter { !forward.sources.prefix($0.offset).contains($0.element) }.map(\.element)
        }
        return forward
    }

    /// Smaller cases for shrinking a failure: without half, a quarter, … one of the guests, then
    /// without one forward.
    static func smaller(_ failing: Case) -> [Case] {
        var candidates: [Case] = []
        var chunk = failing.guests.count / 2
        while chunk >= 1 {
            for start in stride(from: 0, to: failing.guests.count, by: chunk) where failing.guests.count > chunk {
                var next = failing
                next.guests.removeSubrange(start..<min(start + chunk, failing.guests.count))
                candidates.append(next)
            }
            chunk /= 2
        }
        for index in failing.guests.indices {
            for position in failing.guests[index].forwards.indices {
                var next = failing
                next.guests[index].forwards.remove(at: position)
                candidates.append(next)
            }
        }
        return candidates
    }
}
