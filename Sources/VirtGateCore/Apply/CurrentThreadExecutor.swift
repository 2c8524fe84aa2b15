#if canImport(Glibc)
import Glibc
#endif

/// Runs async code to completion on the calling thread. virtgate's async work is sequential (read
/// the rules, write the difference), but an `async` main hands it to the concurrency runtime's
/// thread pool, and starting that pool is a fifth of a hook run that changes nothing (measured:
/// 0.4 ms of CPU for the threads alone). As the preferred executor of the one task, this executor
/// keeps every job of that task, and of the actors it calls, on the caller's thread. Work resumed
/// from other threads (a continuation) comes back through `enqueue`.
public final class CurrentThreadExecutor: TaskExecutor, @unchecked Sendable {
    private var jobs: [UnownedJob] = []
    private var finished = false
    private var mutex = pthread_mutex_t()
    private var condition = pthread_cond_t()

    private init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&condition, nil)
    }

    deinit {
        pthread_cond_destroy(&condition)
        pthread_mutex_destroy(&mutex)
    }

    /// `body`'s result, once it and every job it left on this executor have run.
    public static func run<Result: Sendable>(_ body: @escaping @Sendable () async -> Result) -> Result {
        let executor = CurrentThreadExecutor()
        let box = ResultBox<Result>()
        Task(executorPreference: executor) {
            box.value = await body()
            executor.finish()
        }
        executor.drain()
        return box.value!
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        pthread_mutex_lock(&mutex)
        jobs.append(job)
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    private func finish() {
        pthread_mutex_lock(&mutex)
        finished = true
        pthread_cond_signal(&condition)
        pthread_mutex_unlock(&mutex)
    }

    /// Runs jobs as they come until the task has finished and none is left.
    private func drain() {
        while true {
            pthread_mutex_lock(&mutex)
            while jobs.isEmpty && !finished { pthread_cond_wait(&condition, &mutex) }
            if jobs.isEmpty {
                pthread_mutex_unlock(&mutex)
                return
            }
            let job = jobs.removeFirst()
            pthread_mutex_unlock(&mutex)
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}

/// Written once by the task, read by `run` after the task has finished (the mutex orders the two).
private final class ResultBox<Value>: @unchecked Sendable {
    var value: Value?
}
