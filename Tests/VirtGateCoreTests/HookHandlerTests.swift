import FoundationEssentials
import Synchronization
import Testing
@testable import VirtGateCore

/// A stand-in for iptables-save/-restore: serves a fixed ruleset and records what was written.
/// Only for the dispatch logic; real iptables is exercised by the root and namespace tests.
final class RecordingRunner: CommandRunner {
    struct State {
        var calls: [(String, [String], String?)] = []
        var ruleset = ""
    }

    let state = Mutex(State())
    let failing: Bool

    init(failing: Bool = false) { self.failing = failing }

    func run(_ executable: String, _ arguments: [String], input: String?) async throws -> CommandResult {
        state.withLock { $0.calls.append((executable, arguments, input)) }
        if failing { return CommandResult(status: 4, output: "", error: "iptables: Permission denied (you must be root)") }
        // The fixed ruleset is IPv4's; ip6tables starts empty.
        return CommandResult(status: 0, output: executable.contains("/ip6tables") ? "" : state.withLock { $0.ruleset }, error: "")
    }

    /// iptables-restore inputs; `restores6` has ip6tables-restore's.
    var restores: [String] { restores(tool: "/iptables-") }
    var restores6: [String] { restores(tool: "/ip6tables-") }

    func restores(tool: String) -> [String] {
        state.withLock { $0.calls.filter { $0.0.hasSuffix("restore") && $0.0.contains(tool) }.compactMap(\.2) }
    }
    var callCount: Int { state.withLock { $0.calls.count } }
}

final class OutputCollector: Sendable {
    let text = Mutex("")
    func append(_ more: String) { text.withLock { $0 += more } }
    var value: String { text.withLock { $0 } }
}

@Suite("Hook events → actions and exit statuses")
struct HookHandlerTests {
    let stateDirectory = Files.scratch("vgt-unit")

    func handler(_ runner: RecordingRunner, policy: Settings.InvalidPolicy = .warn, dryRun: Bool = false,
                 output: OutputCollector = OutputCollector()) -> HookHandler {
        var settings = Settings()
        settings.onInvalid = policy
        settings.stateDirectory = stateDirectory
        settings.networkRunDirectory = "/nonexistent"
        settings.networkConfigDirectory = "/nonexistent"
        settings.dnsmasqDirectory = "/nonexistent"
        let log = Log(syslog: false, stderr: false)
        return HookHandler(settings: settings, firewall: Firewall(iptables: IptablesCommands(variant: .nft, runner: runner), nft: nil, log: log), backend: IptablesChainBackend(),
                           log: log, dryRun: dryRun) { output.append($0) }
    }

    func qemu(_ operation: String, _ name: String = "web", sub: String = "begin") -> HookInvocation {
        HookInvocation(driver: .qemu, arguments: [name, operation, sub, "-"])!
    }

    func cleanUp() { try? FileManager.default.removeItem(atPath: stateDirectory) }

    @Test("migrate and restore hand the XML back unchanged", arguments: ["migrate", "restore"])
    func filters(operation: String) async throws {
        let runner = RecordingRunner(failing: true)
        let output = OutputCollector()
        let xml = try Files.fixture("domain-web-start.xml")
        #expect(await handler(runner, output: output).handle(qemu(operation), stdin: xml) == 0)
        #expect(output.value == xml)
        #expect(runner.callCount == 0)
    }

    @Test("reconnect never fails: a failure would kill the running guest")
    func reconnectAlwaysSucceeds() async throws {
        defer { cleanUp() }
        let runner = RecordingRunner(failing: true)
        let xml = try Files.fixture("domain-web-start.xml")
        #expect(await handler(runner, policy: .refuse).handle(qemu("reconnect"), stdin: xml) == 0)
        #expect(await handler(runner, policy: .refuse).handle(qemu("reconnect"), stdin: "garbage") == 0)
        #expect(runner.callCount > 0)
    }

    @Test("Bad metadata: warn starts the guest, refuse stops it, and nothing is written either way",
          arguments: [(Settings.InvalidPolicy.warn, Int32(0)), (.refuse, 1)])
    func invalidMetadata(policy: Settings.InvalidPolicy, status: Int32) async throws {
        defer { cleanUp() }
        let xml = try Files.fixture("domain-bad.xml")
        let prepare = RecordingRunner()
        #expect(await handler(prepare, policy: policy).handle(qemu("prepare", "bad"), stdin: xml) == status)
        #expect(prepare.callCount == 0)
        let start = RecordingRunner()
        #expect(await handler(start, policy: policy).handle(qemu("start", "bad"), stdin: xml) == status)
        if policy == .refuse {
            #expect(start.callCount == 0)
        }
    }

    @Test("A firewall failure at start follows the policy", arguments: [(Settings.InvalidPolicy.warn, Int32(0)), (.refuse, 1)])
    func failingFirewall(policy: Settings.InvalidPolicy, status: Int32) async throws {
        defer { cleanUp() }
        let xml = try Files.fixture("domain-web-start.xml")
        #expect(await handler(RecordingRunner(failing: true), policy: policy).handle(qemu("start"), stdin: xml) == status)
    }

    @Test func startWritesOneTransactionAndRemembersTheGuest() async throws {
        defer { cleanUp() }
        let runner = RecordingRunner()
        let network = try Files.fixture("network-default.xml")
        #expect(await handler(runner).handle(HookInvocation(driver: .network, arguments: ["default", "started", "begin", "-"])!, stdin: network) == 0)
        #expect(runner.restores.count == 1)
        #expect(await handler(runner).handle(qemu("start"), stdin: try Files.fixture("domain-web-start.xml")) == 0)
        #expect(runner.restores.count == 2)
        // The reservation came from the network XML remembered by the network hook.
        #expect(runner.restores[1].contains("--to-destination 192.168.122.10:22"))
        #expect(FileManager.default.fileExists(atPath: "\(stateDirectory)/guests/web.xml"))
        #expect(FileManager.default.fileExists(atPath: "\(stateDirectory)/networks/default.xml"))
    }

    @Test("network updated re-binds running guests to a changed reservation")
    func updatedRebindsGuests() async throws {
        defer { cleanUp() }
        let runner = RecordingRunner()
        let network = try Files.fixture("network-default.xml")
        let started = HookInvocation(driver: .network, arguments: ["default", "started", "begin", "-"])!
        #expect(await handler(runner).handle(started, stdin: network) == 0)
        #expect(await handler(runner).handle(qemu("start"), stdin: try Files.fixture("domain-web-start.xml")) == 0)
        #expect(runner.restores.last?.contains("192.168.122.10:22") == true)

        let moved = network.replacing("ip='192.168.122.10'", with: "ip='192.168.122.33'")
        let updated = HookInvocation(driver: .network, arguments: ["default", "updated", "begin", "-"])!
        #expect(await handler(runner).handle(updated, stdin: moved) == 0)
        let last = try #require(runner.restores.last)
        #expect(last.contains("--to-destination 192.168.122.33:22"))
        #expect(!last.contains("192.168.122.10:22"))
    }

    @Test func stopRemovesByNameWhateverTheMetadataSays() async throws {
        defer { cleanUp() }
        let runner = RecordingRunner()
        runner.state.withLock {
            $0.ruleset = """
            *nat
            :PREROUTING ACCEPT [0:0]
            :VGD-web - [0:0]
            :VIRTGATE-DNAT - [0:0]
            -A PREROUTING -m addrtype --dst-type LOCAL -j VIRTGATE-DNAT
            -A VGD-web -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.10:22
            -A VIRTGATE-DNAT -j VGD-web
            COMMIT
            """
        }
        #expect(await handler(runner).handle(qemu("stopped", sub: "end"), stdin: try Files.fixture("domain-web-stopped.xml")) == 0)
        #expect(runner.restores.count == 1)
        #expect(runner.restores[0].contains("-X VGD-web\n"))
        #expect(runner.restores[0].contains("-X VIRTGATE-DNAT\n"))
    }

    @Test("A guest with no forwards now and none remembered: the kernel is neither read nor written")
    func guestWithoutForwardsTouchesNoKernel() async throws {
        defer { cleanUp() }
        let runner = RecordingRunner()
        let plain = "<domain><name>web</name><devices><interface type='network'><mac address='52:54:00:aa:00:01'/><source network='default' bridge='virbr0'/><target dev='vnet0'/></interface></devices></domain>"
        for operation in ["start", "started", "attach"] {
            #expect(await handler(runner).handle(qemu(operation), stdin: plain) == 0)
        }
        #expect(runner.callCount == 0)
        // Remembered once: the same XML again is not rewritten (a rewrite renames a new file in place).
        let file = "\(stateDirectory)/guests/web.xml"
        func inode() -> UInt64? { (try? FileManager.default.attributesOfItem(atPath: file))?[.systemFileNumber] as? UInt64 }
        let first = inode()
        #expect(first != nil)
        #expect(await handler(runner).handle(qemu("started"), stdin: plain) == 0)
        #expect(inode() == first)
        #expect(await handler(runner).handle(qemu("started"), stdin: plain.replacing("vnet0", with: "vnet1")) == 0)
        #expect(inode() != first && runner.callCount == 0)
        let output = OutputCollector()
        #expect(await handler(runner, dryRun: true, output: output).handle(qemu("start"), stdin: plain) == 0)
        #expect(output.value == "# qemu \"web\": no changes\n" && runner.callCount == 0)
        // libvirtd restarted: a reconnect reads and re-asserts as ever.
        #expect(await handler(runner).handle(qemu("reconnect"), stdin: plain) == 0)
        #expect(runner.callCount > 0)
        // Remembered with forwards, started again without them: the kernel is read for what it held.
        var calls = runner.callCount
        #expect(await handler(runner).handle(qemu("start"), stdin: try Files.fixture("domain-web-start.xml")) == 0)
        #expect(runner.callCount > calls)
        calls = runner.callCount
        #expect(await handler(runner).handle(qemu("started"), stdin: plain) == 0)
        #expect(runner.callCount > calls)
        // Invalid metadata is still reported through the engine, not skipped.
        let bad = plain.replacing("<devices>", with: "<metadata><vg:forwards xmlns:vg='urn:virtgate:forwards:1'><vg:forward host-port='0'/></vg:forwards></metadata><devices>")
        let before = runner.callCount
        _ = await handler(runner).handle(qemu("start"), stdin: bad)
        #expect(runner.callCount > before)
    }

    @Test("A guest remembered without forwards: its stop and release neither read nor write the kernel, and release forgets it")
    func stopOfGuestWithoutForwardsTouchesNoKernel() async throws {
        defer { cleanUp() }
        let runner = RecordingRunner()
        let plain = "<domain><name>web</name><devices><interface type='network'><mac address='52:54:00:aa:00:01'/><source network='default' bridge='virbr0'/><target dev='vnet0'/></interface></devices></domain>"
        let file = "\(stateDirectory)/guests/web.xml"
        #expect(await handler(runner).handle(qemu("start"), stdin: plain) == 0)
        #expect(await handler(runner).handle(qemu("stopped", sub: "end"), stdin: plain) == 0)
        #expect(runner.callCount == 0)
        #expect(FileManager.default.fileExists(atPath: file), "remembered until release")
        #expect(await handler(runner).handle(qemu("release", sub: "end"), stdin: plain) == 0)
        #expect(runner.callCount == 0)
        #expect(!FileManager.default.fileExists(atPath: file))
        // Not remembered at all (a release already forgot it, or the state was lost): removed by name.
        #expect(await handler(runner).handle(qemu("stopped", sub: "end"), stdin: plain) == 0)
        #expect(runner.callCount > 0)
        // Remembered with forwards and stopped without them (the metadata changed while it ran): removed.
        #expect(await handler(runner).handle(qemu("start"), stdin: try Files.fixture("domain-web-start.xml")) == 0)
        let calls = runner.callCount
        #expect(await handler(runner).handle(qemu("stopped", sub: "end"), stdin: plain) == 0)
        #expect(runner.callCount > calls)
        #expect(!FileManager.default.fileExists(atPath: file))
    }

    @Test func dryRunPrintsAndWritesNothing() async throws {
        let runner = RecordingRunner()
        let output = OutputCollector()
        let status = await handler(runner, dryRun: true, output: output)
            .handle(qemu("start"), stdin: try Files.fixture("domain-web-start.xml"))
        #expect(status == 0)
        #expect(runner.restores.isEmpty)
        #expect(output.value.contains("*nat\n") && output.value.contains("COMMIT\n"))
        #expect(!FileManager.default.fileExists(atPath: stateDirectory))
    }

    @Test("Operations that change nothing", arguments: [
        (HookDriver.network, "start"), (.network, "port-created"), (.network, "port-deleted"), (.network, "some-future-op"),
        (.qemu, "some-future-op"),
    ])
    func noOps(driver: HookDriver, operation: String) async {
        let runner = RecordingRunner()
        let invocation = HookInvocation(driver: driver, arguments: ["default", operation, "begin", "-"])!
        #expect(await handler(runner).handle(invocation, stdin: "<hookData/>") == 0)
        #expect(runner.callCount == 0)
    }

    @Test func invocationPaths() {
        #expect(HookDriver.fromInvocationPath("/etc/libvirt/hooks/qemu") == .qemu)
        #expect(HookDriver.fromInvocationPath("/etc/libvirt/hooks/network") == .network)
        #expect(HookDriver.fromInvocationPath("/etc/libvirt/hooks/qemu.d/virtgate") == .qemu)
        #expect(HookDriver.fromInvocationPath("/etc/libvirt/hooks/network.d/50-virtgate") == .network)
        #expect(HookDriver.fromInvocationPath("/usr/local/sbin/virtgate") == nil)
        #expect(HookDriver.fromInvocationPath("virtgate") == nil)
        #expect(HookInvocation(driver: .qemu, arguments: ["web", "start"]) == nil)
    }
}

@Suite("Conflicts at hook time")
struct HookConflictTests {
    @Test("A guest whose forward another running guest holds gets it refused, naming both")
    func conflictAtStart() async throws {
        let directory = Files.scratch("vgt-unit-conflict")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let runner = RecordingRunner()
        runner.state.withLock {
            $0.ruleset = """
            *nat
            :PREROUTING ACCEPT [0:0]
            :VGD-web - [0:0]
            :VIRTGATE-DNAT - [0:0]
            -A PREROUTING -m addrtype --dst-type LOCAL -j VIRTGATE-DNAT
            -A VGD-web -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.10:22
            -A VIRTGATE-DNAT -j VGD-web
            COMMIT
            """
        }
        var settings = Settings()
        settings.stateDirectory = directory
        settings.networkRunDirectory = "/nonexistent"
        settings.networkConfigDirectory = "/nonexistent"
        settings.dnsmasqDirectory = "/nonexistent"
        let log = Log(syslog: false, stderr: false)
        let xml = """
        <domain><name>db</name><metadata><forwards xmlns="urn:virtgate:forwards:1">
        <forward host-port="2222" guest-port="22" guest-address="192.168.122.11"/>
        <forward host-port="5432" guest-address="192.168.122.11"/>
        </forwards></metadata><devices><interface type='network'><mac address='52:54:00:00:00:02'/>
        <source network='default' bridge='virbr0'/></interface></devices></domain>
        """
        for policy in [Settings.InvalidPolicy.warn, .refuse] {
            settings.onInvalid = policy
            let handler = HookHandler(settings: settings, firewall: Firewall(iptables: IptablesCommands(variant: .nft, runner: runner), nft: nil, log: log), backend: IptablesChainBackend(),
                                      log: log, dryRun: false) { _ in }
            let before = runner.restores.count
            let status = await handler.handle(HookInvocation(driver: .qemu, arguments: ["db", "start", "begin", "-"])!, stdin: xml)
            if policy == .warn {
                #expect(status == 0)
                let written = try #require(runner.restores.last)
                #expect(written.contains("--dport 5432"))
                #expect(!written.contains("-A VGD-db -p tcp -m tcp --dport 2222"))
            } else {
                #expect(status == 1)
                #expect(runner.restores.count == before)
            }
        }
    }
}

@Suite("Late binding from lease files")
struct RebindTests {
    @Test("A pending forward binds once a lease appears, and follows it when it moves")
    func rebind() async throws {
        let directory = Files.scratch("vgt-unit-rebind")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory + "/dnsmasq", withIntermediateDirectories: true)
        var settings = Settings()
        settings.stateDirectory = directory + "/state"
        settings.networkRunDirectory = "/nonexistent"
        settings.networkConfigDirectory = "/nonexistent"
        settings.dnsmasqDirectory = directory + "/dnsmasq"
        let log = Log(syslog: false, stderr: false)
        let runner = RecordingRunner()
        let handler = HookHandler(settings: settings, firewall: Firewall(iptables: IptablesCommands(variant: .nft, runner: runner), nft: nil, log: log), backend: IptablesChainBackend(),
                                  log: log, dryRun: false) { _ in }
        let network = """
        <hookData><network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>
        <ip address='192.168.122.1' prefix='24'/></network></hookData>
        """
        #expect(await handler.handle(HookInvocation(driver: .network, arguments: ["default", "started", "begin", "-"])!, stdin: network) == 0)
        let domain = """
        <domain><name>web</name><metadata><forwards xmlns="urn:virtgate:forwards:1"><forward host-port="2222" guest-port="22"/>
        </forwards></metadata><devices><interface type='network'><mac address='52:54:00:00:00:07'/>
        <source network='default' bridge='virbr0'/></interface></devices></domain>
        """
        #expect(await handler.handle(HookInvocation(driver: .qemu, arguments: ["web", "start", "begin", "-"])!, stdin: domain) == 0)
        #expect(!(runner.restores.last ?? "").contains("DNAT"), "no address yet: pending")

        func lease(_ ip: String) throws {
            let json = #"[{"ip-address":"\#(ip)","mac-address":"52:54:00:00:00:07","hostname":"web","expiry-time":1900000000}]"#
            try Data(json.utf8).write(to: URL(filePath: directory + "/dnsmasq/virbr0.status"))
        }
        try lease("192.168.122.77")
        #expect(await handler.reapplyAll())
        #expect(runner.restores.last?.contains("--to-destination 192.168.122.77:22") == true)

        // The fake kernel now holds that rule; the lease moves.
        runner.state.withLock { $0.ruleset = "*nat\n:VGD-web - [0:0]\n-A VGD-web -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.77:22\nCOMMIT\n" }
        try lease("192.168.122.78")
        #expect(await handler.reapplyAll())
        let last = try #require(runner.restores.last)
        #expect(last.contains("--to-destination 192.168.122.78:22") && !last.contains("192.168.122.77"))
    }
}
