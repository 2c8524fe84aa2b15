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
            var settings = Settings()
            settings.backend = backend
            settings.masqueradeRoutedNetworks = masqueradeRouted
            // The same engine as the hook, against an empty kernel: what a first run would write.
            let chosen = Backends.make(settings, nftInstalled: false)
            var networks: [NetworkDefinition] = []
            for path in network {
                networks.append(try LibvirtXML.network(fromXML: try readFile(path)))
            }
            var input = EngineInput(networks: networks, addresses: StaticAddressBook(networks: networks))
            input.gateways = []
            if let domain {
                input.guests = [try LibvirtXML.guest(fromXML: try readFile(domain))]
            }
            let preview = Firewall.preview(input, backend: chosen, state: KernelState(iptables: IptablesSnapshot(), nft: NftState()),
                                           mark: settings.connectionMark)
            for guest in preview.plan.guests {
                for problem in guest.problems.prefix(Log.problemLines) { printError("# invalid: \(problem)") }
                if guest.problems.count > Log.problemLines {
                    printError("# invalid: \(guest.problems.count - Log.problemLines) more problems not shown")
                }
                for pending in guest.plan.pending {
                    printError("# pending: forward #\(pending.forward.position) \(pending.forward.summary): \(pending.reason)")
                }
            }
            let transaction = preview.transaction
            print(transaction.text, terminator: "")
        }
    }
}
