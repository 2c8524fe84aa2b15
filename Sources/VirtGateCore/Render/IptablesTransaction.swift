/// The kernel's current rules for the tables virtgate touches, parsed from `iptables-save` and
/// `ip6tables-save`.
public struct IptablesSnapshot: Hashable, Sendable {
    public struct Table: Hashable, Sendable {
        /// Chains in the order iptables-save lists them.
        public var chains: [String] = []
        /// Rule lines (`-A CHAIN …`) per chain, in order.
        public var rules: [String: [String]] = [:]
        /// Policies of built-in chains (`ACCEPT`, `DROP`).
        public var policies: [String: String] = [:]
    }

    public var tables: [IptablesTable: Table] = [:]

    public init() {}

    /// The kernel as if `chains` had been applied: owner chains only, as virtgate reads them back
    /// (for planning against a state without a kernel, as tests do).
    public init(chains: DesiredChains) {
        for (table, owned) in chains {
            tables[table] = Table(chains: owned.keys.sorted(), rules: owned, policies: [:])
        }
    }

    /// `text` is one family's save output; `ip6tables` for IPv6 adds to the same snapshot.
    public init(parsing text: String, family: IPFamily = .v4) {
        add(parsing: text, family: family)
    }

    public mutating func add(parsing text: String, family: IPFamily) {
        var current: IptablesTable?
        // Lines split on the newline byte: splitting a String by Character runs grapheme breaking
        // over every byte of a ruleset that can have tens of thousands of rules.
        for rawLine in text.utf8.split(separator: 0x0A, omittingEmptySubsequences: true) {
            let line = String(Substring(rawLine))
            if line.hasPrefix("*") {
                current = IptablesTable(name: String(line.dropFirst()), family: family)
                if let current { tables[current] = tables[current] ?? Table() }
            } else if line.hasPrefix(":"), let current {
                let fields = line.dropFirst().split(separator: " ")
                let name = String(fields.first ?? "")
                if fields.count > 1, fields[1] != "-" { tables[current]!.policies[name] = String(fields[1]) }
                tables[current]!.chains.append(name)
                tables[current]!.rules[name] = tables[current]!.rules[name] ?? []
            } else if line.hasPrefix("-A "), let current {
                let chain = String(line.dropFirst(3).prefix { $0 != " " })
                tables[current, default: Table()].rules[chain, default: []].append(line)
            }
        }
    }

    /// Per-owner chains (everything owned except the dispatch chains), with their rules.
    public var ownerChains: [IptablesTable: [String: [String]]] {
        var result: [IptablesTable: [String: [String]]] = [:]
        for (table, dump) in tables {
            for chain in dump.chains where ChainNames.isOwned(chain) && TopChain(rawValue: chain) == nil {
                result[table, default: [:]][chain] = dump.rules[chain] ?? []
            }
        }
        return result
    }

    /// The target of a rule line (`-j X` or `-g X`), skipping quoted text such as comments.
    static func target(of rule: String) -> String? {
        var tokens: [Substring] = []
        var inQuote = false
        var start: String.Index?
        for index in rule.indices {
            let character = rule[index]
            if character == "\"" { inQuote.toggle() }
            if character == " " && !inQuote {
                if let begin = start { tokens.append(rule[begin..<index]); start = nil }
            } else if start == nil {
                start = index
            }
        }
        if let begin = start { tokens.append(rule[begin...]) }
        guard let position = tokens.lastIndex(where: { $0 == "-j" || $0 == "-g" }), position + 1 < tokens.count
        else { return nil }
        return String(tokens[position + 1])
    }
}

/// The chains virtgate wants per table, keyed by chain name: owner chains only; the dispatch chains
/// and the built-in jumps are derived from them.
public typealias DesiredChains = [IptablesTable: [String: [String]]]

public enum IptablesTransaction {
    /// Replaces the chains of `owner` in `current` with `chains` (an empty list removes the owner).
    public static func desired(_ current: DesiredChains, replacing owner: Owner, with chains: [OwnedChain]) -> DesiredChains {
        var result = current
        replace(&result, owner: owner, with: chains)
        return result
    }

    /// In place, for loops over many owners (no copy per owner).
    public static func replace(_ desired: inout DesiredChains, owner: Owner, with chains: [OwnedChain]) {
        for chain in ChainNames.chains(of: owner) {
            desired[chain.table, default: [:]][chain.name] = nil
        }
        for chain in chains where !chain.rules.isEmpty {
            desired[chain.table, default: [:]][chain.name] = chain.rules
        }
    }

    /// The dispatch chain an owner chain hangs from, by its prefix.
    static func parent(of chain: String) -> TopChain? {
        switch chain.prefix(4) {
        case "VGN-", "VGF-": .forward
        case "VGD-": .dnat
        case "VGM-", "VGS-": .postrouting
        default: nil
        }
    }

    /// Full desired content of every owned chain of `table`, dispatch chains included. Jumps are
    /// sorted by chain name, so the result depends only on the set of owners, not on event order.
    static func fullChains(_ desired: DesiredChains, table: IptablesTable) -> [String: [String]] {
        var chains = desired[table] ?? [:]
        for top in TopChain.allCases where top.lives(in: table) {
            let children = chains.keys.filter { parent(of: $0) == top }.sorted()
            if !children.isEmpty {
                chains[top.rawValue] = children.map { "-A \(top.rawValue) -j \($0)" }
            }
        }
        return chains
    }

    /// Both families' transactions as one text, for dry-runs and tests: the IPv6 part, when there is
    /// one, follows a `# ip6tables-restore` comment line (which iptables-restore would skip).
    public static func render(from snapshot: IptablesSnapshot, to desired: DesiredChains) -> String {
        let v4 = render(from: snapshot, to: desired, family: .v4)
        let v6 = render(from: snapshot, to: desired, family: .v6)
        return v6.isEmpty ? v4 : v4 + "# ip6tables-restore\n" + v6
    }

    /// `iptables-restore --noflush` (or ip6tables-) input that turns `snapshot` into `desired` for
    /// virtgate's chains and jumps of one family, touching nothing else. Empty when the kernel matches.
    public static func render(from snapshot: IptablesSnapshot, to desired: DesiredChains, family: IPFamily) -> String {
        var output = ""
        for table in IptablesTable.tables(of: family) {
            let dump = snapshot.tables[table] ?? IptablesSnapshot.Table()
            let want = fullChains(desired, table: table)
            let have = Set(dump.chains.filter(ChainNames.isOwned))

            let create = want.keys.filter { !have.contains($0) }.sorted()
            let rewrite = want.keys.filter { have.contains($0) && dump.rules[$0] ?? [] != want[$0]! }.sorted()
            let delete = have.filter { want[$0] == nil }.sorted()

            var unjump: [String] = []
            var jump: [String] = []
            // Built-in chains in a fixed order, so output is stable.
            for builtin in ["PREROUTING", "OUTPUT", "FORWARD", "POSTROUTING"] {
                let wanted = TopChain.allCases
                    .filter { $0.lives(in: table) && want[$0.rawValue] != nil }
                    .flatMap { $0.builtinJumps(family) }.filter { $0.chain == builtin }
                    .map { "-A \(builtin) \($0.spec)" }
                let rules = dump.rules[builtin] ?? []
                let ours = rules.filter { rule in IptablesSnapshot.target(of: rule).map(ChainNames.isOwned) ?? false }
                // Ours must be exactly the wanted jumps, at the very top and in order.
                if Array(rules.prefix(wanted.count)) == wanted && ours == wanted { continue }
                unjump += ours.map { "-D" + $0.dropFirst(2) }
                jump += wanted.reversed().map { "-I \(builtin) 1" + $0.dropFirst(2 + builtin.count + 1) }
            }
            guard !(create.isEmpty && rewrite.isEmpty && delete.isEmpty && unjump.isEmpty && jump.isEmpty) else {
                continue
            }
            output += "*\(table.name)\n"
            // Declaring a chain creates it, or flushes it when it exists: rewritten and doomed chains
            // are emptied first, so no reference blocks their deletion.
            for chain in create + rewrite + delete { output += ":\(chain) - [0:0]\n" }
            for line in unjump { output += line + "\n" }
            // Owner chains before dispatch chains, so every jump's target has its rules already.
            let filled = (create + rewrite).sorted { (TopChain(rawValue: $0) != nil ? 1 : 0, $0) < (TopChain(rawValue: $1) != nil ? 1 : 0, $1) }
            for chain in filled {
                for rule in want[chain]! { output += rule + "\n" }
            }
            for line in jump { output += line + "\n" }
            for chain in delete { output += "-X \(chain)\n" }
            output += "COMMIT\n"
        }
        return output
    }
}
