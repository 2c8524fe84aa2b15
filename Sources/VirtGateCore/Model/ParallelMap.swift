import Dispatch
#if canImport(Glibc)
import Glibc
#endif

extension Collection where Index == Int, Self: Sendable {
    /// `map(transform)`, in the same order, with the work spread over the machine's cores once there
    /// are at least `threshold` elements (a sync's thousands of guests and elements). Below it, as
    /// for every hook event, it is a plain `map`: no thread is started. `transform` must be pure.
    func parallelMap<T>(threshold: Int, _ transform: @Sendable (Element) -> T) -> [T] {
        let count = self.count
        guard count >= threshold, count > 1 else { return map(transform) }
        let chunks = Swift.min(count, 4 * Swift.max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        return [T](unsafeUninitializedCapacity: count) { buffer, initialized in
            let slots = Slots(base: buffer.baseAddress!)
            // Each chunk initialises its own slots; concurrentPerform returns once all are done.
            DispatchQueue.concurrentPerform(iterations: chunks) { chunk in
                for offset in (count * chunk / chunks)..<(count * (chunk + 1) / chunks) {
                    (slots.base + offset).initialize(to: transform(self[startIndex + offset]))
                }
            }
            initialized = count
        }
    }
}

/// The result buffer of `parallelMap`, shared by its chunks, each of which writes slots no other touches.
private struct Slots<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
}
