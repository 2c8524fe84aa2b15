import Testing
@testable import Libvirt

@Suite("libvirt library")
struct VersionTests {
    @Test func versionIsReadFromTheLoadedLibrary() throws {
        let version = try Libvirt.libraryVersion()
        let parts = version.split(separator: ".").compactMap { Int($0) }
        #expect(parts.count == 3)
        #expect(parts[0] >= 6)
    }
}
