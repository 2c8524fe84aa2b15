import CNettle

/// SHA-256 through nettle (nettle-dev; release builds link it statically): owner ids and state file
/// names of long or unusual guest names, where collisions must not be craftable. swift-crypto
/// brought all of Foundation, with ICU's data, into the binary (94 MB instead of 32).
enum SHA256 {
    static let digestSize = 32

    static func hash<Bytes: Collection>(data: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var context = sha256_ctx()
        nettle_sha256_init(&context)
        let input = Array(data)
        input.withUnsafeBufferPointer { nettle_sha256_update(&context, $0.count, $0.baseAddress) }
        var digest = [UInt8](repeating: 0, count: digestSize)
        digest.withUnsafeMutableBufferPointer { nettle_sha256_digest(&context, $0.count, $0.baseAddress) }
        return digest
    }
}
