//! The pinned vendor certificates, embedded at build time (provenance: `core/certs/README.md`).

/// How a built-in certificate is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// A root: trusted as is.
    Root,
    /// An intermediate: verified against a built-in root before use.
    Intermediate,
    /// A root whose private key is public: only with `allow_test_roots`.
    TestRoot,
    /// A Microchip manifest (JWS) signer.
    ManifestSigner,
    /// A manifest signer whose private key is public: only with `allow_test_roots`.
    TestManifestSigner,
}

/// Every built-in certificate: (file, role, DER).
pub(crate) const BUILTIN: &[(&str, Role, &[u8])] = &[
    (
        "infineon/ecc-root-ca-v1.der",
        Role::Root,
        include_bytes!("../../certs/infineon/ecc-root-ca-v1.der"),
    ),
    (
        "infineon/ecc-root-ca-2.der",
        Role::Root,
        include_bytes!("../../certs/infineon/ecc-root-ca-2.der"),
    ),
    (
        "infineon/rsa-root-ca-2.der",
        Role::Root,
        include_bytes!("../../certs/infineon/rsa-root-ca-2.der"),
    ),
    (
        "infineon/trust-m-ca-101.der",
        Role::Intermediate,
        include_bytes!("../../certs/infineon/trust-m-ca-101.der"),
    ),
    (
        "infineon/trust-m-ca-300.der",
        Role::Intermediate,
        include_bytes!("../../certs/infineon/trust-m-ca-300.der"),
    ),
    (
        "infineon/trust-m-ca-306.der",
        Role::Intermediate,
        include_bytes!("../../certs/infineon/trust-m-ca-306.der"),
    ),
    (
        "infineon/trust-m-ca-309.der",
        Role::Intermediate,
        include_bytes!("../../certs/infineon/trust-m-ca-309.der"),
    ),
    (
        "microchip/crypto-authentication-root-ca-002.der",
        Role::Root,
        include_bytes!("../../certs/microchip/crypto-authentication-root-ca-002.der"),
    ),
    (
        "microchip/atecc-root-ca-001.der",
        Role::Root,
        include_bytes!("../../certs/microchip/atecc-root-ca-001.der"),
    ),
    (
        "microchip/crypto-authentication-signer-2a00.der",
        Role::Intermediate,
        include_bytes!("../../certs/microchip/crypto-authentication-signer-2a00.der"),
    ),
    (
        "microchip/crypto-authentication-signer-2a10.der",
        Role::Intermediate,
        include_bytes!("../../certs/microchip/crypto-authentication-signer-2a10.der"),
    ),
    (
        "microchip/crypto-authentication-signer-2a20.der",
        Role::Intermediate,
        include_bytes!("../../certs/microchip/crypto-authentication-signer-2a20.der"),
    ),
    (
        "microchip/crypto-authentication-signer-2a30.der",
        Role::Intermediate,
        include_bytes!("../../certs/microchip/crypto-authentication-signer-2a30.der"),
    ),
    (
        "microchip/crypto-authentication-signer-2c00.der",
        Role::Intermediate,
        include_bytes!("../../certs/microchip/crypto-authentication-signer-2c00.der"),
    ),
    (
        "microchip/crypto-authentication-signer-2c10.der",
        Role::Intermediate,
        include_bytes!("../../certs/microchip/crypto-authentication-signer-2c10.der"),
    ),
    (
        "microchip/atecc-1h-signer-218b.der",
        Role::Intermediate,
        include_bytes!("../../certs/microchip/atecc-1h-signer-218b.der"),
    ),
    (
        "microchip-manifest-signers/signer-1.der",
        Role::ManifestSigner,
        include_bytes!("../../certs/microchip-manifest-signers/signer-1.der"),
    ),
    (
        "microchip-manifest-signers/signer-2.der",
        Role::ManifestSigner,
        include_bytes!("../../certs/microchip-manifest-signers/signer-2.der"),
    ),
    (
        "microchip-manifest-signers/signer-3.der",
        Role::ManifestSigner,
        include_bytes!("../../certs/microchip-manifest-signers/signer-3.der"),
    ),
    (
        "microchip-manifest-signers/signer-4.der",
        Role::ManifestSigner,
        include_bytes!("../../certs/microchip-manifest-signers/signer-4.der"),
    ),
    (
        "microchip-manifest-signers/signer-5.der",
        Role::ManifestSigner,
        include_bytes!("../../certs/microchip-manifest-signers/signer-5.der"),
    ),
    (
        "test/infineon-trust-m-test-ca-000.der",
        Role::TestRoot,
        include_bytes!("../../certs/test/infineon-trust-m-test-ca-000.der"),
    ),
    (
        "test/microchip-example-signer-ffff.der",
        Role::TestManifestSigner,
        include_bytes!("../../certs/test/microchip-example-signer-ffff.der"),
    ),
];
