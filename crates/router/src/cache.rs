//! Statements analysed once: the route cache.
//!
//! Simple-protocol statements are keyed by a fingerprint of their tokens with the constants
//! taken out (as pg_stat_statements normalises), so `... WHERE aid = 123` and `... = 456`
//! share one entry. The entry was made by analysing the statement with each constant turned
//! into a parameter numbered after the statement's own, so it says which constant is the key;
//! routing a cached statement only re-scans its tokens to read the constants.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::analyze::{analyze, Analysis, ParseError};
use crate::lexer::{Lexer, Token, MAX_PARAM};

/// Entries kept; past it the least recently used goes.
const CAPACITY: usize = 10_000;

/// The shape of a statement and its constants, in order.
#[derive(Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    /// Constants as text (strings unquoted), in order of appearance.
    pub constants: Vec<String>,
    /// Highest `$n` the statement uses itself.
    pub max_param: usize,
    /// False when the text has constants the normaliser does not take out faithfully (E''
    /// strings), or a `$n` above [`MAX_PARAM`]: such statements are analysed as they are,
    /// every time.
    pub cacheable: bool,
}

fn unquote(s: &str) -> String {
    s[1..s.len() - 1].replace("''", "'")
}

/// Fingerprints SQL text. Also returns the normalised text (constants as parameters) when
/// asked, for analysing a statement not yet cached.
pub fn fingerprint(sql: &str, want_text: bool) -> (Fingerprint, Option<String>) {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut constants = Vec::new();
    let mut max_param = 0usize;
    let mut cacheable = true;
    let mut prev: Option<Token<'_>> = None;
    let tokens: Vec<Token<'_>> = Lexer::new(sql).collect();
    let offset = |t: &Token<'_>| t.text().as_ptr() as usize - sql.as_ptr() as usize;
    // Constants become parameters numbered after the statement's own, in the text as
    // written otherwise (so `::`, comments and spacing stay as they were).
    let own_params = if want_text {
        tokens
            .iter()
            .filter_map(|t| match t {
                Token::Param(p) => p[1..].parse::<usize>().ok(),
                _ => None,
            })
            .filter(|&n| n <= MAX_PARAM)
            .max()
            .unwrap_or(0)
    } else {
        0
    };
    let mut text = want_text.then(|| String::with_capacity(sql.len() + 16));
    let mut copied = 0usize;
    let mut i = 0;
    while i < tokens.len() {
        let t = tokens[i];
        // A minus sign that starts a number (after an operator, a comma or a parenthesis).
        let negative = matches!(t, Token::Symbol("-"))
            && matches!(tokens.get(i + 1), Some(Token::Number(_)))
            && !matches!(
                prev,
                Some(
                    Token::Word(_)
                        | Token::QuotedIdent(_)
                        | Token::Number(_)
                        | Token::String(_)
                        | Token::Param(_)
                        | Token::Symbol(")")
                )
            );
        let constant = match t {
            Token::Number(n) => Some(n.to_owned()),
            Token::String(s) if s.starts_with('\'') => Some(unquote(s)),
            Token::String(s) if s.starts_with(['E', 'e']) => {
                cacheable = false;
                None
            }
            _ if negative => {
                i += 1;
                match tokens[i] {
                    Token::Number(n) => Some(format!("-{n}")),
                    _ => None,
                }
            }
            _ => None,
        };
        match constant {
            Some(c) => {
                constants.push(c);
                "?".hash(&mut h);
                if let Some(out) = text.as_mut() {
                    // Constants are slices of `sql` (unlike `;`, which is a static token).
                    let start = offset(&t);
                    let end = offset(&tokens[i]) + tokens[i].text().len();
                    out.push_str(&sql[copied..start]);
                    out.push('$');
                    out.push_str(&(own_params + constants.len()).to_string());
                    copied = end;
                }
            }
            None => {
                if let Token::Param(p) = t {
                    match p[1..].parse::<usize>() {
                        Ok(n) if n <= MAX_PARAM => max_param = max_param.max(n),
                        // A `$n` no Bind can carry: the statement is analysed as written,
                        // its parameters only those bound.
                        _ => cacheable = false,
                    }
                }
                match t {
                    Token::Word(w) => w.to_ascii_lowercase().hash(&mut h),
                    other => other.text().hash(&mut h),
                }
            }
        }
        prev = Some(tokens[i]);
        i += 1;
    }
    let text = text.map(|mut t| {
        t.push_str(&sql[copied..]);
        t
    });
    (
        Fingerprint {
            hash: h.finish(),
            constants,
            max_param,
            cacheable,
        },
        text,
    )
}

/// Analyses, once per statement shape.
pub struct RouteCache {
    /// By (scope, fingerprint): an analysis depends on the key columns of the database it
    /// was made for, so each database has a scope of its own.
    entries: Mutex<hashlink::LruCache<(u64, u64), Arc<Analysis>>>,
    /// Statements answered from the cache, and statements analysed.
    hits: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache {
            entries: Mutex::new(hashlink::LruCache::new(CAPACITY)),
            hits: Default::default(),
            misses: Default::default(),
        }
    }
}

/// An analysis and the values its parameters refer to: the statement's own parameters
/// (`None` until bound), then its constants.
pub struct Routed {
    pub analysis: Arc<Analysis>,
    pub params: Vec<Option<String>>,
    /// How many of `params` are the statement's own (the rest are its constants).
    pub own: usize,
    pub cached: bool,
}

impl RouteCache {
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (hits, misses) so far.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// The analysis of `sql` and its parameter values; `bound` are the statement's own
    /// parameters where known.
    pub fn route(
        &self,
        sql: &str,
        bound: &[Option<String>],
        key_columns: &dyn Fn(&str) -> Option<Vec<String>>,
    ) -> Result<Routed, ParseError> {
        self.route_in(0, sql, bound, key_columns)
    }

    /// Forgets every analysis (the shard maps changed).
    pub fn clear(&self) {
        self.entries.lock().clear();
    }

    /// [`Self::route`] within `scope`: statements of different databases (whose tables
    /// have different key columns) never share an entry.
    pub fn route_in(
        &self,
        scope: u64,
        sql: &str,
        bound: &[Option<String>],
        key_columns: &dyn Fn(&str) -> Option<Vec<String>>,
    ) -> Result<Routed, ParseError> {
        let (fp, _) = fingerprint(sql, false);
        let params = |fp: Fingerprint| {
            let mut p: Vec<Option<String>> = (0..fp.max_param)
                .map(|i| bound.get(i).cloned().flatten())
                .collect();
            p.extend(fp.constants.into_iter().map(Some));
            p
        };
        if fp.cacheable {
            if let Some(a) = self.entries.lock().get(&(scope, fp.hash)).cloned() {
                self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(Routed {
                    analysis: a,
                    own: fp.max_param,
                    params: params(fp),
                    cached: true,
                });
            }
            self.misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (_, normalised) = fingerprint(sql, true);
            if let Some(text) = normalised {
                if let Ok(a) = analyze(&text, key_columns) {
                    let a = Arc::new(a);
                    self.entries.lock().insert((scope, fp.hash), a.clone());
                    return Ok(Routed {
                        analysis: a,
                        own: fp.max_param,
                        params: params(fp),
                        cached: false,
                    });
                }
            }
        }
        // Not cacheable, or the normalised text does not parse (a constant where only a
        // constant may stand): analyse the text as it is.
        if !fp.cacheable {
            self.misses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let a = analyze(sql, key_columns)?;
        let own: Vec<Option<String>> = bound.to_vec();
        Ok(Routed {
            analysis: Arc::new(a),
            own: own.len(),
            params: own,
            cached: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::KeyExpr;

    fn keys(t: &str) -> Option<Vec<String>> {
        (t == "pgbench_accounts").then(|| vec!["aid".to_string()])
    }

    #[test]
    fn statements_differing_in_constants_share_a_shape() {
        let (a, _) = fingerprint(
            "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
            false,
        );
        let (b, _) = fingerprint(
            "select abalance  from pgbench_accounts where aid=456",
            false,
        );
        assert_eq!(a.hash, b.hash);
        assert_eq!(b.constants, vec!["456"]);
        let (c, _) = fingerprint(
            "SELECT abalance FROM pgbench_accounts WHERE bid = 123",
            false,
        );
        assert_ne!(a.hash, c.hash);
        let (n, text) = fingerprint(
            "SELECT * FROM t WHERE a = $1 AND b = -5 AND c = 'it''s'",
            true,
        );
        assert_eq!(n.constants, vec!["-5", "it's"]);
        assert_eq!(
            text.unwrap(),
            "SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3"
        );
        // Casts and comments stay as written.
        let (_, text) = fingerprint(
            "SELECT x::int8 /* c */ FROM t WHERE a = $2::text::int8 AND b = 7;",
            true,
        );
        assert_eq!(
            text.unwrap(),
            "SELECT x::int8 /* c */ FROM t WHERE a = $2::text::int8 AND b = $3;"
        );
    }

    #[test]
    fn a_cached_shape_still_reads_each_statement_s_key() {
        let cache = RouteCache::default();
        let r = cache
            .route(
                "SELECT abalance FROM pgbench_accounts WHERE aid = 123",
                &[],
                &keys,
            )
            .unwrap();
        assert!(!r.cached);
        let key = &r.analysis.keyed[0].keys.as_ref().unwrap()[0][0];
        let KeyExpr::Param(n) = key else {
            panic!("{key:?}")
        };
        assert_eq!(r.params[n - 1].as_deref(), Some("123"));
        let r = cache
            .route(
                "SELECT abalance FROM pgbench_accounts WHERE aid = 456",
                &[],
                &keys,
            )
            .unwrap();
        assert!(r.cached);
        assert_eq!(r.params[n - 1].as_deref(), Some("456"));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn own_parameters_come_first() {
        let cache = RouteCache::default();
        let r = cache
            .route(
                "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = $1",
                &[Some("77".into())],
                &keys,
            )
            .unwrap();
        let key = &r.analysis.keyed[0].keys.as_ref().unwrap()[0][0];
        assert_eq!(key, &KeyExpr::Param(1));
        assert_eq!(
            r.params,
            vec![Some("77".to_string()), Some("5".to_string())]
        );
    }

    #[test]
    fn constants_where_no_parameter_may_stand_fall_back_to_the_text() {
        let cache = RouteCache::default();
        let r = cache
            .route("CREATE TABLE t (c varchar(64))", &[], &keys)
            .unwrap();
        assert_eq!(r.analysis.kind, crate::analyze::Kind::Ddl);
        let r = cache
            .route(
                "SELECT * FROM pgbench_accounts WHERE aid = 5 AND filler = E'x\\'y'",
                &[],
                &keys,
            )
            .unwrap();
        assert!(!r.cached);
        assert_eq!(
            r.analysis.keyed[0].keys,
            Some(vec![vec![KeyExpr::Literal("5".into())]])
        );
    }

    #[test]
    fn parameters_no_bind_can_carry_size_nothing() {
        // A `$n` above what a Bind can carry once sized the parameter list (n values).
        let cache = RouteCache::default();
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = $99999999999",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $18446744073709551615 AND bid = 1",
            "SELECT $99999999999999999999999, 1",
        ] {
            let r = cache.route(sql, &[], &keys).unwrap();
            assert!(r.params.is_empty() && r.own == 0, "{sql}");
            let _ = fingerprint(sql, true);
        }
        let (fp, _) = fingerprint("SELECT $65535, $65536", false);
        assert_eq!((fp.max_param, fp.cacheable), (65_535, false));
    }

    proptest::proptest! {
        /// Any text fingerprints without panicking, and its normalised text keeps every
        /// character that is not a constant.
        #[test]
        fn any_text_fingerprints(sql in "[a-z0-9$;:'\"(),.* -]{0,40}") {
            let (fp, text) = fingerprint(&sql, true);
            let text = text.unwrap();
            if fp.constants.is_empty() {
                proptest::prop_assert_eq!(text, sql);
            }
        }
    }
}
