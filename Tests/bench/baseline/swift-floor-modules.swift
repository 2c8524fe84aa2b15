// The floor of any binary built from virtgate's dependencies: a Swift program that only exits, but
// links the runtime modules they bring, as virtgate's release build links them (run.sh builds it with
// the same linker settings). The loader relocates these modules' data and runs their initializers at
// every start, used or not:
//   FoundationEssentials  swift-argument-parser imports it (JSON help dump, error descriptions)
//   the regex modules     FoundationEssentials' own code refers to them
//   the concurrency runtime, libdispatch
//                         swift-subprocess is async; so is the hook's path that runs it
// The code below is never run (no one passes 1,000 arguments); it is there so that the linker keeps
// what virtgate's binary keeps. At 25b94c8 the two link maps (-Xlinker -Map) held the same archive
// members of the toolchain's libraries; a dependency added or dropped changes that: compare them again.
import Dispatch
import FoundationEssentials
import Glibc

struct Probe: Codable {
    var value: Int
}

func probe() async -> Int { 1 }

if CommandLine.argc > 1000 {
    let data = try! JSONEncoder().encode(Probe(value: 1))
    print(try! JSONDecoder().decode(Probe.self, from: data))
    DispatchQueue.concurrentPerform(iterations: 2) { print($0) }
    print(CommandLine.arguments[0].contains(try! Regex("b+")))
    Task { print(await probe()) }
}
exit(0)
