#if canImport(Glibc)
import Glibc
#endif
import FuzzSupport
import Synchronization
import VirtGateCore

/// Stands in for iptables-save and `nft -p list`: an empty ruleset, no nft table. A dry run must
/// never get to a write, so any other command is a violation. No process is ever started.
final class EmptyKernelRunner: CommandRunner {
    let calls = Mutex(0)

    func run(_ executable: String, _ arguments: [String], input: String?) async throws -> CommandResult {
        calls.withLock { $0 += 1 }
        if executable.hasSuffix("-save") { return CommandResult(status: 0, output: "", error: "") }
        if executable.hasSuffix("/nft") && arguments.prefix(2) == ["-p", "list"] {
            return CommandResult(status: 0, output: "", error: "")
        }
        violated("a dry run ran \(executable) \(arguments.joined(separator: " "))")
    }
}

/// The handler runs on this thread only (`CurrentThreadExecutor`).
final class HandlerBox: @unchecked Sendable {
    let handler: HookHandler
    init(_ handler: HookHandler) { self.handler = handler }
}

final class Collector: Sendable {
    let text = Mutex("")
    func append(_ more: String) { text.withLock { $0 += more } }
    var value: String { text.withLock { $0 } }
}

/// What a migrate/restore filter handed back to libvirt.
final class ByteCollector: Sendable {
    let bytes = Mutex<[UInt8]>([])
    func append(_ more: [UInt8]) { bytes.withLock { $0 += more } }
    var value: [UInt8] { bytes.withLock { $0 } }
}

/// Where the hook would keep its state; it must stay absent (a dry run remembers nothing).
let stateRoot = "/nonexistent-virtgate-fuzz"

/// Input: one byte of flags (bit 0: network driver when argv[0] names none, bit 1: nft backend,
/// bit 2: ON_INVALID=refuse), then argv[0] and the four positional arguments, each ended by NUL,
/// then stdin. → `HookHandler.handle` in dry-run against an empty kernel.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHook(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size >= 1, size <= Limits.maximumInput, let data else { return -1 }
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let flags = bytes[0]
    var fields: [String] = []
    var rest = bytes[1...]
    while fields.count < 5, let end = rest.firstIndex(of: 0) {
        fields.append(String(decoding: rest[rest.startIndex..<end], as: UTF8.self))
        rest = rest[(end + 1)...]
    }
    let driver = fields.first.flatMap(HookDriver.fromInvocationPath) ?? (flags & 1 == 0 ? .qemu : .network)
    let arguments = Array(fields.dropFirst())
    guard let invocation = HookInvocation(driver: driver, arguments: arguments) else {
        require(arguments.count < 4, "four arguments refused")
        return 0
    }

    var settings = Settings()
    settings.onInvalid = flags & 4 == 0 ? .warn : .refuse
    settings.syslog = false
    settings.stateDirectory = "\(stateRoot)/state"
    settings.networkRunDirectory = "\(stateRoot)/run"
    settings.networkConfigDirectory = "\(stateRoot)/etc"
    settings.dnsmasqDirectory = "\(stateRoot)/dnsmasq"
    let nftBackend = flags & 2 != 0
    let backend: any Backend = nftBackend ? NftMapBackend(mark: Harness.mark) : IptablesChainBackend()

    let runner = EmptyKernelRunner()
    let log = Log(syslog: false, stderr: false)
    let firewall = Firewall(iptables: IptablesCommands(variant: .nft, runner: runner),
                            nft: NftCommands(runner: runner), mark: Harness.mark, log: log)
    let output = Collector()
    let handler = HookHandler(settings: settings, firewall: firewall, backend: backend, log: log, dryRun: true) {
        output.append($0)
    }
    let box = HandlerBox(handler)
    // The entry the hook binary uses: raw stdin bytes, migrate/restore handed back byte for byte.
    let input = Array(rest)
    let filtered = ByteCollector()
    let status = CurrentThreadExecutor.run {
        await box.handler.handle(invocation, input: input) { filtered.append($0) }
    }
    let text = output.value

    require(status == 0 || status == 1, "exit status \(status)")
    require(access(stateRoot, F_OK) != 0, "a dry run created \(stateRoot)")
    let operation = invocation.operation
    if driver == .qemu && (operation == "migrate" || operation == "restore") {
        require(filtered.value == input, "qemu \(operation) did not hand stdin back byte for byte (\(input.count) bytes in, \(filtered.value.count) out)")
        require(status == 0, "qemu \(operation) exit status \(status)")
        require(runner.calls.withLock { $0 } == 0, "qemu \(operation) read the firewall")
        return 0
    }
    if status == 1 {
        require(settings.onInvalid == .refuse && ["prepare", "start", "started", "updated"].contains(operation),
                "\(driver) \(operation) failed under ON_INVALID=\(settings.onInvalid): libvirt would stop or kill the guest")
    }
    require(text.utf8.count <= Limits.maximumRendered, "\(text.utf8.count) bytes of dry-run output")
    checkDryRun(text)
    return 0
}

/// Dry-run output: `# EVENT: no changes`, or a transaction's text, which must apply to the kernel
/// models (iptables v4, `# ip6tables-restore`, v6, `# nft -f`, the nft script).
func checkDryRun(_ text: String) {
    guard !text.isEmpty else { return }
    // The event is named by libvirt's arguments as given (only the object is quoted). Compared as
    // bytes: a name ending in a prepended mark (U+06DD) joins the ':' after it into one Character.
    if text.utf8.starts(with: "# ".utf8), text.utf8.reversed().starts(with: ": no changes\n".utf8.reversed()) { return }
    var rest = Substring(text)
    var iptables: [IPFamily: String] = [:]
    var nft = ""
    if let range = rest.firstRange(of: "# nft -f\n") {
        nft = String(rest[range.upperBound...])
        rest = rest[..<range.lowerBound]
    }
    if let range = rest.firstRange(of: "# ip6tables-restore\n") {
        iptables[.v6] = String(rest[range.upperBound...])
        rest = rest[..<range.lowerBound]
    }
    iptables[.v4] = String(rest)
    _ = Harness.apply(iptables: iptables, nft: nft)
}

