/// The guest side and the client side of the real connections, as one Python 3 script.
///
/// `serve READY TCPPORT UDPPORT...` runs in a guest namespace. An nft `redirect` there sends every TCP
/// connection to TCPPORT, where the listener answers with the destination the connection had before
/// that redirect (SO_ORIGINAL_DST: the host's DNAT target). UDP sockets on the sampled guest ports
/// answer with the address the datagram was sent to (IP_PKTINFO), replying from that address so the
/// host's conntrack can undo its DNAT. Answers are "ADDRESS PORT".
///
/// `probe` runs in a client namespace: it reads [[id, proto, address, port], ...] on stdin, tries them
/// all concurrently and prints {id: answer} ("" when nothing answered).
enum Traffic {
    static let redirectPort = 9
    static let script = #"""
import json, resource, selectors, socket, struct, sys
from concurrent.futures import ThreadPoolExecutor

IP_PKTINFO, IPV6_RECVPKTINFO, IPV6_PKTINFO, SO_ORIGINAL_DST = 8, 49, 50, 80

def serve(ready, tcp_port, udp_ports):
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (16384, 16384))
    except (ValueError, OSError):
        pass
    sel = selectors.DefaultSelector()
    for fam, any_address in ((socket.AF_INET, '0.0.0.0'), (socket.AF_INET6, '::')):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((any_address, tcp_port))
        s.listen(256)
        sel.register(s, selectors.EVENT_READ, ('tcp', fam, tcp_port))
        for port in udp_ports:
            u = socket.socket(fam, socket.SOCK_DGRAM)
            if fam == socket.AF_INET6:
                u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                u.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                u.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            u.bind((any_address, port))
            sel.register(u, selectors.EVENT_READ, ('udp', fam, port))
    open(ready, 'w').close()
    while True:
        for key, _ in sel.select():
            kind, fam, port = key.data
            if kind == 'tcp':
                try:
                    c, _ = key.fileobj.accept()
                except OSError:
                    continue
                try:
                    c.setblocking(True)
                    if fam == socket.AF_INET:
                        raw = c.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                        addr = socket.inet_ntop(fam, raw[4:8])
                    else:
                        raw = c.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
                        addr = socket.inet_ntop(fam, raw[8:24])
                    c.sendall(('%s %d\n' % (addr, struct.unpack('!H', raw[2:4])[0])).encode())
                except OSError:
                    pass
                finally:
                    c.close()
            else:
                try:
                    _, ancillary, _, peer = key.fileobj.recvmsg(2048, socket.CMSG_SPACE(64))
                except OSError:
                    continue
                local = None
                for level, ctype, data in ancillary:
                    if fam == socket.AF_INET and level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
                        local = data[8:12]
                    if fam == socket.AF_INET6 and level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
                        local = data[0:16]
                if local is None:
                    continue
                answer = ('%s %d\n' % (socket.inet_ntop(fam, local), port)).encode()
                if fam == socket.AF_INET:
                    control = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack('=i4s4s', 0, local, bytes(4)))]
                else:
                    control = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, local + struct.pack('=i', 0))]
                try:
                    key.fileobj.sendmsg([answer], control, 0, peer)
                except OSError:
                    pass

def probe(item):
    ident, proto, addr, port = item
    fam = socket.AF_INET6 if ':' in addr else socket.AF_INET
    # UDP has no handshake: a lost datagram looks like no answer, so it gets a second try.
    for _ in range(2 if proto == 'udp' else 1):
        try:
            if proto == 'tcp':
                with socket.socket(fam, socket.SOCK_STREAM) as s:
                    s.settimeout(1.5)
                    s.connect((addr, port))
                    data = b''
                    while not data.endswith(b'\n'):
                        chunk = s.recv(256)
                        if not chunk:
                            break
                        data += chunk
                    return ident, data.decode().strip()
            with socket.socket(fam, socket.SOCK_DGRAM) as s:
                s.settimeout(1.0)
                s.connect((addr, port))
                s.send(b'probe')
                return ident, s.recv(256).decode().strip()
        except OSError:
            pass
    return ident, ''

if sys.argv[1] == 'serve':
    serve(sys.argv[2], int(sys.argv[3]), [int(p) for p in sys.argv[4:]])
else:
    items = json.load(sys.stdin)
    with ThreadPoolExecutor(max_workers=64) as pool:
        json.dump(dict(pool.map(probe, items)), sys.stdout)
"""#

    struct Probe: Hashable {
        var client: Oracle.Client
        var proto: String
        var address: String
        var port: Int
        var description: String {
            let host = address.contains(":") ? "[\(address)]" : address
            return "\(client.rawValue) → \(proto) \(host):\(port)"
        }
    }

    /// The sample of connections for a case: ports inside forwarded ranges, at their edges and just
    /// outside, a few unrelated ones, each from a few (client, host address) pairs. Drawn from the
    /// case's seed, so a replay probes the same.
    static func probes(for testCase: Case) -> [Probe] {
        var rng = SeededGenerator(seed: testCase.seed ^ 0x5EED_0F_7AFF1C)
        let forwards = testCase.guests.flatMap(\.forwards).filter { $0.proto != "sctp" }
        var ports: [(String, Int, String?)] = [] // proto, port, a host address worth trying
        for forward in forwards {
            let range = forward.hostPorts
            for port in Set([range.lowerBound, range.upperBound, Int.random(in: range, using: &rng),
                             range.lowerBound - 1, range.upperBound + 1]) where (1...65535).contains(port) {
                ports.append((forward.proto, port, forward.hostAddress))
            }
        }
        ports.shuffle(using: &rng)
        ports = Array(ports.prefix(18))
        ports += [("tcp", Int.random(in: 30000...40000, using: &rng), nil), ("udp", Int.random(in: 30000...40000, using: &rng), nil)]
        var probes: [Probe] = []
        for (proto, port, named) in ports {
            var addresses = (0..<3).map { _ in rng.pick(rng.chance(60) ? Lab.hostAddresses4 : Lab.hostAddresses6) }
            if let named { addresses.append(named) }
            for address in addresses {
                probes.append(Probe(client: rng.pick(Oracle.Client.allCases), proto: proto, address: address, port: port))
            }
        }
        var seen = Set<Probe>()
        return probes.filter { seen.insert($0).inserted }
    }

    /// Guest ports the UDP responders listen on: wherever any forward (held or not) could send a
    /// sampled UDP probe, so a wrong mapping shows up as a wrong answer rather than silence.
    static func udpPorts(for testCase: Case, probes: [Probe]) -> [Int] {
        let sampled = Set(probes.filter { $0.proto == "udp" }.map(\.port))
        var ports = Set<Int>()
        for forward in testCase.guests.flatMap(\.forwards) where forward.proto == "udp" {
            for port in sampled where forward.hostPorts.contains(port) {
                ports.insert(forward.guestPorts.lowerBound + port - forward.hostPorts.lowerBound)
            }
        }
        return ports.sorted()
    }
}
