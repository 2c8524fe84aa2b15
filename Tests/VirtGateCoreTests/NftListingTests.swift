import Testing
@testable import VirtGateCore

/// The reader of nft's text listing of virtgate's table (`nft -p list table inet virtgate`).
@Suite("nft text listing reader")
struct NftListingTests {
    @Test("Listing: objects by their lines, elements of every form, wrapped over lines, statements skipped")
    func listing() throws {
        let text = """
        table inet virtgate {
        \tmap fwd4 {
        \t\ttype ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
        \t}

        \tmap fwd4anyrange {
        \t\ttype inet_proto . inet_service : ipv4_addr
        \t\tflags interval
        \t\telements = { 6 . 80 counter packets 0 bytes 0 comment "web" : 10.0.0.2,
        \t\t\t     17 . 5000-5010 : 10.0.0.3 }
        \t}

        \tmap fwd6src {
        \t\ttype ipv6_addr . ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
        \t\tflags interval
        \t\telements = { 2001:db8:1::/48 . ::/0 . 17 . 5000 comment "web6" : fd00:126::10 . 6000 }
        \t}

        \tset gw4 {
        \t\ttype ipv4_addr
        \t\telements = { 10.0.0.1 comment "virtgate:gateways", 10.1.0.0/16,
        \t\t\t     10.2.0.1 }
        \t}

        \tset empty {
        \t\ttype ipv4_addr
        \t}

        \tchain layout-4-00200000 {
        \t}

        \tchain forwards {
        \t\tmeta l4proto { 6, 17, 132 } meta l4proto . th dport @fwd4any dnat ip to meta l4proto . th dport map @fwd4any
        \t\tset update ip saddr @gw4
        \t}
        }

        """
        let state = try NftState(listing: text)
        #expect(state.exists)
        #expect(state.layout == "layout-4-00200000")
        #expect(state.elements == [
            NftElement(set: "fwd4anyrange", key: "6 . 80", value: "10.0.0.2", comment: "web"),
            NftElement(set: "fwd4anyrange", key: "17 . 5000-5010", value: "10.0.0.3", comment: ""),
            NftElement(set: "fwd6src", key: "2001:db8:1::/48 . ::/0 . 17 . 5000", value: "fd00:126::10 . 6000", comment: "web6"),
            NftElement(set: "gw4", key: "10.0.0.1", value: nil, comment: NftLayout.gatewayOwner),
            NftElement(set: "gw4", key: "10.1.0.0/16", value: nil, comment: ""),
            NftElement(set: "gw4", key: "10.2.0.1", value: nil, comment: ""),
        ])
        // No table listed: nothing exists.
        let none = try NftState(listing: "")
        #expect(!none.exists && none.layout == nil && none.elements.isEmpty)
    }

    @Test("Listing: what cannot be read is an error, not a silently shorter table")
    func refusals() {
        let head = "table inet virtgate {\n\tset s {\n\t\ttype ipv4_addr\n\t\telements = { "
        for bad in ["10.0.0.1 comment \"x", "10.0.0.1 comment x }", "10.0.0.1 comment \"x\" y }", "10.0.0.1 : 1.2.3.4 y }",
                    "10.0.0.1 . }", "10.0.0.1,", ", }", "10.0.0.1 comment \"a\nb\" }"] {
            #expect(throws: VirtGateError.self, "\(bad)") { try NftState(listing: head + bad + "\n\t}\n}\n") }
        }
    }

    @Test("The text and JSON readers agree on the same table")
    func agreesWithJSON() throws {
        let json = """
        {"nftables": [{"table": {"family": "inet", "name": "virtgate"}},
         {"map": {"name": "fwd4anyrange", "elem": [[{"elem": {"val": {"concat": [6, 80]}, "comment": "web"}}, "10.0.0.2"],
                                                   [{"concat": [17, {"range": [5000, 5010]}]}, "10.0.0.3"]]}},
         {"set": {"name": "gw4", "elem": [{"elem": {"val": "10.0.0.1", "comment": "virtgate:gateways"}}]}},
         {"chain": {"name": "layout-4-00200000"}}]}
        """
        let text = """
        table inet virtgate {
        \tmap fwd4anyrange {
        \t\ttype inet_proto . inet_service : ipv4_addr
        \t\tflags interval
        \t\telements = { 6 . 80 comment "web" : 10.0.0.2, 17 . 5000-5010 : 10.0.0.3 }
        \t}

        \tset gw4 {
        \t\ttype ipv4_addr
        \t\telements = { 10.0.0.1 comment "virtgate:gateways" }
        \t}

        \tchain layout-4-00200000 {
        \t}
        }

        """
        #expect(try NftState(listing: text) == NftState(json: json))
    }

    @Test("Both readers count the table's base chains: none when a network created it, all once a forward was in it")
    func baseChainsCounted() throws {
        for hooked in [false, true] {
            let text = NftLayout.definition(mark: 0x0020_0000, hooked: hooked)
            let state = try NftState(listing: text)
            #expect(state.layout == "layout-\(NftLayout.version)-00200000")
            #expect(state.baseChains == (hooked ? NftLayout.baseChains.count : 0))
            let chains = (NftLayout.baseChains + ["forwards", "named", state.layout ?? ""]).map { #"{"chain": {"name": "\#($0)"}}"# }
            let json = #"{"nftables": [{"table": {"name": "virtgate"}}, "# + chains.suffix(hooked ? chains.count : 3).joined(separator: ", ") + "]}"
            #expect(try NftState(json: json).baseChains == (hooked ? NftLayout.baseChains.count : 0))
        }
    }
}
