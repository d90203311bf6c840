//! Fixed sets of words looked for in every statement's text on its way to a server: the
//! cheap checks that decide whether a statement needs a closer look (a session command, a
//! function that pins a connection). A word is found wherever it occurs, as a substring,
//! ASCII case ignored, in one pass over the text and without copying it.

/// Whether any of `words` (lower-case ASCII) occurs in `text`, ignoring ASCII case, as a
/// substring: the plain definition, byte by byte, that [`WordSet`] is tested against.
pub fn contains_any_word(text: &[u8], words: &[&[u8]]) -> bool {
    let mut starts = [false; 256];
    for w in words {
        if let Some(&b) = w.first() {
            starts[b as usize] = true;
        }
    }
    text.iter().enumerate().any(|(i, b)| {
        starts[b.to_ascii_lowercase() as usize]
            && words.iter().any(|w| {
                text.get(i..i + w.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(w))
            })
    })
}

/// A fixed set of up to 64 words (lower-case ASCII, two bytes or more) to look for in
/// statement texts: every occurrence, ASCII case ignored.
///
/// [`WordSet::find`] looks at 16 positions at a time (x86-64 with SSSE3, which every x86-64
/// processor of the last fifteen years has): the first three bytes at each position are
/// matched against fingerprints of the words, each byte by its two halves in two table
/// lookups (a vector shuffle), so that a position is looked at further only where the
/// first three bytes of some word could start. For the ~55 bytes of a typical statement
/// that is ~250 instructions; a general packed multi-substring search (aho-corasick's
/// Teddy over a lower-cased copy) took ~700, most of them in setting up and verifying
/// for short texts. Elsewhere, tables of the words' first three bytes (built at compile
/// time) make the look byte by byte.
pub struct WordSet {
    /// Per byte, the words that start with it (either case), as bits.
    starts: [u64; 256],
    /// Per byte, the words whose second byte it is (either case), as bits: a byte starts a
    /// comparison only when the next ones fit too.
    seconds: [u64; 256],
    /// Per byte, the words whose third byte it is (every byte, for a word of two).
    thirds: [u64; 256],
    words: &'static [&'static [u8]],
    /// The vector search's tables, built at first use (`None`: not available here).
    #[cfg(target_arch = "x86_64")]
    fingerprints: std::sync::OnceLock<Option<fingerprint::Fingerprints>>,
}

impl WordSet {
    pub const fn new(words: &'static [&'static [u8]]) -> WordSet {
        assert!(words.len() <= 64, "at most 64 words");
        let mut starts = [0u64; 256];
        let mut seconds = [0u64; 256];
        let mut thirds = [0u64; 256];
        let mut i = 0;
        while i < words.len() {
            let w = words[i];
            assert!(w.len() >= 2, "words of two bytes or more");
            starts[w[0].to_ascii_lowercase() as usize] |= 1 << i;
            starts[w[0].to_ascii_uppercase() as usize] |= 1 << i;
            seconds[w[1].to_ascii_lowercase() as usize] |= 1 << i;
            seconds[w[1].to_ascii_uppercase() as usize] |= 1 << i;
            if w.len() >= 3 {
                thirds[w[2].to_ascii_lowercase() as usize] |= 1 << i;
                thirds[w[2].to_ascii_uppercase() as usize] |= 1 << i;
            } else {
                let mut b = 0;
                while b < 256 {
                    thirds[b] |= 1 << i;
                    b += 1;
                }
            }
            i += 1;
        }
        WordSet {
            starts,
            seconds,
            thirds,
            words,
            #[cfg(target_arch = "x86_64")]
            fingerprints: std::sync::OnceLock::new(),
        }
    }

    /// The words that occur in `text`: bit `i` for `words[i]`.
    pub fn find(&self, text: &[u8]) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if let Some(f) = self
            .fingerprints
            .get_or_init(|| fingerprint::Fingerprints::new(self.words))
        {
            return f.find(self.words, text);
        }
        self.find_bytewise(text)
    }

    /// Whether the vector search is used here.
    pub fn vectored(&self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            self.fingerprints
                .get_or_init(|| fingerprint::Fingerprints::new(self.words))
                .is_some()
        }
        #[cfg(not(target_arch = "x86_64"))]
        false
    }

    /// [`WordSet::find`] byte by byte, with the tables.
    pub fn find_bytewise(&self, text: &[u8]) -> u64 {
        let mut found = 0;
        let mut i = 0;
        while i + 1 < text.len() {
            let candidates = self.candidates(text, i) & !found;
            if candidates != 0 {
                found |= starting(self.words, &text[i..], candidates);
            }
            i += 1;
        }
        found
    }

    /// The words among those of `text` at `i` whose first three bytes fit (the tables).
    #[inline]
    fn candidates(&self, text: &[u8], i: usize) -> u64 {
        let starts = self.starts[text[i] as usize];
        if starts == 0 {
            // Most positions end here.
            return 0;
        }
        // Past the end: byte 0, the third byte of words of two only.
        let third = text.get(i + 2).copied().unwrap_or(0);
        starts & self.seconds[text[i + 1] as usize] & self.thirds[third as usize]
    }
}

/// The words among `candidates` (bits of `words`) that `text` starts with.
#[inline]
fn starting(words: &[&[u8]], text: &[u8], mut candidates: u64) -> u64 {
    let mut found = 0;
    while candidates != 0 {
        let w = candidates.trailing_zeros() as usize;
        candidates &= candidates - 1;
        if text
            .get(..words[w].len())
            .is_some_and(|s| s.eq_ignore_ascii_case(words[w]))
        {
            found |= 1 << w;
        }
    }
    found
}

/// The vector search: fingerprints of the words' first three bytes in eight buckets.
#[cfg(target_arch = "x86_64")]
mod fingerprint {
    use std::arch::x86_64::*;

    /// Bit `b` of a table entry: bucket `b` has a word whose byte (at that offset) has this
    /// half. A byte fits a bucket where both of its halves do.
    pub(super) struct Fingerprints {
        /// Per offset 0..3, by low half (four bits) of the byte.
        low: [[u8; 16]; 3],
        /// Per offset 0..3, by high half of the byte.
        high: [[u8; 16]; 3],
        /// Per bucket, its words (bits of the word set).
        buckets: [u64; 8],
    }

    impl Fingerprints {
        pub(super) fn new(words: &[&[u8]]) -> Option<Fingerprints> {
            if !std::arch::is_x86_feature_detected!("ssse3") {
                return None;
            }
            let mut f = Fingerprints {
                low: [[0; 16]; 3],
                high: [[0; 16]; 3],
                buckets: [0; 8],
            };
            // Words that begin alike share a bucket: fewer bytes fit by chance.
            let mut order: Vec<usize> = (0..words.len()).collect();
            order.sort_by_key(|&i| words[i]);
            let per_bucket = words.len().div_ceil(8).max(1);
            for (n, &w) in order.iter().enumerate() {
                let bucket = n / per_bucket;
                let bit = 1u8 << bucket;
                f.buckets[bucket] |= 1 << w;
                for at in 0..3 {
                    match words[w].get(at) {
                        Some(&c) => {
                            for c in [c.to_ascii_lowercase(), c.to_ascii_uppercase()] {
                                f.low[at][(c & 15) as usize] |= bit;
                                f.high[at][(c >> 4) as usize] |= bit;
                            }
                        }
                        // A word of two: any third byte.
                        None => {
                            for half in 0..16 {
                                f.low[at][half] |= bit;
                                f.high[at][half] |= bit;
                            }
                        }
                    }
                }
            }
            Some(f)
        }

        pub(super) fn find(&self, words: &[&[u8]], text: &[u8]) -> u64 {
            // SAFETY: built only where SSSE3 was detected (`new`).
            unsafe { self.find_ssse3(words, text) }
        }

        #[target_feature(enable = "ssse3")]
        unsafe fn find_ssse3(&self, words: &[&[u8]], text: &[u8]) -> u64 {
            // SAFETY: the tables are 16 bytes each.
            let tables: [(__m128i, __m128i); 3] = std::array::from_fn(|at| unsafe {
                (
                    _mm_loadu_si128(self.low[at].as_ptr().cast()),
                    _mm_loadu_si128(self.high[at].as_ptr().cast()),
                )
            });
            let mut found = 0;
            let mut at = 0;
            // Whole blocks: the loads at `at`, `at + 1` and `at + 2` stay inside the text.
            while at + 18 <= text.len() {
                // SAFETY: 18 bytes from `at` are inside `text`.
                let fit = unsafe { block(&tables, text.as_ptr().add(at)) };
                if any(fit) {
                    found |= self.verify(words, text, at, fit, found);
                }
                at += 16;
            }
            // The rest (under 18 bytes) from a copy padded with zeros: positions past the
            // end of the text fail verification, and no word of two bytes or more starts at
            // the 17th.
            if at < text.len() {
                let rest = &text[at..];
                let mut padded = [0u8; 32];
                padded[..rest.len()].copy_from_slice(rest);
                // SAFETY: 18 bytes from the start are inside `padded`.
                let fit = unsafe { block(&tables, padded.as_ptr()) };
                if any(fit) {
                    found |= self.verify(words, text, at, fit, found);
                }
            }
            found
        }

        /// The words (not yet in `found`) that occur at the positions from `at` where
        /// `fit` has buckets.
        #[inline]
        #[target_feature(enable = "ssse3")]
        unsafe fn verify(
            &self,
            words: &[&[u8]],
            text: &[u8],
            at: usize,
            fit: __m128i,
            found: u64,
        ) -> u64 {
            let empty = _mm_movemask_epi8(_mm_cmpeq_epi8(fit, _mm_setzero_si128())) as u32;
            let mut positions = !empty & 0xffff;
            let mut buckets = [0u8; 16];
            // SAFETY: 16 bytes of room.
            unsafe { _mm_storeu_si128(buckets.as_mut_ptr().cast(), fit) };
            let mut more = 0;
            while positions != 0 {
                let i = positions.trailing_zeros() as usize;
                positions &= positions - 1;
                let Some(here) = text.get(at + i..) else {
                    break;
                };
                let mut bits = buckets[i];
                let mut candidates = 0;
                while bits != 0 {
                    candidates |= self.buckets[bits.trailing_zeros() as usize];
                    bits &= bits - 1;
                }
                more |= super::starting(words, here, candidates & !(found | more));
            }
            more
        }
    }

    /// Per position of the 16 from `p`, the buckets whose fingerprints the three bytes
    /// from there fit.
    ///
    /// # Safety
    /// 18 bytes from `p` are readable; SSSE3 is available.
    #[inline]
    #[target_feature(enable = "ssse3")]
    unsafe fn block(tables: &[(__m128i, __m128i); 3], p: *const u8) -> __m128i {
        let nibble = _mm_set1_epi8(0x0f);
        let mut fit = _mm_set1_epi8(-1);
        for (at, &(low, high)) in tables.iter().enumerate() {
            // SAFETY: the caller's promise.
            let v = unsafe { _mm_loadu_si128(p.add(at).cast()) };
            let by_low = _mm_shuffle_epi8(low, _mm_and_si128(v, nibble));
            let by_high = _mm_shuffle_epi8(high, _mm_and_si128(_mm_srli_epi16(v, 4), nibble));
            fit = _mm_and_si128(fit, _mm_and_si128(by_low, by_high));
        }
        fit
    }

    /// Some position has a bucket.
    #[inline]
    #[target_feature(enable = "ssse3")]
    fn any(fit: __m128i) -> bool {
        _mm_movemask_epi8(_mm_cmpeq_epi8(fit, _mm_setzero_si128())) != 0xffff
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_found_in_any_case() {
        assert!(contains_any_word(
            b"select 1; SET x = 1",
            &[b"set", b"listen"]
        ));
        assert!(contains_any_word(b"LiStEn ch", &[b"set", b"listen"]));
        assert!(!contains_any_word(b"select 1", &[b"set", b"listen"]));
        assert!(!contains_any_word(b"lis", &[b"listen"]));
        assert!(!contains_any_word(b"", &[b"set"]));
    }

    /// Words like those the proxy's session looks for (`proxy::session::words`), and a few
    /// more: words that share their first bytes, one inside another, one with a `_`.
    const SESSION_WORDS: &[&[u8]] = &[
        b"advisory",
        b"begin",
        b"client_encoding",
        b"close",
        b"deallocate",
        b"discard",
        b"drop",
        b"hold",
        b"listen",
        b"load",
        b"names",
        b"prepare",
        b"release",
        b"reset",
        b"rollback",
        b"savepoint",
        b"set",
        b"temp",
        b"unlisten",
        b"unlock",
    ];

    /// Each word's bit is what the plain definition says, in both searches.
    fn check(set: &WordSet, text: &[u8]) {
        let found = set.find(text);
        assert_eq!(found, set.find_bytewise(text), "{text:?}");
        for (i, w) in set.words.iter().enumerate() {
            assert_eq!(
                found & (1 << i) != 0,
                contains_any_word(text, &[w]),
                "{w:?} in {text:?}"
            );
        }
    }

    #[test]
    fn word_sets_find_every_occurrence() {
        static WORDS: WordSet = WordSet::new(&[b"set", b"listen", b"load", b"lo", b"oa"]);
        static SESSION: WordSet = WordSet::new(SESSION_WORDS);
        static ENCODING: WordSet = WordSet::new(&[b"names", b"client_encoding"]);
        #[cfg(target_arch = "x86_64")]
        assert!(SESSION.vectored(), "the vector search is available here");
        let long = "SELECT abalance FROM pgbench_accounts WHERE aid = 1 ".repeat(40) + "; RESET x";
        for text in [
            &b"SELECT 1"[..],
            b"LiStEn ch",
            b"select offset",
            b"",
            b"l",
            b"LOAD 'x'",
            b"reset all; UNLISTEN *",
            b"lo",
            b"xLOAd",
            b"oaload",
            b"se",
            b"xset",
            b"sel",
            b"xlo",
            b"l\0",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1; set",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            b"RESET work_mem",
            b"SELECT pg_advisory_unlock_all(), set_config('a', 'b', false)",
            b"CREATE TEMPORARY TABLE t (a int); DISCARD TEMP",
            b"DECLARE c CURSOR WITH HOLD FOR SELECT 1; CLOSE c",
            b"PREPARE TRANSACTION 'x'; ROLLBACK PREPARED 'x'",
            b"SAVEPOINT a; RELEASE a; ROLLBACK TO a; DEALLOCATE ALL; DROP TABLE t; LOAD 'x'",
            b"resetemp unlistenload",
            b"rollback ",
            b"SET NAMES 'UTF8'; set client_encoding = x",
            b"0123456789abcdefse",
            b"0123456789abcdefset",
            b"0123456789abcdef0set",
            b"0123456789abcdef01set",
            b"0123456789abcdef012set",
            long.as_bytes(),
        ] {
            for set in [&WORDS, &SESSION, &ENCODING] {
                check(set, text);
            }
        }
    }

    proptest::proptest! {
        /// Random statements of words, other letters and separators, in random case: the
        /// vector search finds exactly what the plain definition finds.
        #[test]
        fn the_vector_search_finds_every_word(
            parts in proptest::collection::vec(
                (0usize..24, proptest::bool::ANY,
                 proptest::sample::select(vec![" ", "_", "(", ";", ", ", "1", "", "\0", "é"])),
                0..40,
            )
        ) {
            static WORDS: WordSet = WordSet::new(SESSION_WORDS);
            const OTHER: &[&str] = &["SeLeCt", "x", "re", "un", "abc", "ORARY", "all", "lo"];
            let mut text = String::new();
            for (i, upper, sep) in &parts {
                let word = match SESSION_WORDS.get(*i) {
                    Some(w) => std::str::from_utf8(w).unwrap(),
                    None => OTHER[i % OTHER.len()],
                };
                if *upper {
                    text.push_str(&word.to_uppercase());
                } else {
                    text.push_str(word);
                }
                text.push_str(sep);
            }
            check(&WORDS, text.as_bytes());
        }

        /// Any bytes at all.
        #[test]
        fn the_vector_search_agrees_on_any_bytes(text in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            static WORDS: WordSet = WordSet::new(&[b"set", b"listen", b"load", b"lo", b"oa"]);
            check(&WORDS, &text);
        }
    }
}
