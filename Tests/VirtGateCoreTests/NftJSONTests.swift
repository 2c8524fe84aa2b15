import Testing
@testable import VirtGateCore

/// The reader of nft's JSON listings: a one-pass parser, elements straight to their text form.
@Suite("nft JSON listing reader")
struct NftJSONTests {
    @Test("Generic values: escapes, numbers, literals, nesting")
    func values() throws {
        let value = try JSONValue.parse(#" {"a": "x\"y\\z\/\n\u00e9\ud83d\ude00", "b": [1, -2, 3.5, 1e3, true, false, null], "c": {}} "#)
        #expect(value["a"] == .string("x\"y\\z/\né😀"))
        #expect(value["b"] == .array([.number(1), .number(-2), .number(3.5), .number(1000), .bool(true), .bool(false), .null]))
        #expect(value["c"] == .object([]))
        #expect(value["d"] == nil)
        for bad in ["", "{", #"{"a" 1}"#, "[1,]", "[1] x", #""\q""#, "tru", "\"a\nb\"", "-"] {
            #expect(throws: VirtGateError.self, "\(bad)") { try JSONValue.parse(bad) }
        }
        // Nesting is bounded, so a hostile document cannot exhaust the stack.
        #expect(throws: VirtGateError.self) { try JSONValue.parse(String(repeating: "[", count: 200)) }
    }

    @Test("Listing: members in any order, unknown ones skipped, elements of every form")
    func listing() throws {
        let json = #"""
        {"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
         {"table": {"family": "inet", "name": "virtgate", "handle": 3}},
         {"map": {"elem": [[{"elem": {"counter": {"packets": 0}, "val": {"concat": [6, 80]}, "comment": "web"}}, {"concat": ["10.0.0.2", 8080]}],
                           [{"concat": [17, {"range": [5000, 5010]}]}, "10.0.0.3"]],
                  "family": "inet", "name": "fwd4anyrange", "type": ["inet_proto", "inet_service"], "flags": ["interval"]}},
         {"set": {"name": "gw4", "elem": ["10.0.0.1", {"prefix": {"addr": "10.1.0.0", "len": 16}}]}},
         {"set": {"name": "empty"}},
         {"chain": {"family": "inet", "table": "virtgate", "name": "layout-4-00200000", "handle": 9}}]}
        """#
        let state = try NftState(json: json)
        #expect(state.exists)
        #expect(state.layout == "layout-4-00200000")
        #expect(state.elements == [
            NftElement(set: "fwd4anyrange", key: "6 . 80", value: "10.0.0.2 . 8080", comment: "web"),
            NftElement(set: "fwd4anyrange", key: "17 . 5000-5010", value: "10.0.0.3", comment: ""),
            NftElement(set: "gw4", key: "10.0.0.1", value: nil, comment: ""),
            NftElement(set: "gw4", key: "10.1.0.0/16", value: nil, comment: ""),
        ])
        // No table: nothing exists, nothing is read.
        let none = try NftState(json: #"{"nftables": [{"metainfo": {"version": "1.0.6"}}]}"#)
        #expect(!none.exists && none.layout == nil && none.elements.isEmpty)
    }

    @Test("Listing: what cannot be read is an error, not a silently shorter table")
    func refusals() {
        for bad in [#"{"tables": []}"#, #"{"nftables": {}}"#, #"{"nftables": [{"map": {"name": "m", "elem": [["6 . 80"]]}}]}"#,
                    #"{"nftables": [{"set": {"name": "s", "elem": [[1, 2]]}}]}"#,
                    #"{"nftables": [{"set": {"name": "s", "elem": [{"elem": {"comment": "x"}}]}}]}"#,
                    #"{"nftables": [{"set": {"name": "s", "elem": [1e300]}}]}"#, #"{"nftables": []} x"#] {
            #expect(throws: VirtGateError.self, "\(bad)") { try NftState(json: bad) }
        }
    }

    @Test("Claims read back from elements name their guest, protocol and ports")
    func claims() throws {
        let state = NftState(exists: true, layout: nil, elements: [
            NftElement(set: "fwd4any", key: "6 . 80", value: "10.0.0.2 . 8080", comment: "web"),
            NftElement(set: "fwd4range", key: "198.18.0.1 . 17 . 5000-5010", value: "10.0.0.3", comment: "db"),
            NftElement(set: "fwd6srcany", key: "2001:db8::/32 . 132 . 9000", value: "fd00::3 . 9000", comment: "db"),
            NftElement(set: "gw4", key: "10.0.0.1", value: nil, comment: NftLayout.gatewayOwner),
            NftElement(set: "fwd4any", key: "6 . 80 . 1", value: nil, comment: "odd"),
        ])
        let claims = state.forwardClaims(names: ["db": "database"])
        #expect(claims.count == 3)
        #expect(claims[0] == ForwardClaim(guest: "web", family: .v4, proto: .tcp, hostAddress: nil, hostPorts: PortRange(80, 80), sources: []))
        #expect(claims[1] == ForwardClaim(guest: "database", family: .v4, proto: .udp, hostAddress: IPAddress("198.18.0.1"),
                                          hostPorts: PortRange(5000, 5010), sources: []))
        #expect(claims[2] == ForwardClaim(guest: "database", family: .v6, proto: .sctp, hostAddress: nil, hostPorts: PortRange(9000, 9000),
                                          sources: [IPNetwork(parsing: "2001:db8::/32")!]))
    }

    @Test("Addresses, MACs and ports keep their strict forms")
    func parsing() {
        #expect(IPAddress("10.0.0.255")?.description == "10.0.0.255")
        #expect(IPAddress("0.0.0.0")?.description == "0.0.0.0")
        for bad in ["10.0.0", "10.0.0.256", "10.0.0.01", "10..0.1", "10.0.0.1.", ".10.0.0.1", "1.2.3.4.5", "١.2.3.4", ""] {
            #expect(IPAddress(bad) == nil, "\(bad)")
        }
        #expect(MACAddress("52:54:00:AB:cd:0F")?.description == "52:54:00:ab:cd:0f")
        for bad in ["52:54:00:ab:cd", "52:54:00:ab:cd:0f:", "52-54-00-ab-cd-0f", "52:54:00:ab:cd:0g", "5:254:00:ab:cd:0f"] {
            #expect(MACAddress(bad) == nil, "\(bad)")
        }
        #expect(PortRange.parse("80") == .success(PortRange(80, 80)))
        #expect(PortRange.parse("00080-00090") == .success(PortRange(80, 90)))
        #expect(PortRange.parse("0-x") == .failure(.outOfRange))
        #expect(PortRange.parse("x-0") == .failure(.notANumber))
        #expect(PortRange.parse("90-80") == .failure(.reversed))
        #expect(PortRange.parse("123456") == .failure(.notANumber))
        #expect(PortRange.parse("1-2-3") == .failure(.notANumber))
        #expect(PortRange.parse("-") == .failure(.notANumber))
        #expect(PortRange.parse("70000") == .failure(.outOfRange))
    }
}
