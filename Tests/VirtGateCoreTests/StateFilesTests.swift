import Testing
@testable import VirtGateCore
#if canImport(Glibc)
import Glibc
#endif

@Suite("State directory through system calls")
struct StateFilesTests {
    func mode(_ path: String) -> mode_t? {
        var status = stat()
        return stat(path, &status) == 0 ? status.st_mode & 0o7777 : nil
    }

    @Test("prepare creates missing parents 0700, leaves an existing directory alone; a file in the way is an error")
    func directories() throws {
        let root = Files.scratch("vgt-statefiles")
        defer { _ = system("rm -rf '\(root)'") }
        let store = StateStore(directory: root + "/a/b")
        try store.prepare()
        for path in [root, root + "/a", root + "/a/b", root + "/a/b/guests", root + "/a/b/networks"] {
            #expect(mode(path) == 0o700, "\(path)")
        }
        chmod(root + "/a/b", 0o750)
        try store.prepare()
        #expect(mode(root + "/a/b") == 0o750)
        // One of the two gone (or a file in its place): made again, or an error.
        #expect(rmdir(root + "/a/b/guests") == 0)
        try store.prepare()
        #expect(mode(root + "/a/b/guests") == 0o700)
        #expect(rmdir(root + "/a/b/networks") == 0)
        #expect(creat(root + "/a/b/networks", 0o600) >= 0)
        #expect(throws: StateFiles.Failure.self) { try store.prepare() }
        #expect(creat(root + "/file", 0o600) >= 0)
        #expect(throws: StateFiles.Failure.self) { try StateStore(directory: root + "/file").prepare() }
    }

    @Test("A remembered file is replaced whole, and no temporary file is left or listed")
    func replace() throws {
        let root = Files.scratch("vgt-statefiles")
        defer { _ = system("rm -rf '\(root)'") }
        let store = StateStore(directory: root)
        try store.prepare()
        try store.rememberGuest("web", xml: String(repeating: "<x/>", count: 10_000))
        try store.rememberGuest("web", xml: "<domain/>")
        #expect(store.guestXML("web") == "<domain/>")
        #expect(StateFiles.names(in: root + "/guests") == ["web.xml"])
        #expect(store.guestNames() == ["web"])
        store.forgetGuest("web")
        #expect(StateFiles.names(in: root + "/guests").isEmpty)
        #expect(StateFiles.names(in: root + "/missing").isEmpty)
        _ = system("rm -rf '\(root)/guests'")
        #expect(throws: StateFiles.Failure.self) { try store.rememberGuest("web", xml: "<domain/>") }
    }
}
