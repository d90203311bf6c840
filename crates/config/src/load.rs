//! Loading: YAML text → [`Config`], with every problem reported as `file:line:col: message`.
//!
//! The file is parsed with serde-saphyr, which knows where each key is, so syntax errors,
//! unknown keys and wrong types are located by the parser. Environment variables named
//! `SHARDGATE__SECTION__KEY` are then laid over the file with the `config` crate. Validation
//! runs last; its errors are located by finding the offending key in the text.

use std::path::{Path, PathBuf};

use crate::model::*;

/// One located problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Everything wrong with a config, each problem on its own line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

const ENV_PREFIX: &str = "SHARDGATE";

pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        problems: vec![Problem {
            file: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read config: {e}"),
        }],
    })?;
    let env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("SHARDGATE__"))
        .collect();
    load_str_with_env(path, &text, &env)
}

/// Loads from text without looking at the environment.
pub fn load_str(path: &Path, text: &str) -> Result<Config, ConfigError> {
    load_str_with_env(path, text, &[])
}

fn load_str_with_env(
    path: &Path,
    text: &str,
    env: &[(String, String)],
) -> Result<Config, ConfigError> {
    let problem = |line: u64, column: u64, message: String| Problem {
        file: path.to_owned(),
        line,
        column,
        message,
    };
    let mut config: Config = serde_saphyr::from_str(text).map_err(|e| ConfigError {
        problems: vec![parse_problem(path, &e)],
    })?;
    if !env.is_empty() {
        config = overlay_env(text, env).map_err(|message| ConfigError {
            problems: vec![problem(0, 0, message)],
        })?;
    }
    let problems: Vec<Problem> = validate(&config)
        .into_iter()
        .map(|(key_path, message)| {
            let (line, column) = locate(text, &key_path);
            problem(line, column, message)
        })
        .collect();
    let mut problems = problems;
    config.base_dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    if problems.is_empty() {
        load_maps(path, text, &mut config, &mut problems);
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError { problems })
    }
}

/// Loads each database's shard maps (paths relative to the config file) and checks what
/// spans maps: a table mapped twice, a reference table that a map also places.
fn load_maps(path: &Path, text: &str, config: &mut Config, problems: &mut Vec<Problem>) {
    let base = path.parent().unwrap_or(Path::new("."));
    for (db, d) in config.databases.iter_mut() {
        let shards: Vec<&str> = d.shards.iter().map(|(n, _)| n).collect();
        let mut maps = Vec::new();
        for rel in &d.shard_maps {
            let file = base.join(rel);
            let located = |message: String| {
                let (line, column) = locate(
                    text,
                    &[
                        "databases".into(),
                        db.clone(),
                        "shard_maps".into(),
                        rel.clone(),
                    ],
                );
                Problem {
                    file: path.to_owned(),
                    line,
                    column,
                    message,
                }
            };
            let map_text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(located(format!(
                        "cannot read shard map {}: {e}",
                        file.display()
                    )));
                    continue;
                }
            };
            match crate::shardmap::load_shard_map(&file, &map_text, &shards) {
                Ok(m) => {
                    if maps
                        .iter()
                        .any(|o: &crate::shardmap::ShardMap| o.name == m.name)
                    {
                        problems.push(located(format!(
                            "database `{db}`: two shard maps are named `{}`",
                            m.name
                        )));
                    }
                    for t in &m.tables {
                        if let Some(o) = maps.iter().find(|o: &&crate::shardmap::ShardMap| {
                            o.tables.iter().any(|x| x.table == t.table)
                        }) {
                            problems.push(located(format!(
                                "database `{db}`: table `{}` is mapped twice (by maps `{}` and `{}`)",
                                t.table, o.name, m.name
                            )));
                        }
                        if d.reference_tables.contains(&t.table) {
                            problems.push(located(format!(
                                "database `{db}`: table `{}` is both a reference table and mapped by `{}`",
                                t.table, m.name
                            )));
                        }
                    }
                    maps.push(m);
                }
                Err(ps) => problems.extend(ps),
            }
        }
        d.maps = maps;
    }
}

/// A YAML parse or type error as a problem. Its place goes to `line` and `column` only: the
/// message is rendered without serde-saphyr's snippet and its "line L column C" wording,
/// which `file:line:col:` would otherwise repeat.
pub(crate) fn parse_problem(file: &Path, e: &serde_saphyr::Error) -> Problem {
    /// Leaves messages without a place: the problem carries it.
    struct NoPlace;
    impl serde_saphyr::Localizer for NoPlace {
        fn attach_location<'a>(
            &self,
            base: std::borrow::Cow<'a, str>,
            _: serde_saphyr::Location,
        ) -> std::borrow::Cow<'a, str> {
            base
        }
    }
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    let formatter = serde_saphyr::DefaultMessageFormatter.with_localizer(&NoPlace);
    let mut options = serde_saphyr::RenderOptions::new(&formatter);
    options.snippets = serde_saphyr::SnippetMode::Off;
    let rendered = e.render_with_options(options);
    Problem {
        file: file.to_owned(),
        line,
        column,
        message: rendered
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

fn overlay_env(text: &str, env: &[(String, String)]) -> Result<Config, String> {
    let source = config::Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
        .source(Some(env.iter().cloned().collect()));
    config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Yaml))
        .add_source(source)
        .build()
        .and_then(|c| c.try_deserialize::<Config>())
        .map_err(|e| format!("environment override (SHARDGATE__*): {e}"))
}

/// Whether a log filter is one tracing understands: names of levels and `target=level`
/// pairs, separated by commas.
fn tracing_filter_ok(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for part in level.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let lvl = part.rsplit('=').next().unwrap_or(part);
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "`{part}` is not a level (off, error, warn, info, debug, trace) or target=level"
            ));
        }
    }
    Ok(())
}

/// Each problem with the key path it is about (used to find its line).
fn validate(c: &Config) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut err = |path: &[&str], msg: String| {
        out.push((path.iter().map(|s| s.to_string()).collect(), msg));
    };
    if c.pool.size == 0 {
        err(&["pool", "size"], "pool.size must be at least 1".into());
    }
    if c.pool.min_idle > c.pool.size {
        err(
            &["pool", "min_idle"],
            format!(
                "pool.min_idle ({}) is larger than pool.size ({})",
                c.pool.min_idle, c.pool.size
            ),
        );
    }
    if c.limits.max_message_size < 1024 {
        err(
            &["limits", "max_message_size"],
            "limits.max_message_size must be at least 1024 bytes".into(),
        );
    }
    if c.users.is_empty() {
        err(&["users"], "at least one user is needed".into());
    }
    for (i, u) in c.users.iter().enumerate() {
        let name = u.name.as_str();
        if c.users[..i].iter().any(|o| o.name == u.name) {
            err(&["users", name], format!("user `{name}` is defined twice"));
        }
        match (u.auth, u.password.as_deref()) {
            (AuthMethod::Trust, _) => {}
            (_, None) => err(
                &["users", name],
                format!("user `{name}` needs a password (or auth: trust)"),
            ),
            (AuthMethod::ScramSha256, Some(p)) if is_scram_verifier(p) => {
                if let Err(e) = wire::auth::ScramVerifier::parse(p) {
                    err(&["users", name, "password"], format!("user `{name}`: {e}"));
                }
            }
            (AuthMethod::ScramSha256, Some(p)) if is_md5_hash(p) => err(
                &["users", name, "password"],
                format!("user `{name}`: an MD5 hash cannot serve SCRAM-SHA-256; give the plain password or a SCRAM verifier"),
            ),
            (AuthMethod::Md5, Some(p)) if is_scram_verifier(p) => err(
                &["users", name, "password"],
                format!("user `{name}`: a SCRAM verifier cannot serve md5 auth; give the plain password or an md5 hash"),
            ),
            _ => {}
        }
        if u.pool_size == Some(0) {
            err(
                &["users", name, "pool_size"],
                format!("user `{name}`: pool_size must be at least 1"),
            );
        }
    }
    if c.databases.is_empty() {
        err(&["databases"], "at least one database is needed".into());
    }
    for a in &c.admin_users {
        if !c.users.iter().any(|u| &u.name == a) {
            err(
                &["admin_users"],
                format!("admin user `{a}` is not one of `users`"),
            );
        }
    }
    if c.tls.mode != TlsMode::Disable && (c.tls.cert.is_none() || c.tls.key.is_none()) {
        err(
            &["tls"],
            "tls.mode allow or require needs tls.cert and tls.key".into(),
        );
    }
    if c.server_tls.mode == ServerTlsMode::VerifyFull && c.server_tls.ca.is_none() {
        err(
            &["server_tls"],
            "server_tls verify-full needs a CA file: server_tls: { mode: verify-full, ca: FILE }"
                .into(),
        );
    }
    if let Some(m) = &c.metrics {
        if m.listen == c.listen {
            err(
                &["metrics", "listen"],
                "metrics.listen must differ from listen".into(),
            );
        }
    }
    if let Err(e) = tracing_filter_ok(&c.log.level) {
        err(&["log", "level"], format!("log.level: {e}"));
    }
    for (db, d) in &c.databases {
        if db == "shardgate" {
            err(
                &["databases", db],
                "database name `shardgate` is reserved for the admin console".into(),
            );
        }
        // Database and shard names go into two-phase commit's transaction ids
        // (`sg:<db>:<shard>:<xid>:<shard>`, at most 200 bytes).
        if db.contains(':') || db.len() > 60 {
            err(
                &["databases", db],
                format!("database name `{db}` must be at most 60 bytes and without `:`"),
            );
        }
        for (s, _) in d.shards.iter() {
            if s.contains(':') || s.len() > 60 {
                err(
                    &["databases", db, "shards", s],
                    format!("shard name `{s}` must be at most 60 bytes and without `:`"),
                );
            }
        }
        let f = &d.failover;
        if f.health_check_interval_ms == 0 || f.failures_before_down == 0 {
            err(
                &["databases", db, "failover"],
                format!("database `{db}` failover: health_check_interval_ms and failures_before_down must be at least 1"),
            );
        }
        let rw = &d.read_write_split;
        if !(rw.max_lag_seconds >= 0.0 && rw.max_lag_seconds.is_finite()) {
            err(
                &["databases", db, "read_write_split", "max_lag_seconds"],
                format!("database `{db}` read_write_split: max_lag_seconds must be a number of seconds, 0 or more"),
            );
        }
        if d.shards.is_empty() {
            err(
                &["databases", db, "shards"],
                format!("database `{db}` has no shards"),
            );
        }
        for (s, shard) in d.shards.iter() {
            if let Err(e) = ServerAddress::parse(&shard.primary.url) {
                err(
                    &["databases", db, "shards", s, "primary"],
                    format!("database `{db}` shard `{s}` primary: {e}"),
                );
            }
            let urls: Vec<&str> = shard.servers().map(|s| s.url.as_str()).collect();
            if (1..urls.len()).any(|i| urls[..i].contains(&urls[i])) {
                err(
                    &["databases", db, "shards", s],
                    format!("database `{db}` shard `{s}` names one server twice"),
                );
            }
            for r in &shard.replicas {
                if let Err(e) = ServerAddress::parse(&r.url) {
                    err(
                        &["databases", db, "shards", s, "replicas"],
                        format!("database `{db}` shard `{s}` replica: {e}"),
                    );
                }
            }
        }
    }
    out
}

/// Finds a key path in YAML text: each component in turn, searched from where the previous
/// one was found, as a key (`name:`) or, for list items, as a value (`name: <component>`).
/// Returns 1-based line and column; (0, 0) when nothing matches.
pub(crate) fn locate(text: &str, path: &[String]) -> (u64, u64) {
    let mut from = 0usize;
    let mut found = None;
    for comp in path {
        // An empty name (`name: ""`) is not found as text (nor searched for: it matches
        // everywhere without moving on); its problem is placed at its parent.
        if comp.is_empty() {
            break;
        }
        let mut pos = None;
        let mut search = from;
        while let Some(i) = text[search..].find(comp.as_str()) {
            let at = search + i;
            let before_ok = at == 0
                || !text.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && text.as_bytes()[at - 1] != b'_';
            let after = &text[at + comp.len()..];
            let after_ok = after.starts_with(':')
                || after.starts_with(['\n', ',', ' ', '}', '"', '\''])
                || after.is_empty();
            if before_ok && after_ok {
                pos = Some(at);
                break;
            }
            search = at + comp.len();
        }
        match pos {
            Some(p) => {
                found = Some(p);
                from = p + comp.len();
            }
            None => break,
        }
    }
    match found {
        Some(p) => {
            let line = text[..p].matches('\n').count() as u64 + 1;
            let col = (p - text[..p].rfind('\n').map(|i| i + 1).unwrap_or(0)) as u64 + 1;
            (line, col)
        }
        None => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
listen: 127.0.0.1:7000
pool:
  mode: transaction
  size: 5
users:
  - name: app
    password: secret
databases:
  app:
    shards:
      s0: { primary: \"postgres://app@127.0.0.1:5432/app\" }
";

    fn load(text: &str) -> Result<Config, ConfigError> {
        load_str(Path::new("test.yaml"), text)
    }

    #[test]
    fn a_good_config_loads() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.pool.size, 5);
        assert_eq!(c.pool.checkout_timeout_ms, 5000);
        let (name, shard) = c.databases["app"].shards.first().unwrap();
        assert_eq!(name, "s0");
        let a = ServerAddress::parse(&shard.primary.url).unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.database.as_str()),
            ("127.0.0.1", 5432, "app")
        );
        assert_eq!(a.user.as_deref(), Some("app"));
    }

    #[test]
    fn problems_of_empty_names_are_placed_at_their_parent() {
        let text = "users: [{ name: \"\" }]\ndatabases: { app: { shards: { s0: { primary: \"postgres://h/d\" } } } }\n";
        let e = load(text).unwrap_err();
        assert_eq!((e.problems[0].line, e.problems[0].column), (1, 1), "{e}");
        assert!(e.problems[0].message.contains("needs a password"), "{e}");
        let text = "users: [{ name: u, auth: trust }]\ndatabases:\n  \"\": { shards: {} }\n";
        let e = load(text).unwrap_err();
        assert_eq!(e.problems[0].line, 2, "{e}");
        assert!(e.problems[0].message.contains("has no shards"), "{e}");
    }

    #[test]
    fn unknown_keys_name_line_and_key() {
        let text = GOOD.replace("  size: 5\n", "  size: 5\n  sise: 6\n");
        let e = load(&text).unwrap_err();
        let p = &e.problems[0];
        assert_eq!(p.line, 5, "{e}");
        assert!(p.message.contains("sise"), "{e}");
        assert!(e.to_string().starts_with("test.yaml:5:"), "{e}");
    }

    #[test]
    fn wrong_types_are_located() {
        let text = GOOD.replace("size: 5", "size: many");
        let e = load(&text).unwrap_err();
        assert_eq!(e.problems[0].line, 4, "{e}");
    }

    #[test]
    fn parser_errors_give_their_place_once() {
        let cases = [
            GOOD.replace("size: 5", "size: many"),
            GOOD.replace("  size: 5\n", "  size: 5\n  sise: 6\n"),
            GOOD.replace("users:\n", "users: [\n"),
            GOOD.replace("mode: transaction", "mode: sometimes"),
        ];
        for text in cases {
            let e = load(&text).unwrap_err();
            assert_eq!(e.problems.len(), 1, "{e}");
            let p = &e.problems[0];
            assert!(p.line > 0 && p.column > 0, "{e}");
            let place = format!("test.yaml:{}:{}: ", p.line, p.column);
            let shown = e.to_string();
            assert!(shown.starts_with(&place), "{shown}");
            let message = &shown[place.len()..];
            assert!(!message.is_empty(), "{shown}");
            assert!(
                !message.contains(&format!("line {}", p.line))
                    && !message.contains(&format!("column {}", p.column)),
                "the place is given twice: {shown}"
            );
        }
    }

    #[test]
    fn validation_errors_are_located() {
        let text = GOOD.replace("postgres://app@127.0.0.1:5432/app", "mysql://x/y");
        let e = load(&text).unwrap_err();
        assert_eq!(e.problems[0].line, 11, "{e}");
        assert!(e.problems[0].message.contains("postgres://"), "{e}");

        let text = GOOD.replace("    password: secret\n", "");
        let e = load(&text).unwrap_err();
        assert_eq!(e.problems[0].line, 6, "{e}");
        assert!(e.problems[0].message.contains("needs a password"), "{e}");

        let text = GOOD.replace("size: 5", "size: 5\n  min_idle: 9");
        let e = load(&text).unwrap_err();
        assert_eq!(e.problems[0].line, 5, "{e}");
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sg-config-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        for f in ["single-shard.yaml", "sharded.yaml"] {
            let c = load_file(&dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            if f == "sharded.yaml" {
                assert_eq!(c.databases["app"].maps.len(), 3);
            }
        }
    }

    #[test]
    fn a_table_mapped_by_two_maps_is_refused_with_the_line() {
        let dir = temp_dir("twice");
        let map = |name: &str| {
            format!("name: {name}\ntype: hash\nkey_type: bigint\npartitions: 1\nassign: {{ s0: [0] }}\ntables: [{{ table: t, column: id }}]\n")
        };
        std::fs::write(dir.join("a.yaml"), map("a")).unwrap();
        std::fs::write(dir.join("b.yaml"), map("b")).unwrap();
        let text = GOOD.replace(
            "    shards:\n",
            "    shard_maps:\n      - a.yaml\n      - b.yaml\n    shards:\n",
        );
        let e = load_str(&dir.join("c.yaml"), &text).unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert!(
            e.problems[0].message.contains("table `t` is mapped twice"),
            "{e}"
        );
        assert_eq!(e.problems[0].line, 12, "{e}");
        // A missing map file names the file.
        let text = GOOD.replace(
            "    shards:\n",
            "    shard_maps: [nope.yaml]\n    shards:\n",
        );
        let e = load_str(&dir.join("c.yaml"), &text).unwrap_err();
        assert!(
            e.problems[0].message.contains("cannot read shard map"),
            "{e}"
        );
        assert_eq!(e.problems[0].line, 10, "{e}");
        // A broken map reports its own file and line.
        std::fs::write(dir.join("a.yaml"), map("a").replace("s0: [0]", "s9: [0]")).unwrap();
        let text = GOOD.replace("    shards:\n", "    shard_maps: [a.yaml]\n    shards:\n");
        let e = load_str(&dir.join("c.yaml"), &text).unwrap_err();
        assert!(e.to_string().contains("a.yaml:5:"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![("SHARDGATE__POOL__SIZE".to_string(), "17".to_string())];
        let c = load_str_with_env(Path::new("t.yaml"), GOOD, &env).unwrap();
        assert_eq!(c.pool.size, 17);
        assert_eq!(c.users[0].name, "app");
    }
}
