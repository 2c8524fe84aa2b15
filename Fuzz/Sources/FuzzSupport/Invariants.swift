#if canImport(Glibc)
import Glibc
#endif
import VirtGateCore

/// A broken invariant is a crash, so libFuzzer keeps the input: the message goes to stderr first.
public func violated(_ message: String) -> Never {
    let capped = message.count > 4000 ? String(message.prefix(4000)) + "…" : message
    writeAll(2, "INVARIANT VIOLATED: \(capped)\n")
    abort()
}

public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { violated(message()) }
}

public enum Limits {
    /// The targets' inputs stay below this (run.sh passes -max_len well under it).
    public static let maximumInput = 1 << 20
    /// Rendered text for one event, whatever the input (a few MB).
    public static let maximumRendered = 8 << 20
    /// nft renders one element per host port and source: the element count predicts the script's
    /// size before it is built (about 80 bytes per element).
    public static let maximumElements = maximumRendered / 80
    /// An error or problem line as logged (`String.cappedLine` caps at 1000 characters plus "…").
    public static let maximumLine = 1001
}

/// One logged line: bounded and free of line breaks (libvirt and the journal show it as one line).
public func checkLine(_ line: String, _ what: String) {
    require(line.count <= Limits.maximumLine, "\(what): \(line.count) characters: \(line.prefix(200))…")
    require(!line.unicodeScalars.contains { $0 == "\n" || $0 == "\r" || $0 == "\u{0}" },
            "\(what): line break or NUL in \(InputProblem.quoted(line))")
}

public func checkError(_ error: any Error, _ what: String) {
    require(error is VirtGateError, "\(what): error of another type: \(type(of: error)): \(error)")
    checkLine("\(error)", what)
}

/// Problems and pending forwards, as the hook logs them.
public func checkLogLines(_ plan: EnginePlan) {
    for guest in plan.guests {
        for problem in guest.problems { checkLine("\(problem); forward skipped", "problem") }
        for pending in guest.plan.pending {
            checkLine("guest \(InputProblem.quoted(guest.guest.name)): forward #\(pending.forward.position) \(pending.forward.summary) pending: \(pending.reason)",
                      "pending")
        }
    }
}

/// The nft elements a plan renders to, counted without rendering them: a forward that keeps its
/// ports is one element per source, a remapped range one per port and source.
public func predictedElements(_ plan: EnginePlan) -> Int {
    var count = 0
    for guest in plan.guests {
        for case .dnat(let forward) in guest.plan.plan.intents {
            let ports = forward.hostPorts == forward.guestPorts ? 1 : forward.hostPorts.count
            count += ports * max(1, forward.sources.count)
        }
    }
    return count
}

/// Inputs whose predicted output is over the bound violate it: the planner's limits must keep
/// every input's output bounded. `VIRTGATE_FUZZ_STRICT=0` notes it once and skips the input
/// instead, to look for other findings past a known one.
public enum Amplification {
    nonisolated(unsafe) static var reported = false
    public static let strict = getenv("VIRTGATE_FUZZ_STRICT").map { String(cString: $0) != "0" } ?? true

    /// true: render it.
    public static func admit(_ plan: EnginePlan, inputBytes: Int) -> Bool {
        admit(elements: predictedElements(plan), inputBytes: inputBytes)
    }

    public static func admit(elements: Int, inputBytes: Int) -> Bool {
        guard elements > Limits.maximumElements else { return true }
        let message = "output not bounded: \(inputBytes) input bytes plan \(elements) nft elements (about \(elements * 80 / 1_000_000) MB of nft script)"
        if strict { violated(message) }
        if !reported {
            reported = true
            writeAll(2, "NOTE (not rendered under VIRTGATE_FUZZ_STRICT=0): \(message)\n")
        }
        return false
    }
}
