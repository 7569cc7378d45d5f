//! Long Huffman-coded string literals remembered with what they decode to, so a value a
//! peer sends again and again without indexing it is decoded once per connection.
//!
//! `authorization` is the case this is for: h2 and nghttp2 never put it in the dynamic
//! table (it is sensitive), so every request carries the caller's whole token as a
//! Huffman-coded literal, and decoding it was a tenth of a proxy's work per call.

use bytes::Bytes;

/// Coded strings shorter than this are decoded every time: decoding them costs little
/// more than a lookup, and they are the ones most likely to differ on each request.
pub(super) const MIN_CODED: usize = 64;
/// Coded strings longer than this are decoded every time, so the memo holds at most
/// `SLOTS * (MAX_CODED + MAX_CODED * 8 / 5)` bytes per connection (about 10 KiB).
pub(super) const MAX_CODED: usize = 2048;
/// Two, so one value that changes on every request (a long trace state) does not evict
/// one that stays the same (the token).
const SLOTS: usize = 2;

#[derive(Debug, Default)]
pub(super) struct Memo {
    /// Most recently used first.
    slots: [Option<Entry>; SLOTS],
}

#[derive(Debug)]
struct Entry {
    /// The coded bytes followed by the decoded ones, in one allocation.
    both: Bytes,
    coded_len: usize,
}

impl Memo {
    /// The bytes the memo holds now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .map(|entry| entry.both.len())
            .sum()
    }

    /// What `coded` decodes to, if it is one of the remembered strings.
    pub(super) fn get(&mut self, coded: &[u8]) -> Option<Bytes> {
        let at = self.slots.iter().position(|slot| {
            slot.as_ref()
                .is_some_and(|entry| same(&entry.both[..entry.coded_len], coded))
        })?;
        self.slots[..=at].rotate_right(1);
        let entry = self.slots[0].as_ref()?;
        Some(entry.both.slice(entry.coded_len..))
    }

    /// Remembers that `coded` decodes to `decoded`, in place of the least recently used
    /// string, and returns the decoded value as the memo holds it.
    pub(super) fn put(&mut self, coded: &[u8], decoded: &[u8]) -> Bytes {
        let mut both = Vec::with_capacity(coded.len() + decoded.len());
        both.extend_from_slice(coded);
        both.extend_from_slice(decoded);
        let both = Bytes::from(both);
        let value = both.slice(coded.len()..);
        self.slots.rotate_right(1);
        self.slots[0] = Some(Entry {
            both,
            coded_len: coded.len(),
        });
        value
    }
}

/// Equality that looks at every byte whatever it finds, so how long a comparison takes
/// says nothing about how much of another request's value a caller guessed right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |differ, (x, y)| differ | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_two_strings_and_forgets_the_least_recently_used() {
        let mut memo = Memo::default();
        assert_eq!(memo.get(b"coded-a"), None);
        assert_eq!(memo.put(b"coded-a", b"a"), "a");
        assert_eq!(memo.put(b"coded-b", b"b"), "b");
        assert_eq!(memo.get(b"coded-a").unwrap(), "a");
        memo.put(b"coded-c", b"c");
        assert_eq!(memo.get(b"coded-b"), None, "b was used least recently");
        assert_eq!(memo.get(b"coded-a").unwrap(), "a");
        assert_eq!(memo.get(b"coded-c").unwrap(), "c");
    }

    #[test]
    fn a_string_that_differs_in_one_byte_or_in_length_is_not_remembered() {
        let mut memo = Memo::default();
        memo.put(b"coded-a", b"a");
        assert_eq!(memo.get(b"coded-b"), None);
        assert_eq!(memo.get(b"coded-"), None);
        assert_eq!(memo.get(b"coded-aa"), None);
    }

    #[test]
    fn a_peer_sending_distinct_strings_grows_it_no_further_than_its_slots() {
        let mut memo = Memo::default();
        let bound = SLOTS * (MAX_CODED + MAX_CODED * 8 / 5);
        for i in 0..1000u32 {
            let coded = [&i.to_be_bytes()[..], &[0; MAX_CODED - 4]].concat();
            let decoded = vec![b'a'; MAX_CODED * 8 / 5];
            memo.put(&coded, &decoded);
            assert!(memo.held() <= bound, "{} bytes after {i}", memo.held());
        }
        assert_eq!(memo.held(), bound);
    }
}
