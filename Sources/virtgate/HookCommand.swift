import ArgumentParser
import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

extension VirtGate {
    struct Hook: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Handle a libvirt hook event, exactly as libvirt runs hooks (XML on standard input).",
            discussion: """
            Example: virtgate hook qemu web start begin - < web.xml
            The arguments after the driver are taken by position, as libvirt passes them: a guest may be named --help.
            The same happens when the binary is invoked as /etc/libvirt/hooks/qemu or …/network.
            """
        )

        @Flag(help: "Print the iptables-restore input instead of applying it.")
        var dryRun = false

        @Argument(help: "qemu or network.")
        var driver: String

        @Argument(parsing: .allUnrecognized, help: "libvirt's four arguments: object, operation, sub-operation, extra.")
        var arguments: [String] = []

        func run() async throws {
            guard let driver = HookDriver(rawValue: driver) else {
                throw ValidationError("unknown hook driver \(InputProblem.quoted(driver)): expected qemu or network")
            }
            throw ExitCode(await HookEntry.run(driver: driver, arguments: arguments, dryRun: dryRun))
        }
    }
}

enum HookEntry {
    static func run(driver: HookDriver, arguments: [String], dryRun flag: Bool) async -> Int32 {
        let environment = ProcessEnvironment.virtgate()
        let settings: Settings
        do {
            settings = try await Settings.load(environment: environment)
        } catch {
            Log(syslog: true).error("\(error)")
            // A broken config must not kill a running guest on reconnect, nor block stop events.
            return arguments.count > 1 && ["start", "prepare", "started"].contains(arguments[1]) ? 1 : 0
        }
        let log = Log(syslog: settings.syslog)
        guard let invocation = HookInvocation(driver: driver, arguments: arguments) else {
            log.error("hook \(driver.rawValue): expected 4 arguments (object operation sub-operation extra), got \(arguments.count)")
            return 2
        }
        let dryRun = flag || settings.dryRun
        let stdin = InputLimits.read(fileDescriptor: 0)
        let local: LocalContext
        do {
            local = try LocalContext(settings: settings, log: log)
        } catch {
            log.error("\(invocation.summary): \(error)")
            return invocation.operation == "reconnect" ? 0 : (settings.onInvalid == .refuse ? 1 : 0)
        }
        // libvirt does not read a hook's stdout (but for the migrate/restore XML): when the config
        // file asks for dry-run, which is how it reaches hooks run by libvirt, the transaction is
        // also logged, so the admin can read what would have been applied.
        let alsoLog = settings.dryRun && !flag && environment["VIRTGATE_DRY_RUN"] == nil
        let handler = local.handler(dryRun: dryRun) { text in
            writeAll(1, text)
            if alsoLog && !text.hasPrefix("<") {
                log.info("dry-run \(invocation.summary): \(text)")
            }
        }
        return await handler.handle(invocation, input: stdin) { writeBytes(1, $0) }
    }
}

enum ProcessEnvironment {
    static func current() -> [String: String] { variables { _ in true } }

    /// Only `VIRTGATE_*`: all that settings and the hook read. The hook runs on every guest event,
    /// and copying the whole environment into a dictionary was a noticeable part of a run.
    static func virtgate() -> [String: String] {
        variables { strncmp($0, "VIRTGATE_", 9) == 0 }
    }

    static func variables(where include: (UnsafePointer<CChar>) -> Bool) -> [String: String] {
        var result: [String: String] = [:]
        var pointer = environ
        while let entry = pointer.pointee {
            // Split at the first '=' as bytes: String.firstIndex(of:) compares Characters.
            if include(entry) {
                let length = Int(strcspn(entry, "="))
                if entry[length] == CChar(UInt8(ascii: "=")) {
                    let key = UnsafeRawBufferPointer(start: entry, count: length)
                    result[String(decoding: key, as: UTF8.self)] = String(cString: entry + length + 1)
                }
            }
            pointer += 1
        }
        return result
    }
}
