import Testing
@testable import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

@Suite("Async code on the calling thread")
struct CurrentThreadExecutorTests {
    @Test("Runs the body, and what it awaits, on the thread that called run")
    func staysOnThread() {
        let caller = pthread_self()
        let sameThread = CurrentThreadExecutor.run { () async -> Bool in
            let first = pthread_equal(pthread_self(), caller) != 0
            let second = await Self.hop()
            return first && second && pthread_equal(pthread_self(), caller) != 0
        }
        #expect(sameThread)
    }

    nonisolated static func hop() async -> Bool { true }

    @Test("Work resumed by another thread comes back to the caller's thread")
    func resumedFromAnotherThread() {
        let caller = pthread_self()
        let value = CurrentThreadExecutor.run { () async -> Int in
            let fromThread = await withCheckedContinuation { (continuation: CheckedContinuation<Int, Never>) in
                let box = Unmanaged.passRetained(ContinuationBox(continuation)).toOpaque()
                var thread = pthread_t()
                pthread_create(&thread, nil, { raw in
                    let box = Unmanaged<ContinuationBox>.fromOpaque(raw!).takeRetainedValue()
                    usleep(20_000)
                    box.continuation.resume(returning: 42)
                    return nil
                }, box)
                pthread_detach(thread)
            }
            return pthread_equal(pthread_self(), caller) != 0 ? fromThread : -1
        }
        #expect(value == 42)
    }
}

private final class ContinuationBox: @unchecked Sendable {
    let continuation: CheckedContinuation<Int, Never>
    init(_ continuation: CheckedContinuation<Int, Never>) { self.continuation = continuation }
}
