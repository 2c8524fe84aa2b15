import ArgumentParser
import VirtGateCore
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
#if canImport(Glibc)
import Glibc
#endif

extension VirtGate {
    struct Doctor: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check this host's firewall for libvirt guests and explain each problem with its fix.",
            discussion: "Exits 0 when healthy, 1 when something needs fixing. Changes nothing."
        )

        @Option(help: "Where forwards live: nft or iptables (default: config BACKEND, else auto).")
        var backend: BackendKind?

        @Flag(help: "Stable JSON instead of paragraphs.")
        var json = false

        func run() async throws {
            let local = try await LocalContext.load(backend: backend)
            let facts = await Self.gather(local)
            let findings = VirtGateCore.Doctor.diagnose(facts)
            if json {
                struct Report: Codable { var healthy: Bool; var findings: [Finding] }
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                writeAll(1, String(decoding: try encoder.encode(Report(healthy: findings.isEmpty, findings: findings)), as: UTF8.self) + "\n")
            } else if findings.isEmpty {
                writeAll(1, "healthy: nothing to fix\n")
            } else {
                writeAll(1, findings.map { "[\($0.id)] \($0.problem)\n  fix: \($0.fix)\n" }.joined(separator: "\n"))
            }
            if !findings.isEmpty { throw ExitCode(1) }
        }

        static func gather(_ local: LocalContext) async -> DoctorFacts {
            let environment = ProcessEnvironment.current()
            var facts = DoctorFacts()
            if let text = try? readFile("/proc/sys/net/ipv4/ip_forward") {
                facts.ipForwarding = text.hasPrefix("1")
            }
            facts.variant = local.firewall.iptables.variant
            let handler = local.handler(dryRun: true) { _ in }
            // What virtgate remembers, planned as `reapply` would, against the kernel.
            let input = handler.rememberedInput(exclusive: true)
            do {
                let preview = try await local.firewall.preview(input, backend: local.backend, dryRun: false)
                let sockets = input.hostSockets
                for claim in preview.state.claims(names: input.names) {
                    for socket in sockets where socket.isHidden(by: claim) {
                        facts.hiddenSockets.append("guest \(InputProblem.quoted(claim.guest)) \(claim.summary) hides \(socket.summary)")
                    }
                }
                facts.snapshot = preview.state.iptables
                facts.desired = preview.desired.chains
                if local.backend.kind == .nft {
                    facts.nftState = preview.state.nft
                    facts.desiredElements = preview.desired.elements
                }
            } catch {
                facts.snapshotError = "\(error)"
            }
            // Active networks: libvirt's own run directory, plus what the network hook reported.
            var networks = input.networks
            let runDirectory = local.settings.networkRunDirectory
            for file in (try? FileManager.default.contentsOfDirectory(atPath: runDirectory)) ?? [] where file.hasSuffix(".xml") {
                if let text = try? readFile("\(runDirectory)/\(file)"), let network = try? LibvirtXML.network(fromXML: text),
                   !networks.contains(where: { $0.name == network.name }) {
                    networks.append(network)
                }
            }
            facts.networks = networks
            if let snapshot = facts.snapshot {
                facts.ufwActive = snapshot.tables[.filter]?.chains.contains { $0.hasPrefix("ufw-") } ?? false
            }
            if let chains = try? await ProcessRunner().run("/usr/sbin/nft", ["-j", "list", "chains"], input: nil), chains.status == 0 {
                facts.foreignForwardDrops = (try? NftForeignChains.forwardDrops(json: chains.output)) ?? []
            }
            let nft = try? await ProcessRunner().run("/usr/sbin/nft", ["list", "tables"], input: nil)
            let tables = nft?.status == 0 ? nft!.output : ""
            facts.libvirtNftTable = tables.contains("table ip libvirt_network")
            facts.nftTablesPresent = tables.contains("table ip filter") || tables.contains("table ip nat")
            // Reading this file never creates a legacy table (listing one with iptables-legacy would).
            facts.legacyTablesPresent = !((try? readFile("/proc/net/ip_tables_names")) ?? "").trimmed.isEmpty
            let hooksDirectory = environment["VIRTGATE_HOOKS_DIR"] ?? "/etc/libvirt/hooks"
            facts.hooks = ["qemu", "network"].map { hookFact(driver: $0, directory: hooksDirectory) }
            facts.daemons = runningDaemons()
            let ufwDirectory = environment["VIRTGATE_UFW_DIR"] ?? "/etc/ufw"
            facts.ufwInstalled = FileManager.default.fileExists(atPath: "/usr/sbin/ufw") && FileManager.default.fileExists(atPath: ufwDirectory)
            facts.afterInitIntegrated = ((try? readFile("\(ufwDirectory)/after.init")) ?? "").contains("BEGIN virtgate")
            return facts
        }

        /// The hook is virtgate when the link at `<dir>/<driver>` or `<dir>/<driver>.d/virtgate` resolves to a file named virtgate.
        static func hookFact(driver: String, directory: String) -> DoctorFacts.Hook {
            for path in ["\(directory)/\(driver)", "\(directory)/\(driver).d/virtgate"] {
                guard let resolved = realpath(path, nil) else { continue }
                let target = String(cString: resolved)
                free(resolved)
                guard target.hasSuffix("/virtgate") else { continue }
                var info = stat()
                let installedAt: Int64? = lstat(path, &info) == 0 ? Int64(info.st_ctim.tv_sec) : nil
                return DoctorFacts.Hook(driver: driver, path: path, executable: access(path, X_OK) == 0, installedAt: installedAt)
            }
            return DoctorFacts.Hook(driver: driver, path: nil, executable: false, installedAt: nil)
        }

        /// libvirt daemons visible in this pid namespace, with their start time.
        static func runningDaemons() -> [DoctorFacts.Daemon] {
            guard let stat = try? readFile("/proc/stat"),
                  let bootLine = stat.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }),
                  let boot = Int64(bootLine.dropFirst(6)) else { return [] }
            let ticks = Int64(sysconf(Int32(_SC_CLK_TCK)))
            var daemons: [DoctorFacts.Daemon] = []
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where entry.allSatisfy(\.isNumber) {
                guard let comm = try? readFile("/proc/\(entry)/comm"),
                      ["libvirtd", "virtqemud", "virtnetworkd"].contains(comm.trimmed),
                      let processStat = try? readFile("/proc/\(entry)/stat"),
                      let close = processStat.lastIndex(of: ")") else { continue }
                // Field 22 (starttime) counted after the command name, which may contain spaces.
                let fields = processStat[processStat.index(after: close)...].split(separator: " ")
                guard fields.count > 19, let start = Int64(fields[19]) else { continue }
                daemons.append(DoctorFacts.Daemon(name: comm.trimmed, startedAt: boot + start / ticks))
            }
            return daemons
        }
    }
}

extension String {
    var trimmed: String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
