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

    /// Generated keys of every map's shape: the bytes nft's text of them parses back to are the bytes
    /// they came from (what the netlink writer sends is what the reader reads). A failure names the seed.
    @Test func keysParseBackToTheirBytes() {
        let seed: UInt64 = 0x6E66_7462_7974_6573
        var random = SplitMix64(seed: seed)
        func byte() -> UInt8 { UInt8(truncatingIfNeeded: random.next()) }
        var checked = 0
        for (set, fields) in NftLayout.elementFields {
            for _ in 0..<200 {
                var start: [UInt8] = [], end: [UInt8] = []
                for field in fields.key {
                    switch field {
                    case .address(let family):
                        let count = family == .v4 ? 4 : 16
                        let all: UInt128 = family == .v4 ? 0xffff_ffff : .max
                        let value = (UInt128(random.next()) << 64 | UInt128(random.next())) & all
                        var low = value, high = value
                        if fields.interval {
                            switch random.next() % 3 {
                            case 0: break                                            // one address
                            case 1:                                                  // a network
                                let mask = IPNetwork.mask(Int(random.next() % UInt64(count * 8 + 1)), family)
                                low = value & mask
                                high = low | (~mask & all)
                            default:                                                 // a range
                                high = max(value, (UInt128(random.next()) << 64 | UInt128(random.next())) & all)
                            }
                        }
                        start += NftLayout.addressBytes(IPAddress(family: family, value: low))
                        end += NftLayout.addressBytes(IPAddress(family: family, value: high))
                    case .proto:
                        let proto = [6, 17, 132][Int(random.next() % 3)] as UInt8
                        start += [proto, 0, 0, 0]
                        end += [proto, 0, 0, 0]
                    case .port:
                        let low = UInt16(truncatingIfNeeded: random.next())
                        let high = fields.interval && random.next() % 2 == 0 ? max(low, UInt16(truncatingIfNeeded: random.next())) : low
                        start += [UInt8(low >> 8), UInt8(low & 0xff), 0, 0]
                        end += [UInt8(high >> 8), UInt8(high & 0xff), 0, 0]
                    }
                }
                guard let key = text(start, end, fields.key) else {
                    Issue.record("seed \(seed): \(set): no text for \(start) – \(end)")
                    continue
                }
                let parsed = NftLayout.bytes(key, fields: fields.key, ranges: fields.interval)
                #expect(parsed?.0 == start && parsed?.1 == end, "seed \(seed): \(set): \(key)")
                checked += 1
            }
        }
        #expect(checked == NftLayout.elementFields.count * 200)
    }

    @Test("Text that does not fit a map's key is refused", arguments: [
        "10.0.0.1 . 6",                          // a field missing
        "10.0.0.1 . 6 . 80 . 1",                 // a field too many
        "10.0.0.1  . 6 . 80",                    // no such separator
        "10.0.0.1 . 300 . 80",                   // not a protocol
        "10.0.0.1 . 6 . 65536",                  // not a port
        "10.0.0.1 . 6 . -80",
        "10.0.0.1 . 6 . +80",
        "10.0.0.256 . 6 . 80",
        "10.0.0.0/8 . 6 . 80",                   // a network where the key takes one address
        "10.0.0.1-10.0.0.2 . 6 . 80",
        "10.0.0.1 . 6 . 80-81",
        "2001:db8::1 . 6 . 80",                  // another family
        " . 6 . 80",
        "",
    ])
    func malformedKeysAreRefused(key: String) {
        #expect(NftLayout.bytes(key, fields: [.address(.v4), .proto, .port], ranges: false) == nil)
    }

    @Test("Ranges and networks only where the map takes intervals, and only well-formed", arguments: [
        "10.0.0.0/33 . 6 . 80", "10.0.0.1/8 . 6 . 80", "10.0.0.5-10.0.0.1 . 6 . 80", "10.0.0.1 . 6 . 90-80", "10.0.0.0/ . 6 . 80",
    ])
    func malformedIntervalsAreRefused(key: String) {
        #expect(NftLayout.bytes(key, fields: [.address(.v4), .proto, .port], ranges: true) == nil)
    }
}
