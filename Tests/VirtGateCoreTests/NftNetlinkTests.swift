import Testing
@testable import VirtGateCore

/// The netlink reader's field text against nft's listing forms (the kernel round trip compares
/// whole tables; these pin the edges of one field).
@Suite("Netlink element fields in nft's text")
struct NftNetlinkTests {
    func text(_ start: [UInt8], _ end: [UInt8], _ fields: [NftLayout.Field]) -> String? {
        start.withUnsafeBytes { s in end.withUnsafeBytes { e in NftLayout.text(s, end: e, fields: fields) } }
    }

    @Test func addressesAsNftListsThem() {
        let v4 = NftLayout.Field.address(.v4)
        #expect(text([10, 0, 0, 1], [10, 0, 0, 1], [v4]) == "10.0.0.1")
        #expect(text([10, 0, 0, 0], [10, 255, 255, 255], [v4]) == "10.0.0.0/8")
        #expect(text([0, 0, 0, 0], [255, 255, 255, 255], [v4]) == "0.0.0.0/0")
        #expect(text([10, 0, 0, 1], [10, 0, 0, 5], [v4]) == "10.0.0.1-10.0.0.5")
        #expect(text([10, 0, 0, 1], [10, 0, 0, 2], [v4]) == "10.0.0.1-10.0.0.2")       // not aligned: a range
        let v6 = NftLayout.Field.address(.v6)
        #expect(text([UInt8](repeating: 0, count: 16), [UInt8](repeating: 255, count: 16), [v6]) == "::/0")
        #expect(text([0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 12),
                     [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 255, count: 12), [v6]) == "2001:db8::/32")
        #expect(text([UInt8](repeating: 0, count: 10) + [255, 255, 1, 2, 3, 4],
                     [UInt8](repeating: 0, count: 10) + [255, 255, 1, 2, 3, 4], [v6]) == "::ffff:1.2.3.4")
    }

    @Test func protocolsAndPortsInTheirPaddedFields() {
        // 6 . 8000-8015 . 10.0.0.1: protocol in the first byte of its 4, port big-endian in the first 2.
        let start: [UInt8] = [6, 0, 0, 0, 0x1f, 0x40, 0, 0, 10, 0, 0, 1]
        let end: [UInt8] = [6, 0, 0, 0, 0x1f, 0x4f, 0, 0, 10, 0, 0, 1]
        #expect(text(start, end, [.proto, .port, .address(.v4)]) == "6 . 8000-8015 . 10.0.0.1")
        #expect(text(start, start, [.proto, .port, .address(.v4)]) == "6 . 8000 . 10.0.0.1")
        // Bytes that do not fit the fields are not read as anything.
        #expect(text(Array(start.dropLast()), Array(end.dropLast()), [.proto, .port, .address(.v4)]) == nil)
        #expect(text(start, end, [.proto, .port]) == nil)
    }
}
