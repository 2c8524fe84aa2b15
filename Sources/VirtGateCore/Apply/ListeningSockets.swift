/// Host sockets that a forward would hide: a DNAT in PREROUTING wins over a local listener on the
/// same port. Read from /proc/net/{tcp,udp,sctp}[6] of the namespace virtgate runs in.
public enum ListeningSockets {
    /// `proto/port` for every listening TCP socket (state 0A) or bound UDP socket (state 07) in
    /// one /proc/net table.
    public static func parse(_ table: String, proto: TransportProtocol) -> Set<String> {
        var result = Set<String>()
        let wantedState = proto == .udp ? "07" : "0A"
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ")
            guard fields.count > 3, fields[3] == wantedState,
                  let colon = fields[1].lastIndex(of: ":"),
                  let port = UInt16(fields[1][fields[1].index(after: colon)...], radix: 16) else { continue }
            result.insert("\(proto.rawValue)/\(port)")
        }
        return result
    }

    public static func current(procNet: String = "/proc/net") -> Set<String> {
        var result = Set<String>()
        for (file, proto) in [("tcp", TransportProtocol.tcp), ("tcp6", .tcp), ("udp", .udp), ("udp6", .udp)] {
            if let text = read("\(procNet)/\(file)") { result.formUnion(parse(text, proto: proto)) }
        }
        return result
    }
}
