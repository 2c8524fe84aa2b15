import Testing
@testable import VirtGateCore

@Suite("Log lines folded to one")
struct OneLineTests {
    @Test("The ASCII shortcut and the general path agree", arguments: [
        ("nothing to do", "nothing to do"), ("", ""), (" lead", "lead"), ("trail\t", "trail"),
        ("a\nb", "a | b"), ("a\r\n\r\nb ", "a | b"), ("x\u{0B}y\u{0C}z", "x | y | z"), ("  \n \t", ""),
        ("g\u{E4}st", "g\u{E4}st"), ("a\u{2028}b", "a | b"), ("a\u{85}b", "a | b"), ("\u{A0}a\u{A0}", "a"),
        ("tab\tinside", "tab\tinside"), ("\u{1F}unit", "\u{1F}unit"),
    ])
    func folded(text: String, expected: String) {
        #expect(text.oneLine == expected)
    }
}

@Suite("MAC addresses read as bytes")
struct MACBytesTests {
    @Test("Six pairs of ASCII hex between five colons, lower-cased; anything else is nil", arguments: [
        ("52:54:00:AA:bb:Cc", "52:54:00:aa:bb:cc"), ("00:00:00:00:00:00", "00:00:00:00:00:00"),
        ("52:54:00:aa:bb:c", nil), ("52:54:00:aa:bb:cc:", nil), ("52:54:00:aa:bb:ccd", nil), ("52-54-00-aa-bb-cc", nil),
        ("52:54:00:aa:bb:\u{FF43}c", nil), ("52:54:00:aa:b:bcc", nil), (":52:54:00:aa:bb:c", nil), ("", nil),
        ("52:54:00:aa:bb:cg", nil), ("52:54:00:aa:bb:c\u{301}", nil),
    ] as [(String, String?)])
    func parsed(text: String, expected: String?) {
        #expect(MACAddress(text)?.description == expected)
        #expect(MACAddress(text[...])?.description == expected)
    }
}
