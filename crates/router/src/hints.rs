//! Routing hints written in the statement: `/* shardgate: shard=s1 */`,
//! `/* shardgate: key=42 */`, `/* shardgate: role=primary */`. sqlparser drops comments, so
//! hints are read from the raw text; several may share one comment, separated by commas or
//! spaces.

/// The hints of one statement.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hints {
    pub shard: Option<String>,
    pub key: Option<String>,
    /// `role=primary`: reads go to the primary.
    pub primary: bool,
}

/// A hint that cannot be honoured as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadHint(pub String);

impl std::fmt::Display for BadHint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadHint {}

const MARK: &str = "shardgate:";

/// Reads the hints of `sql`. Text that merely mentions `shardgate:` outside a comment (in a
/// string, say) is not a hint.
pub fn parse_hints(sql: &str) -> Result<Hints, BadHint> {
    let mut hints = Hints::default();
    if !sql.contains(MARK) {
        return Ok(hints);
    }
    for body in comments(sql) {
        let Some(rest) = body.trim().strip_prefix(MARK) else {
            continue;
        };
        for item in rest.split([',', ' ', '\t', '\n']).filter(|s| !s.is_empty()) {
            let (k, v) = item
                .split_once('=')
                .ok_or_else(|| BadHint(format!("hint `{item}` is not name=value")))?;
            let v = v.trim_matches(|c| c == '\'' || c == '"');
            if v.is_empty() {
                return Err(BadHint(format!("hint `{k}` has no value")));
            }
            match k.trim().to_ascii_lowercase().as_str() {
                "shard" => hints.shard = Some(v.to_owned()),
                "key" => hints.key = Some(v.to_owned()),
                "role" => match v.to_ascii_lowercase().as_str() {
                    "primary" => hints.primary = true,
                    "replica" | "any" => hints.primary = false,
                    other => {
                        return Err(BadHint(format!(
                            "unknown role `{other}` in hint (primary or replica)"
                        )))
                    }
                },
                other => {
                    return Err(BadHint(format!(
                        "unknown hint `{other}` (known: shard, key, role)"
                    )))
                }
            }
        }
    }
    Ok(hints)
}

/// The bodies of the comments in `sql`, skipping quoted text.
fn comments(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() {
                    if b[i] == q {
                        if b.get(i + 1) == Some(&q) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let start = i + 2;
                let end = sql[start..].find('\n').map_or(sql.len(), |e| start + e);
                out.push(&sql[start..end]);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let start = i + 2;
                let end = sql[start..].find("*/").map_or(sql.len(), |e| start + e);
                out.push(&sql[start..end]);
                i = end + 2;
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_in_comments() {
        let h = parse_hints("/* shardgate: shard=s1 */ SELECT 1").unwrap();
        assert_eq!(h.shard.as_deref(), Some("s1"));
        let h = parse_hints("SELECT * FROM t -- shardgate: key=42, role=primary\n").unwrap();
        assert_eq!((h.key.as_deref(), h.primary), (Some("42"), true));
        let h = parse_hints("SELECT '/* shardgate: shard=s9 */'").unwrap();
        assert_eq!(h, Hints::default());
        assert_eq!(parse_hints("SELECT 1").unwrap(), Hints::default());
    }

    #[test]
    fn bad_hints_are_errors() {
        assert!(parse_hints("/* shardgate: shard */ SELECT 1").is_err());
        assert!(parse_hints("/* shardgate: colour=red */ SELECT 1").is_err());
        assert!(parse_hints("/* shardgate: role=leader */ SELECT 1").is_err());
        assert!(parse_hints("/* shardgate: key= */ SELECT 1").is_err());
    }
}
