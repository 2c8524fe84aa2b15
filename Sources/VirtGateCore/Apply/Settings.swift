#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#endif

/// virtgate's configuration: `/etc/virtgate/virtgate.conf` (an environment file: `KEY=value`, `#`
/// comments), each key overridable by the environment variable `VIRTGATE_KEY`.
public struct Settings: Sendable {
    public enum InvalidPolicy: String, Sendable {
        /// The guest starts; the bad forward is skipped and logged.
        case warn
        /// `prepare`/`start` fail, so the guest does not start with a forward the admin did not mean.
        case refuse
    }

    public var onInvalid: InvalidPolicy = .warn
    public var masqueradeRoutedNetworks = false
    public var dryRun = false
    /// nil: the variant `/usr/sbin/iptables` points to.
    public var iptablesVariant: IptablesVariant?
    /// `load` chooses it when the config says `auto`; `backendReason` says why, for `status`.
    public var backend: BackendKind = .iptables
    public var backendReason = "default"
    /// The conntrack mark bit the nft backend sets on connections it DNATs, so one filter rule can
    /// admit exactly them. Must not be used by anything else on the host.
    public var connectionMark: UInt32 = 0x0020_0000
    public var syslog = true
    public var stateDirectory = "/run/virtgate"
    public var networkRunDirectory = "/run/libvirt/network"
    public var networkConfigDirectory = "/etc/libvirt/qemu/networks"
    public var dnsmasqDirectory = "/var/lib/libvirt/dnsmasq"
    /// Host ports guests may claim (`HOST_PORTS`); nil: every port no host socket holds.
    public var hostPorts: [PortRange]?

    public static let defaultPath = "/etc/virtgate/virtgate.conf"

    public init() {}


    /// Loads the file named by `VIRTGATE_CONFIG` (default `/etc/virtgate/virtgate.conf`; a missing
    /// file means defaults) and applies environment overrides. Unknown values are errors, not defaults.
    public static func load(environment: [String: String]) async throws -> Settings {
        let path = environment["VIRTGATE_CONFIG"] ?? defaultPath
        let file: [String: String]
        do {
            file = try EnvironmentFile.read(path) ?? [:]
        } catch {
            throw VirtGateError(.input, "config \(path): \(error)")
        }
        return try settings(environment: environment) { key in
            let name = EnvironmentFile.variableName(forKey: key)
            if let text = environment["VIRTGATE_" + name] { return (text, "VIRTGATE_\(key.envName)") }
            if let text = file[name] { return (text, "\(path): \(key.envName)") }
            return nil
        }
    }

    /// Validated settings from `value`, which gives a key's text and where it came from (for errors).
    static func settings(environment: [String: String], value: (String) -> (String, String)?) throws -> Settings {
        func flag(_ key: String) throws -> Bool? {
            guard let (text, origin) = value(key) else { return nil }
            switch text.lowercased() {
            case "yes", "true", "1", "on": return true
            case "no", "false", "0", "off": return false
            default: throw VirtGateError(.input, "config \(origin)=\(InputProblem.quoted(text)): expected yes or no")
            }
        }
        var settings = Settings()
        if let (text, origin) = value("onInvalid") {
            guard let policy = InvalidPolicy(rawValue: text) else {
                throw VirtGateError(.input, "config \(origin)=\(InputProblem.quoted(text)): expected warn or refuse")
            }
            settings.onInvalid = policy
        }
        if let (text, origin) = value("iptables"), text != "auto" {
            guard let variant = IptablesVariant(rawValue: text) else {
                throw VirtGateError(.input, "config \(origin)=\(InputProblem.quoted(text)): expected auto, nft or legacy")
            }
            settings.iptablesVariant = variant
        }
        if let (text, origin) = value("backend"), text != "auto" {
            guard let kind = BackendKind(rawValue: text) else {
                throw VirtGateError(.input, "config \(origin)=\(InputProblem.quoted(text)): expected auto, iptables or nft")
            }
            settings.backend = kind
            settings.backendReason = "set by \(origin.contains(":") ? origin : "\(origin) (environment)")"
        } else {
            let nft = NftCommands.defaultPath
            let installed = access(nft, X_OK) == 0
            settings.backend = installed ? .nft : .iptables
            settings.backendReason = installed ? "auto: \(nft) is installed" : "auto: \(nft) is not installed"
        }
        if let (text, origin) = value("connectionMark") {
            let digits = text.lowercased().hasPrefix("0x") ? text.dropFirst(2) : Substring(text)
            guard let mark = UInt32(digits, radix: 16), mark.nonzeroBitCount == 1 else {
                throw VirtGateError(.input, "config \(origin)=\(InputProblem.quoted(text)): expected one bit in hex, e.g. 0x00200000")
            }
            settings.connectionMark = mark
        }
        if let (text, origin) = value("hostPorts"), !text.isEmpty {
            var ranges: [PortRange] = []
            for part in text.split(separator: ",") {
                guard case .success(let range) = PortRange.parse(part.trimmingASCIISpaces) else {
                    throw VirtGateError(.input, "config \(origin)=\(InputProblem.quoted(text)): expected ports and ranges, e.g. 80,443,8000-8999")
                }
                ranges.append(range)
            }
            settings.hostPorts = ranges
        }
        settings.masqueradeRoutedNetworks = try flag("masqueradeRouted") ?? false
        settings.dryRun = try flag("dryRun") ?? false
        settings.syslog = try flag("syslog") ?? true
        // Directories are for tests and unusual layouts; only the environment sets them.
        settings.stateDirectory = environment["VIRTGATE_STATE_DIR"] ?? settings.stateDirectory
        settings.networkRunDirectory = environment["VIRTGATE_NETWORK_RUN_DIR"] ?? settings.networkRunDirectory
        settings.networkConfigDirectory = environment["VIRTGATE_NETWORK_ETC_DIR"] ?? settings.networkConfigDirectory
        settings.dnsmasqDirectory = environment["VIRTGATE_DNSMASQ_DIR"] ?? settings.dnsmasqDirectory
        return settings
    }
}

/// Where virtgate's NAT lives. Filtering always goes where the host's DROP is (see README).
public enum BackendKind: String, Sendable, CaseIterable {
    /// Everything in iptables chains: one `iptables-restore` per event.
    case iptables
    /// DNAT and hairpin masquerade through maps in virtgate's own `table inet virtgate`: the cost of
    /// a new connection does not grow with the number of forwards.
    case nft
}

extension String {
    /// camelCase key → the ENV_NAME swift-configuration looks up.
    var envName: String {
        var out = ""
        for character in self {
            if character.isUppercase { out += "_" }
            out += character.uppercased()
        }
        return out
    }
}

extension Substring {
    var trimmingASCIISpaces: Substring {
        drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed().map { $0 }.reduce(into: Substring()) { $0.append($1) }
    }
}
