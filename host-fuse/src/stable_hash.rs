//! FNV-1a: a stable, short hash for names derived from paths (state files, control
//! sockets) and for fingerprints. Not for anything a guest could aim collisions at.

/// An FNV-1a 64-bit hasher.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    pub(crate) fn finish(self) -> u64 {
        self.0
    }
}

/// The FNV-1a hash of a path's bytes.
pub(crate) fn of_path(path: &std::path::Path) -> u64 {
    let mut hash = Fnv1a::new();
    hash.write(path.as_os_str().as_encoded_bytes());
    hash.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_values() {
        // The published FNV-1a 64 test vectors.
        assert_eq!(super::Fnv1a::new().finish(), 0xcbf2_9ce4_8422_2325);
        let mut h = super::Fnv1a::new();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }
}
