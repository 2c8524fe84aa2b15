import Synchronization
import Testing
@testable import VirtGateCore

@Suite("parallelMap")
struct ParallelMapTests {
    /// Counts below, at and above the threshold, and ones that do not divide into the chunks: the
    /// result is `map`'s, in order, with every element transformed exactly once.
    @Test(arguments: [0, 1, 2, 63, 64, 65, 257, 1_000, 4_099])
    func sameAsMap(count: Int) {
        var generator = SystemRandomNumberGenerator()
        let input = (0..<count).map { _ in UInt64.random(in: 0...UInt64.max, using: &generator) }
        let transform: @Sendable (UInt64) -> String = { String($0, radix: 36) + "/" + String($0 % 97) }
        #expect(input.parallelMap(threshold: 64, transform) == input.map(transform))
        let calls = Counter()
        _ = input.parallelMap(threshold: 64) { calls.add(); return $0 }
        #expect(calls.value == count)
    }
}

private final class Counter: Sendable {
    private let count = Mutex(0)
    func add() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
