import FuzzSupport
import VirtGateCore

/// Bytes → network XML → `LibvirtXML.network` → `Engine.plan` of that network with the fixed guest
/// on it → both backends' transactions against an empty kernel, checked (see `Harness`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzNetwork(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size <= Limits.maximumInput else { return -1 }
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let network: NetworkDefinition
    do {
        network = try LibvirtXML.network(fromXML: text)
    } catch {
        checkError(error, "network(fromXML:)")
        return 0
    }
    require(!network.name.isEmpty, "a network without a name was accepted")
    Harness.exercise(network: network, inputBytes: size)
    return 0
}
