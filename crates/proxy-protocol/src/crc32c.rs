//! CRC-32C (Castagnoli) of v2 headers, through the [`crc32c`](https://docs.rs/crc32c) crate:
//! the SSE4.2 / ARMv8 `crc32c` instructions where the CPU has them (detected at run time), a
//! software fallback elsewhere. Its `unsafe` stays in that crate; this one forbids it.

/// CRC-32C of a header whose 4-byte CRC value at `value_at` is read as zeros.
pub(crate) fn header_crc(header: &[u8], value_at: usize) -> u32 {
    let (before, rest) = header.split_at(value_at.min(header.len()));
    let after = rest.get(4..).unwrap_or(&[]);
    let crc = ::crc32c::crc32c(before);
    let crc = ::crc32c::crc32c_append(crc, &[0; 4]);
    if after.is_empty() { crc } else { ::crc32c::crc32c_append(crc, after) }
}

/// CRC-32C of `data`.
#[cfg(test)]
pub(crate) fn checksum(data: &[u8]) -> u32 {
    ::crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value_123456789() {
        assert_eq!(checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn crc32c_header_crc_matches_zeroed_copy() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut zeroed = data.clone();
        zeroed[500..504].copy_from_slice(&[0; 4]);
        assert_eq!(header_crc(&data, 500), checksum(&zeroed));
        // A value position at the very end (or past it) reads nothing after it.
        assert_eq!(header_crc(&data[..504], 500), checksum(&zeroed[..504]));
    }
}
