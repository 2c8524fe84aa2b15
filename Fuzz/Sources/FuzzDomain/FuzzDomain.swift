import FuzzSupport
import VirtGateCore

/// Bytes → domain XML → `LibvirtXML.guest` → `Engine.plan` with the fixed networks → both backends'
/// transactions against an empty kernel, checked (see `Harness`). The same bytes are also tried as
/// network XML.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzDomain(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size <= Limits.maximumInput else { return -1 }
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        let guest = try LibvirtXML.guest(fromXML: text)
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
    }
    do {
        Harness.exercise(network: try LibvirtXML.network(fromXML: text), inputBytes: size)
    } catch {
        checkError(error, "network(fromXML:)")
    }
    return 0
}
