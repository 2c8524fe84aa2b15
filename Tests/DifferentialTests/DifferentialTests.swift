#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Testing
import VirtGateCore

enum Root {
    static let isRoot = getuid() == 0
    /// CI sets this so that a missing privilege fails instead of skipping.
    static let required = environment("VIRTGATE_REQUIRE_ROOT") == "1"
}

func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

/// Generated guest sets go through both backends against the real kernel: the hooks must accept
/// every event, read-back claims and real connections must match the oracle (and so each other),
/// repeating an event must write nothing, and removing every owner must restore the ruleset.
///
/// Run as root: `swift test --filter DifferentialTests`. The fixed batch (seed 9100, 16 cases) runs in the
/// normal `swift test`. `VIRTGATE_DIFF_SEED` and `VIRTGATE_DIFF_CASES` run another seed or a longer
/// batch, `VIRTGATE_DIFF_SHRINK` sets the runs spent shrinking each failure, `VIRTGATE_BINARY` the
/// binary (default: the package's `.build/debug/virtgate`). A failure names its seed and prints a
/// minimal case per backend and kind of failure.
@Suite("Generated cases: both backends against the kernel", .enabled(if: Root.isRoot || Root.required), .serialized)
struct DifferentialTests {
    static let backends = ["iptables", "nft"]

    init() {
        // A run killed before its clean-up leaves its namespaces: remove those of dead test processes.
        guard Root.isRoot, let entries = try? FileManager.default.contentsOfDirectory(atPath: "/run/netns") else { return }
        for entry in entries where entry.hasPrefix("vgt-df-") {
            if let pid = Int32(entry.split(separator: "-")[2]), pid != getpid(), kill(pid, 0) != 0 {
                _ = system("ip netns del \(entry) 2>/dev/null; rm -rf /tmp/vgt-df-\(pid)-*")
            }
        }
    }

    static var binary: String {
        if let path = environment("VIRTGATE_BINARY") { return path }
        // Tests/DifferentialTests/<this file> → the package root.
        let root = String(#filePath).split(separator: "/", omittingEmptySubsequences: false).dropLast(3).joined(separator: "/")
        return root + "/.build/debug/virtgate"
    }

    @Test("Both backends do what the oracle says, on generated guest sets")
    func generatedCases() async throws {
        try #require(Root.isRoot, "needs root to create network namespaces")
        let binary = Self.binary
        try #require(access(binary, X_OK) == 0, "no virtgate binary at \(binary) (set VIRTGATE_BINARY)")
        let seed = environment("VIRTGATE_DIFF_SEED").flatMap { UInt64($0) } ?? 9100
        let count = environment("VIRTGATE_DIFF_CASES").flatMap { Int($0) } ?? 16
        // Runs spent on shrinking, per failing case and in all: a broken build must not take an hour.
        let shrinkPerCase = environment("VIRTGATE_DIFF_SHRINK").flatMap { Int($0) } ?? 16
        var shrinkBudget = 8 * shrinkPerCase

        var checks = Dictionary(uniqueKeysWithValues: Self.backends.map { ($0, 0) })
        var failing = 0
        for index in 0..<count {
            var mixer = SeededGenerator(seed: seed &+ UInt64(index))
            let testCase = CaseGenerator.generate(seed: mixer.next())
            let result = await Self.run(testCase, backends: Self.backends, binary: binary, tag: "\(index)")
            for (backend, count) in result.checks { checks[backend, default: 0] += count }
            guard !result.failures.isEmpty else { continue }
            failing += 1
            // One minimal case per backend and kind of failure: a bug on one backend must not hide
            // another one's behind it.
            var targets: [Failure] = []
            for failure in result.failures where !targets.contains(where: { $0.kind == failure.kind && $0.backends == failure.backends }) {
                targets.append(failure)
            }
            var minimal: [String] = []
            for target in targets.prefix(4) {
                var budget = min(shrinkPerCase, shrinkBudget)
                shrinkBudget -= budget
                let (smallest, failures) = await Self.shrink(testCase, like: target, failures: result.failures, binary: binary,
                                                             budget: &budget)
                shrinkBudget += budget
                minimal.append("""
                    minimal case for [\(target.backends.joined(separator: ","))] \(target.kind) \
                    (\(smallest.guests.count) guests, \(smallest.forwardCount) forwards) fails with:
                    \(failures.prefix(6).map { "  " + $0 }.joined(separator: "\n"))
                    \(smallest.dump)
                    """)
            }
            Issue.record("""
                generated case \(index) of seed \(seed) (case seed \(testCase.seed)) fails; \
                replay with VIRTGATE_DIFF_SEED=\(seed) VIRTGATE_DIFF_CASES=\(index + 1)
                failures of the full case (\(result.failures.count)):
                \(result.failures.prefix(10).map { "  \($0)" }.joined(separator: "\n"))
                \(minimal.joined(separator: "\n"))
                """)
        }
        print("differential: \(count) generated cases (seed \(seed)), \(failing) failing; checks per backend: "
              + Self.backends.map { "\($0) \(checks[$0]!)" }.joined(separator: ", "))
    }

    struct Result {
        var failures: [Failure] = []
        var checks: [String: Int] = [:]
    }

    /// A failure and the backends it was seen on; `kind` says what kind of check found it, so
    /// shrinking keeps looking for the same failure.
    struct Failure: CustomStringConvertible {
        var backends: [String]
        var kind: String
        var text: String
        var description: String {
            "[\(backends.joined(separator: ","))] " + (text.count > 600 ? text.prefix(600) + " …" : text)
        }
    }

    /// One case on the given backends (side by side, in separate namespaces), compared with the
    /// oracle; where the backends differ from it, every backend's answer is shown.
    static func run(_ testCase: Case, backends: [String], binary: String, tag: String) async -> Result {
        let probes = Traffic.probes(for: testCase)
        let outcomes = await withTaskGroup(of: (String, LabRun.Outcome).self) { group in
            for backend in backends {
                group.addTask {
                    let run = LabRun(testCase, backend: backend, binary: binary, probes: probes, tag: "\(tag)-\(backend.prefix(3))")
                    return (backend, await run.run())
                }
            }
            var outcomes: [String: LabRun.Outcome] = [:]
            for await (backend, outcome) in group { outcomes[backend] = outcome }
            return outcomes
        }

        var result = Result()
        for backend in backends {
            let outcome = outcomes[backend]!
            result.checks[backend] = outcome.checks + 1 + probes.count
            result.failures += outcome.failures.map { Failure(backends: [backend], kind: $0.kind, text: $0.text) }
        }
        let oracle = Oracle(testCase)
        let expected = oracle.claims
        let claimLines = backends.compactMap { backend -> String? in
            let got = outcomes[backend]!.claims
            let missing = expected.subtracting(got).sorted(), extra = got.subtracting(expected).sorted()
            if missing.isEmpty && extra.isEmpty { return nil }
            return "\(backend): " + (missing.prefix(5).map { "missing \($0)" } + extra.prefix(5).map { "extra \($0)" }).joined(separator: "; ")
                + (missing.count + extra.count > 10 ? " (\(missing.count) missing, \(extra.count) extra in all)" : "")
        }
        if !claimLines.isEmpty {
            let wrong = backends.filter { outcomes[$0]!.claims != expected }
            result.failures.append(Failure(backends: wrong, kind: "claims", text: "read-back claims differ from the oracle: " + claimLines.joined(separator: " | ")))
        }
        for probe in probes {
            let want = oracle.expected(probe)
            let wrong = backends.filter { (outcomes[$0]!.answers[probe] ?? "") != want }
            guard !wrong.isEmpty, outcomes.values.allSatisfy({ !$0.answers.isEmpty }) else { continue }
            func show(_ answer: String) -> String { answer.isEmpty ? "no answer" : answer }
            result.failures.append(Failure(backends: wrong, kind: "traffic", text: "\(probe.description): oracle \(show(want)), "
                + backends.map { "\($0) \(show(outcomes[$0]!.answers[probe] ?? ""))" }.joined(separator: ", ")))
        }
        return result
    }

    /// Drops guests, then forwards, one at a time while the same kind of failure stays on the same
    /// backend, within a budget of runs.
    static func shrink(_ testCase: Case, like target: Failure, failures: [Failure], binary: String,
                       budget: inout Int) async -> (Case, [String]) {
        var current = testCase
        var currentFailures = failures
        var progress = true
        while progress && budget > 0 {
            progress = false
            for candidate in CaseGenerator.smaller(current) where budget > 0 {
                budget -= 1
                let result = await run(candidate, backends: target.backends, binary: binary, tag: "s\(budget)")
                if result.failures.contains(where: { $0.kind == target.kind && !Set($0.backends).isDisjoint(with: target.backends) }) {
                    current = candidate
                    currentFailures = result.failures
                    progress = true
                    break
                }
            }
        }
        return (current, currentFailures.map(\.description))
    }
}
