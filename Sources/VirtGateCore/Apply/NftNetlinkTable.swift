#if canImport(Glibc)
import Glibc
#endif

/// Creating and removing virtgate's table over netlink: `NftProgram`'s sets, chains and rules
/// built into messages by libnftnl, in the same batch as the table's elements.
extension NftNetlink {
    typealias Allocate = @convention(c) () -> OpaquePointer?
    typealias Free = @convention(c) (OpaquePointer?) -> Void
    typealias SetText = @convention(c) (OpaquePointer?, UInt16, UnsafePointer<CChar>?) -> Int32
    typealias SetWord = @convention(c) (OpaquePointer?, UInt16, UInt32) -> Void
    typealias SetSignedWord = @convention(c) (OpaquePointer?, UInt16, Int32) -> Void
    typealias SetBytes = @convention(c) (OpaquePointer?, UInt16, UnsafeRawPointer?, UInt32) -> Int32
    typealias BuildPayload = @convention(c) (UnsafeMutableRawPointer?, OpaquePointer?) -> Void
    typealias ExpressionAllocate = @convention(c) (UnsafePointer<CChar>?) -> OpaquePointer?
    typealias AddExpression = @convention(c) (OpaquePointer?, OpaquePointer?) -> Void

    /// libnftnl's calls for one kind of object: allocate, set attributes, build, free.
    struct ObjectCalls {
        let allocate: Allocate, free: Free, text: SetText, word: SetWord, build: BuildPayload
    }

    struct ObjectFunctions {
        let table: ObjectCalls, chain: ObjectCalls, rule: ObjectCalls
        let chainSigned: SetSignedWord
        let setBytes: SetBytes, setBuild: BuildPayload
        let expression: ExpressionAllocate, expressionWord: SetWord, expressionText: SetText, expressionBytes: SetBytes
        let addExpression: AddExpression

        init?(_ library: UnsafeMutableRawPointer) {
            func symbol<T>(_ name: String, _: T.Type) -> T? {
                dlsym(library, name).map { unsafeBitCast($0, to: T.self) }
            }
            func calls(_ kind: String) -> ObjectCalls? {
                guard let allocate = symbol("nftnl_\(kind)_alloc", Allocate.self),
                      let free = symbol("nftnl_\(kind)_free", Free.self),
                      let text = symbol("nftnl_\(kind)_set_str", SetText.self),
                      let word = symbol("nftnl_\(kind)_set_u32", SetWord.self),
                      let build = symbol("nftnl_\(kind)_nlmsg_build_payload", BuildPayload.self) else { return nil }
                return ObjectCalls(allocate: allocate, free: free, text: text, word: word, build: build)
            }
            guard let table = calls("table"), let chain = calls("chain"), let rule = calls("rule"),
                  let chainSigned = symbol("nftnl_chain_set_s32", SetSignedWord.self),
                  let setBytes = symbol("nftnl_set_set_data", SetBytes.self),
                  let setBuild = symbol("nftnl_set_nlmsg_build_payload", BuildPayload.self),
                  let expression = symbol("nftnl_expr_alloc", ExpressionAllocate.self),
                  let expressionWord = symbol("nftnl_expr_set_u32", SetWord.self),
                  let expressionText = symbol("nftnl_expr_set_str", SetText.self),
                  let expressionBytes = symbol("nftnl_expr_set", SetBytes.self),
                  let addExpression = symbol("nftnl_rule_add_expr", AddExpression.self) else { return nil }
            self.table = table
            self.chain = chain
            self.rule = rule
            self.chainSigned = chainSigned
            self.setBytes = setBytes
            self.setBuild = setBuild
            self.expression = expression
            self.expressionWord = expressionWord
            self.expressionText = expressionText
            self.expressionBytes = expressionBytes
            self.addExpression = addExpression
        }
    }

    // linux/netfilter/nf_tables.h (message types) and libnftnl's attribute numbers: a stable ABI.
    static let newTable: UInt16 = 0, deleteTable: UInt16 = 2, newChain: UInt16 = 3, newRule: UInt16 = 6, newSet: UInt16 = 9
    static let tableNameAttribute: UInt16 = 0, tableFamily: UInt16 = 1, tableFlags: UInt16 = 2
    static let chainNameAttribute: UInt16 = 0, chainFamily: UInt16 = 1, chainTableAttribute: UInt16 = 2, chainHook: UInt16 = 3
    static let chainPriority: UInt16 = 4, chainPolicy: UInt16 = 5, chainType: UInt16 = 10
    static let ruleFamily: UInt16 = 0, ruleTable: UInt16 = 1, ruleChain: UInt16 = 2
    static let setFlags: UInt16 = 2, setKeyType: UInt16 = 3, setKeyLength: UInt16 = 4, setDataType: UInt16 = 5
    static let setDataLength: UInt16 = 6, setSize: UInt16 = 10, setUserData: UInt16 = 13, setFields: UInt16 = 16

    /// `add table` (it stays if it is there) or `delete table`.
    func tableMessage(delete: Bool) -> BatchMessage? {
        guard let objects else { return nil }
        return BatchMessage(type: delete ? Self.deleteTable : Self.newTable,
                            flags: delete ? Self.request : Self.request | Self.create, size: 128) { header in
            try objects.table.build(header, name: NftLayout.table) { table in
                objects.table.word(table, Self.tableFamily, UInt32(Self.familyInet))
                if !delete { objects.table.word(table, Self.tableFlags, 0) }
            }
        }
    }

    /// The table as `program` declares it, in nft's order: the table, its chains, its sets, then
    /// each rule after the constant set it uses. Sets are also known by an id within the batch,
    /// which is how a rule names a set created in the same batch.
    func definition(_ program: NftProgram.Table) -> [BatchMessage]? {
        guard let objects, let table = tableMessage(delete: false) else { return nil }
        var messages = [table]
        for chain in program.chains {
            messages.append(BatchMessage(type: Self.newChain, flags: Self.request | Self.create, size: 256) { header in
                try objects.chain.build(header, name: nil) { handle in
                    _ = objects.chain.text(handle, Self.chainTableAttribute, NftLayout.table)
                    _ = objects.chain.text(handle, Self.chainNameAttribute, chain.name)
                    objects.chain.word(handle, Self.chainFamily, UInt32(Self.familyInet))
                    if let hook = chain.hook {
                        _ = objects.chain.text(handle, Self.chainType, hook.type)
                        objects.chain.word(handle, Self.chainHook, hook.number)
                        objects.chainSigned(handle, Self.chainPriority, hook.priority)
                        objects.chain.word(handle, Self.chainPolicy, 1 /* accept */)
                    }
                }
            })
        }
        var ids: [String: UInt32] = [:]
        var nextID: UInt32 = 1
        func declare(_ set: NftProgram.SetDeclaration) {
            let id = nextID
            nextID += 1
            ids[set.name] = id
            messages.append(setMessage(set, id: id, objects))
            if !set.elements.isEmpty {
                let elements = set.elements.map { EncodedElement(key: $0) }
                messages.append(elementMessage(delete: false, set: set.name, elements, setID: id))
            }
        }
        for set in program.sets { declare(set) }
        for rule in program.rules {
            if let set = rule.anonymousSet { declare(set) }
            let known = ids
            messages.append(BatchMessage(type: Self.newRule, flags: Self.request | Self.create | Self.append,
                                         size: 256 + 96 * rule.expressions.count) { header in
                guard let handle = objects.rule.allocate() else { throw VirtGateError(.firewall, "netlink: out of memory") }
                defer { objects.rule.free(handle) }
                _ = objects.rule.text(handle, Self.ruleTable, NftLayout.table)
                _ = objects.rule.text(handle, Self.ruleChain, rule.chain)
                objects.rule.word(handle, Self.ruleFamily, UInt32(Self.familyInet))
                for expression in rule.expressions {
                    objects.addExpression(handle, try Self.build(expression, setIDs: known, objects))   // the rule frees it
                }
                objects.rule.build(header, handle)
            })
        }
        return messages
    }

    func setMessage(_ set: NftProgram.SetDeclaration, id: UInt32, _ objects: ObjectFunctions) -> BatchMessage {
        let functions = self.functions
        return BatchMessage(type: Self.newSet, flags: Self.request | Self.create, size: 512) { header in
            guard let handle = functions.setAllocate() else { throw VirtGateError(.firewall, "netlink: out of memory") }
            defer { functions.setFree(handle) }
            _ = functions.setString(handle, Self.setTable, NftLayout.table)
            _ = functions.setString(handle, Self.setName, set.name)
            functions.setU32(handle, Self.setFamily, UInt32(Self.familyInet))
            functions.setU32(handle, Self.setFlags, set.flags)
            functions.setU32(handle, Self.setKeyType, set.keyType)
            functions.setU32(handle, Self.setKeyLength, set.keyLength)
            if let type = set.dataType, let length = set.dataLength {
                functions.setU32(handle, Self.setDataType, type)
                functions.setU32(handle, Self.setDataLength, length)
            }
            functions.setU32(handle, Self.setID, id)
            if let size = set.size { functions.setU32(handle, Self.setSize, size) }
            if !set.fieldLengths.isEmpty {
                _ = set.fieldLengths.withUnsafeBytes { objects.setBytes(handle, Self.setFields, $0.baseAddress, UInt32($0.count)) }
            }
            _ = set.userData.withUnsafeBytes { objects.setBytes(handle, Self.setUserData, $0.baseAddress, UInt32($0.count)) }
            objects.setBuild(header, handle)
        }
    }

    /// One expression as libnftnl holds it (its attribute numbers start at 1 for each kind).
    static func build(_ expression: NftProgram.Expression, setIDs: [String: UInt32], _ objects: ObjectFunctions) throws -> OpaquePointer {
        let name: String = switch expression {
        case .metaLoad, .metaSet: "meta"
        case .payload: "payload"
        case .compare: "cmp"
        case .lookup: "lookup"
        case .verdict: "immediate"
        case .fib: "fib"
        case .ctLoad, .ctSet: "ct"
        case .bitwise: "bitwise"
        case .hostToNetwork: "byteorder"
        case .dnat: "nat"
        case .masquerade: "masq"
        }
        guard let handle = objects.expression(name) else { throw VirtGateError(.firewall, "netlink: out of memory") }
        func word(_ attribute: UInt16, _ value: UInt32) { objects.expressionWord(handle, attribute, value) }
        func bytes(_ attribute: UInt16, _ value: [UInt8]) {
            _ = value.withUnsafeBytes { objects.expressionBytes(handle, attribute, $0.baseAddress, UInt32($0.count)) }
        }
        switch expression {
        case .metaLoad(let key, let register): word(1, key); word(2, register)
        case .metaSet(let key, let register): word(1, key); word(3, register)
        case .payload(let base, let offset, let length, let register): word(1, register); word(2, base); word(3, offset); word(4, length)
        case .compare(let register, let op, let data): word(1, register); word(2, op); bytes(3, data)
        case .lookup(let set, let source, let destination):
            word(1, source)
            if let destination { word(2, destination) }
            _ = objects.expressionText(handle, 3, set)
            if let id = setIDs[set] { word(4, id) }
        case .verdict(let code, let chain): word(1, 0); word(3, UInt32(bitPattern: code)); _ = objects.expressionText(handle, 4, chain)
        case .fib(let flags, let result, let register): word(1, register); word(2, result); word(3, flags)
        case .ctLoad(let key, let register): word(1, register); word(2, key)
        case .ctSet(let key, let register): word(2, key); word(4, register)
        case .bitwise(let register, let mask, let xor, let withOp):
            word(1, register); word(2, register); word(3, UInt32(mask.count)); bytes(4, mask); bytes(5, xor)
            if withOp { word(6, 0 /* boolean */) }
        case .hostToNetwork(let register, let size): word(1, register); word(2, register); word(3, 1 /* hton */); word(4, 1); word(5, size)
        case .dnat(let family, let address, let port):
            word(1, 1 /* dnat */); word(2, family); word(3, address)
            if let port { word(5, port) }
        case .masquerade: break
        }
        return handle
    }
}

extension NftNetlink.ObjectCalls {
    /// Allocates one object, lets `configure` set it (with `name` as its first attribute when
    /// given), builds it into the message at `header` and frees it.
    func build(_ header: UnsafeMutableRawPointer, name: String?, _ configure: (OpaquePointer) -> Void) throws {
        guard let handle = allocate() else { throw VirtGateError(.firewall, "netlink: out of memory") }
        defer { free(handle) }
        if let name { _ = text(handle, 0, name) }
        configure(handle)
        build(header, handle)
    }
}

extension NftNetlink.EncodedElement {
    /// An element of a constant set: its key alone.
    init(key: [UInt8]) {
        self.key = key
        keyEnd = nil
        data = nil
        comment = []
    }
}
