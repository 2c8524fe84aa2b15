import VirtGateCore

/// Just enough of iptables-restore --noflush to apply virtgate's transactions to a model of one
/// family's nat and filter tables, refusing what the real one refuses (a rule in an undeclared
/// chain, a jump to a missing chain, deleting a missing rule, removing a chain that still has rules
/// or is referenced), and to print the result as iptables-save would (rule lines as they were written).
public struct IptablesKernel {
    struct Table {
        var chains: [String]
        var builtins: Set<String>
        var rules: [String: [String]]
    }

    let family: IPFamily
    var tables: [String: Table]

    static let standardTargets: Set<String> = ["ACCEPT", "DROP", "RETURN", "DNAT", "SNAT", "MASQUERADE", "REJECT", "LOG"]

    public init(family: IPFamily) {
        self.family = family
        let nat = ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]
        let filter = ["INPUT", "FORWARD", "OUTPUT"]
        tables = [
            "nat": Table(chains: nat, builtins: Set(nat), rules: [:]),
            "filter": Table(chains: filter, builtins: Set(filter), rules: [:]),
        ]
    }

    /// Applies one `iptables-restore --noflush` input; a violation names the line.
    public mutating func restore(_ text: String) {
        var current: String?
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
            let line = String(rawLine)
            let context = "\(family) restore line \(InputProblem.quoted(line))"
            require(line.unicodeScalars.allSatisfy { $0.value >= 0x20 && $0.value < 0x7f },
                    "\(context): not printable ASCII")
            require(!line.hasPrefix(" ") && !line.hasSuffix(" ") && !line.contains("  "), "\(context): stray spaces")
            if line.hasPrefix("*") {
                require(current == nil, "\(context): table opened before COMMIT")
                let name = String(line.dropFirst())
                require(tables[name] != nil, "\(context): unknown table")
                current = name
                continue
            }
            guard let table = current else { violated("\(context): outside a table") }
            if line == "COMMIT" {
                for (chain, rules) in tables[table]!.rules {
                    for rule in rules {
                        if let target = Self.target(rule) {
                            require(Self.standardTargets.contains(target) || tables[table]!.chains.contains(target),
                                    "\(family) \(table): rule in \(chain) jumps to missing chain \(target): \(rule)")
                        }
                    }
                }
                current = nil
            } else if line.hasPrefix(":") {
                let fields = line.dropFirst().split(separator: " ").map(String.init)
                require(fields.count == 3 && fields[1] == "-" && fields[2] == "[0:0]", "\(context): not a chain declaration")
                let chain = fields[0]
                checkChainName(chain, context)
                require(!tables[table]!.builtins.contains(chain), "\(context): declares a built-in chain")
                if !tables[table]!.chains.contains(chain) { tables[table]!.chains.append(chain) }
                tables[table]!.rules[chain] = []
            } else if line.hasPrefix("-A ") || line.hasPrefix("-D ") {
                let (chain, spec) = Self.split(line.dropFirst(3))
                require(tables[table]!.chains.contains(chain), "\(context): no chain \(chain)")
                require(!spec.isEmpty, "\(context): empty rule")
                let rule = "-A \(chain) \(spec)"
                if line.hasPrefix("-A ") {
                    tables[table]!.rules[chain, default: []].append(rule)
                } else {
                    guard let index = tables[table]!.rules[chain, default: []].firstIndex(of: rule) else {
                        violated("\(context): deletes a rule that is not there")
                    }
                    tables[table]!.rules[chain]!.remove(at: index)
                }
            } else if line.hasPrefix("-I ") {
                let (chain, rest) = Self.split(line.dropFirst(3))
                require(tables[table]!.chains.contains(chain), "\(context): no chain \(chain)")
                let (position, spec) = Self.split(Substring(rest))
                require(position == "1" && !spec.isEmpty, "\(context): not an insert at position 1")
                tables[table]!.rules[chain, default: []].insert("-A \(chain) \(spec)", at: 0)
            } else if line.hasPrefix("-X ") {
                let chain = String(line.dropFirst(3))
                require(tables[table]!.chains.contains(chain) && !tables[table]!.builtins.contains(chain),
                        "\(context): removes a chain that is not there")
                require(tables[table]!.rules[chain, default: []].isEmpty, "\(context): removes a chain with rules")
                for (other, rules) in tables[table]!.rules {
                    require(!rules.contains { Self.target($0) == chain }, "\(context): chain still referenced from \(other)")
                }
                tables[table]!.chains.removeAll { $0 == chain }
                tables[table]!.rules[chain] = nil
            } else {
                violated("\(context): not a line iptables-restore takes")
            }
        }
        require(current == nil, "\(family) restore: no COMMIT at the end")
        require(text.isEmpty || text.hasSuffix("\n"), "\(family) restore: no final newline")
    }

    func checkChainName(_ chain: String, _ context: String) {
        require(!chain.isEmpty && chain.utf8.count <= ChainNames.maximumLength, "\(context): chain name length \(chain.utf8.count)")
        require(ChainNames.isOwned(chain), "\(context): declares a chain virtgate does not own")
    }

    /// As iptables-save prints it.
    public var saveText: String {
        var text = ""
        for name in ["nat", "filter"] {
            let table = tables[name]!
            text += "*\(name)\n"
            for chain in table.chains {
                text += ":\(chain) \(table.builtins.contains(chain) ? "ACCEPT" : "-") [0:0]\n"
            }
            for chain in table.chains {
                for rule in table.rules[chain] ?? [] { text += rule + "\n" }
            }
            text += "COMMIT\n"
        }
        return text
    }

    static func split(_ text: Substring) -> (String, String) {
        guard let space = text.firstIndex(of: " ") else { return (String(text), "") }
        return (String(text[..<space]), String(text[text.index(after: space)...]))
    }

    /// The rule's target (`-j X`), as the kernel would resolve it.
    static func target(_ rule: String) -> String? {
        let tokens = rule.split(separator: " ")
        guard let index = tokens.lastIndex(where: { $0 == "-j" || $0 == "-g" }), index + 1 < tokens.count else { return nil }
        return String(tokens[index + 1])
    }
}
