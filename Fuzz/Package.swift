// swift-tools-version: 6.2
// Coverage-guided fuzz targets for virtgate's input parsing, planning and rendering (libFuzzer).
// A package of its own, so the root package's build and tests are untouched; build it with
// Fuzz/run.sh, which passes the sanitizer flags (see Fuzz/README.md).
import PackageDescription

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

// A path dependency's identity is its directory's name, whatever the checkout is called.
let rootIdentity = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .lastPathComponent.lowercased()
let core = Target.Dependency.product(name: "VirtGateCore", package: rootIdentity)

let package = Package(
    name: "virtgate-fuzz",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "fuzz-domain", targets: ["FuzzDomain"]),
        .executable(name: "fuzz-network", targets: ["FuzzNetwork"]),
        .executable(name: "fuzz-hook", targets: ["FuzzHook"]),
    ],
    dependencies: [
        .package(path: ".."),
    ],
    targets: [
        // The invariants every target checks, the simulated kernel and the fixed inputs.
        .target(name: "FuzzSupport", dependencies: [core]),
        .executableTarget(name: "FuzzDomain", dependencies: ["FuzzSupport", core],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "FuzzNetwork", dependencies: ["FuzzSupport", core],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
        .executableTarget(name: "FuzzHook", dependencies: ["FuzzSupport", core],
                          swiftSettings: [.unsafeFlags(["-parse-as-library"])]),
    ]
)
