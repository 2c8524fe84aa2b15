import ArgumentParser
import VirtGateAdmin
import VirtGateCore

extension VirtGate {
    struct Forward: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add, remove or list a guest's port forwards (kept in its domain metadata).",
            subcommands: [Add.self, Remove.self, List.self]
        )
    }
}

/// The forward as the admin types it, plus the options that go with it.
struct ForwardArguments: ParsableArguments {
    @Argument(help: "The guest (libvirt domain name).")
    var guest: String

    @Argument(help: "[HOST-ADDRESS:]HOST-PORTS[:GUEST-PORTS][/PROTO], e.g. 8080:80/tcp, 198.51.100.10:53:53/udp, 5000-5009:6000-6009.")
    var forward: String
}

extension VirtGate.Forward {
    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a forward, validated first; a running guest gets it at once.",
            discussion: "Example: virtgate forward add web 8080:80/tcp --source 203.0.113.0/24"
        )

        @OptionGroup var arguments: ForwardArguments
        @Option(help: "Allow only this source CIDR; repeat for several.")
        var source: [String] = []
        @Option(help: "The guest's address, instead of discovering it.")
        var guestAddress: String?
        @Option(help: "The guest NIC's MAC address (default: its first NIC on a libvirt network).")
        var mac: String?
        @OptionGroup var connection: ConnectionOptions
        @Flag(help: "Validate and print the rules, write nothing.")
        var dryRun = false

        func run() async throws {
            let spec = try ForwardMetadata.parseShorthand(arguments.forward, sources: source, guestAddress: guestAddress,
                                                          mac: mac, guest: arguments.guest).mapError(VirtGateError.init).get()
            let context = try await AdminContext(connection)
            let editor = ForwardEditor(connection: context.connection)
            let state = try context.loadState()
            if dryRun {
                _ = try libvirt { try editor.list(guest: arguments.guest) }
                writeAll(1, "# would add to guest \(InputProblem.quoted(arguments.guest)): \(spec.summary)\n")
                return
            }
            _ = try libvirt { try editor.add(spec, to: arguments.guest, others: state.claims(except: arguments.guest)) }
            context.log.info("guest \(InputProblem.quoted(arguments.guest)): forward \(spec.summary) added to its metadata")
            try await applyNow(context, guest: arguments.guest)
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Remove the forward with this protocol, host address and host ports; a running guest loses it at once.",
            discussion: "Example: virtgate forward remove web 8080/tcp"
        )

        @OptionGroup var arguments: ForwardArguments
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let spec = try ForwardMetadata.parseShorthand(arguments.forward, guest: arguments.guest).mapError(VirtGateError.init).get()
            let context = try await AdminContext(connection)
            _ = try libvirt { try ForwardEditor(connection: context.connection).remove(spec, from: arguments.guest) }
            context.log.info("guest \(InputProblem.quoted(arguments.guest)): forward \(spec.proto.rawValue) \(spec.hostPorts) removed from its metadata")
            try await applyNow(context, guest: arguments.guest)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the forwards of one guest, or of every guest that has any.")

        @Argument(help: "The guest; all guests when omitted.")
        var guest: String?
        @OptionGroup var connection: ConnectionOptions

        func run() async throws {
            let context = try await AdminContext(connection)
            for listing in try libvirt({ try ForwardEditor(connection: context.connection).list(guest: guest) }) {
                var out = "\(listing.guest) (\(listing.running ? "running" : "shut off"))\n"
                if listing.forwards.isEmpty && listing.problems.isEmpty { out += "  no forwards\n" }
                for forward in listing.forwards {
                    // The summary shows protocol and ports; the rest follows as attributes.
                    let attributes = ForwardMetadata.attributes(of: forward)
                        .filter { !["proto", "host-port", "guest-port"].contains($0.0) }
                        .map { "\($0.0)=\($0.1)" }.joined(separator: " ")
                    out += "  #\(forward.position) \(forward.summary)\(attributes.isEmpty ? "" : "  \(attributes)")\n"
                }
                for problem in listing.problems { out += "  invalid: \(problem)\n" }
                writeAll(1, out)
            }
        }
    }
}

/// Re-applies one running guest's rules from its fresh live XML, under the lock, in one
/// transaction; other guests' rules stay as they are.
func applyNow(_ context: AdminContext, guest name: String) async throws {
    guard try libvirt({ try context.connection.domain(named: name).isActive() }) else {
        writeAll(1, "guest \(InputProblem.quoted(name)) is not running: the forward applies when it starts\n")
        return
    }
    let state = try context.loadState()
    guard let guest = state.input.guests.first(where: { $0.name == name }) else {
        writeAll(1, "guest \(InputProblem.quoted(name)) is not running: the forward applies when it starts\n")
        return
    }
    let local = context.local
    var input = EngineInput.guest(guest, addresses: SyncAddressBook(input: state.input), names: state.chainNames,
                                  assertNetwork: { _ in local.backend.networksRideAlong })
    input.hostSockets = ListeningSockets.current()
    input.gateways = state.input.networks.flatMap { $0.subnets.map(\.gateway) }
    let outcome = try await local.run(input, dryRun: false)
    if let xml = state.guestXML[name] {
        // A stop trusts a remembered XML without forwards to hold nothing: an older one must not
        // outlive a failed write.
        do { try context.store.rememberGuest(name, xml: xml) } catch { context.store.forgetGuest(name) }
    }
    writeAll(1, outcome.applied ? "applied to the running guest \(InputProblem.quoted(name))\n" : "rules already in place\n")
}
