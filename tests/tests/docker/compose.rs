//! Reading docker/: the compose file's services, their environment, mounts and settings,
//! and the proxy config as `shardgate check` loads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Where the image reads its config, and where compose mounts docker/shardgate.yaml.
pub(crate) const CONTAINER_CONFIG: &str = "/etc/shardgate/shardgate.yaml";
/// The port PostgreSQL listens on inside its container.
pub(crate) const CONTAINER_PG_PORT: u16 = 5432;

pub(crate) fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_owned()
}

pub(crate) fn docker_dir() -> PathBuf {
    repo().join("docker")
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

pub(crate) fn parse_yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

pub(crate) fn compose() -> Value {
    parse_yaml(&docker_dir().join("compose.yaml"))
}

pub(crate) fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"]
        .as_object()
        .expect("compose.yaml has a services mapping")
}

pub(crate) fn service<'c>(compose: &'c Value, name: &str) -> &'c Value {
    services(compose)
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

pub(crate) fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other}"),
    }
}

/// A service's environment, whether written as a mapping or as `KEY=value` items.
pub(crate) fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), str_of(v))).collect(),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                let s = str_of(i);
                let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment must be a mapping or a list, got {other}"),
    }
}

pub(crate) fn env_var<'e>(env: &'e BTreeMap<String, String>, service: &str, key: &str) -> &'e str {
    env.get(key)
        .unwrap_or_else(|| panic!("service `{service}` sets no {key}"))
}

/// One entry of a service's `volumes`.
#[derive(Debug)]
pub(crate) struct Mount {
    /// Host path (bind mounts, relative to docker/) or volume name; empty for an anonymous
    /// volume.
    pub(crate) source: String,
    pub(crate) target: String,
    pub(crate) bind: bool,
}

pub(crate) fn mounts(service: &Value) -> Vec<Mount> {
    let Some(items) = service["volumes"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|item| match item {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (source, target) = match parts.as_slice() {
                    [target] => ("", *target),
                    [source, target, ..] => (*source, *target),
                    [] => unreachable!("split yields at least one part"),
                };
                Mount {
                    source: source.to_owned(),
                    target: target.to_owned(),
                    bind: source.starts_with(['.', '/', '~']),
                }
            }
            Value::Object(m) => Mount {
                source: m.get("source").map(str_of).unwrap_or_default(),
                target: str_of(&m["target"]),
                bind: m.get("type").map(str_of).as_deref() == Some("bind"),
            },
            other => panic!("a volume must be a string or a mapping, got {other}"),
        })
        .collect()
}

/// The host file behind `container_path` in `service`, through its bind mounts (the longest
/// matching target wins).
pub(crate) fn host_path(service: &Value, container_path: &str) -> Option<PathBuf> {
    mounts(service)
        .into_iter()
        .filter(|m| m.bind)
        .filter_map(|m| {
            let rest = if container_path == m.target {
                ""
            } else {
                container_path.strip_prefix(&format!("{}/", m.target.trim_end_matches('/')))?
            };
            let source = docker_dir().join(&m.source);
            let host = if rest.is_empty() {
                source
            } else {
                source.join(rest)
            };
            Some((m.target.len(), host))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, p)| p)
}

pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The `-c name=value` settings of a command line.
pub(crate) fn settings_of(args: &[String]) -> Vec<(String, String)> {
    args.windows(2)
        .filter(|w| w[0] == "-c")
        .map(|w| {
            let (k, v) = w[1]
                .split_once('=')
                .unwrap_or_else(|| panic!("`-c {}` has no value", w[1]));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

pub(crate) fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(str_of).collect(),
        Value::Null => Vec::new(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => panic!("expected a list, got {other}"),
    }
}

pub(crate) fn is_postgres(service: &Value) -> bool {
    service["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("postgres:"))
}

/// The proxy's service: the one built from the repository.
pub(crate) fn proxy_service(compose: &Value) -> (&str, &Value) {
    let built: Vec<_> = services(compose)
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .collect();
    assert_eq!(built.len(), 1, "exactly one service is built (the proxy)");
    (built[0].0.as_str(), built[0].1)
}

/// The config in docker/ as YAML, and each shard's primary and replica URLs.
pub(crate) fn shard_urls(config: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for (db, d) in config["databases"].as_object().expect("databases") {
        for (shard, s) in d["shards"].as_object().expect("shards") {
            out.push((
                format!("{db}.{shard}"),
                str_of(&s["primary"]),
                string_list(&s["replicas"]),
            ));
        }
    }
    out
}

pub(crate) fn address(url: &str) -> sgconfig::ServerAddress {
    sgconfig::ServerAddress::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

/// `text` without the top-level `key:` entry (its line and any indented lines after it).
pub(crate) fn without_top_level_key(text: &str, key: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.starts_with(&format!("{key}:")) {
            skipping = true;
            continue;
        }
        if skipping && (line.starts_with([' ', '\t']) || line.is_empty()) {
            continue;
        }
        skipping = false;
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Loads docker/shardgate.yaml as `shardgate check` does.
pub(crate) fn load_docker_config() -> sgconfig::Config {
    let path = docker_dir().join("shardgate.yaml");
    sgconfig::load_str(&path, &read(&path))
        .unwrap_or_else(|e| panic!("docker/shardgate.yaml does not pass check:\n{e}"))
}
