//! COPY: what a COPY statement says (table, columns, direction, format options), and the
//! rows of COPY FROM STDIN data, cut out of the client's CopyData stream with their key
//! fields read, so that each row can go to the shard that owns it.
//!
//! Rows are found the way PostgreSQL's COPY reads them: in text format a row ends at a
//! newline that no backslash escapes, in CSV at a newline outside quotes. A row's bytes are
//! passed on unchanged; only the key fields are decoded (text escapes, CSV quotes, the NULL
//! marker).

use crate::lexer::{Lexer, Token};

/// The data format of a COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    pub csv: bool,
    pub binary: bool,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: u8,
    /// The NULL marker, as written in the data.
    pub null: Vec<u8>,
    /// The first line is a header.
    pub header: bool,
    /// The data's encoding, when the COPY names one (`ENCODING 'LATIN1'`).
    pub encoding: Option<String>,
}

impl Default for CopyFormat {
    fn default() -> Self {
        CopyFormat {
            csv: false,
            binary: false,
            delimiter: b'\t',
            quote: b'"',
            escape: b'"',
            null: b"\\N".to_vec(),
            header: false,
            encoding: None,
        }
    }
}

/// A COPY statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyStatement {
    /// `COPY (query) TO ...`: `table` and `table_sql` are empty.
    pub query: bool,
    /// Lower-cased, without schema (as the shard maps name tables).
    pub table: String,
    /// The table as written (schema and quotes included), for the catalog.
    pub table_sql: String,
    /// The column list, lower-cased (quoted names as written); empty: every column.
    pub columns: Vec<String>,
    /// FROM (into the table) or TO.
    pub from: bool,
    /// FROM STDIN or TO STDOUT (rather than a file or program on the server).
    pub client_side: bool,
    pub format: CopyFormat,
}

fn ident(t: Token<'_>) -> Option<String> {
    match t {
        Token::Word(w) => Some(w.to_ascii_lowercase()),
        Token::QuotedIdent(q) => Some(q[1..q.len() - 1].replace("\"\"", "\"")),
        _ => None,
    }
}

/// A one-byte option value: `'x'` (or `E'\t'`).
fn byte_value(t: Option<Token<'_>>) -> Result<u8, String> {
    let v = string_value(t)?;
    match v.as_bytes() {
        [b] => Ok(*b),
        _ => Err(format!(
            "COPY option must be a single one-byte character, not '{v}'"
        )),
    }
}

fn string_value(t: Option<Token<'_>>) -> Result<String, String> {
    match t {
        Some(Token::String(s)) if s.starts_with('\'') => Ok(s[1..s.len() - 1].replace("''", "'")),
        Some(Token::String(s)) if s.starts_with(['E', 'e']) => {
            let inner = &s[2..s.len() - 1];
            let mut out = String::new();
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                match (c, chars.clone().next()) {
                    ('\\', Some('t')) => {
                        out.push('\t');
                        chars.next();
                    }
                    ('\\', Some('n')) => {
                        out.push('\n');
                        chars.next();
                    }
                    ('\\', Some('r')) => {
                        out.push('\r');
                        chars.next();
                    }
                    ('\\', Some(n)) => {
                        out.push(n);
                        chars.next();
                    }
                    ('\'', Some('\'')) => {
                        out.push('\'');
                        chars.next();
                    }
                    (c, _) => out.push(c),
                }
            }
            Ok(out)
        }
        other => Err(format!("unexpected COPY option value {other:?}")),
    }
}

/// Reads `COPY table [(columns)] FROM|TO ...` or `COPY (query) TO ...` with its options.
/// `None` for text that is not a COPY; an error for what it cannot follow.
pub fn parse_copy(sql: &str) -> Option<Result<CopyStatement, String>> {
    let mut lx = Lexer::new(sql);
    if !lx.next()?.is_keyword("copy") {
        return None;
    }
    let first = lx.next()?;
    if first == Token::Symbol("(") {
        let mut depth = 1;
        while depth > 0 {
            match lx.next()? {
                Token::Symbol("(") => depth += 1,
                Token::Symbol(")") => depth -= 1,
                _ => {}
            }
        }
        return Some(
            parse_rest(sql, lx, String::new(), String::new()).map(|mut c| {
                c.query = true;
                c
            }),
        );
    }
    // A name token is a slice of `sql` (`;` is not), so its offset can be taken.
    let mut name = ident(first)?;
    let start = first.text().as_ptr() as usize - sql.as_ptr() as usize;
    let mut end = start + first.text().len();
    let mut peek = lx.clone();
    while peek.next() == Some(Token::Symbol(".")) {
        match peek.next() {
            Some(t @ (Token::Word(_) | Token::QuotedIdent(_))) => {
                name = ident(t)?;
                end = t.text().as_ptr() as usize - sql.as_ptr() as usize + t.text().len();
                lx = peek.clone();
            }
            _ => break,
        }
    }
    Some(parse_rest(sql, lx, name, sql[start..end].to_owned()))
}

fn parse_rest(
    _sql: &str,
    mut lx: Lexer<'_>,
    table: String,
    table_sql: String,
) -> Result<CopyStatement, String> {
    let mut c = CopyStatement {
        query: false,
        table,
        table_sql,
        columns: Vec::new(),
        from: false,
        client_side: false,
        format: CopyFormat::default(),
    };
    let mut next = lx.next();
    if next == Some(Token::Symbol("(")) {
        loop {
            match lx.next() {
                Some(t @ (Token::Word(_) | Token::QuotedIdent(_))) => {
                    c.columns.push(ident(t).unwrap_or_default())
                }
                Some(Token::Symbol(",")) => {}
                Some(Token::Symbol(")")) => break,
                other => return Err(format!("unexpected {other:?} in COPY column list")),
            }
        }
        next = lx.next();
    }
    c.from = match next {
        Some(t) if t.is_keyword("from") => true,
        Some(t) if t.is_keyword("to") => false,
        other => return Err(format!("expected FROM or TO in COPY, found {other:?}")),
    };
    c.client_side = matches!(lx.next(), Some(t) if t.is_keyword("stdin") || t.is_keyword("stdout"));
    let mut csv_quote_set = false;
    let mut escape_set = false;
    let mut null_set = false;
    let mut delimiter_set = false;
    // Options: `WITH (name value, ...)`, or the old `WITH CSV HEADER DELIMITER ','` form.
    let mut options: Vec<Token<'_>> = lx.collect();
    while matches!(options.last(), Some(Token::Semicolon)) {
        options.pop();
    }
    let mut it = options.into_iter().peekable();
    while let Some(t) = it.next() {
        let Some(word) = ident(t) else {
            continue; // ( ) , and the like
        };
        match word.as_str() {
            "with" => {}
            "binary" => c.format.binary = true,
            "csv" => c.format.csv = true,
            "format" => match it.next().and_then(ident).as_deref() {
                Some("csv") => c.format.csv = true,
                Some("binary") => c.format.binary = true,
                Some("text") => {}
                other => return Err(format!("COPY format {other:?} is not recognized")),
            },
            "delimiter" => {
                c.format.delimiter = byte_value(it.next())?;
                delimiter_set = true;
            }
            "null" => {
                c.format.null = string_value(it.next())?.into_bytes();
                null_set = true;
            }
            "quote" => {
                c.format.quote = byte_value(it.next())?;
                csv_quote_set = true;
            }
            "escape" => {
                c.format.escape = byte_value(it.next())?;
                escape_set = true;
            }
            "header" => {
                c.format.header = true;
                let value = match it.peek() {
                    Some(Token::Word(w)) => Some(w.to_ascii_lowercase()),
                    Some(Token::Number(n)) => Some((*n).to_owned()),
                    Some(t @ Token::String(_)) => {
                        string_value(Some(*t)).ok().map(|v| v.to_ascii_lowercase())
                    }
                    _ => None,
                };
                match value.as_deref() {
                    Some("true" | "on" | "1" | "match") => {
                        it.next();
                    }
                    Some("false" | "off" | "0") => {
                        it.next();
                        c.format.header = false;
                    }
                    _ => {}
                }
            }
            "where" => return Err("COPY FROM with WHERE".into()),
            "encoding" => c.format.encoding = Some(string_value(it.next())?),
            _ => {}
        }
    }
    if c.format.csv {
        if !delimiter_set {
            c.format.delimiter = b',';
        }
        if !null_set {
            c.format.null = Vec::new();
        }
        if !escape_set {
            c.format.escape = c.format.quote;
        }
    }
    let _ = csv_quote_set;
    Ok(c)
}

/// One row cut out of COPY data.
pub struct Row<'a> {
    /// The row's bytes, its line end included.
    pub bytes: &'a [u8],
    /// The key fields decoded (`None`: NULL); empty for the header line.
    pub keys: Vec<Option<String>>,
    pub header: bool,
}

/// How lines end; PostgreSQL takes it from the first line of the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eol {
    Nl,
    Cr,
    CrNl,
}

/// Where a row ends in the data.
enum RowEnd {
    /// The row's length, its line end included.
    Line(usize),
    /// The text end-of-data marker `\.` at this offset: the row before it (if any) is the
    /// last one.
    Marker(usize),
}

/// Cuts COPY FROM STDIN data into rows and reads their key fields.
pub struct RowSplitter {
    format: CopyFormat,
    /// Positions of the key fields among a row's fields.
    key_fields: Vec<usize>,
    /// Data of rows not complete yet.
    partial: Vec<u8>,
    /// How far `partial` has been scanned for a row end, and the CSV quote state there:
    /// each byte is looked at once however the data is cut.
    scanned: usize,
    quoted: bool,
    eol: Option<Eol>,
    header_pending: bool,
    /// The end-of-data marker `\.` was seen: the rest is ignored.
    ended: bool,
    /// Rows seen, for error messages (1-based line of the data).
    line: u64,
    /// Data rows passed on.
    rows: u64,
}

impl RowSplitter {
    pub fn new(format: CopyFormat, key_fields: Vec<usize>) -> RowSplitter {
        RowSplitter {
            header_pending: format.header,
            format,
            key_fields,
            partial: Vec::new(),
            scanned: 0,
            quoted: false,
            eol: None,
            ended: false,
            line: 0,
            rows: 0,
        }
    }

    /// Rows found so far (the header line excepted).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Feeds a chunk of data; `row` gets every row it completes.
    pub fn feed(
        &mut self,
        data: &[u8],
        row: &mut dyn FnMut(Row<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.ended {
            return Ok(());
        }
        self.partial.extend_from_slice(data);
        self.cut(false, row)
    }

    /// The end of the data: a last row without a line end is a row.
    pub fn finish(
        &mut self,
        row: &mut dyn FnMut(Row<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.ended {
            return Ok(());
        }
        self.cut(true, row)?;
        let rest = std::mem::take(&mut self.partial);
        if !self.ended && !rest.is_empty() {
            self.emit(&rest, row)?;
        }
        Ok(())
    }

    /// Emits the complete rows of `partial` and keeps the rest.
    fn cut(
        &mut self,
        last: bool,
        row: &mut dyn FnMut(Row<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        let buf = std::mem::take(&mut self.partial);
        let mut start = 0;
        let result = (|| {
            loop {
                match self.row_end(&buf[start..], last) {
                    None => return Ok(()),
                    Some(RowEnd::Line(end)) => {
                        let line = &buf[start..start + end];
                        start += end;
                        self.scanned = 0;
                        self.emit(line, row)?;
                        if self.ended {
                            return Ok(());
                        }
                    }
                    Some(RowEnd::Marker(at)) => {
                        self.ended = true;
                        let content = &buf[start..start + at];
                        if !content.is_empty() {
                            // The last row, given a line end of its own.
                            let mut line = content.to_vec();
                            line.extend_from_slice(match self.eol {
                                Some(Eol::Cr) => b"\r",
                                Some(Eol::CrNl) => b"\r\n",
                                _ => b"\n",
                            });
                            self.line += 1;
                            self.emit_row(&line, content, row)?;
                        }
                        return Ok(());
                    }
                }
            }
        })();
        if !self.ended {
            self.partial = buf;
            self.partial.drain(..start);
        }
        result
    }

    /// The first complete row in `buf` (which starts a row), resuming the scan where the
    /// last call stopped. `last`: no more data will come.
    fn row_end(&mut self, buf: &[u8], last: bool) -> Option<RowEnd> {
        let f = &self.format;
        let mut i = self.scanned;
        let mut quoted = if i == 0 { false } else { self.quoted };
        while i < buf.len() {
            let b = buf[i];
            if f.csv && quoted {
                if b == f.escape && f.escape != f.quote {
                    if i + 1 >= buf.len() && !last {
                        break;
                    }
                    i += 2;
                    continue;
                }
                if b == f.quote {
                    quoted = false;
                }
                i += 1;
                continue;
            }
            if f.csv && b == f.quote {
                quoted = true;
                i += 1;
                continue;
            }
            if !f.csv && b == b'\\' {
                match buf.get(i + 1) {
                    None if !last => break, // the escaped byte is in the next chunk
                    Some(b'.') => {
                        self.scanned = 0;
                        return Some(RowEnd::Marker(i));
                    }
                    _ => {
                        i += 2;
                        continue;
                    }
                }
            }
            if b == b'\n' || b == b'\r' {
                let eol = match self.eol {
                    Some(e) => e,
                    None => {
                        let e = match (b, buf.get(i + 1)) {
                            (b'\n', _) => Eol::Nl,
                            (_, Some(b'\n')) => Eol::CrNl,
                            (_, Some(_)) => Eol::Cr,
                            (_, None) if last => Eol::Cr,
                            (_, None) => break, // is it CR or CRLF? the next chunk says
                        };
                        self.eol = Some(e);
                        e
                    }
                };
                match (eol, b) {
                    (Eol::Nl, b'\n') | (Eol::Cr, b'\r') => {
                        self.scanned = 0;
                        return Some(RowEnd::Line(i + 1));
                    }
                    (Eol::CrNl, b'\r') => match buf.get(i + 1) {
                        Some(b'\n') => {
                            self.scanned = 0;
                            return Some(RowEnd::Line(i + 2));
                        }
                        None if !last => break,
                        _ => {}
                    },
                    _ => {}
                }
            }
            i += 1;
        }
        self.scanned = i.min(buf.len());
        self.quoted = quoted;
        None
    }

    fn emit(
        &mut self,
        line: &[u8],
        row: &mut dyn FnMut(Row<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        self.line += 1;
        let content = match self.eol {
            Some(Eol::CrNl) => line.strip_suffix(b"\r\n").unwrap_or(line),
            Some(Eol::Cr) => line.strip_suffix(b"\r").unwrap_or(line),
            _ => line.strip_suffix(b"\n").unwrap_or(line),
        };
        if content == b"\\." {
            self.ended = true;
            return Ok(());
        }
        self.emit_row(line, content, row)
    }

    fn emit_row(
        &mut self,
        line: &[u8],
        content: &[u8],
        row: &mut dyn FnMut(Row<'_>) -> Result<(), String>,
    ) -> Result<(), String> {
        if self.header_pending {
            self.header_pending = false;
            return row(Row {
                bytes: line,
                keys: Vec::new(),
                header: true,
            });
        }
        self.rows += 1;
        let fields = if self.format.csv {
            self.csv_fields(content)
        } else {
            self.text_fields(content)
        };
        let mut keys = Vec::with_capacity(self.key_fields.len());
        for &k in &self.key_fields {
            match fields.get(k) {
                Some(v) => keys.push(v.clone()),
                None => {
                    return Err(format!(
                        "missing data for the shard key column in line {} of the COPY data",
                        self.line
                    ))
                }
            }
        }
        row(Row {
            bytes: line,
            keys,
            header: false,
        })
    }

    /// Text format fields, decoded (only as far as the last key field).
    fn text_fields(&self, content: &[u8]) -> Vec<Option<String>> {
        let last = self.key_fields.iter().copied().max().unwrap_or(0);
        let mut out = Vec::new();
        let mut raw_start = 0;
        let mut i = 0;
        let d = self.format.delimiter;
        while out.len() <= last {
            // Find the field's end: an unescaped delimiter or the end.
            let mut j = i;
            while j < content.len() && content[j] != d {
                j += if content[j] == b'\\' { 2 } else { 1 };
            }
            let j = j.min(content.len());
            let raw = &content[raw_start..j];
            out.push(if raw == self.format.null.as_slice() {
                None
            } else {
                Some(unescape_text(raw))
            });
            if j >= content.len() {
                break;
            }
            i = j + 1;
            raw_start = i;
        }
        out
    }

    /// CSV fields, unquoted (only as far as the last key field).
    fn csv_fields(&self, content: &[u8]) -> Vec<Option<String>> {
        let last = self.key_fields.iter().copied().max().unwrap_or(0);
        let f = &self.format;
        let mut out = Vec::new();
        let mut i = 0;
        loop {
            let mut value = Vec::new();
            let mut was_quoted = false;
            let mut quoted = false;
            let start = i;
            while i < content.len() {
                let b = content[i];
                if quoted {
                    if b == f.escape
                        && i + 1 < content.len()
                        && (content[i + 1] == f.quote || content[i + 1] == f.escape)
                        && (f.escape != f.quote || content[i + 1] == f.quote)
                    {
                        value.push(content[i + 1]);
                        i += 2;
                        continue;
                    }
                    if b == f.quote {
                        quoted = false;
                    } else {
                        value.push(b);
                    }
                } else if b == f.quote {
                    quoted = true;
                    was_quoted = true;
                } else if b == f.delimiter {
                    break;
                } else {
                    value.push(b);
                }
                i += 1;
            }
            let raw = &content[start..i];
            out.push(if !was_quoted && raw == f.null.as_slice() {
                None
            } else {
                Some(String::from_utf8_lossy(&value).into_owned())
            });
            if i >= content.len() || out.len() > last {
                break;
            }
            i += 1; // the delimiter
        }
        out
    }
}

/// Decodes a text-format field's backslash escapes.
fn unescape_text(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 >= raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                            n += 1;
                        }
                        None => break,
                    }
                }
                if n == 0 {
                    out.push(b'x');
                } else {
                    out.push(v as u8);
                }
            }
            other => out.push(other),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(
        fmt: CopyFormat,
        keys: Vec<usize>,
        chunks: &[&[u8]],
    ) -> Vec<(Vec<u8>, Vec<Option<String>>, bool)> {
        let mut s = RowSplitter::new(fmt, keys);
        let mut out = Vec::new();
        let mut push = |r: Row<'_>| {
            out.push((r.bytes.to_vec(), r.keys, r.header));
            Ok(())
        };
        for c in chunks {
            s.feed(c, &mut push).unwrap();
        }
        s.finish(&mut push).unwrap();
        out
    }

    #[test]
    fn statements_and_options() {
        let c = parse_copy("COPY public.\"Items\" (id, \"Owner\") FROM STDIN WITH (FORMAT csv, HEADER true, DELIMITER ';')")
            .unwrap()
            .unwrap();
        assert_eq!(c.table, "Items");
        assert_eq!(c.table_sql, "public.\"Items\"");
        assert_eq!(c.columns, vec!["id", "Owner"]);
        assert!(c.from && c.client_side && c.format.csv && c.format.header);
        assert_eq!(c.format.delimiter, b';');
        assert_eq!(c.format.null, b"");
        let c = parse_copy("copy items from stdin csv header")
            .unwrap()
            .unwrap();
        assert!(c.format.csv && c.format.header && c.columns.is_empty());
        let c = parse_copy("COPY items TO STDOUT WITH (FORMAT binary)")
            .unwrap()
            .unwrap();
        assert!(!c.from && c.format.binary);
        let c = parse_copy("COPY items FROM '/tmp/x' WITH (NULL 'nil', DELIMITER E'\\t')")
            .unwrap()
            .unwrap();
        assert!(!c.client_side);
        assert_eq!(c.format.null, b"nil");
        let c =
            parse_copy("COPY (SELECT header FROM t WHERE x IN (1, 2)) TO STDOUT WITH (FORMAT csv)")
                .unwrap()
                .unwrap();
        assert!(c.query && !c.from && c.client_side && c.format.csv && !c.format.header);
        assert!(parse_copy("SELECT 1").is_none());
    }

    #[test]
    fn text_rows_across_chunks_with_escapes() {
        let data: &[&[u8]] = &[
            b"1\ta\\tb\n2\t",
            b"x\\\n",
            b"y\n\\N\tz\n4\t\\",
            b"\\\n5\tlast",
        ];
        let r = rows(CopyFormat::default(), vec![0, 1], data);
        assert_eq!(r.len(), 5);
        assert_eq!(r[0].1, vec![Some("1".into()), Some("a\tb".into())]);
        assert_eq!(r[1].0, b"2\tx\\\ny\n");
        assert_eq!(r[1].1, vec![Some("2".into()), Some("x\ny".into())]);
        assert_eq!(r[2].1, vec![None, Some("z".into())]);
        assert_eq!(r[3].1, vec![Some("4".into()), Some("\\".into())]);
        assert_eq!(r[4].0, b"5\tlast");
        // The bytes of all rows are the data, unchanged.
        let all: Vec<u8> = r.iter().flat_map(|x| x.0.clone()).collect();
        assert_eq!(all, data.concat());
    }

    #[test]
    fn csv_rows_with_quotes_newlines_and_header() {
        let fmt = parse_copy("COPY t FROM STDIN WITH (FORMAT csv, HEADER)")
            .unwrap()
            .unwrap()
            .format;
        let data: &[&[u8]] = &[
            b"id,name\n\"1\",\"a,\n\"\"b\"\"\"\n2,",
            b"\n,\"\"\n\\.\nignored\n",
        ];
        let r = rows(fmt, vec![0, 1], data);
        assert!(r[0].2, "header");
        assert_eq!(r[1].1, vec![Some("1".into()), Some("a,\n\"b\"".into())]);
        assert_eq!(r[2].1, vec![Some("2".into()), None]);
        assert_eq!(r[3].1, vec![None, Some("".into())]);
        assert_eq!(r.len(), 4, "the end marker ends the data");
    }

    #[test]
    fn line_ends_follow_the_first_line() {
        let r = rows(CopyFormat::default(), vec![0], &[b"1\ta\r2\tb\r", b"3\tc"]);
        assert_eq!(
            r.iter()
                .map(|x| x.1[0].clone().unwrap())
                .collect::<Vec<_>>(),
            ["1", "2", "3"]
        );
        let r = rows(CopyFormat::default(), vec![0], &[b"1\ta\r", b"\n2\tb\r\n"]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, b"1\ta\r\n");
        assert_eq!(r[1].1, vec![Some("2".into())]);
        let csv = parse_copy("COPY t FROM STDIN CSV").unwrap().unwrap().format;
        let r = rows(csv, vec![0], &[b"1,\"a\rb\"\r2,c\r"]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].1, vec![Some("2".into())]);
    }

    #[test]
    fn the_text_end_marker_ends_the_data_even_after_a_row() {
        let r = rows(CopyFormat::default(), vec![0], &[b"1\ta\n2\tb\\.\n3\tc\n"]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].0, b"2\tb\n");
        let c = parse_copy("COPY t FROM STDIN WITH (FORMAT csv, HEADER 'false')")
            .unwrap()
            .unwrap();
        assert!(!c.format.header);
        let c = parse_copy("COPY t FROM STDIN WITH (FORMAT csv, HEADER 'on')")
            .unwrap()
            .unwrap();
        assert!(c.format.header);
    }

    #[test]
    fn a_row_without_the_key_field_is_an_error() {
        let mut s = RowSplitter::new(CopyFormat::default(), vec![2]);
        let e = s.feed(b"1\t2\n", &mut |_| Ok(())).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn a_copy_that_names_no_table_is_refused_without_a_panic() {
        // `;` is a token whose text is not a slice of the statement (held on the heap
        // here, as a client's is).
        assert!(parse_copy(&String::from("COPY;")).is_none());
        assert!(parse_copy(&String::from("copy ; x")).is_none());
        assert!(crate::analyze::analyze(&String::from("COPY;"), &|_| None).is_err());
    }

    /// A value in COPY text format.
    fn text_escape(v: &str) -> String {
        let mut out = String::new();
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
        out
    }

    /// A value in CSV, quoted when it must be.
    fn csv_quote(v: &str) -> String {
        if v.is_empty() || v.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_owned()
        }
    }

    proptest::proptest! {
        /// However the data is cut into CopyData messages, the rows found are the rows
        /// written: their bytes are the data, and the key field reads back as written.
        #[test]
        fn rows_survive_any_chunking(
            values in proptest::collection::vec("[a-z,\"\\\\\t\n\r é]{0,8}", 1..20),
            cuts in proptest::collection::vec(0usize..400, 0..10),
            csv in proptest::bool::ANY,
        ) {
            let data: String = values
                .iter()
                .enumerate()
                .map(|(i, v)| if csv {
                    format!("{i},{}\n", csv_quote(v))
                } else {
                    format!("{i}\t{}\n", text_escape(v))
                })
                .collect();
            let fmt = if csv {
                parse_copy("COPY t FROM STDIN CSV").unwrap().unwrap().format
            } else {
                CopyFormat::default()
            };
            let bytes = data.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            points.sort();
            let mut chunks = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(&bytes[at..p]);
                at = p;
            }
            chunks.push(&bytes[at..]);
            let r = rows(fmt, vec![1], &chunks);
            proptest::prop_assert_eq!(r.len(), values.len());
            let all: Vec<u8> = r.iter().flat_map(|x| x.0.clone()).collect();
            proptest::prop_assert_eq!(all, bytes.to_vec());
            for (row, v) in r.iter().zip(&values) {
                proptest::prop_assert_eq!(&row.1[0], &Some(v.clone()));
            }
        }
    }
}
