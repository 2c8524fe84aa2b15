// swift-tools-version: 6.2
import PackageDescription

// Release builds refer to concrete generic types through metadata accessor functions, not mangled
// names: the runtime otherwise demangles each such type on first use and checks its generic
// requirements by scanning every protocol conformance in the (static) binary. That was a quarter of
// the instructions of a hook's `start` with forwards (7.2M → 5.3M; `prepare` 1.95M → 1.62M), for
// 50 KB more code.
let startUp: [SwiftSetting] = [
    .unsafeFlags(["-Xfrontend", "-disable-concrete-type-metadata-mangled-name-accessors"], .when(configuration: .release)),
]

let package = Package(
    name: "virtgate",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "virtgate", targets: ["virtgate"]),
        .library(name: "VirtGateCore", targets: ["VirtGateCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // The reference for the config file format (an env-file with comments) and its key names:
        // tests hold virtgate's own reader to it. Loading through it cost a hook run 0.5 ms, and
        // parsing the commented default config character by character 4.5 ms (measured).
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: []),
        // Spawning iptables-restore/iptables-save with stdin and captured output without deadlocks.
        .package(url: "https://github.com/swiftlang/swift-subprocess", from: "1.0.2", traits: []),
    ],
    targets: [
        // expat (the parser behind Python's ElementTree; libvirt's hosts have it): small, fast,
        // hardened, C only. libxml2 brought ICU and the shared libstdc++ into every hook run
        // (~1.4 ms), FoundationXML would too.
        .systemLibrary(name: "CExpat", pkgConfig: "expat", providers: [.apt(["libexpat1-dev"])]),
        // nettle's SHA-256 for owner ids of long or unusual guest names: collisions must not be
        // craftable. swift-crypto pulled all of Foundation and ICU's data into the binary (94 MB
        // instead of 32).
        // Linked by VirtGateCore (below): statically in release builds, so that a hook run neither
        // loads nor relocates the shared library for a function it seldom calls.
        .systemLibrary(name: "CNettle", providers: [.apt(["nettle-dev"])]),
        // libvirt's C API (libvirt-dev's headers); imported only by the Libvirt wrapper. The library
        // is not linked at build time but opened on first use: linking it makes every process start
        // load ~50 shared libraries (17 ms measured), and libvirt starts this binary on every guest
        // event as a hook, which never needs libvirt.
        .systemLibrary(name: "CLibvirt", providers: [.apt(["libvirt-dev"])]),
        .target(name: "Libvirt", dependencies: ["CLibvirt"], swiftSettings: startUp),
        // The engine: XML → model → plan → rendered rules → one transaction. Effects only behind protocols.
        .target(
            name: "VirtGateCore",
            dependencies: [
                "CExpat",
                "CNettle",
                .product(name: "Subprocess", package: "swift-subprocess"),
            ],
            swiftSettings: startUp,
            linkerSettings: [
                .linkedLibrary("nettle", .when(configuration: .debug)),
                .linkedLibrary(":libnettle.a", .when(configuration: .release)),
            ]
        ),
        // Admin commands' logic (sync, status, forward editing) over libvirt's API. Hooks never get here.
        .target(name: "VirtGateAdmin", dependencies: ["VirtGateCore", "Libvirt"], swiftSettings: startUp),
        .executableTarget(
            name: "virtgate",
            dependencies: [
                "VirtGateCore",
                "VirtGateAdmin",
                "Libvirt",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            exclude: ["link"],
            swiftSettings: startUp,
            // Release builds (what install.sh installs, libvirt's hook) start with as little as the
            // loader can do: the binary's ~41,000 relative relocations packed (RELR, glibc 2.36+;
            // gold cannot pack them, the toolchain's lld can), and libstdc++ linked statically
            // (Sources/virtgate/link/libstdc++.so sends the Swift runtime's -lstdc++ to libstdc++.a): the shared one's
            // ~5,000 symbol relocations and locale set-up were most of a hook run's start-up.
            // No dynamic symbol table of virtgate's own modules (the static stdlib's link flags export
            // them): nothing resolves symbols in this binary at run time, and the runtime's start-up
            // looks up its own path with dladdr, which walked all ~5,000 of them (145K instructions
            // of every hook run, measured).
            linkerSettings: [
                .unsafeFlags(["-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
                              "-Xlinker", "--no-export-dynamic",
                              "-L", Context.packageDirectory + "/Sources/virtgate/link"],
                             .when(platforms: [.linux], configuration: .release)),
            ]
        ),
        .testTarget(
            name: "VirtGateCoreTests",
            dependencies: ["VirtGateCore", .product(name: "Configuration", package: "swift-configuration")],
            exclude: ["Fixtures", "Golden"]
        ),
        // Admin logic against libvirt's real test:/// driver.
        .testTarget(
            name: "AdminTests",
            dependencies: ["VirtGateAdmin", "VirtGateCore", "Libvirt"],
            exclude: ["Fixtures"]
        ),
        // Generated guest sets through both backends against the kernel, with real traffic (root).
        .testTarget(name: "DifferentialTests", dependencies: ["VirtGateCore"]),
        // The libvirt wrapper against libvirt's real test:/// driver, loaded from a state file.
        .testTarget(
            name: "LibvirtTests",
            dependencies: ["Libvirt"],
            exclude: ["Fixtures"]
        ),
    ]
)
