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

    @Test func waitingForLibvirtsWorkIsCounted() {
        let before = Libvirt.timeInCalls
        let answer = Libvirt.timeWaiting { _ = usleep(50_000); return 7 }
        #expect(answer == 7)
        // Other tests' calls may add to the process's total at the same time; they cannot take from it.
        #expect(Libvirt.timeInCalls - before >= .milliseconds(50))
    }

    @Test func openingAConnectionAndReadingAreCounted() throws {
        _ = try LibvirtLibrary.shared.get()   // loaded before: only this test's calls are timed below
        let before = Libvirt.timeInCalls
        let elapsed = try ContinuousClock().measure {
            let connection = try Fixture.connection()
            _ = try connection.runningDomains().map { try $0.xml() }
        }
        // Opening the test driver's connection (it parses its state file) and the reads are nearly all of
        // the block: at least half of it must be counted. Other tests' calls may add to the process's
        // total at the same time; they cannot take from it.
        #expect(Libvirt.timeInCalls - before >= elapsed / 2)
    }
}
