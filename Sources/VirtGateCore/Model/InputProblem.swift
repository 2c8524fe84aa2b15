/// One thing wrong with what libvirt or the admin gave us, reported as a single line that names
/// the guest (or network), the field and the offending value.
public struct InputProblem: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Subject: Hashable, Sendable {
        case guest(String)
        case network(String)
    }

    public let subject: Subject
    public let field: String
    public let value: String
    public let reason: String

    public init(_ subject: Subject, field: String, value: String, reason: String) {
        self.subject = subject
        self.field = field
        self.value = value
        self.reason = reason
    }

    public var description: String {
        let who = switch subject {
        case .guest(let name): "guest \(Self.quoted(name))"
        case .network(let name): "network \(Self.quoted(name))"
        }
        let line = "\(who): \(field)=\(Self.quoted(value)): \(reason)".cappedLine
        // Room for what a log line adds around it ("virtgate: warning: …; forward skipped").
        return line.count <= Self.maximumLength ? line : String(line.prefix(Self.maximumLength)) + "…"
    }

    /// A problem's line, so that every log line that carries one stays within 1000 characters.
    public static let maximumLength = 900

    /// Quotes a value so that control characters, quotes and very long values cannot break the
    /// one-line format of logs.
    public static func quoted(_ value: String) -> String {
        var out = "\""
        var count = 0
        for scalar in value.unicodeScalars {
            count += 1
            if count > 80 { out += "…"; break }
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20 || scalar.value == 0x7f:
                out += "\\x" + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// Names that end up in file paths and chain names. libvirt itself forbids '/', but hook input is
/// untrusted text: check again before a name touches the file system.
enum Names {
    static func isSafeObjectName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 255 && name != "." && name != ".."
            && !name.unicodeScalars.contains { $0 == "/" || $0.value < 0x20 || $0.value == 0x7f }
    }

    /// Linux interface names as the kernel takes them: 1...15 bytes, none of '/', ':' or white space;
    /// printable ASCII without quotes or backslashes, so a name renders into a rule as it is; and no
    /// trailing '+', which iptables' `-i`/`-o` read as a wildcard for every name with that prefix.
    static func isValidInterfaceName(_ name: String) -> Bool {
        (1...15).contains(name.utf8.count) && name != "." && name != ".." && !name.hasSuffix("+")
            && name.unicodeScalars.allSatisfy {
                $0.isASCII && $0.value > 0x20 && $0.value < 0x7f && $0 != "/" && $0 != ":"
                    && $0 != "\"" && $0 != "'" && $0 != "\\"
            }
    }
}
