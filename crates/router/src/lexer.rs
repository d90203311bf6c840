//! A small SQL scanner: enough of PostgreSQL's lexical rules to find statement boundaries and
//! read leading keywords, never confused by quotes, dollar quotes or comments.

/// One token, borrowing from the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token<'a> {
    /// A bare word (keyword or unquoted identifier), as written.
    Word(&'a str),
    /// A double-quoted identifier, quotes included.
    QuotedIdent(&'a str),
    /// A string constant in any form (`'..'`, `E'..'`, `$$..$$`), quotes included.
    String(&'a str),
    Number(&'a str),
    /// `$1`, `$2`, ...
    Param(&'a str),
    /// Any other character or operator.
    Symbol(&'a str),
    Semicolon,
}

impl<'a> Token<'a> {
    pub fn text(&self) -> &'a str {
        match *self {
            Token::Word(s)
            | Token::QuotedIdent(s)
            | Token::String(s)
            | Token::Number(s)
            | Token::Param(s)
            | Token::Symbol(s) => s,
            Token::Semicolon => ";",
        }
    }

    pub fn is_keyword(&self, kw: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(kw))
    }
}

/// The highest `$n` a statement can have bound: a Bind carries at most 65,535 values (its
/// count is 16 bits, which PostgreSQL reads unsigned). Nothing is sized by a higher `$n`.
pub const MAX_PARAM: usize = 65_535;

/// Iterates over the tokens of SQL text; comments and whitespace are skipped. Text that does
/// not scan (an unterminated quote) ends the iteration with the rest as one `Symbol`.
#[derive(Clone)]
pub struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Lexer { src, pos: 0 }
    }

    /// Byte offset of the next unread character.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn skip_space_and_comments(&mut self) {
        let b = self.src.as_bytes();
        loop {
            while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
                self.pos += 1;
            }
            if b[self.pos..].starts_with(b"--") {
                while self.pos < b.len() && b[self.pos] != b'\n' {
                    self.pos += 1;
                }
            } else if b[self.pos..].starts_with(b"/*") {
                let mut depth = 0usize;
                while self.pos < b.len() {
                    if b[self.pos..].starts_with(b"/*") {
                        depth += 1;
                        self.pos += 2;
                    } else if b[self.pos..].starts_with(b"*/") {
                        depth -= 1;
                        self.pos += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        self.pos += 1;
                    }
                }
            } else {
                return;
            }
        }
    }
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn is_ident_cont(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_space_and_comments();
        let b = self.src.as_bytes();
        let start = self.pos;
        if start >= b.len() {
            return None;
        }
        let c = b[start];
        let rest_as_symbol = |me: &mut Self| {
            me.pos = b.len();
            Some(Token::Symbol(&me.src[start..]))
        };
        // E'...' / e'...' strings allow backslash escapes.
        if (c == b'e' || c == b'E') && b.get(start + 1) == Some(&b'\'') {
            self.pos = start + 1;
            return match scan_quoted(b, self.pos, b'\'', true) {
                Some(end) => {
                    self.pos = end;
                    Some(Token::String(&self.src[start..end]))
                }
                None => rest_as_symbol(self),
            };
        }
        if is_ident_start(c) {
            let mut i = start + 1;
            while i < b.len() && is_ident_cont(b[i]) {
                i += 1;
            }
            self.pos = i;
            return Some(Token::Word(&self.src[start..i]));
        }
        match c {
            b';' => {
                self.pos += 1;
                Some(Token::Semicolon)
            }
            b'\'' => match scan_quoted(b, start, b'\'', false) {
                Some(end) => {
                    self.pos = end;
                    Some(Token::String(&self.src[start..end]))
                }
                None => rest_as_symbol(self),
            },
            b'"' => match scan_quoted(b, start, b'"', false) {
                Some(end) => {
                    self.pos = end;
                    Some(Token::QuotedIdent(&self.src[start..end]))
                }
                None => rest_as_symbol(self),
            },
            b'$' => {
                let mut i = start + 1;
                if i < b.len() && b[i].is_ascii_digit() {
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    self.pos = i;
                    return Some(Token::Param(&self.src[start..i]));
                }
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] >= 0x80)
                {
                    i += 1;
                }
                if i < b.len() && b[i] == b'$' {
                    let delim = &b[start..=i];
                    let body = i + 1;
                    match b[body..].windows(delim.len()).position(|w| w == delim) {
                        Some(p) => {
                            let end = body + p + delim.len();
                            self.pos = end;
                            Some(Token::String(&self.src[start..end]))
                        }
                        None => rest_as_symbol(self),
                    }
                } else {
                    self.pos = start + 1;
                    Some(Token::Symbol(&self.src[start..start + 1]))
                }
            }
            b'0'..=b'9' | b'.' if c != b'.' || b.get(start + 1).is_some_and(u8::is_ascii_digit) => {
                let mut i = start + 1;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                self.pos = i;
                Some(Token::Number(&self.src[start..i]))
            }
            _ => {
                // One character (UTF-8 aware) as a symbol.
                let len = self.src[start..].chars().next().map_or(1, char::len_utf8);
                self.pos = start + len;
                Some(Token::Symbol(&self.src[start..start + len]))
            }
        }
    }
}

/// Returns the offset just past the closing quote; doubled quotes stay inside.
fn scan_quoted(b: &[u8], open: usize, q: u8, backslash: bool) -> Option<usize> {
    let mut i = open + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// Whether any of `words` (lower-case ASCII) occurs in `text`, ignoring ASCII case, as a
/// substring (not a token: this is the cheap look that decides whether a real one is due).
/// One pass over the text; only bytes that start some word are compared further.
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

/// A fixed set of up to 64 words (lower-case ASCII letters) to look for in statement texts,
/// ASCII case ignored, as substrings, for the checks made on every statement.
///
/// [`WordSet::find`] folds the text to lower case and runs a packed multi-substring search
/// over it (`aho-corasick`'s Teddy: SIMD, a few instructions per 16 bytes; several times
/// fewer instructions than a byte-by-byte look, which cost ~20 per byte of every statement).
/// That search reports occurrences that do not overlap: a word is found wherever it occurs,
/// except where it begins inside an earlier occurrence of another word. A word inside a longer
/// one (`listen` in `unlisten`) is found with it; otherwise an occurrence begins inside an
/// earlier one only where letters run on with no separator between them, inside a single
/// identifier (`resetemp`), never where a keyword of SQL begins. Where SIMD is not available,
/// tables of the words' first three bytes (built at compile time) make the look byte by byte.
pub struct WordSet {
    /// Per byte, the words that start with it (either case), as bits.
    starts: [u64; 256],
    /// Per byte, the words whose second byte it is (either case), as bits: a byte starts a
    /// comparison only when the next ones fit too.
    seconds: [u64; 256],
    /// Per byte, the words whose third byte it is (every byte, for a word of two).
    thirds: [u64; 256],
    words: &'static [&'static [u8]],
    /// The packed search, built at first use (`None`: not available here).
    packed: std::sync::OnceLock<Option<Packed>>,
}

/// `src` in ASCII lower case into `dst` (as long), eight bytes at a time: a byte that is an
/// upper-case letter gets its 0x20 bit, found by two additions per word that carry into each
/// byte's high bit (bytes with the high bit set are left as they are, as by
/// `to_ascii_lowercase`).
#[inline]
fn fold(dst: &mut [u8], src: &[u8]) {
    const ONES: u64 = u64::MAX / 255;
    let mut d = dst.chunks_exact_mut(8);
    let mut s = src.chunks_exact(8);
    for (d, s) in (&mut d).zip(&mut s) {
        let v = u64::from_le_bytes(s.try_into().expect("eight bytes"));
        let low7 = v & (0x7f * ONES);
        let from_a = low7 + (0x80 - b'A' as u64) * ONES;
        let past_z = low7 + (0x80 - b'Z' as u64 - 1) * ONES;
        let upper = from_a & !past_z & !v & (0x80 * ONES);
        d.copy_from_slice(&(v | upper >> 2).to_le_bytes());
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = s.to_ascii_lowercase();
    }
}

/// [`WordSet`]'s packed search.
struct Packed {
    searcher: aho_corasick::packed::Searcher,
    /// Per word, the words it contains (itself included): found with it.
    implies: Vec<u64>,
    /// Text is folded in pieces of this many bytes, each overlapping the last by the length
    /// of the longest word less one, so that no word is cut.
    overlap: usize,
}

/// Bytes of text folded at a time for the packed search (on the stack).
const FOLDED: usize = 512;
/// Text up to this long is folded into room of this size.
const SHORT: usize = 128;

impl Packed {
    /// The words in `text`, folded to lower case `N` bytes at a time.
    fn find<const N: usize>(&self, text: &[u8]) -> u64 {
        let mut folded = [0u8; N];
        let mut found = 0;
        let mut start = 0;
        loop {
            let end = text.len().min(start + N);
            let piece = &mut folded[..end - start];
            fold(piece, &text[start..end]);
            for m in self.searcher.find_iter(&*piece) {
                found |= self.implies[m.pattern().as_usize()];
            }
            if end == text.len() {
                return found;
            }
            start = end - self.overlap;
        }
    }
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
            packed: std::sync::OnceLock::new(),
        }
    }

    fn packed(&self) -> Option<&Packed> {
        self.packed
            .get_or_init(|| {
                let searcher = aho_corasick::packed::Config::new()
                    .match_kind(aho_corasick::packed::MatchKind::LeftmostFirst)
                    .builder()
                    .extend(self.words)
                    .build()?;
                let implies = self
                    .words
                    .iter()
                    .map(|outer| {
                        self.words
                            .iter()
                            .enumerate()
                            .filter(|(_, inner)| outer.windows(inner.len()).any(|w| w == **inner))
                            .fold(0u64, |bits, (i, _)| bits | 1 << i)
                    })
                    .collect();
                let longest = self.words.iter().map(|w| w.len()).max().unwrap_or(1);
                Some(Packed {
                    searcher,
                    implies,
                    overlap: longest - 1,
                })
            })
            .as_ref()
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

    /// The words that occur in `text`: bit `i` for `words[i]` (see [`WordSet`] for the
    /// occurrences that are not looked for).
    pub fn find(&self, text: &[u8]) -> u64 {
        let Some(packed) = self.packed() else {
            return self.find_bytewise(text);
        };
        // A short statement's room is cleared in a few stores.
        if text.len() <= SHORT {
            packed.find::<SHORT>(text)
        } else {
            packed.find::<FOLDED>(text)
        }
    }

    /// [`WordSet::find`] byte by byte, with the tables: every occurrence.
    pub fn find_bytewise(&self, text: &[u8]) -> u64 {
        let mut found = 0;
        let mut i = 0;
        while i + 1 < text.len() {
            let candidates = self.candidates(text, i) & !found;
            if candidates != 0 {
                found |= self.compare(&text[i..], candidates);
            }
            i += 1;
        }
        found
    }

    /// Whether any of the words occurs in `text`.
    pub fn any(&self, text: &[u8]) -> bool {
        let mut i = 0;
        while i + 1 < text.len() {
            let candidates = self.candidates(text, i);
            if candidates != 0 && self.compare(&text[i..], candidates) != 0 {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The words among `candidates` that `text` starts with.
    #[inline]
    fn compare(&self, text: &[u8], mut candidates: u64) -> u64 {
        let mut found = 0;
        while candidates != 0 {
            let w = candidates.trailing_zeros() as usize;
            candidates &= candidates - 1;
            if text
                .get(..self.words[w].len())
                .is_some_and(|s| s.eq_ignore_ascii_case(self.words[w]))
            {
                found |= 1 << w;
            }
        }
        found
    }
}

/// The statements of a (possibly multi-statement) query string, trimmed, empty ones dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut lx = Lexer::new(sql);
    let mut start = 0;
    loop {
        let before = lx.position();
        match lx.next() {
            Some(Token::Semicolon) => {
                let s = sql[start..before].trim();
                if !s.is_empty() {
                    out.push(s);
                }
                start = lx.position();
            }
            Some(_) => {}
            None => break,
        }
    }
    let s = sql[start..].trim();
    if !s.is_empty() && Lexer::new(s).next().is_some() {
        out.push(s);
    }
    out
}

/// The statement of `sql` when a quick look shows there is exactly one, as
/// [`split_statements`] would give it (trimmed, without a final semicolon); `None`: none,
/// several, or not sure without lexing (a semicolon that is not only the last byte, or one
/// after quotes or comments, which may hide it; text that begins with a comment). Spares
/// the lexing of every statement whose words only may make it a session command
/// (`UPDATE t SET ...`).
pub fn lone_statement(sql: &str) -> Option<&str> {
    let bytes = sql.as_bytes();
    let body = match memchr::memchr(b';', bytes) {
        None => sql,
        Some(at) => {
            let (before, after) = (&bytes[..at], &bytes[at + 1..]);
            let comment = || {
                memchr::memchr2_iter(b'-', b'/', before).any(|i| {
                    matches!(
                        (before[i], before.get(i + 1)),
                        (b'-', Some(b'-')) | (b'/', Some(b'*'))
                    )
                })
            };
            if !after.iter().all(u8::is_ascii_whitespace)
                || memchr::memchr3(b'\'', b'"', b'$', before).is_some()
                || comment()
            {
                return None;
            }
            &sql[..at]
        }
    };
    let body = body.trim();
    // Only comments are no statement.
    (!body.is_empty() && !body.starts_with("--") && !body.starts_with("/*")).then_some(body)
}

/// Whether `INSERT INTO name [AS alias] (` names its columns: a quick look that spares an
/// analysis of the INSERTs that do (most of them).
pub fn insert_names_columns(sql: &[u8]) -> bool {
    let text = String::from_utf8_lossy(sql);
    let mut lx = Lexer::new(&text);
    if !lx.next().is_some_and(|t| t.is_keyword("insert"))
        || !lx.next().is_some_and(|t| t.is_keyword("into"))
    {
        return false;
    }
    for t in lx {
        match t {
            Token::Symbol("(") => return true,
            Token::Word(w)
                if w.eq_ignore_ascii_case("values")
                    || w.eq_ignore_ascii_case("select")
                    || w.eq_ignore_ascii_case("default")
                    || w.eq_ignore_ascii_case("overriding") =>
            {
                return false
            }
            Token::Word(_) | Token::QuotedIdent(_) | Token::Symbol(".") => {}
            _ => return false,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_that_name_their_columns_are_seen() {
        assert!(insert_names_columns(b"INSERT INTO t (a, b) VALUES (1, 2)"));
        assert!(insert_names_columns(
            b"insert into s.\"T\" AS x (a) select 1"
        ));
        assert!(!insert_names_columns(b"INSERT INTO t VALUES (1, 2)"));
        assert!(!insert_names_columns(b"INSERT INTO t SELECT * FROM u"));
        assert!(!insert_names_columns(b"INSERT INTO t DEFAULT VALUES"));
        assert!(!insert_names_columns(b"SELECT 1"));
    }

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

    #[test]
    fn word_sets_find_what_contains_any_word_finds() {
        static WORDS: WordSet = WordSet::new(&[b"set", b"listen", b"load", b"lo", b"oa"]);
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
        ] {
            let found = WORDS.find(text);
            for (i, w) in WORDS.words.iter().enumerate() {
                assert_eq!(
                    found & (1 << i) != 0,
                    contains_any_word(text, &[w]),
                    "{w:?} in {text:?}"
                );
            }
            assert_eq!(WORDS.any(text), found != 0, "{text:?}");
        }
    }

    /// The words the proxy's session looks for (`proxy::session::words`), as a test set.
    const SESSION_WORDS: &[&[u8]] = &[
        b"set",
        b"listen",
        b"discard",
        b"deallocate",
        b"savepoint",
        b"release",
        b"rollback",
        b"temp",
        b"hold",
        b"prepare",
        b"advisory",
        b"drop",
        b"close",
        b"unlock",
        b"unlisten",
        b"load",
    ];

    /// The packed search finds what the byte-by-byte look finds wherever a word begins a
    /// token or follows no earlier word in the same run of letters, and never more.
    #[test]
    fn packed_word_search_agrees_with_the_bytewise_one() {
        static WORDS: WordSet = WordSet::new(SESSION_WORDS);
        assert!(
            WORDS.packed().is_some(),
            "the packed search is available here"
        );
        let long = "SELECT abalance FROM pgbench_accounts WHERE aid = 1 ".repeat(40) + "; RESET x";
        for text in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            "RESET work_mem",
            "reset all; UNLISTEN *",
            "SELECT pg_advisory_unlock_all(), set_config('a', 'b', false)",
            "CREATE TEMPORARY TABLE t (a int); DISCARD TEMP",
            "DECLARE c CURSOR WITH HOLD FOR SELECT 1; CLOSE c",
            "PREPARE TRANSACTION 'x'; ROLLBACK PREPARED 'x'",
            "SAVEPOINT a; RELEASE a; ROLLBACK TO a; DEALLOCATE ALL; DROP TABLE t; LOAD 'x'",
            "select offset from t",
            &long,
        ] {
            assert_eq!(
                WORDS.find(text.as_bytes()),
                WORDS.find_bytewise(text.as_bytes()),
                "{text}"
            );
        }
    }

    proptest::proptest! {
        /// Random statements of words, other letters and separators: every word that
        /// begins a token is found, and nothing is found that is not there.
        #[test]
        fn packed_word_search_finds_every_token_word(
            parts in proptest::collection::vec(
                (0usize..24, proptest::sample::select(vec![" ", "_", "(", ";", ", ", "1", ""])),
                0..40,
            )
        ) {
            const LIST: &[&[u8]] = SESSION_WORDS;
            static WORDS: WordSet = WordSet::new(LIST);
            const OTHER: &[&str] = &["SeLeCt", "x", "re", "un", "abc", "ORARY", "all", "lo"];
            let mut text = String::new();
            let mut starts = Vec::new();
            for (i, sep) in &parts {
                if text.is_empty() || !text.ends_with(|c: char| c.is_ascii_alphabetic()) {
                    starts.push((text.len(), *i));
                }
                match LIST.get(*i) {
                    Some(w) if i % 2 == 0 => text.push_str(&std::str::from_utf8(w).unwrap().to_uppercase()),
                    Some(w) => text.push_str(std::str::from_utf8(w).unwrap()),
                    None => text.push_str(OTHER[i % OTHER.len()]),
                }
                text.push_str(sep);
            }
            let found = WORDS.find(text.as_bytes());
            let all = WORDS.find_bytewise(text.as_bytes());
            proptest::prop_assert_eq!(found & !all, 0, "{}", text);
            for (at, i) in starts {
                if i < LIST.len() {
                    proptest::prop_assert!(found & (1 << i) != 0, "{:?} at {} in {}", LIST[i], at, text);
                }
            }
        }
    }

    #[test]
    fn folding_is_ascii_lower_case_of_every_byte() {
        let src: Vec<u8> = (0..=255u8)
            .chain(b"SELECT aBc FROM T;".iter().copied())
            .collect();
        for len in [0, 1, 7, 8, 9, 64, src.len()] {
            let mut dst = vec![0u8; len];
            fold(&mut dst, &src[..len]);
            let want: Vec<u8> = src[..len].iter().map(u8::to_ascii_lowercase).collect();
            assert_eq!(dst, want, "{len}");
        }
    }

    /// A lone statement is what the splitter finds, whenever the quick look answers.
    #[test]
    fn a_lone_statement_is_the_one_the_splitter_finds() {
        for sql in [
            "UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 7",
            "UPDATE t SET a = 1;",
            "  SET work_mem = '1MB'  ",
            "SET work_mem = '1MB';\n",
            "SET a = 'x;'",
            "SET a = 1 -- c;",
            "SET a = 1 /* ; */",
            "SET a = 1; SET b = 2",
            "SET a = 'x;",
            "select $$;$$",
            "-- only a comment",
            "/* c */ SET a = 1",
            ";",
            "",
            "   ",
        ] {
            if let Some(stmt) = lone_statement(sql) {
                assert_eq!(split_statements(sql), vec![stmt], "{sql:?}");
            }
        }
        // Without a semicolon, and not beginning with a comment: lone.
        assert_eq!(
            lone_statement("  UPDATE t SET a = b - -1 "),
            Some("UPDATE t SET a = b - -1")
        );
        assert_eq!(
            lone_statement("UPDATE t SET a = 1;"),
            Some("UPDATE t SET a = 1")
        );
        assert_eq!(lone_statement("SET a = 1; SET b = 2"), None);
        assert_eq!(lone_statement("SET a = 1 -- c;"), None);
    }

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let sql = "set a = 'x;y'; select $$;$$, \"a;b\" -- c;d\n; /* e; /* f; */ g; */ select 1;";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts[0], "set a = 'x;y'");
        assert!(parts[2].ends_with("select 1"));
    }

    #[test]
    fn tokens() {
        let t: Vec<_> = Lexer::new("SET search_path TO E'a\\'b', \"X\" = $1").collect();
        assert!(t[0].is_keyword("set"));
        assert_eq!(t[3], Token::String("E'a\\'b'"));
        assert_eq!(t[5], Token::QuotedIdent("\"X\""));
        assert_eq!(t[7], Token::Param("$1"));
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for s in ["'abc", "\"abc", "$a$ abc", "/* abc", "E'\\", "$", "é'"] {
            let _ = Lexer::new(s).count();
            let _ = split_statements(s);
        }
    }
}
