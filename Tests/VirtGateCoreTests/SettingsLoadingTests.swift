import Configuration
import FoundationEssentials
import SystemPackage
import Testing
@testable import VirtGateCore

/// `Settings.load` reads the config file itself; swift-configuration, which it used before, is the
/// reference: the same files and environments must give the same settings or the same error.
@Suite("Config loading agrees with swift-configuration")
struct SettingsLoadingTests {
    /// Settings as swift-configuration reads them, validated by the same code.
    static func reference(environment: [String: String]) async throws -> Settings {
        let path = environment["VIRTGATE_CONFIG"] ?? Settings.defaultPath
        let file: ConfigReader
        do {
            file = ConfigReader(provider: try await EnvironmentVariablesProvider(
                environmentFilePath: FilePath(path), allowMissing: true))
        } catch {
            throw VirtGateError(.firewall, "config \(path): \(error)")
        }
        let env = ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: environment))
            .scoped(to: "virtgate")
        return try Settings.settings(environment: environment) { key in
            if let text = env.string(forKey: ConfigKey(key)) { return (text, "VIRTGATE_\(key.envName)") }
            if let text = file.string(forKey: ConfigKey(key)) { return (text, "\(path): \(key.envName)") }
            return nil
        }
    }

    /// Every field, so that two settings compare whole.
    static func fields(_ settings: Settings) -> [String] {
        [settings.onInvalid.rawValue, "\(settings.masqueradeRoutedNetworks)", "\(settings.dryRun)",
         "\(settings.iptablesVariant.map(\.rawValue) ?? "auto")", settings.backend.rawValue, settings.backendReason,
         "\(settings.connectionMark)", "\(settings.syslog)", settings.stateDirectory, settings.networkRunDirectory,
         settings.networkConfigDirectory, settings.dnsmasqDirectory]
    }

    static func outcome(_ load: () async throws -> Settings) async -> String {
        do {
            return try await fields(load()).joined(separator: "|")
        } catch {
            // Validation errors must read the same; a file that cannot be read is an error in both.
            let text = "\(error)"
            return text.contains(": expected") ? "error: \(text)" : "error reading the file"
        }
    }

    static func expectSame(environment: [String: String], sourceLocation: SourceLocation = #_sourceLocation) async {
        let ours = await outcome { try await Settings.load(environment: environment) }
        let library = await outcome { try await reference(environment: environment) }
        #expect(ours == library, "\(environment)", sourceLocation: sourceLocation)
    }

    /// A folder of config files for one test, removed with it.
    final class Folder {
        let path = Files.scratch("vgt-unit-settings")

        init() throws { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
        deinit { try? FileManager.default.removeItem(atPath: path) }

        func file(_ name: String, _ contents: String) throws -> String {
            let file = path + "/" + name
            try Data(contents.utf8).write(to: URL(filePath: file))
            return file
        }
    }

    @Test("Config files", arguments: [
        "",
        "# only comments\n\n   # indented comment\n",
        "ON_INVALID=refuse\nMASQUERADE_ROUTED=yes\nDRY_RUN=on\nIPTABLES=legacy\nBACKEND=iptables\nCONNECTION_MARK=0x100\nSYSLOG=no\n",
        "  ON_INVALID = refuse  \n\tDRY_RUN\t=\tyes\t\n",
        "ON_INVALID=warn\nON_INVALID=refuse\n",
        "ON_INVALID=\"refuse\"\n",
        "ON_INVALID='refuse'\n",
        "export ON_INVALID=refuse\n",
        "#ON_INVALID=refuse\n",
        "ON_INVALID=refuse # trailing comment\n",
        "ON_INVALID\n=refuse\n",
        "=refuse\nON_INVALID==refuse\n",
        "on_invalid=refuse\nOnInvalid=refuse\nONINVALID=refuse\n",
        "ON_INVALID=\n",
        "ON_INVALID=refuse\r\nSYSLOG=no\r\n",
        "ON_INVALID=refuse\rSYSLOG=no\n",
        "\u{FEFF}ON_INVALID=refuse\n",
        "ON_INVALID=\u{00A0}refuse\u{2003}\n",
        "DRY_RUN=YES\nSYSLOG=Off\nMASQUERADE_ROUTED=1\n",
        "DRY_RUN=maybe\n",
        "IPTABLES=auto\nBACKEND=auto\n",
        "BACKEND=nft\nCONNECTION_MARK=0x3\n",
        "CONNECTION_MARK=00200000\n",
        "VIRTGATE_ON_INVALID=refuse\n",
        "ON_INVALID=refuse\u{0}\n",
        "ON_INVALID=r\u{E9}fuse\n",
        "# caf\u{E9} \u{2014} comment\nON_INVALID=refuse\n# \u{1F600}\nSYSLOG=no\n",
        "ON_INVALID=\u{301}refuse\nSYSLOG=\u{301}\nDRY_RUN\u{301}=yes\n",
        "ON_INVALID=refuse\n\u{301}SYSLOG=no\n",
        "\u{0B}ON_INVALID=refuse\u{0C}\n\u{1C}SYSLOG=no\u{1F}\n\u{85}DRY_RUN=yes\n",
        "ON_INVALID=refuse\n\n\n=\n==\n#\n",
        String(repeating: "# a long commented default config line with words and KEY=value examples\n", count: 60) + "DRY_RUN=yes\n",
    ])
    func configFiles(contents: String) async throws {
        let folder = try Folder()
        let path = try folder.file("case.conf", contents)
        await Self.expectSame(environment: ["VIRTGATE_CONFIG": path])
        await Self.expectSame(environment: ["VIRTGATE_CONFIG": path, "VIRTGATE_ON_INVALID": "warn", "VIRTGATE_SYSLOG": "yes"])
    }

    @Test("Environment overrides", arguments: [
        ["VIRTGATE_ON_INVALID": "refuse"],
        ["VIRTGATE_ON_INVALID": ""],
        ["VIRTGATE_ON_INVALID": " refuse"],
        ["VIRTGATE_DRY_RUN": "1", "VIRTGATE_MASQUERADE_ROUTED": "true", "VIRTGATE_CONNECTION_MARK": "0x400"],
        ["VIRTGATE_ONINVALID": "refuse", "ON_INVALID": "refuse", "virtgate_on_invalid": "refuse"],
        ["VIRTGATE_BACKEND": "iptables", "VIRTGATE_IPTABLES": "nft"],
        ["VIRTGATE_STATE_DIR": "/tmp/x", "VIRTGATE_NETWORK_RUN_DIR": "/tmp/y", "VIRTGATE_DNSMASQ_DIR": "/tmp/z"],
    ])
    func environmentOverrides(environment: [String: String]) async throws {
        let folder = try Folder()
        let path = try folder.file("base.conf", "ON_INVALID=warn\nDRY_RUN=no\nBACKEND=nft\n")
        await Self.expectSame(environment: environment.merging(["VIRTGATE_CONFIG": path]) { a, _ in a })
    }

    @Test("Missing and unreadable files")
    func missingAndUnreadable() async throws {
        let folder = try Folder()
        let regular = try folder.file("regular.conf", "SYSLOG=no\n")
        for path in [folder.path + "/absent.conf", folder.path, regular + "/below-a-file", "relative-absent.conf"] {
            await Self.expectSame(environment: ["VIRTGATE_CONFIG": path])
        }
    }

    @Test("Key names", arguments: ["onInvalid", "masqueradeRouted", "dryRun", "iptables", "backend", "connectionMark", "hostPorts",
                                   "syslog", "ipV6Mode", "a", "aB", "fooBAR", "x9y", "with-dash", "camelCaseKey",
                                   "caf\u{E9}Mode", "\u{E9}T\u{E9}", "stra\u{DF}e", "under_score", "a1B2c3D"])
    func keyNames(key: String) async throws {
        let name = EnvironmentFile.variableName(forKey: key)
        let reader = ConfigReader(provider: EnvironmentVariablesProvider(environmentVariables: [name: "found"]))
        #expect(reader.string(forKey: ConfigKey(key)) == "found", "\(key) → \(name)")
    }

    @Test("Random files: the same variables as the library's parser")
    func randomFiles() async throws {
        var random = SplitMix64(seed: 0x636F_6E66_6967)
        let pieces = ["ON_INVALID", "KEY", "k", "=", "=", "#", " ", "\t", "\n", "\n", "\r", "\r\n", "\u{0B}", "value", "x y",
                      "\"q\"", "'", "\u{E9}", "\u{301}", "\u{A0}", "\u{2003}", "\u{85}", "\u{1F600}", "\u{0}", "export "]
        let folder = try Folder()
        for round in 0..<300 {
            let contents = (0..<(5 + Int(random.next() % 40))).map { _ in pieces[Int(random.next() % UInt64(pieces.count))] }.joined()
            let path = try folder.file("random.conf", contents)
            let ours = EnvironmentFile.parse(contents)
            let library = try await EnvironmentVariablesProvider(environmentFilePath: FilePath(path), allowMissing: false)
            for name in Set(ours.keys).union(pieces) {
                let theirs = try library.environmentValue(forName: name)
                #expect(ours[name] == theirs, "round \(round), \(name.debugDescription) in \(contents.debugDescription)")
            }
        }
    }
}
