//! A client's session settings under transaction pooling.
//!
//! What the client believes its session holds (startup parameters, then its SETs) is kept as
//! parameter → statement that applies it. Before a transaction runs on a server connection,
//! the connection's own record of what it carries is compared with this and the difference is
//! sent in one round trip; when they already agree, nothing is sent.

use std::collections::BTreeMap;
use std::sync::Arc;

use pool::SettingsMap;

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Maps are shared copy-on-write: clients that started with the same parameters share one
/// (see [`Settings::intern`]), and a server connection shares the map it was brought in line
/// with, so "already in line" is usually a pointer comparison.
#[derive(Debug)]
pub struct Settings {
    startup: SettingsMap,
    desired: SettingsMap,
    /// Changes whenever `desired` does.
    pub generation: u64,
    /// `desired` before the first change since the last commit point: a change stands only
    /// once the transaction (explicit or implicit) that made it commits.
    snapshot: Option<SettingsMap>,
    /// The transaction's savepoints, each with `desired` as it was when it was made
    /// (allocated on first use: most sessions never make one).
    #[allow(clippy::box_collection)]
    savepoints: Option<Box<Vec<(String, SettingsMap)>>>,
    /// Session pooling: the startup parameters the client's server connections are opened
    /// with (empty under transaction pooling, whose connections are opened plain).
    pub opened: Arc<pool::Startup>,
}

/// The plain startup of transaction pooling, shared.
fn plain_startup() -> Arc<pool::Startup> {
    static PLAIN: std::sync::OnceLock<Arc<pool::Startup>> = std::sync::OnceLock::new();
    PLAIN.get_or_init(Default::default).clone()
}

/// Quotes a string constant for SQL.
fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

fn set_config_sql(name: &str, value: &str) -> String {
    format!(
        "SELECT pg_catalog.set_config({}, {}, false)",
        literal(name),
        literal(value)
    )
}

/// `-c name=value` and `--name=value` items of the `options` startup parameter.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut words = Vec::new();
    // Backslash escapes a space, as in libpq.
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let item = if w == "-c" {
            it.next()
        } else if let Some(rest) = w.strip_prefix("-c") {
            Some(rest.to_owned())
        } else {
            w.strip_prefix("--").map(str::to_owned)
        };
        if let Some((k, v)) = item.as_deref().and_then(|i| i.split_once('=')) {
            out.push((k.replace('-', "_").to_ascii_lowercase(), v.to_owned()));
        }
    }
    out
}

impl Settings {
    /// From the client's startup parameters; those equal to the server's own startup values
    /// (`server`) need not be applied.
    pub fn from_startup(params: &[(String, String)], server: &[(String, String)]) -> Settings {
        let mut startup = BTreeMap::new();
        let mut add = |name: &str, value: &str| {
            let lname = name.to_ascii_lowercase();
            let same = server
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case(name) && v == value);
            let auto_encoding = lname == "client_encoding" && value.eq_ignore_ascii_case("auto");
            if !same && !auto_encoding {
                startup.insert(lname, set_config_sql(name, value));
            }
        };
        for (k, v) in params {
            if k == "options" {
                for (ok, ov) in parse_options(v) {
                    add(&ok, &ov);
                }
            } else if !NOT_SETTINGS.contains(&k.as_str()) {
                add(k, v);
            }
        }
        let startup = Arc::new(startup);
        Settings {
            desired: startup.clone(),
            startup,
            generation: 1,
            snapshot: None,
            savepoints: None,
            opened: plain_startup(),
        }
    }

    /// Session pooling: server connections for this client are opened with its startup
    /// parameters (all but user, database and replication), so nothing need be applied.
    pub fn open_with(&mut self, params: &[(String, String)]) {
        let mut kept: Vec<(String, String)> = params
            .iter()
            .filter(|(k, v)| {
                !NOT_SETTINGS[..2].contains(&k.as_str())
                    && k != "replication"
                    && !(k == "client_encoding" && v.eq_ignore_ascii_case("auto"))
            })
            .cloned()
            .collect();
        kept.sort();
        self.opened = Arc::new(pool::Startup { params: kept });
    }

    /// The settings that come with the client's startup.
    pub fn startup(&self) -> &SettingsMap {
        &self.startup
    }

    /// Replaces this client's startup map by an equal one already held by `known` (or adds
    /// it there), so that many clients with the same parameters hold one map between them.
    pub fn intern(&mut self, known: &parking_lot::Mutex<Vec<SettingsMap>>) {
        const KEEP: usize = 64;
        let mut known = known.lock();
        match known.iter().find(|m| **m == self.startup) {
            Some(m) => {
                self.startup = m.clone();
                self.desired = m.clone();
            }
            None if known.len() < KEEP => known.push(self.startup.clone()),
            None => {}
        }
    }

    pub fn desired(&self) -> &SettingsMap {
        &self.desired
    }

    fn before_change(&mut self) {
        if self.snapshot.is_none() {
            self.snapshot = Some(self.desired.clone());
        }
        self.generation += 1;
    }

    pub fn set(&mut self, name: &str, sql: &str) {
        self.before_change();
        let desired = Arc::make_mut(&mut self.desired);
        if name == "session_authorization" {
            // SET SESSION AUTHORIZATION also resets the role.
            desired.remove("role");
        }
        desired.insert(name.to_owned(), sql.to_owned());
    }

    pub fn reset(&mut self, name: &str) {
        self.before_change();
        let desired = Arc::make_mut(&mut self.desired);
        if name == "session_authorization" {
            desired.remove("role");
        }
        match self.startup.get(name) {
            Some(s) => {
                desired.insert(name.to_owned(), s.clone());
            }
            // A custom (dotted) parameter stays defined, as the empty string.
            None if name.contains('.') => {
                desired.insert(name.to_owned(), set_config_sql(name, ""));
            }
            None => {
                desired.remove(name);
            }
        }
    }

    /// The server reported the value of a parameter the client set (ParameterStatus, sent
    /// for DateStyle, TimeZone, IntervalStyle, application_name, client_encoding ...): that
    /// value, not the statement's words, is what a connection is brought to (`SET datestyle
    /// TO dmy` keeps the other half of the server's DateStyle).
    pub fn observe(&mut self, name: &str, value: &str) {
        const OBSERVED: [&str; 5] = [
            "datestyle",
            "intervalstyle",
            "timezone",
            "application_name",
            "client_encoding",
        ];
        let key = name.to_ascii_lowercase();
        if !OBSERVED.contains(&key.as_str()) {
            return;
        }
        let Some(current) = self.desired.get(&key) else {
            return;
        };
        let sql = set_config_sql(name, value);
        if *current != sql {
            Arc::make_mut(&mut self.desired).insert(key, sql);
        }
    }

    /// RESET ALL: every setting back to its startup value, except the role and the session
    /// authorization, which RESET ALL leaves alone.
    pub fn reset_all(&mut self) {
        self.before_change();
        let mut next = (*self.startup).clone();
        for kept in ["session_authorization", "role"] {
            match self.desired.get(kept) {
                Some(v) => next.insert(kept.to_owned(), v.clone()),
                None => next.remove(kept),
            };
        }
        self.desired = Arc::new(next);
    }

    /// DISCARD ALL: the session as it was at startup.
    pub fn discard_all(&mut self) {
        self.before_change();
        self.desired = self.startup.clone();
    }

    /// A setting that could not be applied to a server connection: forgotten, as if reset.
    pub fn drop_setting(&mut self, name: &str) {
        self.generation += 1;
        Arc::make_mut(&mut self.desired).remove(name);
        if let Some(s) = self.snapshot.as_mut() {
            Arc::make_mut(s).remove(name);
        }
        for (_, m) in self.savepoints.iter_mut().flat_map(|v| v.iter_mut()) {
            Arc::make_mut(m).remove(name);
        }
    }

    /// SAVEPOINT: a rollback to it restores the settings of now.
    pub fn savepoint(&mut self, name: String) {
        self.savepoints
            .get_or_insert_with(Default::default)
            .push((name, self.desired.clone()));
    }

    /// The transaction's savepoints, oldest first (a shard joining the transaction makes
    /// them too).
    pub fn savepoint_names(&self) -> impl Iterator<Item = &str> {
        self.savepoints
            .iter()
            .flat_map(|v| v.iter())
            .map(|(n, _)| n.as_str())
    }

    /// RELEASE: the savepoint and those made after it go; the settings stay.
    pub fn release(&mut self, name: &str) {
        if let Some(sp) = self.savepoints.as_mut() {
            if let Some(at) = sp.iter().rposition(|(n, _)| n == name) {
                sp.truncate(at);
            }
        }
    }

    /// ROLLBACK TO: the settings as they were at the savepoint, which stays.
    pub fn rollback_to(&mut self, name: &str) {
        let Some(sp) = self.savepoints.as_mut() else {
            return;
        };
        if let Some(at) = sp.iter().rposition(|(n, _)| n == name) {
            sp.truncate(at + 1);
            let restored = sp[at].1.clone();
            if !Arc::ptr_eq(&restored, &self.desired) {
                self.desired = restored;
                self.generation += 1;
            }
        }
    }

    /// The transaction that made the changes committed: they stand.
    pub fn commit(&mut self) {
        self.snapshot = None;
        self.savepoints = None;
    }

    /// The transaction that made the changes rolled back: they are undone. Returns true when
    /// there were any.
    pub fn rollback(&mut self) -> bool {
        self.savepoints = None;
        match self.snapshot.take() {
            Some(s) => {
                self.desired = s;
                self.generation += 1;
                true
            }
            None => false,
        }
    }

    /// The statements that make a server connection carrying `applied` carry `desired`, each
    /// with the setting it applies (`None`: a reset); empty when they agree. With `unknown`,
    /// starts from the session's defaults. The session authorization and the role are reset
    /// first and set last, so every other setting is applied as the connection's own user.
    pub fn sync_statements(
        &self,
        applied: &SettingsMap,
        unknown: bool,
    ) -> Vec<(Option<String>, String)> {
        const LAST: [&str; 2] = ["session_authorization", "role"];
        let mut out = Vec::new();
        if !unknown && (Arc::ptr_eq(applied, &self.desired) || **applied == *self.desired) {
            return out;
        }
        let empty = SettingsMap::default();
        let applied = if unknown {
            out.push((None, "SET SESSION AUTHORIZATION DEFAULT".to_owned()));
            out.push((None, "RESET ALL".to_owned()));
            &empty
        } else {
            applied
        };
        for k in LAST {
            if applied.contains_key(k) && !self.desired.contains_key(k) {
                out.push((None, format!("RESET {}", quote_ident_path(k))));
            }
        }
        for k in applied.keys() {
            if !LAST.contains(&k.as_str()) && !self.desired.contains_key(k) {
                out.push((None, format!("RESET {}", quote_ident_path(k))));
            }
        }
        let changed = |k: &str| {
            let v = &self.desired[k];
            (applied.get(k) != Some(v)).then(|| (Some(k.to_owned()), v.clone()))
        };
        for k in self.desired.keys() {
            if !LAST.contains(&k.as_str()) {
                out.extend(changed(k));
            }
        }
        for k in LAST {
            if self.desired.contains_key(k) {
                // After SET SESSION AUTHORIZATION the role must be set again.
                let auth_changed = k == "role"
                    && out
                        .iter()
                        .any(|(n, _)| n.as_deref() == Some("session_authorization"));
                if auth_changed {
                    out.push((Some(k.to_owned()), self.desired[k].clone()));
                } else {
                    out.extend(changed(k));
                }
            }
        }
        out
    }

    /// [`Self::sync_statements`] as one query; `None` when nothing is to be done.
    pub fn sync_sql(&self, applied: &SettingsMap, unknown: bool) -> Option<String> {
        let statements = self.sync_statements(applied, unknown);
        if statements.is_empty() {
            return None;
        }
        let mut sql = String::new();
        for (_, st) in statements {
            sql.push_str(&st);
            sql.push(';');
        }
        Some(sql)
    }
}

/// `a.b` → `"a"."b"`, for RESET of a tracked (lower-cased) name.
fn quote_ident_path(name: &str) -> String {
    match name {
        "timezone" => "timezone".into(),
        "session_authorization" => "SESSION AUTHORIZATION".into(),
        "role" => "ROLE".into(),
        _ => name
            .split('.')
            .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn startup_parameters_become_settings_unless_the_server_has_them() {
        let s = Settings::from_startup(
            &p(&[
                ("user", "u"),
                ("application_name", "x"),
                ("client_encoding", "UTF8"),
                ("options", "-c search_path=a,b --statement-timeout=5"),
            ]),
            &p(&[("client_encoding", "UTF8")]),
        );
        let keys: Vec<_> = s.desired().keys().cloned().collect();
        assert_eq!(
            keys,
            ["application_name", "search_path", "statement_timeout"]
        );
        assert!(s.desired()["search_path"].contains("'a,b'"));
    }

    #[test]
    fn sync_sends_only_the_difference() {
        let mut s = Settings::from_startup(&p(&[("application_name", "x")]), &[]);
        let mut applied = s.desired().clone();
        assert_eq!(s.sync_sql(&applied, false), None);
        let mut applied_map = (*applied).clone();
        s.set("search_path", "SET search_path TO a");
        assert_eq!(
            s.sync_sql(&applied, false).unwrap(),
            "SET search_path TO a;"
        );
        applied_map.insert("work_mem".into(), "SET work_mem = '1MB'".into());
        applied = Arc::new(applied_map);
        let sql = s.sync_sql(&applied, false).unwrap();
        assert!(sql.starts_with("RESET \"work_mem\";"), "{sql}");
        assert!(s
            .sync_sql(&applied, true)
            .unwrap()
            .starts_with("SET SESSION AUTHORIZATION DEFAULT;RESET ALL;"));
    }

    #[test]
    fn rollback_undoes_changes_made_in_the_block() {
        let mut s = Settings::from_startup(&[], &[]);
        s.set("a", "SET a = 1");
        s.commit();
        s.set("b", "SET b = 1");
        s.reset("a");
        assert!(s.rollback());
        assert!(s.desired().contains_key("a"));
        assert!(!s.desired().contains_key("b"));
        assert!(!s.rollback());
    }
}
