#if canImport(Glibc)
import Glibc
#endif

/// The one size cap for everything virtgate reads as input: a hook's standard input, the XML
/// parser, the files it reads from its state directory, libvirt's network directories and
/// dnsmasq's lease files. A domain definition is a few KiB; anything near this is not libvirt.
/// Every reader stops after `maximumBytes + 1` bytes, so a larger input is known to be larger
/// without ever being held whole.
public enum InputLimits {
    public static let maximumBytes = 4 << 20

    /// "larger than 4 MiB", for messages.
    public static var label: String { "\(maximumBytes >> 20) MiB" }

    /// At most `maximumBytes + 1` bytes from a file descriptor (until end of file).
    public static func read(fileDescriptor: Int32, sizeHint: Int = 65536) -> [UInt8] {
        var bytes: [UInt8] = []
        // A buffer of the size expected (plus one byte, to see the end in one read), not 64 KiB
        // for each of a sync's thousands of small state files. Not zeroed: zeroing 64 KiB for a
        // hook's few KiB of XML wrote 16 fresh pages, a page fault each, on every guest event.
        let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(1, min(sizeHint, 65536)))
        defer { buffer.deallocate() }
        while bytes.count <= maximumBytes {
            let wanted = min(buffer.count, maximumBytes + 1 - bytes.count)
            let count = Glibc.read(fileDescriptor, buffer.baseAddress, wanted)
            if count > 0 { bytes.append(contentsOf: UnsafeBufferPointer(rebasing: buffer[0..<count])); continue }
            if count < 0 && errno == EINTR { continue }
            break
        }
        return bytes
    }

    /// At most `maximumBytes + 1` bytes of the file at `path`; nil when it cannot be opened.
    public static func read(path: String) -> [UInt8]? {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        defer { close(descriptor) }
        var status = stat()
        let size = fstat(descriptor, &status) == 0 && status.st_size > 0 ? Int(status.st_size) + 1 : 65536
        return read(fileDescriptor: descriptor, sizeHint: size)
    }

    /// The file as text, capped: an over-long file comes back longer than the cap, and the parser
    /// that gets it refuses it by its size (invalid UTF-8 is replaced, which never makes it shorter).
    public static func readText(path: String) -> String? {
        read(path: path).map { String(decoding: $0, as: UTF8.self) }
    }
}
