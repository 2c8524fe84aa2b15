import ArgumentParser
import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

@main
enum Entry {
    static func main() async {
        // libvirt runs this binary as `…/hooks/qemu` or `…/hooks/network` (or from `qemu.d/` and
        // `network.d/`). That path skips command-line parsing: it runs on every guest event.
        if let driver = HookDriver.fromInvocationPath(CommandLine.arguments[0]) {
            exit(await HookEntry.run(driver: driver, arguments: Array(CommandLine.arguments.dropFirst()), dryRun: false))
        }
        do {
            var command = try VirtGate.parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            VirtGate.exit(withError: error)
        }
    }
}
