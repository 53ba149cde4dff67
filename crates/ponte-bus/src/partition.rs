//! Where librdkafka's default partitioner puts a keyed message, computed without a producer:
//! for a service that sends several keys' messages as one, to the partition each key would
//! have gone to alone (the reconciler's repartition batches), so they stay co-partitioned with
//! the topics producers fill key by key.
//!
//! librdkafka's default partitioner (`consistent_random`) and `consistent` put a message with
//! a non-empty key in partition `crc32(key) % partition count` (CRC-32 as zlib computes it);
//! only messages without a key go to a random partition. The other partitioners (the
//! `murmur2` ones of the Java client, `fnv1a`) place keys differently:
//! [`check_partitioner`] refuses a configuration that sets one.
use std::collections::BTreeMap;

/// The partition librdkafka's default partitioner gives a message keyed `key` on a topic of
/// `partitions` partitions (at least 1). An empty key gets partition 0 here, where the
/// partitioner would pick one at random: callers only place keyed messages.
pub fn of_key(key: &[u8], partitions: i32) -> i32 {
    let n = u32::try_from(partitions.max(1)).unwrap_or(1);
    // The remainder is below `partitions`, so it fits.
    i32::try_from(crc32(key) % n).unwrap_or(0)
}

/// Refuses Kafka client properties that set a partitioner other than the default, which
/// [`of_key`] computes: a service placing keys itself would then split a key's messages
/// from the ones producers place.
pub fn check_partitioner(properties: &BTreeMap<String, String>) -> Result<(), String> {
    match properties.get("partitioner").map(String::as_str) {
        None | Some("consistent_random" | "consistent") => Ok(()),
        Some(other) => Err(format!(
            "kafka.properties sets partitioner = {other:?}: Ponte places keys as librdkafka's \
             default partitioner does (consistent_random, CRC-32 of the key), and every \
             producer of a deployment must place them alike"
        )),
    }
}

/// CRC-32 of `bytes` (the reflected polynomial 0xEDB88320, as zlib and librdkafka's
/// `rd_crc32` compute it).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// The CRC of each byte value, computed at compile time.
const TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_crc_is_the_standard_crc_32() {
        // The check value of CRC-32 (the catalogue of parametrised CRC algorithms).
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"a"), 0xE8B7_BE43);
    }

    #[test]
    fn a_key_goes_to_its_crc_modulo_the_partition_count() {
        assert_eq!(of_key(b"123456789", 6), (0xCBF4_3926_u32 % 6) as i32);
        assert_eq!(of_key(b"a", 1), 0);
        for key in [&b"12345678901"[..], b"898001160000005", b"fam-1"] {
            let p = of_key(key, 6);
            assert!((0..6).contains(&p), "{p}");
        }
    }

    #[test]
    fn only_the_default_partitioners_are_accepted() {
        let mut props = BTreeMap::new();
        assert!(check_partitioner(&props).is_ok());
        props.insert("partitioner".to_owned(), "consistent_random".to_owned());
        assert!(check_partitioner(&props).is_ok());
        props.insert("partitioner".to_owned(), "murmur2_random".to_owned());
        let err = check_partitioner(&props).unwrap_err();
        assert!(err.contains("murmur2_random"), "{err}");
    }
}
