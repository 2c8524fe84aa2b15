import VirtGateCore

/// The path every target drives: plan, render against an empty kernel with each backend, check the
/// output, apply it to the kernel models, read it back, and plan again, which must change nothing.
public enum Harness {
    public static let mark: UInt32 = 0x0020_0000
    /// Both backends; masquerading of routed networks on for one of them, so both planner paths run.
    public static let backends: [any Backend] = [
        IptablesChainBackend(masqueradeRouted: true, nftInstalled: true),
        NftMapBackend(mark: mark),
    ]

    /// Libvirt's `default` network and a dual-stack one, from the golden fixtures.
    public static let networks: [NetworkDefinition] = [FixedInput.defaultNetwork, FixedInput.dualNetwork].map {
        do { return try LibvirtXML.network(fromXML: $0) } catch { violated("fixed network does not parse: \(error)") }
    }

    /// The golden guest `web` (six forwards: ranges, sources, a host address, a guest address).
    public static let guest: GuestDefinition = {
        do { return try LibvirtXML.guest(fromXML: FixedInput.webGuest) } catch { violated("fixed guest does not parse: \(error)") }
    }()

    /// A guest parsed from the input, planned with the fixed networks.
    public static func exercise(guest: GuestDefinition, inputBytes: Int) {
        for problem in guest.problems { checkLine("\(problem); forward skipped", "parse problem") }
        let book = FuzzAddressBook(networks)
        exercise(.guest(guest, addresses: book, assertNetwork: { _ in true }), inputBytes: inputBytes)
        // As sync would: everything at once, exclusive, with the fixed guest beside it.
        if guest.name != Self.guest.name {
            var input = EngineInput(networks: networks, guests: [guest, Self.guest], exclusive: true, addresses: book)
            input.gateways = Self.gateways(networks)
            exercise(input, inputBytes: inputBytes)
        }
    }

    /// A network parsed from the input, planned with the fixed guest on it.
    public static func exercise(network: NetworkDefinition, inputBytes: Int) {
        var guest = Self.guest
        for index in guest.interfaces.indices {
            guest.interfaces[index].network = network.name
            guest.interfaces[index].bridge = network.bridge
        }
        let book = FuzzAddressBook([network])
        var input = EngineInput(networks: [network], guests: [guest], addresses: book)
        input.gateways = Self.gateways([network])
        exercise(input, inputBytes: inputBytes)
        // The network's start alone: with nft, the table without base chains, holding its gateways.
        var start = EngineInput(networks: [network], guests: [], addresses: book)
        start.gateways = input.gateways
        exercise(start, inputBytes: inputBytes)
    }

    /// The networks' own addresses, as a hook or sync hands them to the planner.
    static func gateways(_ networks: [NetworkDefinition]) -> [IPAddress] {
        networks.flatMap { $0.subnets.map(\.gateway) }
    }

    public static func exercise(_ input: EngineInput, inputBytes: Int) {
        for backend in backends { exercise(input, backend: backend, inputBytes: inputBytes) }
    }

    static func exercise(_ input: EngineInput, backend: any Backend, inputBytes: Int) {
        let plan = Engine.plan(input, incumbents: [], settings: backend.plannerSettings)
        checkLogLines(plan)
        if backend.kind == .nft && !Amplification.admit(plan, inputBytes: inputBytes) { return }

        let empty = KernelState(iptables: IptablesSnapshot(), nft: NftState())
        let preview = Firewall.preview(input, backend: backend, state: empty, mark: mark)
        let transaction = preview.transaction
        let size = transaction.text.utf8.count
        require(size <= Limits.maximumRendered, "\(backend.kind): \(inputBytes) input bytes rendered \(size) bytes")
        checkLine(transaction.summary, "summary")

        let (snapshot, nft) = apply(iptables: transaction.iptables, nft: transaction.nft)

        if let chains = preview.desired.chains {
            let back = normalized(snapshot.ownerChains), want = normalized(chains)
            require(back == want, "\(backend.kind): iptables chains read back differ from the desired ones:\nback: \(back)\nwant: \(want)")
            var dnats = 0
            for table in [IptablesTable.nat, .nat6] {
                // A guest's DNAT chain also returns its networks' own addresses (they reach only forwards naming them).
                for (chain, rules) in snapshot.ownerChains[table] ?? [:] where chain.hasPrefix("VGD-") {
                    dnats += rules.filter { !$0.hasSuffix(" -j RETURN") }.count
                }
            }
            require(snapshot.forwardClaims().count == dnats,
                    "\(backend.kind): \(dnats) DNAT rules but \(snapshot.forwardClaims().count) claims read back")
        } else {
            require(transaction.iptables.values.allSatisfy(\.isEmpty), "\(backend.kind): iptables written without desired chains")
        }
        if let elements = preview.desired.elements {
            let want = Set(elements.values.joined())
            require(Set(nft.elements) == want && nft.elements.count == want.count,
                    "\(backend.kind): nft elements read back differ from the desired ones:\nback: \(nft.elements.sorted())\nwant: \(want.sorted())")
            let forwards = want.filter { $0.owner != NftLayout.gatewayOwner }.count
            require(nft.forwardClaims().count == forwards,
                    "\(backend.kind): \(forwards) nft forward elements but \(nft.forwardClaims().count) claims read back")
            for (owner, list) in elements {
                require(list.allSatisfy { $0.owner == owner }, "\(backend.kind): elements of \(owner) name another owner")
            }
        } else {
            require(transaction.nft.isEmpty, "\(backend.kind): nft written without desired elements")
        }

        // Re-asserting what the kernel now holds is a no-op.
        let again = Firewall.preview(input, backend: backend, state: KernelState(iptables: snapshot, nft: nft), mark: mark)
        require(again.transaction.isEmpty,
                "\(backend.kind): re-asserting the same input writes again:\n\(again.transaction.text.prefix(3000))\nfirst:\n\(transaction.text.prefix(3000))")
    }

    /// The transaction applied to empty kernel models, read back as virtgate reads the kernel.
    public static func apply(iptables: [IPFamily: String], nft script: String) -> (IptablesSnapshot, NftState) {
        var snapshot = IptablesSnapshot()
        for family in IPFamily.allCases {
            var kernel = IptablesKernel(family: family)
            kernel.restore(iptables[family] ?? "")
            snapshot.add(parsing: kernel.saveText, family: family)
        }
        var nft = NftKernel(mark: mark)
        nft.apply(script)
        return (snapshot, nft.state())
    }

    /// Without tables that hold no chains.
    static func normalized(_ chains: DesiredChains) -> DesiredChains {
        chains.filter { !$0.value.isEmpty }
    }
}

/// The fixed networks, and a DHCP lease for every MAC on their bridges (inside the subnet), so
/// forwards without a reservation bind too.
public struct FuzzAddressBook: AddressBook {
    let networks: [String: NetworkDefinition]

    public init(_ networks: [NetworkDefinition]) {
        self.networks = Dictionary(networks.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
    }

    public func network(named name: String) -> NetworkDefinition? { networks[name] }

    public func leasedAddress(bridge: String, mac: MACAddress, family: IPFamily) -> IPAddress? {
        guard let network = networks.values.first(where: { $0.bridge == bridge }),
              let subnet = network.subnets.first(where: { $0.network.family == family })?.network else { return nil }
        let hostBits = family.bits - subnet.prefix
        let mask: UInt128 = hostBits >= 128 ? .max : (UInt128(1) << hostBits) - 1
        let last = UInt128(UInt8(mac.description.suffix(2), radix: 16) ?? 0)
        return IPAddress(family: family, value: subnet.address.value | ((100 + last) & mask))
    }
}
