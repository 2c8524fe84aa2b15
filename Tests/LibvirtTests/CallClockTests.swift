#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import Libvirt

@Suite("time in libvirt's calls")
struct CallClockTests {
    @Test func eachCallsWallTimeIsAddedUp() throws {
        let clock = CallClock()
        #expect(clock.total == .zero)
        clock.time { _ = usleep(20_000) }
        let first = clock.total
        // Slept 20 ms: at least that, and not a unit off (a machine busy with other tests may add a lot, not seconds).
        #expect(first >= .milliseconds(20))
        #expect(first < .seconds(2))
        let answer = clock.time { _ = usleep(10_000); return 42 }
        #expect(answer == 42)
        #expect(clock.total >= first + .milliseconds(10))
    }

    @Test func aThrowingCallIsTimedToo() {
        struct Failure: Error {}
        let clock = CallClock()
        #expect(throws: Failure.self) {
            try clock.time { () throws(Failure) in _ = usleep(5_000); throw Failure() }
        }
        #expect(clock.total >= .milliseconds(5))
    }

    @Test func openingAConnectionAndReadingAreCounted() throws {
        let before = Libvirt.timeInCalls
        let connection = try Fixture.connection()
        _ = try connection.runningDomains().map { try $0.xml() }
        // Other tests' calls may add to the process's total at the same time; they cannot take from it.
        #expect(Libvirt.timeInCalls > before)
    }
}
