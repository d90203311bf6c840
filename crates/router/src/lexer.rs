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
