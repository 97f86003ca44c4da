//! A request's command name as keyway matches it (the command table, the
//! blocklists, the command rules): lowercased once per request, on the
//! stack, with its short names packed into one integer.

use super::MAX_NAME;

/// A name of at most 15 bytes, lowercased, as one integer: its bytes,
/// then its length in the last byte, so a name with NUL bytes never
/// equals a shorter one.
pub fn packed(name: &[u8]) -> Option<u128> {
    let len = name.len();
    if len > 15 {
        return None;
    }
    Some(lowercase_word(name) | (len as u128) << 120)
}

/// The command name of one request.
pub struct CommandName {
    /// The first `MAX_NAME` bytes of the name, lowercased.
    buf: [u8; MAX_NAME],
    /// The name's length as the client sent it.
    len: usize,
    /// `packed` of the name, when it is short enough.
    key: Option<u128>,
}

impl CommandName {
    pub fn of(raw: &[u8]) -> CommandName {
        // Sixteen bytes per store: a name built byte by byte and then read
        // back wider (moved, hashed, compared) stalls the processor on
        // every request (a store it cannot forward).
        let mut buf = [0u8; MAX_NAME];
        let first = lowercase_word(&raw[..raw.len().min(16)]);
        buf[..16].copy_from_slice(&first.to_le_bytes());
        let rest = raw.get(16..).unwrap_or_default();
        for (dst, src) in buf[16..].chunks_exact_mut(16).zip(rest.chunks(16)) {
            dst.copy_from_slice(&lowercase_word(src).to_le_bytes());
        }
        let key = (raw.len() <= 15).then_some(first | (raw.len() as u128) << 120);
        CommandName {
            buf,
            len: raw.len(),
            key,
        }
    }

    /// The lowercased name (its first `MAX_NAME` bytes).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len.min(MAX_NAME)]
    }

    /// The whole lowercased name, unless it is longer than any command's.
    pub fn whole(&self) -> Option<&[u8]> {
        (self.len <= MAX_NAME).then(|| self.as_bytes())
    }

    /// `packed` of the name: `None` past 15 bytes.
    pub fn key(&self) -> Option<u128> {
        self.key
    }
}

/// Up to 16 bytes, ASCII-lowercased, as one little-endian integer (the
/// bytes past `bytes`' end are zero).
fn lowercase_word(bytes: &[u8]) -> u128 {
    let low = ascii_lowercase(load_u64(bytes));
    match bytes.get(8..) {
        Some(high) if !high.is_empty() => {
            u128::from(low) | u128::from(ascii_lowercase(load_u64(high))) << 64
        }
        _ => u128::from(low),
    }
}

/// Up to 8 bytes as one little-endian integer, in two overlapping loads
/// (the bytes they share are equal, so or-ing them is exact).
fn load_u64(bytes: &[u8]) -> u64 {
    let len = bytes.len().min(8);
    let u32_at = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_le_bytes)
    };
    match len {
        0 => 0,
        1..=3 => {
            let (first, middle, last) = (bytes[0], bytes[len / 2], bytes[len - 1]);
            u64::from(first)
                | u64::from(middle) << (8 * (len / 2))
                | u64::from(last) << (8 * (len - 1))
        }
        4..=7 => u64::from(u32_at(0)) | u64::from(u32_at(len - 4)) << (8 * (len - 4)),
        _ => bytes
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes),
    }
}

/// Each byte of `word` in `A..=Z` plus 0x20, the others unchanged, all
/// eight at once: a byte's low seven bits plus `0x80 - b` carry into its
/// top bit exactly when they are at least `b`, and never into the next byte.
fn ascii_lowercase(word: u64) -> u64 {
    const ONES: u64 = u64::MAX / 0xff;
    const HIGH: u64 = ONES * 0x80;
    let low7 = word & (ONES * 0x7f);
    let at_least_a = low7 + ONES * (0x80 - b'A' as u64);
    let above_z = low7 + ONES * (0x80 - b'Z' as u64 - 1);
    let upper = at_least_a & !above_z & !word & HIGH;
    word | (upper >> 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_lowercased_as_byte_by_byte_lowercasing_would() {
        let mut samples: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b; 70]).collect();
        for s in [
            "",
            "GET",
            "sEt",
            "CLIENT",
            "HGETALL",
            "EXPIREAT",
            "ZRANGEBYSCORE",
        ] {
            samples.push(s.as_bytes().to_vec());
        }
        samples.push(b"@[`{AZaz09".to_vec());
        samples.extend((0..40).map(|n| (0..n).map(|i| 0x38 + i * 3).collect()));
        samples.extend((0..40).map(|n| (0..n).map(|i| 0x98 + i).collect()));
        for sample in samples {
            let name = CommandName::of(&sample);
            let expected: Vec<u8> = sample
                .iter()
                .take(MAX_NAME)
                .map(u8::to_ascii_lowercase)
                .collect();
            assert_eq!(name.as_bytes(), expected, "{sample:?}");
            assert_eq!(name.whole().is_some(), sample.len() <= MAX_NAME);
            assert_eq!(name.key(), packed(&sample));
            if sample.len() <= 15 {
                let mut bytes = [0u8; 16];
                bytes[..sample.len()].copy_from_slice(&expected);
                bytes[15] = sample.len() as u8;
                assert_eq!(name.key(), Some(u128::from_le_bytes(bytes)), "{sample:?}");
            }
        }
        assert_eq!(packed(b"GET"), packed(b"get"));
        assert_ne!(packed(b"get"), packed(b"get\0"));
        assert_eq!(packed(b"0123456789abcdef"), None);
    }
}
