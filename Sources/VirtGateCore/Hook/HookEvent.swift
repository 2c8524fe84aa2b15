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
