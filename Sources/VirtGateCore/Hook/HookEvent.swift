/// libvirt's hook arguments: `<object> <operation> <sub-operation> <extra>`, parsed into enums with
/// an `other` case, so an operation added by a later libvirt is a logged no-op rather than an error.
public enum HookDriver: String, Sendable {
    case qemu, network

    /// How the binary was invoked: as `…/hooks/qemu`, `…/hooks/network`, or from `qemu.d/`/`network.d/`.
    public static func fromInvocationPath(_ path: String) -> HookDriver? {
        let parts = path.split(separator: "/")
        guard let name = parts.last else { return nil }
        if let driver = HookDriver(rawValue: String(name)) { return driver }
        if parts.count >= 2, parts[parts.count - 2].hasSuffix(".d") {
            return HookDriver(rawValue: String(parts[parts.count - 2].dropLast(2)))
        }
        return nil
    }
}

public enum QemuOperation: Sendable, Equatable {
    case prepare, start, started, stopped, release, migrate, restore, reconnect, attach
    case other(String)

    public init(_ text: String) {
        self = switch text {
        case "prepare": .prepare
        case "start": .start
        case "started": .started
        case "stopped": .stopped
        case "release": .release
        case "migrate": .migrate
        case "restore": .restore
        case "reconnect": .reconnect
        case "attach": .attach
        default: .other(text)
        }
    }
}

public enum NetworkOperation: Sendable, Equatable {
    case start, started, stopped, portCreated, portDeleted, updated
    case other(String)

    public init(_ text: String) {
        self = switch text {
        case "start": .start
        case "started": .started
        case "stopped": .stopped
        case "port-created": .portCreated
        case "port-deleted": .portDeleted
        case "updated": .updated
        default: .other(text)
        }
    }
}

public struct HookInvocation: Sendable {
    public var driver: HookDriver
    public var object: String
    public var operation: String
    public var subOperation: String
    public var extra: String

    /// The four positional arguments libvirt passes; fewer is a usage error.
    public init?(driver: HookDriver, arguments: [String]) {
        guard arguments.count >= 4 else { return nil }
        self.driver = driver
        object = arguments[0]
        operation = arguments[1]
        subOperation = arguments[2]
        extra = arguments[3]
    }

    public var summary: String {
        "\(driver.rawValue) \(InputProblem.quoted(object)) \(operation) \(subOperation) \(extra)"
    }
}

extension HookInvocation {
    /// qemu `migrate` and `restore`: libvirt reads the hook's standard output as the domain XML.
    public var isXMLFilter: Bool {
        driver == .qemu && [.migrate, .restore].contains(QemuOperation(operation))
    }
}

/// `virtgate hook [--dry-run] qemu|network OBJECT OPERATION SUB-OPERATION EXTRA`, read by position.
/// libvirt's arguments are data: a guest named `--help` or `-h` is a guest, not a request for help,
/// so they never go through the option parser.
public struct HookCommandLine: Equatable, Sendable {
    public var driver: HookDriver
    public var arguments: [String]
    public var dryRun: Bool

    /// The arguments after `hook`; nil when they are not a hook event (no known driver after the
    /// options, e.g. `virtgate hook --help`), which is left to the command-line parser.
    public init?(afterHook arguments: [String]) {
        var rest = arguments[...]
        var dryRun = false
        while let first = rest.first, first == "--dry-run" {
            dryRun = true
            rest = rest.dropFirst()
        }
        guard let name = rest.first, let driver = HookDriver(rawValue: name), rest.count > 1 else { return nil }
        self.driver = driver
        self.arguments = Array(rest.dropFirst())
        self.dryRun = dryRun
    }
}

extension HookHandler {
    /// A hook run from its raw standard input (at most `InputLimits.maximumBytes + 1` bytes read).
    /// `migrate`/`restore` hand stdin back byte for byte through `filterOutput`, never decoded,
    /// so bytes that are not UTF-8 reach libvirt as they came. An input over the cap is not
    /// handed back at all: libvirt keeps the XML it has when a filter prints nothing, which is
    /// better than a cut-off document. Every other event decodes the text, and the parser refuses
    /// an input over the cap by its size.
    public func handle(_ invocation: HookInvocation, input: [UInt8], filterOutput: ([UInt8]) -> Void) async -> Int32 {
        if invocation.isXMLFilter {
            if input.count <= InputLimits.maximumBytes {
                filterOutput(input)
            } else {
                log.error(InputProblem(.guest(invocation.object), field: "xml", value: "\(input.count)+ bytes",
                                       reason: "larger than \(InputLimits.label); nothing handed back, libvirt keeps its XML").description)
            }
            return 0
        }
        return await handle(invocation, stdin: String(decoding: input, as: UTF8.self))
    }
}
