import ArgumentParser
import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

@main
enum Entry {
    /// Not `async`: an async main starts the concurrency runtime's thread pool, which costs a hook
    /// run more than most of its work. `CurrentThreadExecutor` runs the async code on this thread.
    static func main() {
        // libvirt runs this binary as `…/hooks/qemu` or `…/hooks/network` (or from `qemu.d/` and
        // `network.d/`). That path skips command-line parsing: it runs on every guest event.
        // libvirt's arguments are positional data there, never options: a guest may be named `--help`.
        if let driver = HookDriver.fromInvocationPath(CommandLine.arguments[0]) {
            let arguments = Array(CommandLine.arguments.dropFirst())
            exit(CurrentThreadExecutor.run { await HookEntry.run(driver: driver, arguments: arguments, dryRun: false) })
        }
        // `virtgate hook [--dry-run] DRIVER …` is read by position too, before the option parser.
        if CommandLine.arguments.count > 1, CommandLine.arguments[1] == "hook",
           let hook = HookCommandLine(afterHook: Array(CommandLine.arguments.dropFirst(2))) {
            exit(CurrentThreadExecutor.run { await HookEntry.run(driver: hook.driver, arguments: hook.arguments, dryRun: hook.dryRun) })
        }
        CurrentThreadExecutor.run { await runCommand() }
    }

    static func runCommand() async {
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
