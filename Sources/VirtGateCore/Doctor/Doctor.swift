/// `virtgate doctor`: what is wrong with this host's firewall for libvirt guests, each problem in
/// one paragraph with the exact fix. Facts are gathered by the caller (files, /proc, one
/// iptables-save, one nft listing); the diagnosis is pure, so each broken state is a unit test.
public struct DoctorFacts: Sendable {
    public struct Hook: Sendable {
        public var driver: String
        /// Where virtgate is linked for this driver, nil when it is not installed there.
        public var path: String?
        public var executable: Bool
        /// Seconds since the epoch when the link was made (its own change time).
        public var installedAt: Int64?

        public init(driver: String, path: String?, executable: Bool, installedAt: Int64?) {
            self.driver = driver
            self.path = path
            self.executable = executable
            self.installedAt = installedAt
        }
    }

    public struct Daemon: Sendable {
        public var name: String
        public var startedAt: Int64

        public init(name: String, startedAt: Int64) {
            self.name = name
            self.startedAt = startedAt
        }
    }

    public var ipForwarding: Bool?
    public var snapshot: IptablesSnapshot?
    public var snapshotError: String?
    public var variant: IptablesVariant?
    /// Active libvirt networks (from libvirt's run directory or virtgate's state).
    public var networks: [NetworkDefinition] = []
    /// What virtgate would have in the kernel now (networks and guests it remembers).
    public var desired: DesiredChains?
    public var libvirtNftTable = false
    public var ufwActive = false
    public var legacyTablesPresent = false
    public var nftTablesPresent = false
    public var hooks: [Hook] = []
    public var daemons: [Daemon] = []
    public var ufwInstalled = false
    public var afterInitIntegrated = false
    /// With the nft backend: virtgate's table as the kernel has it, and what it should hold.
    public var nftState: NftState?
    public var desiredElements: DesiredElements?
    /// Native nftables base chains on the forward hook with a drop policy, outside iptables-nft's
    /// tables and virtgate's own: "family table chain".
    public var foreignForwardDrops: [String] = []
    /// Forwards guests hold whose host port a host process listens on now (it appeared after the
    /// guest took the port): "guest: claim, socket".
    public var hiddenSockets: [String] = []

    public init() {}
}

public struct Finding: Codable, Sendable, Equatable {
    /// Stable identifier, e.g. `ip-forwarding-off`.
    public var id: String
    public var problem: String
    public var fix: String
}

public enum Doctor {
    public static func diagnose(_ facts: DoctorFacts) -> [Finding] {
        var findings: [Finding] = []
        let routed = facts.networks.filter { $0.mode.isRouted && $0.bridge != nil }

        if !facts.hiddenSockets.isEmpty {
            findings.append(Finding(
                id: "forward-hides-host-socket",
                problem: "A guest's forward receives the traffic of a host service that started listening after the guest took the port: \(facts.hiddenSockets.joined(separator: "; ")). virtgate refuses such a forward when it is new, but keeps one a guest already holds.",
                fix: "move the host service to another port, or remove the forward (virtgate forward remove GUEST PORT) and run virtgate reapply"))
        }

        if facts.ipForwarding == false, !routed.isEmpty {
            findings.append(Finding(
                id: "ip-forwarding-off",
                problem: "IPv4 forwarding is off (net.ipv4.ip_forward=0) while the routed network(s) \(names(routed)) are active: guests cannot reach anything beyond the host, and no forward works. libvirt turns it on when a nat or route network starts; something turned it off since.",
                fix: "sysctl -w net.ipv4.ip_forward=1 (and set it in /etc/sysctl.d/ to keep it across reboots)"))
        }

        if let error = facts.snapshotError {
            findings.append(Finding(id: "ruleset-unreadable", problem: "The iptables ruleset could not be read: \(error).",
                                    fix: "run virtgate doctor as root"))
        }

        if let snapshot = facts.snapshot {
            let filter = snapshot.tables[.filter]
            let dropping = filter?.policies["FORWARD"] == "DROP"
            let inPlace = { (network: NetworkDefinition) -> Bool in
                let chain = ChainNames.chains(of: .network(network.name)).first { $0.table == .filter }!.name
                return filter?.chains.contains(chain) == true && (filter?.rules["FORWARD"]?.first == "-A FORWARD -j VIRTGATE-FWD")
            }
            let unprotected = routed.filter { !inPlace($0) }
            if dropping, !unprotected.isEmpty {
                findings.append(Finding(
                    id: "forward-drop-without-accept",
                    problem: "The FORWARD policy is DROP\(facts.ufwActive ? " (UFW)" : "") and the active network(s) \(names(unprotected)) have no virtgate accept at the top of FORWARD: guest traffic relies on libvirt's own rules, which reject inbound forwards and vanish on some firewall reloads.",
                    fix: "virtgate sync"))
            }

            if let desired = facts.desired {
                let text = IptablesTransaction.render(from: snapshot, to: desired)
                let owned = snapshot.ownerChains
                let chainsDiffer = owned != desired.filter { !$0.value.isEmpty }
                if chainsDiffer {
                    findings.append(Finding(
                        id: "rules-drift",
                        problem: "virtgate's rules in the kernel differ from what its networks and guests need (missing after a flush, or left over from something that is gone).",
                        fix: "virtgate sync"))
                } else if !text.isEmpty {
                    findings.append(Finding(
                        id: "jumps-not-first",
                        problem: "A jump into virtgate's chains is missing or no longer first in FORWARD, PREROUTING, OUTPUT or POSTROUTING: a rule inserted above it (a firewall reload, an admin) can reject or rewrite guest traffic before virtgate sees it.",
                        fix: "virtgate reapply"))
                }
            }
        }

        if facts.libvirtNftTable, facts.ufwActive {
            findings.append(Finding(
                id: "libvirt-nftables-under-ufw",
                problem: "libvirt uses its nftables backend (table ip libvirt_network) while UFW drops forwarded traffic in iptables: an accept in libvirt's nft table cannot override UFW's DROP, so guests lose their connectivity unless an accept sits in UFW's own FORWARD chain. virtgate's network chain in iptables is that accept. Inbound forwards are still rejected by libvirt's own nft table, which virtgate does not edit.",
                fix: "virtgate sync (restores egress), or firewall_backend = \"iptables\" in /etc/libvirt/network.conf and restart virtnetworkd or libvirtd"))
        }

        if let nft = facts.nftState, let desired = facts.desiredElements,
           Set(nft.elements) != Set(desired.values.joined()) || (!desired.isEmpty && nft.layout == nil)
            || (nft.baseChains != NftLayout.baseChains.count && NftTransaction.holdsForwards(desired)) {
            findings.append(Finding(
                id: "nft-elements-drift",
                problem: "virtgate's nftables table (table inet \(NftLayout.table)) does not hold exactly the forwards of the guests virtgate remembers (missing after a flush, or left over from something that is gone).",
                fix: "virtgate reapply (or virtgate sync)"))
        }

        if !facts.foreignForwardDrops.isEmpty {
            findings.append(Finding(
                id: "nft-forward-drop-elsewhere",
                problem: "The nftables chain(s) \(facts.foreignForwardDrops.joined(separator: ", ")) drop forwarded packets by policy. A packet accepted in one table still meets every other table's chains, so neither virtgate's accepts (in iptables) nor anything in its own nft table can override this drop: guest traffic and forwards die there.",
                fix: "admit the guests' bridges and connections with ct status dnat in that chain (its owner's configuration), or switch that firewall to iptables-nft so virtgate's accepts land in the same table"))
        }

        if facts.legacyTablesPresent, facts.nftTablesPresent {
            findings.append(Finding(
                id: "mixed-iptables-variants",
                problem: "Both iptables-legacy and iptables-nft tables are in use. Rules in one are invisible to the other, and an accept in one does not override a DROP in the other, so which one wins depends on hook order. virtgate writes to \(facts.variant?.rawValue ?? "the one /usr/sbin/iptables points to").",
                fix: "move every tool to one variant (update-alternatives --config iptables), then virtgate sync"))
        }

        for hook in facts.hooks {
            guard let path = hook.path else {
                findings.append(Finding(
                    id: "hook-missing-\(hook.driver)",
                    problem: "virtgate is not installed as libvirt's \(hook.driver) hook: \(hook.driver == "qemu" ? "guest forwards are not applied when guests start" : "network rules are not applied when networks start").",
                    fix: "./install.sh"))
                continue
            }
            if !hook.executable {
                findings.append(Finding(id: "hook-not-executable-\(hook.driver)",
                                        problem: "\(path) is not executable, so libvirt skips it.",
                                        fix: "chmod 0755 /usr/local/sbin/virtgate"))
            }
            if let installed = hook.installedAt, let daemon = facts.daemons.first(where: { $0.startedAt < installed }) {
                findings.append(Finding(
                    id: "hook-newer-than-daemon-\(hook.driver)",
                    problem: "\(path) was installed after \(daemon.name) started; libvirt reads its hooks only at start and on SIGHUP, so it does not run this one yet.",
                    fix: "systemctl reload \(daemon.name) (or kill -HUP its pid)"))
            }
        }

        if facts.ufwInstalled, !facts.afterInitIntegrated {
            findings.append(Finding(
                id: "ufw-after-init-missing",
                problem: "UFW is installed but /etc/ufw/after.init does not re-apply virtgate's rules: with MANAGE_BUILTINS=yes or after ufw-init flush-all, UFW wipes virtgate's jumps and nothing puts them back until the next guest event.",
                fix: "./install.sh"))
        }
        return findings
    }

    static func names(_ networks: [NetworkDefinition]) -> String {
        networks.map { InputProblem.quoted($0.name) }.joined(separator: ", ")
    }
}

