import ArgumentParser
import VirtGateCore

extension VirtGate {
    struct Plan: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the rules virtgate would make for domain and network XML files, as a first run would.",
            discussion: "Touches nothing and reads no system state: addresses come from the files given."
        )

        @Option(help: "Domain XML file (as `virsh dumpxml` prints it).")
        var domain: String?

        @Option(help: "Network XML file; repeat for several networks.")
        var network: [String] = []

        @Option(help: "Treat route/open networks as masqueraded (config MASQUERADE_ROUTED).")
        var masqueradeRouted = false

        @Option(help: "Render for this backend: iptables, or nft (the guest's forwards as an nft script after the networks' iptables rules).")
        var backend: BackendKind = .iptables

        func validate() throws {
            guard domain != nil || !network.isEmpty else {
                throw ValidationError("give --domain FILE and/or --network FILE")
            }
        }

        func run() async throws {
            let mark = Settings().connectionMark
            let settings = PlannerSettings(masqueradeRoutedNetworks: masqueradeRouted,
                                           forwardMark: backend == .nft ? mark : nil)
            var elements = DesiredElements()
            var networks: [NetworkDefinition] = []
            for path in network {
                networks.append(try LibvirtXML.network(fromXML: try readFile(path)))
            }
            var changes: [(Owner, [OwnedChain])] = networks.map {
                (.network($0.name), IptablesRules.chains(for: Planner.plan(network: $0, settings: settings)))
            }
            if let domain {
                let guest = try LibvirtXML.guest(fromXML: try readFile(domain))
                let book = StaticAddressBook(networks: networks)
                let plan = Planner.plan(guest: guest, addresses: book)
                for problem in guest.problems + plan.problems { printError("# invalid: \(problem)") }
                for pending in plan.pending {
                    printError("# pending: forward #\(pending.forward.position) \(pending.forward.summary): \(pending.reason)")
                }
                if backend == .nft {
                    elements = NftTransaction.desired(elements, replacing: plan.plan.owner, with: NftRules.elements(for: plan.plan))
                } else {
                    changes.append((plan.plan.owner, IptablesRules.chains(for: plan.plan)))
                }
            }
            var desired = DesiredChains()
            for (owner, chains) in changes {
                desired = IptablesTransaction.desired(desired, replacing: owner, with: chains)
            }
            print(IptablesTransaction.render(from: IptablesSnapshot(), to: desired), terminator: "")
            let script = NftTransaction.render(from: NftState(), to: elements, mark: mark)
            if !script.isEmpty { print("# nft -f\n" + script, terminator: "") }
        }
    }
}
