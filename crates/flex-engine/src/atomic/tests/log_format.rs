//! The log's record format.

use crate::atomic::log;

#[test]
fn hash_detects_a_changed_bit() {
    // Every single-bit change of a record header changes its sum.
    let h = log::rec_header(1, 9, 3, 4096, 512);
    let base = log::hash(1, &h[..40]);
    for bit in 0..320 {
        let mut c = h;
        c[bit / 8] ^= 1 << (bit % 8);
        assert_ne!(log::hash(1, &c[..40]), base, "bit {bit}");
    }
    assert_ne!(log::hash(1, &h[..40]), log::hash(2, &h[..40]));
}
