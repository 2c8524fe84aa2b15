import FuzzSupport
import VirtGateCore

/// Bytes → domain XML → `LibvirtXML.guest` → `Engine.plan` with the fixed networks → both backends'
/// transactions against an empty kernel, checked (see `Harness`). The same bytes are also tried as
/// network XML.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDomain(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size <= Limits.maximumInput else { return -1 }
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    // The tree is built only of the parts a guest is read from: reading the whole tree must give
    // the same guest, or the same error.
    let whole = Result { try LibvirtXML.guest(fromXML: text, wholeTree: true) }
    do {
        let guest = try LibvirtXML.guest(fromXML: text)
        require((try? whole.get()) == guest, "the guest read from the parts of the tree differs from the whole tree's")
        Harness.exercise(guest: guest, inputBytes: size)
        // The hook's form: the name in the arguments must be the one in the XML.
        do {
            _ = try LibvirtXML.guest(fromXML: text, name: "web")
            require(guest.name == "web", "a guest named \(InputProblem.quoted(guest.name)) was accepted as \"web\"")
        } catch {
            checkError(error, "guest(fromXML:name:)")
        }
    } catch {
        checkError(error, "guest(fromXML:)")
        if case .failure(let other) = whole {
            require("\(other)" == "\(error)", "the whole tree's error differs: \(other) vs \(error)")
        } else {
            violated("the whole tree gives a guest, the parts of it an error: \(error)")
        }
    }
    do {
        Harness.exercise(network: try LibvirtXML.network(fromXML: text), inputBytes: size)
    } catch {
        checkError(error, "network(fromXML:)")
    }
    return 0
}
