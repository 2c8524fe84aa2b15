import Synchronization
import Testing
@testable import VirtGateCore

/// sync reads the kernel while libvirt answers, before it holds the lock (`Firewall.readAhead`).
/// That read may stand in for the one under the lock only while nothing was committed since.
@Suite("A kernel read made ahead of the lock")
struct ReadAheadTests {
    static let before = "*nat\n:VGD-web - [0:0]\n-A VGD-web -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.77:22\nCOMMIT\n"
    static let after = "*nat\n:VGD-db - [0:0]\n-A VGD-db -p tcp -m tcp --dport 5432 -j DNAT --to-destination 192.168.122.78:5432\nCOMMIT\n"

    let runner = RecordingRunner()
    /// The kernel's ruleset generation as this test's kernel reports it; nil: it cannot be read.
    let generation = Generation()
    let backend = IptablesChainBackend()
    let input = EngineInput.everything(SyncInput(networks: [], guests: [], leases: [:]))

    func firewall(_ variant: IptablesVariant = .nft) -> Firewall {
        let generation = self.generation
        return Firewall(iptables: IptablesCommands(variant: variant, runner: runner), nft: nil, mark: 1,
                        log: Log(syslog: false, stderr: false), generation: { generation.value.withLock { $0 } })
    }

    var saves: Int { runner.state.withLock { $0.calls.count { $0.0.hasSuffix("-save") } } }

    @Test("stands in while the ruleset generation is unchanged, and is read again once it moved")
    func usedOnlyWhileTheGenerationHolds() async throws {
        runner.state.withLock { $0.ruleset = Self.before }
        let firewall = firewall()
        let ahead = try #require(await firewall.readAhead(backend.reads(for: input)))
        #expect(ahead.state.iptables?.ownerChains[.nat]?.keys.sorted() == ["VGD-web"])
        let savesAhead = saves
        #expect(savesAhead == 2, "one iptables-save per family")

        // Someone commits after the read ahead; the test's kernel answers with the new ruleset.
        runner.state.withLock { $0.ruleset = Self.after }
        let unchanged = try await firewall.preview(input, backend: backend, dryRun: false, ahead: ahead)
        #expect(saves == savesAhead, "an unchanged generation reads nothing again")
        #expect(unchanged.state.iptables == ahead.state.iptables)

        generation.value.withLock { $0 = 8 }
        let moved = try await firewall.preview(input, backend: backend, dryRun: false, ahead: ahead)
        #expect(saves == savesAhead + 2, "a moved generation reads the kernel again")
        #expect(moved.state.iptables?.ownerChains[.nat]?.keys.sorted() == ["VGD-db"])
        // The plan removes what the kernel holds now, not what the stale read held.
        #expect(moved.transaction.iptables[.v4]?.contains("VGD-db") == true)
        #expect(moved.transaction.iptables[.v4]?.contains("VGD-web") == false)
    }

    @Test("is read again when it read less than the change needs")
    func otherReadsAreReadAgain() async throws {
        runner.state.withLock { $0.ruleset = Self.before }
        let firewall = firewall()
        let ahead = try #require(await firewall.readAhead(KernelReads(iptables: true, nft: true)))
        _ = try await firewall.preview(input, backend: backend, dryRun: false, ahead: ahead)
        #expect(saves == 4)
    }

    @Test("is not made where the generation does not cover it: iptables-legacy, or no generation to read")
    func notMadeWithoutAGeneration() async throws {
        #expect(await firewall(.legacy).readAhead(backend.reads(for: input)) == nil)
        #expect(saves == 0)
        generation.value.withLock { $0 = nil }
        #expect(await firewall().readAhead(backend.reads(for: input)) == nil)
        // An nft-only read with iptables-legacy is covered.
        generation.value.withLock { $0 = 3 }
        #expect(await firewall(.legacy).readAhead(KernelReads(iptables: false, nft: false)) != nil)
    }
}

final class Generation: Sendable {
    let value = Mutex<UInt32?>(7)
}
