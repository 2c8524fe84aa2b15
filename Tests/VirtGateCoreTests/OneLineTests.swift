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
