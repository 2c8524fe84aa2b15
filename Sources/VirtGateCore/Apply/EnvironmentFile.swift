#if canImport(Glibc)
import Glibc
#endif

/// virtgate's config file format, read the way swift-configuration's `EnvironmentVariablesProvider`
/// reads an environment file, and looked up with its key names. virtgate used that library for
/// this; loading the config through it was a third of a hook run's own work (measured: generic
/// metadata, an access logger that copies the environment, file reading through URL and Data),
/// while the format takes a dozen lines. Tests compare the two on many files
/// (`SettingsLoadingTests`), so the format and the names stay the library's.
enum EnvironmentFile {
    struct ReadError: Error, CustomStringConvertible {
        let description: String
    }

    /// The file's variables; nil when there is no file (a missing file means defaults).
    static func read(_ path: String) throws(ReadError) -> [String: String]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            if errno == ENOENT { return nil }
            throw ReadError(description: "cannot read: \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        // Not zeroed: libvirt's hooks read this file on every event, and zeroing wrote 4 fresh pages.
        let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: 16384)
        defer { buffer.deallocate() }
        while true {
            let count = Glibc.read(descriptor, buffer.baseAddress, buffer.count)
            if count > 0 {
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[0..<count]))
            } else if count == 0 {
                break
            } else if errno != EINTR {
                throw ReadError(description: "cannot read: \(String(cString: strerror(errno)))")
            }
        }
        return parse(String(decoding: bytes, as: UTF8.self))
    }

    /// `KEY=value` lines: both sides trimmed, the first `=` separates, lines without one and keys
    /// that start with `#` are skipped, and a later line wins. No quoting: quotes are part of the value.
    static func parse(_ contents: String) -> [String: String] {
        var variables: [String: String] = [:]
        let bytes = Array(contents.utf8)
        // The format is defined on characters (grapheme clusters), which is slow to do in Swift: 4.5 ms
        // for the commented default config, measured. A line feed is a cluster of its own unless a
        // carriage return precedes it, and on an ASCII line every byte is one, so bytes give the same
        // lines, and the same splits on ASCII lines. Other lines go through the character version.
        guard !bytes.contains(0x0D) else { return parseCharacters(contents) }
        for line in bytes.split(separator: 0x0A) {
            guard line.allSatisfy({ $0 < 0x80 }) else {
                if let (key, value) = variable(String(decoding: line, as: UTF8.self)) { variables[key] = value }
                continue
            }
            let parts = trimmed(line).split(separator: UInt8(ascii: "="), maxSplits: 1, omittingEmptySubsequences: false)
                .map { trimmed($0) }
            guard parts.count == 2, !parts[0].isEmpty, parts[0].first != UInt8(ascii: "#") else { continue }
            variables[String(decoding: parts[0], as: UTF8.self)] = String(decoding: parts[1], as: UTF8.self)
        }
        return variables
    }

    /// The definition itself, on characters.
    static func parseCharacters(_ contents: String) -> [String: String] {
        var variables: [String: String] = [:]
        for line in contents.split(separator: "\n") {
            if let (key, value) = variable(String(line)) { variables[key] = value }
        }
        return variables
    }

    static func variable(_ line: String) -> (String, String)? {
        let parts = line.trimmed().split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map { $0.trimmed() }
        guard parts.count == 2, !parts[0].isEmpty, parts[0].utf8.first != UInt8(ascii: "#") else { return nil }
        return (parts[0], parts[1])
    }

    /// ASCII white space as `Character.isWhitespace` has it: tab, line feed, vertical tab, form
    /// feed, carriage return, space.
    static func trimmed(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let isSpace = { (byte: UInt8) in byte == 0x20 || (0x09...0x0D).contains(byte) }
        guard let first = bytes.firstIndex(where: { !isSpace($0) }), let last = bytes.lastIndex(where: { !isSpace($0) }) else {
            return bytes[bytes.startIndex..<bytes.startIndex]
        }
        return bytes[first...last]
    }

    /// A camelCase key's variable name: `onInvalid` → `ON_INVALID` (an underscore where a lowercase
    /// letter meets an uppercase one; anything but letters and digits becomes an underscore).
    static func variableName(forKey key: String) -> String {
        // virtgate's keys are ASCII; on ASCII the character properties below are these byte tests.
        if key.utf8.allSatisfy({ $0 < 0x80 }) {
            var name: [UInt8] = []
            var previous: UInt8?
            for byte in key.utf8 {
                if let previous, (0x61...0x7A).contains(previous), (0x41...0x5A).contains(byte) { name.append(UInt8(ascii: "_")) }
                let upper = (0x61...0x7A).contains(byte) ? byte - 0x20 : byte
                let alphanumeric = (0x41...0x5A).contains(upper) || (0x30...0x39).contains(upper)
                name.append(alphanumeric ? upper : UInt8(ascii: "_"))
                previous = byte
            }
            return String(decoding: name, as: UTF8.self)
        }
        var name = ""
        var previous: Character?
        for character in key {
            if let previous, previous.isLowercase && character.isUppercase { name += "_" }
            name += character.uppercased()
            previous = character
        }
        return String(name.map { $0.isLetter || $0.isNumber ? $0 : "_" })
    }
}

extension StringProtocol {
    /// Without leading and trailing white space (Unicode's, as `Character.isWhitespace` has it).
    fileprivate func trimmed() -> String {
        String(trimmingPrefix(while: \.isWhitespace).reversed().trimmingPrefix(while: \.isWhitespace).reversed())
    }
}
