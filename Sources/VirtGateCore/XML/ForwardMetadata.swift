/// The two other ways forwards are written besides the domain XML: the command-line shorthand
/// (`[HOST-ADDRESS:]HOST-PORTS[:GUEST-PORTS][/PROTO]`) and the metadata element virtgate writes back
/// through libvirt. Both go through `ForwardSpec.parse(attributes:)`, so every path validates alike.
public enum ForwardMetadata {
    /// Parses e.g. `8080:80/tcp`, `198.51.100.10:53:53/udp`, `[2001:db8::10]:443`, `5000-5009:6000-6009`.
    /// A leading IPv4 address, or an IPv6 one in brackets, is the host address; otherwise `A:B` is
    /// host port : guest port.
    public static func parseShorthand(_ text: String, sources: [String] = [], guestAddress: String? = nil,
                                      mac: String? = nil, guest: String) -> Result<ForwardSpec, InputProblem> {
        var body = Substring(text)
        var attributes: [String: String] = [:]
        if let slash = body.lastIndex(of: "/") {
            attributes["proto"] = String(body[body.index(after: slash)...])
            body = body[..<slash]
        }
        let usage = InputProblem(.guest(guest), field: "forward", value: text,
                                 reason: "expected [HOST-ADDRESS:]HOST-PORTS[:GUEST-PORTS][/PROTO]")
        if body.hasPrefix("[") {
            // An IPv6 host address, bracketed as in URLs: its colons are not port separators.
            guard let close = body.firstIndex(of: "]"), body[body.index(after: close)...].hasPrefix(":") else {
                return .failure(usage)
            }
            let ports = body[body.index(close, offsetBy: 2)...].split(separator: ":", omittingEmptySubsequences: false)
            guard ports.count <= 2 else { return .failure(usage) }
            attributes["host-address"] = String(body[body.index(after: body.startIndex)..<close])
            attributes["host-port"] = String(ports[0])
            if ports.count == 2 { attributes["guest-port"] = String(ports[1]) }
        } else {
            let parts = body.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            switch parts.count {
            case 1:
                attributes["host-port"] = parts[0]
            case 2 where IPAddress(parts[0]) != nil || parts[0].contains("."):
                attributes["host-address"] = parts[0]
                attributes["host-port"] = parts[1]
            case 2:
                attributes["host-port"] = parts[0]
                attributes["guest-port"] = parts[1]
            case 3:
                attributes["host-address"] = parts[0]
                attributes["host-port"] = parts[1]
                attributes["guest-port"] = parts[2]
            default:
                return .failure(usage)
            }
        }
        if !sources.isEmpty { attributes["source"] = sources.joined(separator: " ") }
        if let guestAddress { attributes["guest-address"] = guestAddress }
        if let mac { attributes["mac"] = mac }
        return ForwardSpec.parse(attributes: attributes, subject: .guest(guest), position: 0).mapError { problem in
            // Name the command-line argument rather than a metadata position.
            InputProblem(problem.subject, field: problem.field.replacing("forward #0 ", with: ""),
                         value: problem.value, reason: problem.reason)
        }
    }

    /// The attributes that reproduce `forward` (defaults left out), in a fixed order.
    public static func attributes(of forward: ForwardSpec) -> [(String, String)] {
        var result: [(String, String)] = [("proto", forward.proto.rawValue), ("host-port", forward.hostPorts.description)]
        if forward.guestPorts != forward.hostPorts { result.append(("guest-port", forward.guestPorts.description)) }
        if let address = forward.hostAddress { result.append(("host-address", address.description)) }
        if !forward.sources.isEmpty { result.append(("source", forward.sources.map(\.description).joined(separator: " "))) }
        if let address = forward.guestAddress { result.append(("guest-address", address.description)) }
        if let mac = forward.mac { result.append(("mac", mac.description)) }
        return result
    }

    /// The element handed to `virDomainSetMetadata` (key `vg`): unprefixed, libvirt puts it into
    /// virtgate's namespace. Values come from validated types, but are escaped all the same.
    public static func element(_ forwards: [ForwardSpec]) -> String {
        var xml = "<forwards>\n"
        for forward in forwards {
            let attributes = attributes(of: forward).map { "\($0.0)=\"\(escape($0.1))\"" }.joined(separator: " ")
            xml += "  <forward \(attributes)/>\n"
        }
        return xml + "</forwards>"
    }

    static func escape(_ text: String) -> String {
        var out = ""
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(character)
            }
        }
        return out
    }

    /// Forwards read back from the element libvirt returns for virtgate's namespace: bare
    /// (`<forwards>`) from virDomainGetMetadata, or namespaced as in the domain XML.
    public static func forwards(fromElement xml: String, guest: String) throws -> (forwards: [ForwardSpec], problems: [InputProblem]) {
        let subject = InputProblem.Subject.guest(guest)
        let root: XMLElement
        do {
            root = try XMLTree.parse(xml)
        } catch {
            throw VirtGateError(InputProblem(subject, field: "metadata", value: String(xml.prefix(40)), reason: error.description))
        }
        guard root.name == "forwards", root.namespaceURI == nil || root.namespaceURI == LibvirtXML.metadataNamespace else {
            throw VirtGateError(InputProblem(subject, field: "metadata", value: root.name, reason: "expected <forwards>"))
        }
        return LibvirtXML.forwards(in: root.children, subject: subject)
    }
}
