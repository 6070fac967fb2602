//! One public key, one device.
//!
//! An ECDSA signature stays valid when `s` is replaced by `n − s`; re-encoding a device
//! certificate's signature that way gives a certificate that verifies against the same CA but
//! has another SHA-256, so another device id. A certificate re-issued for the same key does the
//! same. [`DuplicateKeys`] remembers the public keys seen and reports the second certificate of
//! a key, so the same chip never becomes two devices.

use std::collections::HashMap;

use crate::identity::DeviceIdentity;

/// Public keys seen so far, with the device that first carried each. Held compactly, since a
/// million-device input keeps one entry per device: the first 16 bytes of the key's SHA-256
/// (a chance collision among 10^6 keys is ~10^-27) and the first 8 bytes of the first device's
/// id (the 16 hex digits the refusal names), 24 bytes an entry.
#[derive(Debug, Default, Clone)]
pub struct DuplicateKeys {
    seen: HashMap<[u8; 16], [u8; 8]>,
}

impl DuplicateKeys {
    /// An empty set.
    pub fn new() -> Self {
        DuplicateKeys::default()
    }

    /// Records `identity`'s key; `Some(reason)` when the key was already seen under another
    /// certificate (the same certificate twice is not a duplicate key).
    pub fn check(&mut self, identity: &DeviceIdentity) -> Option<String> {
        let key = super::public_key_raw(&identity.der)?;
        let digest = super::sha256(&key);
        let mut short = [0u8; 16];
        short.copy_from_slice(&digest[..16]);
        let id = id_prefix(identity.device_id.as_str());
        match self.seen.get(&short) {
            Some(first) if *first != id => Some(format!(
                "its public key is already device {}… (another certificate for the same key: \
                 a re-encoded ECDSA signature or a re-issued certificate); refused so one chip \
                 never becomes two devices",
                hex::encode(first)
            )),
            Some(_) => None,
            None => {
                self.seen.insert(short, id);
                None
            }
        }
    }
}

/// The first 8 bytes of a device id (hex SHA-256; any other id is hashed first).
fn id_prefix(id: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    if id
        .get(..16)
        .is_none_or(|p| hex::decode_to_slice(p, &mut out).is_err())
    {
        out.copy_from_slice(&super::sha256(id.as_bytes())[..8]);
    }
    out
}
