//! Which of Redis Cluster's 16,384 hash slots a key belongs to: CRC16
//! (XMODEM) of the key, or of its `{hash tag}` when it has a non-empty one,
//! modulo 16,384 — the rule every cluster node applies, so keyway and the
//! nodes always agree.

pub const SLOTS: usize = 16384;

/// Sixteen tables (8 KiB): a typical key is one or two 16-byte steps
/// whose lookups run in parallel, where the one-table form is a chain of
/// dependent lookups, one per byte (measured: a third of a cluster
/// request's extra user-space work over a standalone one).
static XMODEM: crc::Crc<u16, crc::Table<16>> =
    crc::Crc::<u16, crc::Table<16>>::new(&crc::CRC_16_XMODEM);

pub fn key_slot(key: &[u8]) -> u16 {
    // Found with memchr: every key routed to a cluster is scanned for a tag.
    let hashed = match memchr::memchr(b'{', key) {
        Some(open) => match memchr::memchr(b'}', &key[open + 1..]) {
            // `{}` is no tag: the whole key is hashed.
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    XMODEM.checksum(hashed) & (SLOTS as u16 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_as_redis_computes_them() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(key_slot(b"{user1000}.following"), 3443);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        // Only the first `{` counts, and an empty tag hashes the whole key.
        assert_eq!(key_slot(b"foo{}{bar}"), 8363);
        assert_eq!(key_slot(b"foo{{bar}}zap"), 4015);
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        // Keys of one 16-byte step, more than one, and a tail.
        assert_eq!(key_slot(b"key:000000012345"), 12533);
        assert_eq!(key_slot(b"a-seventeen-bytes"), 16202);
        assert_eq!(key_slot(b"session:user:0123456789abcdef0123456789"), 10138);
        assert_eq!(key_slot(b"{movie:42}:reviews:by-date:2026-12-02:page:0001:with-a-long-tail-of-text-to-cross-several-16-byte-steps"), 9025);
    }
}
