//! One public key, one device.
//!
//! An ECDSA signature stays valid when `s` is replaced by `n − s`; re-encoding a device
//! certificate's signature that way gives a certificate that verifies against the same CA but
//! has another SHA-256, so another device id. A certificate re-issued for the same key does the
//! same. [`DuplicateKeys`] remembers the public keys seen and reports the second certificate of
//! a key, so the same chip never becomes two devices.

use std::collections::HashMap;

use crate::identity::DeviceIdentity;

/// Public keys seen so far (SHA-256 of the subjectPublicKey bits), with the device id of the
/// first certificate that carried each.
#[derive(Debug, Default, Clone)]
pub struct DuplicateKeys {
    seen: HashMap<[u8; 32], String>,
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
        let id = identity.device_id.to_string();
        match self.seen.get(&digest) {
            Some(first) if *first != id => Some(format!(
                "its public key is already device {first} (another certificate for the same key: \
                 a re-encoded ECDSA signature or a re-issued certificate); refused so one chip \
                 never becomes two devices"
            )),
            Some(_) => None,
            None => {
                self.seen.insert(digest, id);
                None
            }
        }
    }
}
