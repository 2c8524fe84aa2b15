#if canImport(Glibc)
import Glibc
#endif

/// virtgate's table read from the kernel over netlink, through libnftnl and libmnl (the libraries
/// nft itself is built on), opened on first use: its tables, its chains (for the layout marker) and
/// the elements of the current layout's maps and sets. libnftables' listing builds and prints an
/// expression tree for every element: with 1,000 guests × 5 forwards in the table that cost about
/// 90 ms of CPU on every event that reads it, against a few ms here.
///
/// Only a table of the current layout version is read this way (its maps' key types are known);
/// anything else, or any element of a shape virtgate never writes, answers `nil` and the caller
/// reads the table through nft's listing instead.
final class NftNetlink: Sendable {
    typealias SocketOpen = @convention(c) (Int32) -> OpaquePointer?
    typealias SocketBind = @convention(c) (OpaquePointer?, UInt32, pid_t) -> Int32
    typealias SocketClose = @convention(c) (OpaquePointer?) -> Int32
    typealias SocketPortID = @convention(c) (OpaquePointer?) -> UInt32
    typealias SocketSend = @convention(c) (OpaquePointer?, UnsafeRawPointer?, Int) -> Int
    typealias SocketReceive = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int) -> Int
    typealias BuildHeader = @convention(c) (UnsafeMutablePointer<CChar>?, UInt16, UInt16, UInt16, UInt32) -> UnsafeMutableRawPointer?
    typealias SetAllocate = @convention(c) () -> OpaquePointer?
    typealias SetFree = @convention(c) (OpaquePointer?) -> Void
    typealias SetString = @convention(c) (OpaquePointer?, UInt16, UnsafePointer<CChar>?) -> Int32
    typealias SetU32 = @convention(c) (OpaquePointer?, UInt16, UInt32) -> Void
    typealias BuildElements = @convention(c) (UnsafeMutableRawPointer?, OpaquePointer?) -> Void
    typealias ParseElements = @convention(c) (UnsafeRawPointer?, OpaquePointer?) -> Int32
    typealias IteratorCreate = @convention(c) (OpaquePointer?) -> OpaquePointer?
    typealias IteratorNext = @convention(c) (OpaquePointer?) -> OpaquePointer?
    typealias IteratorDestroy = @convention(c) (OpaquePointer?) -> Void
    typealias ElementGet = @convention(c) (OpaquePointer?, UInt16, UnsafeMutablePointer<UInt32>?) -> UnsafeRawPointer?
    typealias ElementIsSet = @convention(c) (OpaquePointer?, UInt16) -> Bool
    typealias ElementAllocate = @convention(c) () -> OpaquePointer?
    typealias ElementSet = @convention(c) (OpaquePointer?, UInt16, UnsafeRawPointer?, UInt32) -> Int32
    typealias ElementAdd = @convention(c) (OpaquePointer?, OpaquePointer?) -> Void
    typealias Batch = @convention(c) (UnsafeMutablePointer<CChar>?, UInt32) -> UnsafeMutableRawPointer?
    typealias SocketDescriptor = @convention(c) (OpaquePointer?) -> Int32

    struct Functions {
        let socketOpen: SocketOpen, socketBind: SocketBind, socketClose: SocketClose, portID: SocketPortID
        let send: SocketSend, receive: SocketReceive
        let buildHeader: BuildHeader, setAllocate: SetAllocate, setFree: SetFree, setString: SetString, setU32: SetU32
        let buildElements: BuildElements, parseElements: ParseElements
        let iteratorCreate: IteratorCreate, iteratorNext: IteratorNext, iteratorDestroy: IteratorDestroy
        let elementGet: ElementGet, elementIsSet: ElementIsSet
        let elementAllocate: ElementAllocate, elementSet: ElementSet, elementAdd: ElementAdd
        let batchBegin: Batch, batchEnd: Batch, socketDescriptor: SocketDescriptor
    }

    let functions: Functions
    /// libnftnl's tables, chains, sets and rules (`NftNetlinkTable.swift`); nil when one is
    /// missing, and then the table is created through libnftables.
    let objects: ObjectFunctions?

    /// nil when either library cannot be loaded (then nft's listing is used).
    static let shared: NftNetlink? = NftNetlink()

    private init?() {
        guard let nftnl = dlopen("libnftnl.so.11", RTLD_NOW | RTLD_LOCAL),
              let mnl = dlopen("libmnl.so.0", RTLD_NOW | RTLD_LOCAL) else { return nil }
        func symbol<T>(_ handle: UnsafeMutableRawPointer, _ name: String, _: T.Type) -> T? {
            dlsym(handle, name).map { unsafeBitCast($0, to: T.self) }
        }
        guard let socketOpen = symbol(mnl, "mnl_socket_open", SocketOpen.self),
              let socketBind = symbol(mnl, "mnl_socket_bind", SocketBind.self),
              let socketClose = symbol(mnl, "mnl_socket_close", SocketClose.self),
              let portID = symbol(mnl, "mnl_socket_get_portid", SocketPortID.self),
              let send = symbol(mnl, "mnl_socket_sendto", SocketSend.self),
              let receive = symbol(mnl, "mnl_socket_recvfrom", SocketReceive.self),
              let buildHeader = symbol(nftnl, "nftnl_nlmsg_build_hdr", BuildHeader.self),
              let setAllocate = symbol(nftnl, "nftnl_set_alloc", SetAllocate.self),
              let setFree = symbol(nftnl, "nftnl_set_free", SetFree.self),
              let setString = symbol(nftnl, "nftnl_set_set_str", SetString.self),
              let setU32 = symbol(nftnl, "nftnl_set_set_u32", SetU32.self),
              let buildElements = symbol(nftnl, "nftnl_set_elems_nlmsg_build_payload", BuildElements.self),
              let parseElements = symbol(nftnl, "nftnl_set_elems_nlmsg_parse", ParseElements.self),
              let iteratorCreate = symbol(nftnl, "nftnl_set_elems_iter_create", IteratorCreate.self),
              let iteratorNext = symbol(nftnl, "nftnl_set_elems_iter_next", IteratorNext.self),
              let iteratorDestroy = symbol(nftnl, "nftnl_set_elems_iter_destroy", IteratorDestroy.self),
              let elementGet = symbol(nftnl, "nftnl_set_elem_get", ElementGet.self),
              let elementIsSet = symbol(nftnl, "nftnl_set_elem_is_set", ElementIsSet.self),
              let elementAllocate = symbol(nftnl, "nftnl_set_elem_alloc", ElementAllocate.self),
              let elementSet = symbol(nftnl, "nftnl_set_elem_set", ElementSet.self),
              let elementAdd = symbol(nftnl, "nftnl_set_elem_add", ElementAdd.self),
              let batchBegin = symbol(nftnl, "nftnl_batch_begin", Batch.self),
              let batchEnd = symbol(nftnl, "nftnl_batch_end", Batch.self),
              let socketDescriptor = symbol(mnl, "mnl_socket_get_fd", SocketDescriptor.self) else { return nil }
        functions = Functions(socketOpen: socketOpen, socketBind: socketBind, socketClose: socketClose, portID: portID,
                              send: send, receive: receive, buildHeader: buildHeader,
                              setAllocate: setAllocate, setFree: setFree, setString: setString, setU32: setU32,
                              buildElements: buildElements, parseElements: parseElements,
                              iteratorCreate: iteratorCreate, iteratorNext: iteratorNext, iteratorDestroy: iteratorDestroy,
                              elementGet: elementGet, elementIsSet: elementIsSet,
                              elementAllocate: elementAllocate, elementSet: elementSet, elementAdd: elementAdd,
                              batchBegin: batchBegin, batchEnd: batchEnd, socketDescriptor: socketDescriptor)
        objects = ObjectFunctions(nftnl)
    }

    // linux/netfilter/nf_tables.h and libnftnl/set.h: a stable ABI.
    static let getTable: UInt16 = 1, getChain: UInt16 = 4, getSetElements: UInt16 = 13
    static let newSetElements: UInt16 = 12, deleteSetElements: UInt16 = 14
    static let tableName: UInt16 = 1, chainTable: UInt16 = 1, chainName: UInt16 = 3
    static let familyInet: UInt16 = 1
    static let setTable: UInt16 = 0, setName: UInt16 = 1, setFamily: UInt16 = 7, setID: UInt16 = 8
    static let elementFlags: UInt16 = 0, elementKey: UInt16 = 1, elementData: UInt16 = 4
    static let elementUserData: UInt16 = 7, elementKeyEnd: UInt16 = 10

    /// The table as `NftState`; nil when it is of another layout, or holds anything this reader
    /// does not know (the caller then reads it through nft's listing).
    func state(scope: NftReadScope? = nil) throws -> NftState? {
        let session = try Session(functions)
        defer { session.close() }
        var state = NftState()
        // Tables and chains of the inet family: a handful, dumped whole and filtered here.
        try session.dump(Self.getTable) { attributes in
            if attributes[Self.tableName] == NftLayout.table { state.exists = true }
        }
        guard state.exists else { return state }
        try session.dump(Self.getChain) { attributes in
            if attributes[Self.chainTable] == NftLayout.table, let name = attributes[Self.chainName] {
                if name.hasPrefix("layout-") { state.layout = name }
                if NftLayout.baseChains.contains(name) { state.baseChains += 1 }
            }
        }
        guard let layout = state.layout, layout.hasPrefix("layout-\(NftLayout.version)-") else { return nil }
        // Another mark, or some base chains missing: the change rebuilds the table from what it
        // read, so everything is read.
        let whole = state.baseChains == 0 || state.baseChains == NftLayout.baseChains.count
        let scope = scope.flatMap { $0.marker == layout && whole ? $0 : nil }
        for (set, fields) in NftLayout.elementFields {
            guard let (elements, unread) = try session.elements(of: set, fields: fields, scope: scope) else { return nil }
            state.elements += elements
            state.unreadElements += unread
        }
        return state
    }

    static let getGeneration: UInt16 = 16, generationID: UInt16 = 1

    /// The ruleset generation of this network namespace: the kernel counts every nf_tables commit
    /// in it, virtgate's own, nft's, libvirt's and iptables-nft's alike. Two equal readings mean
    /// nothing of nf_tables changed in between.
    func generation() throws -> UInt32 {
        let session = try Session(functions)
        defer { session.close() }
        var generation: UInt32?
        try session.exchange({ buffer, sequence in
            _ = functions.buildHeader(buffer, Self.getGeneration, 0 /* AF_UNSPEC */, 0x4 /* NLM_F_ACK */, sequence)
        }, { message, length in
            // NFT_MSG_NEWGEN: after the netlink and nfgenmsg headers, NFTA_GEN_ID (u32, big-endian).
            var offset = 20
            while offset + 8 <= length {
                let attributeLength = Int(message.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
                let type = message.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & 0x3fff
                guard attributeLength >= 4 else { break }
                if type == Self.generationID, attributeLength >= 8 {
                    generation = UInt32(bigEndian: message.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
                }
                offset += (attributeLength + 3) & ~3
            }
        })
        guard let generation else { throw VirtGateError(.firewall, "netlink: the kernel gave no ruleset generation") }
        return generation
    }

    /// Writes `changes` as one netfilter batch: the kernel applies all of it or none. A guest event
    /// then never loads libnftables (its loading and its parsing of the script cost about a
    /// millisecond per event, and creating the table about 5 ms more). false, with nothing
    /// written, when an element does not fit its map (the caller then applies the script through
    /// libnftables).
    func apply(_ changes: NftChanges) throws -> Bool {
        let fields = Dictionary(uniqueKeysWithValues: NftLayout.elementFields)
        var messages: [BatchMessage] = []
        switch changes.table {
        case .kept: break
        case .removed:
            // Declared first, so that the removal holds whether or not it is still there.
            guard let declare = tableMessage(delete: false), let remove = tableMessage(delete: true) else { return false }
            messages += [declare, remove]
        case .hooked(let mark):
            guard let chains = definition(NftProgram.baseChains(mark: mark)) else { return false }
            messages += chains
        case .created(let mark, let replacing, let hooked):
            if replacing {
                guard let declare = tableMessage(delete: false), let remove = tableMessage(delete: true) else { return false }
                messages += [declare, remove]
            }
            guard let table = definition(NftProgram.table(mark: mark, hooked: hooked)) else { return false }
            messages += table
        }
        // Each element as the kernel takes it, or nothing is sent.
        for (delete, elements) in [(true, changes.removed), (false, changes.added)] {
            for (set, group) in NftTransaction.grouped(elements) {
                guard let shape = fields[set] else { return false }
                // A message's elements are one netlink attribute, whose length is 16 bits: a set's
                // elements go in messages of at most `messageBytes` (as nft splits them too).
                var batch: [EncodedElement] = [], bytes = 0
                // Elements are encoded each on its own: a sync's thousands on every core.
                for encoded in group.parallelMap(threshold: 256, { EncodedElement($0, fields: shape, withData: !delete) }) {
                    guard let one = encoded else { return false }
                    if bytes + one.size > Self.messageBytes, !batch.isEmpty {
                        messages.append(elementMessage(delete: delete, set: set, batch))
                        batch = []
                        bytes = 0
                    }
                    batch.append(one)
                    bytes += one.size
                }
                messages.append(elementMessage(delete: delete, set: set, batch))
            }
        }
        guard !messages.isEmpty else { return true }
        let session = try Session(functions)
        defer { session.close() }
        try session.write(messages)
        return true
    }

    /// One message of a batch: its type and flags, an upper bound of its size, and what writes
    /// its payload after the header.
    struct BatchMessage {
        var type: UInt16
        var flags: UInt16
        var size: Int
        var payload: (UnsafeMutableRawPointer) throws -> Void
    }

    // NLM_F_REQUEST | NLM_F_ACK, with NLM_F_CREATE to add and NLM_F_APPEND for rules.
    static let request: UInt16 = 0x1 | 0x4, create: UInt16 = 0x400, append: UInt16 = 0x800

    func elementMessage(delete: Bool, set name: String, _ elements: [EncodedElement], setID: UInt32? = nil) -> BatchMessage {
        let functions = self.functions
        return BatchMessage(type: delete ? Self.deleteSetElements : Self.newSetElements,
                            flags: delete ? Self.request : Self.request | Self.create,
                            size: 256 + elements.reduce(0) { $0 + $1.size }) { header in
            guard let set = functions.setAllocate() else { throw VirtGateError(.firewall, "netlink: out of memory") }
            defer { functions.setFree(set) }
            _ = functions.setString(set, Self.setTable, NftLayout.table)
            _ = functions.setString(set, Self.setName, name)
            functions.setU32(set, Self.setFamily, UInt32(Self.familyInet))
            if let setID { functions.setU32(set, Self.setID, setID) }
            for element in elements {
                guard let handle = functions.elementAllocate() else { throw VirtGateError(.firewall, "netlink: out of memory") }
                element.key.withUnsafeBytes { _ = functions.elementSet(handle, Self.elementKey, $0.baseAddress, UInt32($0.count)) }
                element.keyEnd?.withUnsafeBytes { _ = functions.elementSet(handle, Self.elementKeyEnd, $0.baseAddress, UInt32($0.count)) }
                element.data?.withUnsafeBytes { _ = functions.elementSet(handle, Self.elementData, $0.baseAddress, UInt32($0.count)) }
                if !element.comment.isEmpty {
                    element.comment.withUnsafeBytes { _ = functions.elementSet(handle, Self.elementUserData, $0.baseAddress, UInt32($0.count)) }
                }
                functions.elementAdd(set, handle)                 // the set frees it
            }
            functions.buildElements(header, set)
        }
    }

    /// The most element bytes in one message, well under the 64 KiB of a netlink attribute.
    static let messageBytes = 32 << 10

    /// One element's bytes: the key (and its interval end), the map's data, the comment.
    struct EncodedElement {
        var key: [UInt8], keyEnd: [UInt8]?, data: [UInt8]?, comment: [UInt8]

        init?(_ element: NftElement, fields: NftLayout.ElementFields, withData: Bool) {
            guard let (start, end) = NftLayout.bytes(element.key, fields: fields.key, ranges: fields.interval) else { return nil }
            key = start
            keyEnd = fields.interval ? end : nil
            data = nil
            if withData, let valueFields = fields.value {
                guard let value = element.value, let (bytes, _) = NftLayout.bytes(value, fields: valueFields, ranges: false) else { return nil }
                data = bytes
            } else if withData, element.value != nil {
                return nil
            }
            // libnftnl's user data: a comment is type 0, its length, its bytes and a NUL. A delete
            // names the element by its key alone.
            let text = element.comment.utf8
            guard text.count < 128, !text.contains(0) else { return nil }
            comment = []
            if withData {
                comment.reserveCapacity(text.count + 3)
                comment.append(0)
                comment.append(UInt8(text.count + 1))
                comment.append(contentsOf: text)
                comment.append(0)
            }
        }

        /// An upper bound of its size in a message (attribute headers and padding included).
        var size: Int { 96 + key.count + (keyEnd?.count ?? 0) + (data?.count ?? 0) + comment.count }
    }

    /// One netlink socket for one read. Each request has its own sequence number, and answers to
    /// any other are skipped.
    final class Session {
        let functions: Functions
        let socket: OpaquePointer
        let portID: UInt32
        var sequence: UInt32 = 0

        init(_ functions: Functions) throws {
            self.functions = functions
            guard let socket = functions.socketOpen(12 /* NETLINK_NETFILTER */) else {
                throw VirtGateError(.firewall, "netlink: cannot open a netfilter socket (errno \(errno))")
            }
            guard functions.socketBind(socket, 0, 0 /* MNL_SOCKET_AUTOPID */) == 0 else {
                _ = functions.socketClose(socket)
                throw VirtGateError(.firewall, "netlink: cannot bind a netfilter socket (errno \(errno))")
            }
            self.socket = socket
            portID = functions.portID(socket)
        }

        /// One buffer for every answer of the session, and one for every request but a batch: not
        /// initialised (the kernel and libnftnl write what is read), not allocated per request.
        let answers = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
        let request = UnsafeMutablePointer<CChar>.allocate(capacity: 8192)

        func close() {
            _ = functions.socketClose(socket)
            answers.deallocate()
            request.deallocate()
        }

        /// Sends one request and hands each reply message to `body`; throws on a netlink error
        /// other than ENOENT (a set or table that is not there), which ends the answer empty.
        func exchange(_ build: (UnsafeMutablePointer<CChar>, UInt32) -> Void,
                      _ body: (UnsafeRawPointer, Int) throws -> Void) throws {
            sequence += 1
            let sequence = sequence
            build(request, sequence)
            let length = Int(UnsafeRawPointer(request).loadUnaligned(as: UInt32.self))
            guard functions.send(socket, request, length) == length else {
                throw VirtGateError(.firewall, "netlink: cannot send a request (errno \(errno))")
            }
            while true {
                let count = functions.receive(socket, answers.baseAddress, answers.count)
                guard count > 0 else { throw VirtGateError(.firewall, "netlink: no answer (errno \(errno))") }
                let done = try { (bytes: UnsafeRawBufferPointer) -> Bool in
                    var offset = 0
                    while offset + 16 <= count {
                        let message = bytes.baseAddress! + offset
                        let messageLength = Int(message.loadUnaligned(as: UInt32.self))
                        let type = message.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
                        let sequenceOfMessage = message.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
                        let portOfMessage = message.loadUnaligned(fromByteOffset: 12, as: UInt32.self)
                        guard messageLength >= 16, offset + messageLength <= count else {
                            throw VirtGateError(.firewall, "netlink: a truncated answer")
                        }
                        if sequenceOfMessage == sequence && (portOfMessage == portID || portOfMessage == 0) {
                            switch type {
                            case 3: return true                                  // NLMSG_DONE
                            case 2:                                              // NLMSG_ERROR
                                let code = message.loadUnaligned(fromByteOffset: 16, as: Int32.self)
                                if code == 0 || code == -ENOENT { return true }
                                throw VirtGateError(.firewall, "netlink: the kernel refused a read (errno \(-code))")
                            default:
                                try body(UnsafeRawPointer(message), messageLength)
                            }
                        }
                        offset += (messageLength + 3) & ~3
                    }
                    return false
                }(UnsafeRawBufferPointer(answers))
                if done { return }
            }
        }

        /// Sends `messages` as one batch and reads the kernel's answers, which it gives while
        /// taking the batch: an error for any message fails the whole batch, and nothing of it is
        /// applied.
        func write(_ messages: [BatchMessage]) throws {
            sequence += 1
            let first = sequence
            // Each message's room is its estimate and 64 bytes; the slack at the end keeps even an
            // estimate that was too small (caught below, before anything is sent) inside the buffer.
            let capacity = messages.reduce(256) { $0 + 64 + $1.size } + 4096
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 8)
            defer { buffer.deallocate() }
            let base = buffer.baseAddress!.assumingMemoryBound(to: CChar.self)
            var offset = 0
            func advance() { offset += (Int(UnsafeRawPointer(base + offset).loadUnaligned(as: UInt32.self)) + 3) & ~3 }
            _ = functions.batchBegin(base + offset, sequence)
            advance()
            var room = 256
            for message in messages {
                room += 64 + message.size
                sequence += 1
                // Zeroed: libnftnl's builders expect a clean header and payload area.
                (base + offset).initialize(repeating: 0, count: 64 + message.size)
                guard let header = functions.buildHeader(base + offset, message.type, NftNetlink.familyInet, message.flags, sequence) else {
                    throw VirtGateError(.firewall, "netlink: cannot build a message")
                }
                try message.payload(header)
                advance()
                guard offset <= room - 64 else {
                    throw VirtGateError(.firewall, "netlink: a message outgrew its estimate (an internal error); nothing was written")
                }
            }
            sequence += 1
            (base + offset).initialize(repeating: 0, count: 64)
            _ = functions.batchEnd(base + offset, sequence)
            advance()
            let length = offset
            let count = messages.count
            let descriptor = functions.socketDescriptor(socket)
            // A batch larger than the socket's default send buffer is refused, not split by the kernel.
            var size = Int32(max(length, 1 << 16))
            _ = setsockopt(descriptor, SOL_SOCKET, SO_SNDBUFFORCE, &size, socklen_t(MemoryLayout<Int32>.size))
            guard functions.send(socket, base, length) == length else {
                throw VirtGateError(.firewall, "netlink: cannot send the change (errno \(errno))")
            }
            // One answer per message, queued before the send returned.
            var answered = 0
            var refused: Int32 = 0
            while answered < count {
                let count = recv(descriptor, answers.baseAddress, answers.count, Int32(MSG_DONTWAIT))
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { break }
                do {
                    let bytes = UnsafeRawBufferPointer(answers)
                    var offset = 0
                    while offset + 16 <= count {
                        let message = bytes.baseAddress! + offset
                        let messageLength = Int(message.loadUnaligned(as: UInt32.self))
                        let type = message.loadUnaligned(fromByteOffset: 4, as: UInt16.self)
                        let number = message.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
                        guard messageLength >= 16, offset + messageLength <= count else { break }
                        if type == 2, number > first, number <= sequence {                // NLMSG_ERROR: an answer
                            answered += 1
                            let code = message.loadUnaligned(fromByteOffset: 16, as: Int32.self)
                            if code != 0 && refused == 0 { refused = -code }
                        }
                        offset += (messageLength + 3) & ~3
                    }
                }
            }
            if refused != 0 {
                throw VirtGateError(.firewall, "the kernel refused the change to table inet \(NftLayout.table): \(String(cString: strerror(refused)))")
            }
            guard answered == count else {
                throw VirtGateError(.firewall, "netlink: \(count - answered) of \(count) messages not answered")
            }
        }

        /// A dump of the inet family's tables or chains: each object's string attributes.
        func dump(_ type: UInt16, _ body: ([UInt16: String]) -> Void) throws {
            // No NLM_F_ACK: a dump ends with NLMSG_DONE; an error comes as NLMSG_ERROR either way.
            try exchange({ buffer, sequence in
                _ = functions.buildHeader(buffer, type, NftNetlink.familyInet, 0x300 /* NLM_F_DUMP */, sequence)
            }, { message, length in
                body(Self.strings(message, length))
            })
        }

        /// The top-level NUL-terminated string attributes of one nftables message (after the
        /// 16-byte netlink and 4-byte nfgenmsg headers).
        static func strings(_ message: UnsafeRawPointer, _ length: Int) -> [UInt16: String] {
            var result: [UInt16: String] = [:]
            var offset = 20
            while offset + 4 <= length {
                let attributeLength = Int(message.loadUnaligned(fromByteOffset: offset, as: UInt16.self))
                let type = message.loadUnaligned(fromByteOffset: offset + 2, as: UInt16.self) & 0x3fff
                guard attributeLength >= 4, offset + attributeLength <= length else { break }
                let payload = UnsafeRawBufferPointer(start: message + offset + 4, count: attributeLength - 4)
                if let end = payload.firstIndex(of: 0) {
                    result[type] = String(decoding: payload[..<end], as: UTF8.self)
                }
                offset += (attributeLength + 3) & ~3
            }
            return result
        }

        /// The elements of `set` that `scope` wants (all without one) as `NftElement`, and how many
        /// it left out; nil when one has a shape virtgate never writes.
        func elements(of set: String, fields: NftLayout.ElementFields, scope: NftReadScope?) throws -> ([NftElement], Int)? {
            guard let handle = functions.setAllocate() else { throw VirtGateError(.firewall, "netlink: out of memory") }
            defer { functions.setFree(handle) }
            _ = functions.setString(handle, NftNetlink.setTable, NftLayout.table)
            _ = functions.setString(handle, NftNetlink.setName, set)
            functions.setU32(handle, NftNetlink.setFamily, UInt32(NftNetlink.familyInet))
            try exchange({ buffer, sequence in
                let header = functions.buildHeader(buffer, NftNetlink.getSetElements, NftNetlink.familyInet, 0x300, sequence)
                functions.buildElements(header, handle)
            }, { message, _ in
                if functions.parseElements(message, handle) < 0 {
                    throw VirtGateError(.firewall, "netlink: cannot read the elements of \(set)")
                }
            })
            guard let iterator = functions.iteratorCreate(handle) else { return ([], 0) }
            defer { functions.iteratorDestroy(iterator) }
            var result: [NftElement] = []
            var unread = 0
            let owners = scope.map { $0.owners.map { Array($0.utf8) } } ?? []
            while let element = functions.iteratorNext(iterator) {
                if let scope {
                    guard let wanted = wants(element, fields: fields, owners: owners, scope: scope) else { return nil }
                    if !wanted { unread += 1; continue }
                }
                guard let decoded = decode(element, set: set, fields: fields) else { return nil }
                result.append(decoded)
            }
            return (result, unread)
        }

        /// Whether `scope` wants `element`, from its raw comment and key; nil when they do not fit.
        /// Thousands of elements of other owners pass through here: nothing is decoded to text.
        func wants(_ element: OpaquePointer, fields: NftLayout.ElementFields, owners: [[UInt8]], scope: NftReadScope) -> Bool? {
            guard let comment = commentBytes(element) else { return nil }
            let owner = comment.prefix { $0 != UInt8(ascii: " ") }
            if owners.contains(where: { $0.elementsEqual(owner) }) { return true }
            guard let key = bytes(element, NftNetlink.elementKey) else { return nil }
            let end = fields.interval ? bytes(element, NftNetlink.elementKeyEnd) ?? key : key
            guard key.count == fields.key.reduce(0, { $0 + $1.width }), end.count == key.count else { return nil }
            // The gateway sets have no port: their only owner is in every scope.
            guard let protoAt = fields.offset(of: .proto), let portAt = fields.offset(of: .port) else { return false }
            return scope.overlaps(proto: key[protoAt],
                                  low: UInt16(NftLayout.number(key, portAt, .port)), high: UInt16(NftLayout.number(end, portAt, .port)))
        }

        /// The element's comment ("" without one); nil when its user data is malformed.
        func comment(_ element: OpaquePointer) -> String? {
            commentBytes(element).map { String(decoding: $0, as: UTF8.self) }
        }

        /// The comment's bytes (empty without one), up to its NUL; nil when the user data is
        /// malformed. libnftnl's user data: type (1 byte), length (1 byte), value; a comment is type 0.
        func commentBytes(_ element: OpaquePointer) -> Slice<UnsafeRawBufferPointer>? {
            guard let user = bytes(element, NftNetlink.elementUserData) else { return UnsafeRawBufferPointer(start: nil, count: 0)[...] }
            var comment = user[0..<0], offset = 0
            while offset + 2 <= user.count {
                let type = user[offset], length = Int(user[offset + 1])
                guard offset + 2 + length <= user.count else { return nil }
                if type == 0 {
                    let value = user[(offset + 2)..<(offset + 2 + length)]
                    comment = value[..<(value.firstIndex(of: 0) ?? value.endIndex)]
                }
                offset += 2 + length
            }
            return comment
        }

        func bytes(_ element: OpaquePointer, _ attribute: UInt16) -> UnsafeRawBufferPointer? {
            guard functions.elementIsSet(element, attribute) else { return nil }
            var length: UInt32 = 0
            guard let pointer = functions.elementGet(element, attribute, &length) else { return nil }
            return UnsafeRawBufferPointer(start: pointer, count: Int(length))
        }

        func decode(_ element: OpaquePointer, set: String, fields: NftLayout.ElementFields) -> NftElement? {
            // Interval ends (single-field interval sets) and catch-all elements: never written by virtgate.
            if let flags = bytes(element, NftNetlink.elementFlags), flags.count >= 4,
               flags.loadUnaligned(as: UInt32.self) != 0 { return nil }
            guard let key = bytes(element, NftNetlink.elementKey) else { return nil }
            let end = fields.interval ? bytes(element, NftNetlink.elementKeyEnd) ?? key : key
            guard let keyText = NftLayout.text(key, end: end, fields: fields.key) else { return nil }
            var value: String?
            if let valueFields = fields.value {
                guard let data = bytes(element, NftNetlink.elementData),
                      let text = NftLayout.text(data, end: data, fields: valueFields) else { return nil }
                value = text
            }
            guard let comment = comment(element) else { return nil }
            return NftElement(set: set, key: keyText, value: value, comment: comment)
        }
    }
}

extension NftLayout {
    /// What a field of a map's key or value holds, and its width in the kernel's concatenation
    /// (each field padded to 4 bytes).
    enum Field {
        case address(IPFamily), proto, port

        var width: Int {
            switch self {
            case .address(let family): family == .v4 ? 4 : 16
            case .proto, .port: 4
            }
        }
    }

    struct ElementFields {
        var key: [Field]
        var value: [Field]?
        var interval: Bool

        /// Where the first key field of `kind` starts in the key's bytes.
        func offset(of kind: Field) -> Int? {
            var offset = 0
            for field in key {
                if field == kind { return offset }
                offset += field.width
            }
            return nil
        }
    }

    /// Every map and set of the current layout with its key and value fields, as `definition` declares them.
    static let elementFields: [(String, ElementFields)] = {
        var result: [(String, ElementFields)] = []
        for family in IPFamily.allCases {
            let address = Field.address(family)
            for scope in Scope.allCases {
                let key: [Field] = switch scope {
                case .address: [address, .proto, .port]
                case .any: [.proto, .port]
                case .source: [address, address, .proto, .port]
                case .sourceAny: [address, .proto, .port]
                }
                let singleInterval = scope == .source || scope == .sourceAny
                result.append((map(scope, family, ranges: false), ElementFields(key: key, value: [address, .port], interval: singleInterval)))
                result.append((map(scope, family, ranges: true), ElementFields(key: key, value: [address], interval: true)))
            }
            result.append((gatewaySet(family), ElementFields(key: [address], value: nil, interval: false)))
        }
        return result
    }()

    /// A key or value in the textual form nft lists and `NftRules` renders: fields joined by
    /// ` . `; a field whose start and end differ is `addr/len` when the addresses are a network,
    /// else `a-b`. nil when the bytes do not fit `fields`.
    static func text(_ start: UnsafeRawBufferPointer, end: UnsafeRawBufferPointer, fields: [Field]) -> String? {
        guard start.count == fields.reduce(0, { $0 + $1.width }), end.count == start.count else { return nil }
        // Built in place: `joined(separator:)` is generic, and its first use costs the runtime
        // ~0.2M instructions of type lookups in every hook run that reads the table.
        var text = ""
        var offset = 0
        func append(_ part: String) {
            if !text.isEmpty { text += " . " }
            text += part
        }
        for field in fields {
            switch field {
            case .address(let family):
                let low = address(start, offset, family), high = address(end, offset, family)
                if low == high {
                    append(low.description)
                } else if let network = IPNetwork.exactly(from: low, to: high) {
                    append(network.description)
                } else {
                    append("\(low)-\(high)")
                }
            case .proto, .port:
                let low = number(start, offset, field), high = number(end, offset, field)
                append(low == high ? "\(low)" : "\(low)-\(high)")
            }
            offset += field.width
        }
        return text
    }

    /// The kernel's bytes of a key or value in `text`'s form (the reverse of `text`): each field's
    /// start and end, padded to 4 bytes. A range or network is allowed only where `ranges`; nil
    /// when the text does not fit `fields`.
    static func bytes(_ text: String, fields: [Field], ranges: Bool) -> ([UInt8], [UInt8])? {
        // One pass over the text's bytes: a sync encodes every element of the table (5,000 at
        // 1,000 guests), and splitting into substrings and parsing each through the generic
        // string paths cost about 10,000 instructions an element.
        var text = text
        return text.withUTF8 { utf8 -> ([UInt8], [UInt8])? in
            let width = fields.reduce(0) { $0 + $1.width }
            var start: [UInt8] = [], end: [UInt8] = []
            start.reserveCapacity(width)
            end.reserveCapacity(width)
            var position = 0
            for (index, field) in fields.enumerated() {
                // The field runs to the next " . ", or to the end for the last one.
                var stop = position
                if index == fields.count - 1 {
                    stop = utf8.count
                } else {
                    while stop + 2 < utf8.count, !(utf8[stop] == 0x20 && utf8[stop + 1] == UInt8(ascii: ".") && utf8[stop + 2] == 0x20) {
                        stop += 1
                    }
                    guard stop + 2 < utf8.count else { return nil }
                }
                let part = UnsafeBufferPointer(rebasing: utf8[position..<stop])
                guard !part.isEmpty, encode(part, field, ranges: ranges, start: &start, end: &end) else { return nil }
                position = stop + 3
            }
            return (start, end)
        }
    }

    /// One field's start and end: an address (`a`, `a/len`, `a-b`) or a number (`n`, `n-m`).
    static func encode(_ part: UnsafeBufferPointer<UInt8>, _ field: Field, ranges: Bool,
                       start: inout [UInt8], end: inout [UInt8]) -> Bool {
        switch field {
        case .address(let family):
            var low: IPAddress, high: IPAddress
            if let slash = part.firstIndex(of: UInt8(ascii: "/")) {
                guard ranges, let address = address(part[..<slash]), address.family == family,
                      let prefix = number(part[(slash + 1)...]), prefix <= family.bits,
                      address.value & ~IPNetwork.mask(Int(prefix), family) == 0 else { return false }
                let all: UInt128 = family == .v4 ? 0xffff_ffff : .max
                low = address
                high = IPAddress(family: family, value: address.value | (~IPNetwork.mask(Int(prefix), family) & all))
            } else if let dash = part.firstIndex(of: UInt8(ascii: "-")) {
                guard ranges, let a = address(part[..<dash]), let b = address(part[(dash + 1)...]) else { return false }
                (low, high) = (a, b)
            } else {
                guard let a = address(part[...]) else { return false }
                (low, high) = (a, a)
            }
            guard low.family == family, high.family == family, low <= high else { return false }
            appendAddress(low, to: &start)
            appendAddress(high, to: &end)
        case .proto, .port:
            var low: UInt32, high: UInt32
            if let dash = part.firstIndex(of: UInt8(ascii: "-")) {
                guard ranges, let a = number(part[..<dash]), let b = number(part[(dash + 1)...]) else { return false }
                (low, high) = (a, b)
            } else {
                guard let a = number(part[...]) else { return false }
                (low, high) = (a, a)
            }
            guard low <= high, high <= (field == .port ? 0xffff : 0xff) else { return false }
            appendNumber(UInt16(low), field, to: &start)
            appendNumber(UInt16(high), field, to: &end)
        }
        return true
    }

    static func address(_ bytes: Slice<UnsafeBufferPointer<UInt8>>) -> IPAddress? {
        if let v4 = IPAddress.parseV4(utf8: bytes) { return IPAddress(v4) }
        // IPv6 (rare in practice): through the text parser, which checks and converts it.
        return IPAddress(String(decoding: bytes, as: UTF8.self))
    }

    /// Decimal digits only, at most five.
    static func number(_ bytes: Slice<UnsafeBufferPointer<UInt8>>) -> UInt32? {
        guard !bytes.isEmpty, bytes.count <= 5 else { return nil }
        var value: UInt32 = 0
        for byte in bytes {
            guard byte >= 0x30 && byte <= 0x39 else { return nil }
            value = value * 10 + UInt32(byte - 0x30)
        }
        return value
    }

    static func addressBytes(_ address: IPAddress) -> [UInt8] {
        var bytes: [UInt8] = []
        appendAddress(address, to: &bytes)
        return bytes
    }

    static func appendAddress(_ address: IPAddress, to bytes: inout [UInt8]) {
        let count = address.family == .v4 ? 4 : 16
        for index in 0..<count { bytes.append(UInt8(truncatingIfNeeded: address.value >> UInt128(8 * (count - 1 - index)))) }
    }

    /// A protocol in the first byte of its 4, a port big-endian in the first two.
    /// A protocol is one byte, a port two (network order), each padded to four: appended in place,
    /// without an array of its own per field (a sync encodes thousands).
    static func appendNumber(_ value: UInt16, _ field: Field, to bytes: inout [UInt8]) {
        if field == .proto {
            bytes.append(UInt8(truncatingIfNeeded: value))
            bytes.append(0)
        } else {
            bytes.append(UInt8(value >> 8))
            bytes.append(UInt8(value & 0xff))
        }
        bytes.append(0)
        bytes.append(0)
    }

    static func address(_ bytes: UnsafeRawBufferPointer, _ offset: Int, _ family: IPFamily) -> IPAddress {
        var value: UInt128 = 0
        for index in 0..<(family == .v4 ? 4 : 16) { value = value << 8 | UInt128(bytes[offset + index]) }
        return IPAddress(family: family, value: value)
    }

    /// A protocol is one byte, a port two in network order, each at the start of its 4-byte field.
    static func number(_ bytes: UnsafeRawBufferPointer, _ offset: Int, _ field: Field) -> UInt32 {
        field == .proto ? UInt32(bytes[offset]) : UInt32(bytes[offset]) << 8 | UInt32(bytes[offset + 1])
    }
}

extension NftLayout.Field: Equatable {}

extension IPNetwork {
    /// The network whose first and last addresses are `low` and `high`, if there is one.
    static func exactly(from low: IPAddress, to high: IPAddress) -> IPNetwork? {
        guard low.family == high.family, low <= high else { return nil }
        let bits = low.family == .v4 ? 32 : 128
        let span = high.value ^ low.value
        // A network: the differing bits are all ones at the bottom, all zeros in low, all ones in high.
        let hostBits = 128 - span.leadingZeroBitCount
        let mask: UInt128 = hostBits == 128 ? ~0 : (1 << UInt128(hostBits)) - 1
        guard hostBits <= bits, span == mask, low.value & mask == 0 else { return nil }
        return IPNetwork(address: low, prefix: bits - hostBits)
    }
}
