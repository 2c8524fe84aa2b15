extension IptablesSnapshot {
    /// The forwards guests hold in the kernel, read back from virtgate's own DNAT chains (which it
    /// renders in a fixed form). The kernel, not a state file, decides who was first: it is what
    /// actually receives the packets. `names` maps chain ids to guest names; unknown ids stand for
    /// themselves.
    public func forwardClaims(names: [String: String] = [:]) -> [ForwardClaim] {
        var claims: [ForwardClaim] = []
        for table in [IptablesTable.nat, .nat6] {
            guard let nat = tables[table] else { continue }
            claims += forwardClaims(nat, family: table.family, names: names)
        }
        return claims
    }

    func forwardClaims(_ nat: Table, family: IPFamily, names: [String: String]) -> [ForwardClaim] {
        var claims: [ForwardClaim] = []
        for chain in nat.chains where chain.hasPrefix("VGD-") {
            let id = String(chain.dropFirst(4))
            let guest = names[id] ?? id
            for rule in nat.rules[chain] ?? [] {
                // Split on the space byte (not by Character: thousands of rules).
                let tokens = rule.utf8.split(separator: 0x20).map { String(Substring($0)) }
                func value(after flag: String) -> String? {
                    guard let index = tokens.firstIndex(of: flag), index + 1 < tokens.count,
                          index == 0 || tokens[index - 1] != "!" else { return nil }
                    return tokens[index + 1]
                }
                guard let protoText = value(after: "-p"), let proto = TransportProtocol(rawValue: protoText),
                      let portText = value(after: "--dport"),
                      case .success(let ports) = PortRange.parse(portText.replacing(":", with: "-")) else { continue }
                let hostAddress = value(after: "-d").flatMap { IPNetwork(parsing: $0) }.map(\.address)
                let source = value(after: "-s").flatMap { IPNetwork(parsing: $0) }
                let claim = ForwardClaim(guest: guest, family: family, proto: proto, hostAddress: hostAddress, hostPorts: ports,
                                         sources: source.map { [$0] } ?? [])
                claims.append(claim)
            }
        }
        return claims
    }
}
