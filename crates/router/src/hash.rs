//! PostgreSQL's hash partitioning, bit for bit.
//!
//! A row goes to the partition whose remainder equals `row_hash % modulus`, where `row_hash`
//! combines, key column by key column, the type's extended hash function called with
//! PostgreSQL's partition seed. The functions here are PostgreSQL's (Bob Jenkins' lookup3 as
//! PostgreSQL adapted it, with its 64-bit seed), written from their definitions, so that a key
//! routed to shard `s` here is exactly a key that `satisfies_hash_partition` puts there.

/// `HASH_PARTITION_SEED` in PostgreSQL.
pub const PARTITION_SEED: u64 = 0x7A5B_2236_7996_DCFD;

#[inline]
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(4);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(6);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(8);
    *b = b.wrapping_add(*a);
    *a = a.wrapping_sub(*c);
    *a ^= c.rotate_left(16);
    *c = c.wrapping_add(*b);
    *b = b.wrapping_sub(*a);
    *b ^= a.rotate_left(19);
    *a = a.wrapping_add(*c);
    *c = c.wrapping_sub(*b);
    *c ^= b.rotate_left(4);
    *b = b.wrapping_add(*a);
}

#[inline]
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(14));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(11));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(25));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(16));
    *a ^= *c;
    *a = a.wrapping_sub(c.rotate_left(4));
    *b ^= *a;
    *b = b.wrapping_sub(a.rotate_left(14));
    *c ^= *b;
    *c = c.wrapping_sub(b.rotate_left(24));
}

#[inline]
fn seeded(init: u32, seed: u64) -> (u32, u32, u32) {
    let (mut a, mut b, mut c) = (init, init, init);
    if seed != 0 {
        a = a.wrapping_add((seed >> 32) as u32);
        b = b.wrapping_add(seed as u32);
        mix(&mut a, &mut b, &mut c);
    }
    (a, b, c)
}

#[inline]
fn le32(k: &[u8]) -> u32 {
    u32::from_le_bytes([k[0], k[1], k[2], k[3]])
}

/// `hash_bytes_extended`: the hash of a byte string (text, uuid).
pub fn hash_bytes_extended(key: &[u8], seed: u64) -> u64 {
    let init = 0x9e37_79b9u32
        .wrapping_add(key.len() as u32)
        .wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = seeded(init, seed);
    let mut k = key;
    while k.len() >= 12 {
        a = a.wrapping_add(le32(&k[0..4]));
        b = b.wrapping_add(le32(&k[4..8]));
        c = c.wrapping_add(le32(&k[8..12]));
        mix(&mut a, &mut b, &mut c);
        k = &k[12..];
    }
    // The last 0..11 bytes; the lowest byte of `c` is left for the length.
    let byte = |i: usize| u32::from(k[i]);
    let n = k.len();
    if n >= 11 {
        c = c.wrapping_add(byte(10) << 24);
    }
    if n >= 10 {
        c = c.wrapping_add(byte(9) << 16);
    }
    if n >= 9 {
        c = c.wrapping_add(byte(8) << 8);
    }
    if n >= 8 {
        b = b.wrapping_add(byte(7) << 24);
    }
    if n >= 7 {
        b = b.wrapping_add(byte(6) << 16);
    }
    if n >= 6 {
        b = b.wrapping_add(byte(5) << 8);
    }
    if n >= 5 {
        b = b.wrapping_add(byte(4));
    }
    if n >= 4 {
        a = a.wrapping_add(byte(3) << 24);
    }
    if n >= 3 {
        a = a.wrapping_add(byte(2) << 16);
    }
    if n >= 2 {
        a = a.wrapping_add(byte(1) << 8);
    }
    if n >= 1 {
        a = a.wrapping_add(byte(0));
    }
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hash_uint32_extended`: the hash of one 32-bit word.
pub fn hash_uint32_extended(k: u32, seed: u64) -> u64 {
    let init = 0x9e37_79b9u32.wrapping_add(4).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = seeded(init, seed);
    a = a.wrapping_add(k);
    final_mix(&mut a, &mut b, &mut c);
    (u64::from(b) << 32) | u64::from(c)
}

/// `hashint2extended`, `hashint4extended`, `date_hash_extended`.
pub fn hash_int4(v: i32, seed: u64) -> u64 {
    hash_uint32_extended(v as u32, seed)
}

/// `hashint8extended`, `timestamp_hash_extended` (timestamptz too): the two halves folded so
/// that values that fit in 32 bits hash as int4 does.
pub fn hash_int8(v: i64, seed: u64) -> u64 {
    let lo = v as u32;
    let hi = (v >> 32) as u32;
    let folded = if v >= 0 { lo ^ hi } else { lo ^ !hi };
    hash_uint32_extended(folded, seed)
}

/// `hashtextextended` under a deterministic collation: the bytes of the text.
pub fn hash_text(v: &str, seed: u64) -> u64 {
    hash_bytes_extended(v.as_bytes(), seed)
}

/// `uuid_hash_extended`: the 16 bytes of the uuid.
pub fn hash_uuid(v: &[u8; 16], seed: u64) -> u64 {
    hash_bytes_extended(v, seed)
}

/// `hash_combine64`: folds one column's hash into the row's.
pub fn combine(row: u64, column: u64) -> u64 {
    row ^ column
        .wrapping_add(0x49a0_f4dd_15e5_a8e3)
        .wrapping_add(row << 54)
        .wrapping_add(row >> 7)
}

/// The remainder of a row whose (non-null) key columns hashed to `column_hashes`.
pub fn partition_remainder(column_hashes: impl IntoIterator<Item = u64>, modulus: u64) -> u64 {
    let row = column_hashes.into_iter().fold(0u64, combine);
    row % modulus
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values PostgreSQL 15 returned for the same calls:
    /// `SELECT hashint4extended(0, 0), hashint8extended(1, 8816678312871386365),
    /// hashtextextended('', 0), hashtextextended('shardgate', 8816678312871386365),
    /// uuid_hash_extended('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 8816678312871386365)`.
    /// tests/tests/hashing.rs checks 10,000 keys per type against a live server.
    #[test]
    fn values_postgresql_returns() {
        assert_eq!(hash_int4(0, 0) as i64, 4154612158245552303);
        assert_eq!(hash_int8(1, PARTITION_SEED) as i64, 5968994663651403477);
        assert_eq!(hash_text("", 0) as i64, -6939563903564495251);
        assert_eq!(
            hash_text("shardgate", PARTITION_SEED) as i64,
            -8515562425966479148
        );
        let u = [
            0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
            0x0a, 0x11,
        ];
        assert_eq!(hash_uuid(&u, PARTITION_SEED) as i64, 424513190990560493);
    }

    #[test]
    fn int8_folds_to_int4_for_small_values() {
        for v in [-5i64, -1, 0, 1, 42, i32::MAX as i64, i32::MIN as i64] {
            assert_eq!(
                hash_int8(v, PARTITION_SEED),
                hash_int4(v as i32, PARTITION_SEED),
                "{v}"
            );
        }
        assert_ne!(
            hash_int8(1 << 40, PARTITION_SEED),
            hash_int8(0, PARTITION_SEED)
        );
    }

    #[test]
    fn bytes_use_every_byte() {
        let base = hash_bytes_extended(b"abcdefghijklmnopqrstuvwxyz", 0);
        for i in 0..26 {
            let mut k = *b"abcdefghijklmnopqrstuvwxyz";
            k[i] ^= 1;
            assert_ne!(hash_bytes_extended(&k, 0), base, "byte {i}");
        }
        assert_ne!(
            hash_bytes_extended(b"", 0),
            hash_bytes_extended(b"", PARTITION_SEED)
        );
    }

    #[test]
    fn remainders_stay_below_the_modulus() {
        for v in -1000i64..1000 {
            let r = partition_remainder([hash_int8(v, PARTITION_SEED)], 7);
            assert!(r < 7);
        }
    }
}
