//! docker/, checked without a container engine. The compose file parses and names only files
//! of the repository and services it defines; the proxy config in docker/ loads and points at
//! the compose services with their passwords; the Dockerfile builds the proxy in two stages
//! and runs it unprivileged; the scripts are executable and parse. And the scripts run for
//! real against local PostgreSQL: `primary-init.sh` sets a primary up, `replica-bootstrap.sh`
//! makes a streaming replica of it, and the proxy with docker/'s config, its hosts pointed at
//! the local servers, serves the demo schema over both shards.
//!
//! This binary runs PostgreSQL servers of its own (as the `postgres` OS user when root).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cluster::{AuthMethod, Cluster, ClusterOptions};
use serde_json::Value;

/// Superuser password of the local primaries (the compose file's POSTGRES_PASSWORD plays
/// this part in containers).
const SUPERUSER_PASSWORD: &str = "docker-test-pw";
/// Where the image reads its config, and where compose mounts docker/shardgate.yaml.
const CONTAINER_CONFIG: &str = "/etc/shardgate/shardgate.yaml";
/// The port PostgreSQL listens on inside its container.
const CONTAINER_PG_PORT: u16 = 5432;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_owned()
}

fn docker_dir() -> PathBuf {
    repo().join("docker")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn parse_yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn compose() -> Value {
    parse_yaml(&docker_dir().join("compose.yaml"))
}

fn services(compose: &Value) -> &serde_json::Map<String, Value> {
    compose["services"]
        .as_object()
        .expect("compose.yaml has a services mapping")
}

fn service<'c>(compose: &'c Value, name: &str) -> &'c Value {
    services(compose)
        .get(name)
        .unwrap_or_else(|| panic!("compose.yaml has no service `{name}`"))
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other}"),
    }
}

/// A service's environment, whether written as a mapping or as `KEY=value` items.
fn environment(service: &Value) -> BTreeMap<String, String> {
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

fn env_var<'e>(env: &'e BTreeMap<String, String>, service: &str, key: &str) -> &'e str {
    env.get(key)
        .unwrap_or_else(|| panic!("service `{service}` sets no {key}"))
}

/// One entry of a service's `volumes`.
#[derive(Debug)]
struct Mount {
    /// Host path (bind mounts, relative to docker/) or volume name; empty for an anonymous
    /// volume.
    source: String,
    target: String,
    bind: bool,
}

fn mounts(service: &Value) -> Vec<Mount> {
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
fn host_path(service: &Value, container_path: &str) -> Option<PathBuf> {
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

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The `-c name=value` settings of a command line.
fn settings_of(args: &[String]) -> Vec<(String, String)> {
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

fn string_list(v: &Value) -> Vec<String> {
    match v {
        Value::Array(items) => items.iter().map(str_of).collect(),
        Value::Null => Vec::new(),
        Value::String(s) => s.split_whitespace().map(str::to_owned).collect(),
        other => panic!("expected a list, got {other}"),
    }
}

fn is_postgres(service: &Value) -> bool {
    service["image"]
        .as_str()
        .is_some_and(|i| i.starts_with("postgres:"))
}

/// The proxy's service: the one built from the repository.
fn proxy_service(compose: &Value) -> (&str, &Value) {
    let built: Vec<_> = services(compose)
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .collect();
    assert_eq!(built.len(), 1, "exactly one service is built (the proxy)");
    (built[0].0.as_str(), built[0].1)
}

/// The config in docker/ as YAML, and each shard's primary and replica URLs.
fn shard_urls(config: &Value) -> Vec<(String, String, Vec<String>)> {
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

fn address(url: &str) -> sgconfig::ServerAddress {
    sgconfig::ServerAddress::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

#[test]
fn the_compose_file_parses_and_names_only_what_exists() {
    let compose = compose();
    let declared_volumes: Vec<String> = compose["volumes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let names: Vec<&String> = services(&compose).keys().collect();
    for (name, s) in services(&compose) {
        if let Some(image) = s["image"].as_str() {
            let tag = image.rsplit_once(':').map(|(_, t)| t);
            assert!(
                tag.is_some_and(|t| t != "latest" && !t.contains('/')),
                "{name}: image `{image}` has no pinned tag"
            );
        } else {
            assert!(!s["build"].is_null(), "{name}: neither image nor build");
        }
        if !s["build"].is_null() {
            let (context, dockerfile) = match &s["build"] {
                Value::String(c) => (c.clone(), "Dockerfile".to_owned()),
                b => (
                    str_of(&b["context"]),
                    b.get("dockerfile")
                        .map(str_of)
                        .unwrap_or_else(|| "Dockerfile".into()),
                ),
            };
            let context = docker_dir().join(context);
            assert!(context.is_dir(), "{name}: no build context {context:?}");
            assert!(
                context.join(&dockerfile).is_file(),
                "{name}: no Dockerfile {dockerfile} in {context:?}"
            );
            assert!(
                same_file(&context, &repo()),
                "{name}: the build context is the repository root"
            );
        }
        for m in mounts(s) {
            if m.bind {
                let p = docker_dir().join(&m.source);
                assert!(p.exists(), "{name}: mounts {p:?}, which does not exist");
            } else if !m.source.is_empty() {
                assert!(
                    declared_volumes.contains(&m.source),
                    "{name}: volume `{}` is not declared under volumes",
                    m.source
                );
            }
        }
        for file in string_list(&s["env_file"]) {
            assert!(docker_dir().join(&file).is_file(), "{name}: no {file}");
        }
        // An entrypoint of ours must be mounted into the container: the image lacks it.
        if let Some(program) = string_list(&s["entrypoint"]).first() {
            let host = host_path(s, program)
                .unwrap_or_else(|| panic!("{name}: entrypoint {program} is not mounted"));
            assert!(host.is_file(), "{name}: entrypoint {host:?} does not exist");
        }
        let depends: Vec<String> = match &s["depends_on"] {
            Value::Object(m) => m.keys().cloned().collect(),
            v => string_list(v),
        };
        for d in &depends {
            assert!(
                names.contains(&d),
                "{name}: depends on `{d}`, which is no service"
            );
            if s["depends_on"][d]["condition"] == "service_healthy" {
                assert!(
                    !service(&compose, d)["healthcheck"].is_null(),
                    "{name}: waits for `{d}` to be healthy, which has no healthcheck"
                );
            }
        }
        if is_postgres(s) {
            let test = string_list(&s["healthcheck"]["test"]);
            assert!(
                test.iter().any(|a| a.contains("pg_isready")),
                "{name}: PostgreSQL without a pg_isready healthcheck: {test:?}"
            );
        }
    }
    // Two primaries initialised by primary-init.sh, two replicas made by replica-bootstrap.sh.
    let init = docker_dir().join("primary-init.sh");
    let bootstrap = docker_dir().join("replica-bootstrap.sh");
    let primaries = services(&compose)
        .values()
        .filter(|s| {
            mounts(s).iter().any(|m| {
                m.target.starts_with("/docker-entrypoint-initdb.d/")
                    && same_file(&docker_dir().join(&m.source), &init)
            })
        })
        .count();
    let replicas = services(&compose)
        .values()
        .filter(|s| {
            string_list(&s["entrypoint"])
                .first()
                .and_then(|p| host_path(s, p))
                .is_some_and(|h| same_file(&h, &bootstrap))
        })
        .count();
    assert_eq!(
        (primaries, replicas),
        (2, 2),
        "2 primaries with primary-init.sh, 2 replicas with replica-bootstrap.sh"
    );
    assert!(
        services(&compose).values().any(|s| s["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("prom/prometheus:"))),
        "a Prometheus service"
    );
}

#[test]
fn the_proxy_config_points_at_the_compose_services() {
    let compose = compose();
    let config_path = docker_dir().join("shardgate.yaml");
    let config = parse_yaml(&config_path);
    let (proxy_name, proxy) = proxy_service(&compose);

    // The image reads CONTAINER_CONFIG; compose puts docker/shardgate.yaml there.
    let mounted = host_path(proxy, CONTAINER_CONFIG)
        .unwrap_or_else(|| panic!("{proxy_name}: nothing mounted at {CONTAINER_CONFIG}"));
    assert!(same_file(&mounted, &config_path), "{mounted:?}");
    // Shard maps are relative to the config file: they must be mounted beside it.
    let config_dir = Path::new(CONTAINER_CONFIG).parent().unwrap();
    for (db, d) in config["databases"].as_object().unwrap() {
        for map in string_list(&d["shard_maps"]) {
            let in_container = config_dir.join(&map);
            let host = host_path(proxy, in_container.to_str().unwrap()).unwrap_or_else(|| {
                panic!("{db}: shard map {map} is not mounted at {in_container:?}")
            });
            assert!(host.is_file(), "{db}: shard map {host:?} does not exist");
        }
    }

    let users: BTreeMap<String, &Value> = config["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| (str_of(&u["name"]), u))
        .collect();
    let depends = &proxy["depends_on"];
    let shards = shard_urls(&config);
    assert_eq!(shards.len(), 2, "two shards");
    for (shard, primary_url, replica_urls) in &shards {
        assert_eq!(replica_urls.len(), 1, "{shard}: one replica");
        let p = address(primary_url);
        let primary = service(&compose, &p.host);
        assert!(is_postgres(primary), "{shard}: {} is no PostgreSQL", p.host);
        assert_eq!(p.port, CONTAINER_PG_PORT, "{shard}: {primary_url}");
        assert!(
            !depends[&p.host].is_null(),
            "the proxy waits for {}",
            p.host
        );
        let env = environment(primary);
        assert_eq!(
            p.database,
            env_var(&env, &p.host, "APP_DATABASE"),
            "{shard}"
        );
        let user = p.user.clone().expect("shard URLs name the user");
        assert_eq!(user, env_var(&env, &p.host, "APP_USER"), "{shard}");
        // The proxy logs in to the servers with the user's password (server_password, else
        // password): the one the primary gave the role.
        let proxy_user = users
            .get(&user)
            .unwrap_or_else(|| panic!("{shard}: no proxy user `{user}`"));
        let server_password = p
            .password
            .clone()
            .or_else(|| proxy_user.get("server_password").map(str_of))
            .or_else(|| proxy_user.get("password").map(str_of));
        assert_eq!(
            server_password.as_deref(),
            Some(env_var(&env, &p.host, "APP_PASSWORD")),
            "{shard}: the proxy's password for `{user}`"
        );
        for url in replica_urls {
            let r = address(url);
            let replica = service(&compose, &r.host);
            assert!(is_postgres(replica), "{shard}: {} is no PostgreSQL", r.host);
            assert_eq!(
                (r.port, &r.database, &r.user),
                (p.port, &p.database, &p.user),
                "{shard}"
            );
            assert!(
                !depends[&r.host].is_null(),
                "the proxy waits for {}",
                r.host
            );
            let renv = environment(replica);
            // The replica streams from this shard's primary, as the primary's replication role.
            assert_eq!(env_var(&renv, &r.host, "PRIMARY_HOST"), p.host, "{shard}");
            assert_eq!(
                env_var(&renv, &r.host, "PRIMARY_PORT"),
                CONTAINER_PG_PORT.to_string()
            );
            for key in ["REPLICATION_USER", "REPLICATION_PASSWORD"] {
                assert_eq!(
                    env_var(&renv, &r.host, key),
                    env_var(&env, &p.host, key),
                    "{shard}: {key}"
                );
            }
            assert_eq!(
                string_list(&replica["command"]),
                string_list(&primary["command"]),
                "{shard}: replica and primary run with the same settings"
            );
        }
    }
    let slots: Vec<String> = shards
        .iter()
        .flat_map(|(_, _, rs)| rs.iter())
        .map(|u| {
            let host = address(u).host;
            env_var(
                &environment(service(&compose, &host)),
                &host,
                "REPLICATION_SLOT",
            )
            .to_owned()
        })
        .collect();
    let mut unique = slots.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), slots.len(), "each replica its own slot");

    // Published ports: the client port; Prometheus scrapes the metrics port on the proxy.
    let port_of = |addr: &str| addr.rsplit_once(':').map(|(_, p)| p.to_owned()).unwrap();
    let ports = string_list(&proxy["ports"]);
    let listen_port = port_of(&str_of(&config["listen"]));
    assert!(
        ports
            .iter()
            .any(|p| p.ends_with(&format!(":{listen_port}"))),
        "the proxy publishes its listen port {listen_port}: {ports:?}"
    );
    let metrics_port = port_of(&str_of(&config["metrics"]["listen"]));
    let prometheus = parse_yaml(&docker_dir().join("prometheus.yml"));
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .flat_map(|j| j["static_configs"].as_array().cloned().unwrap_or_default())
        .flat_map(|c| string_list(&c["targets"]))
        .collect();
    assert_eq!(
        targets,
        vec![format!("{proxy_name}:{metrics_port}")],
        "Prometheus scrapes the proxy's metrics.listen port"
    );
    let (prom_name, prom) = services(&compose)
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("prom/prometheus:"))
        })
        .expect("a Prometheus service");
    let mounted = host_path(prom, "/etc/prometheus/prometheus.yml")
        .unwrap_or_else(|| panic!("{prom_name}: prometheus.yml is not mounted"));
    assert!(same_file(&mounted, &docker_dir().join("prometheus.yml")));
    // The config's admin users are users of the proxy.
    for admin in string_list(&config["admin_users"]) {
        assert!(
            users.contains_key(&admin),
            "admin user `{admin}` is no user"
        );
    }
}

#[test]
fn the_scripts_are_executable_and_parse() {
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(docker_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.sort();
    let names: Vec<String> = scripts
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["primary-init.sh", "replica-bootstrap.sh"]);
    for script in &scripts {
        let mode = std::fs::metadata(script).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{script:?} is not executable");
        assert!(
            read(script).starts_with("#!/usr/bin/env bash\n"),
            "{script:?}"
        );
        let out = Command::new("bash").arg("-n").arg(script).output().unwrap();
        assert!(
            out.status.success(),
            "bash -n {script:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Where shellcheck is installed, it has nothing to say either.
        if let Ok(out) = Command::new("shellcheck").arg(script).output() {
            assert!(
                out.status.success(),
                "shellcheck {script:?}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
}

#[test]
fn the_dockerfile_builds_the_proxy_in_two_stages_and_runs_it_unprivileged() {
    let text = read(&docker_dir().join("Dockerfile"));
    // Instructions, with continuation lines joined and comments dropped.
    let mut instructions: Vec<(String, String)> = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && pending.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let full = std::mem::take(&mut pending);
                let (op, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
                instructions.push((op.to_uppercase(), args.trim().to_owned()));
            }
        }
    }
    let all = |op: &str| -> Vec<&str> {
        instructions
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let from = all("FROM");
    assert_eq!(from.len(), 2, "two stages: {from:?}");
    assert!(
        from[0].starts_with("rust:") && from[0].ends_with(" AS builder"),
        "{}",
        from[0]
    );
    assert!(
        from[1].starts_with("debian:") && from[1].contains("-slim"),
        "{}",
        from[1]
    );
    let runs = all("RUN").join("\n");
    assert!(
        runs.contains("cargo build --release") && runs.contains("-p shardgate"),
        "{runs}"
    );
    let copies = all("COPY");
    let runtime_copies: Vec<&&str> = copies
        .iter()
        .filter(|c| c.starts_with("--from=builder"))
        .collect();
    assert_eq!(runtime_copies.len(), 1, "only the binary: {copies:?}");
    assert!(runtime_copies[0].ends_with("/usr/local/bin/shardgate"));
    let runtime_start = instructions.iter().rposition(|(o, _)| o == "FROM").unwrap();
    let runtime_runs: Vec<&str> = instructions[runtime_start..]
        .iter()
        .filter(|(o, _)| o == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    assert!(
        runtime_runs
            .iter()
            .all(|r| !r.contains("apt-get install") || r.contains("ca-certificates")),
        "the runtime installs ca-certificates only: {runtime_runs:?}"
    );
    let user = all("USER");
    assert_eq!(user.len(), 1, "{user:?}");
    assert!(
        !matches!(user[0].split(':').next(), Some("root" | "0")),
        "runs as {}",
        user[0]
    );
    let mut exposed: Vec<&str> = all("EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace())
        .collect();
    exposed.sort();
    assert_eq!(exposed, ["6432", "9930"]);
    let exec_form = |op: &str| -> Vec<String> {
        let args = all(op);
        assert_eq!(args.len(), 1, "one {op}");
        serde_json::from_str(args[0]).unwrap_or_else(|e| panic!("{op} in exec form: {e}"))
    };
    let command = [exec_form("ENTRYPOINT"), exec_form("CMD")].concat();
    assert_eq!(
        command,
        ["shardgate", "run", "--config", CONTAINER_CONFIG],
        "runs the proxy on the mounted config"
    );

    // The context is the repository root: what the builder needs must not be ignored.
    let ignore = read(&repo().join(".dockerignore"));
    let patterns: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(patterns.contains(&"target"), "target/ is ignored");
    let ignored = |path: &str| {
        patterns.iter().any(|p| {
            let p = p.trim_start_matches('/').trim_end_matches('/');
            path == p || path.starts_with(&format!("{p}/"))
        })
    };
    let manifest = read(&repo().join("Cargo.toml"));
    assert!(manifest.contains("members = [\"crates/*\", \"tests\"]"));
    for needed in ["Cargo.toml", "Cargo.lock", "crates", "tests"] {
        assert!(!ignored(needed), ".dockerignore excludes {needed}");
        assert!(repo().join(needed).exists(), "{needed}");
    }
}

/// `text` without the top-level `key:` entry (its line and any indented lines after it).
fn without_top_level_key(text: &str, key: &str) -> String {
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
fn load_docker_config() -> sgconfig::Config {
    let path = docker_dir().join("shardgate.yaml");
    sgconfig::load_str(&path, &read(&path))
        .unwrap_or_else(|e| panic!("docker/shardgate.yaml does not pass check:\n{e}"))
}

#[test]
fn the_docker_config_passes_check() {
    let config = load_docker_config();
    assert_eq!(config.listen.to_string(), "0.0.0.0:6432");
    assert_eq!(config.admin_users, ["ops"]);
    assert_eq!(
        config
            .metrics
            .as_ref()
            .map(|m| m.listen.to_string())
            .as_deref(),
        Some("0.0.0.0:9930")
    );
    let app = &config.databases["app"];
    let shards: Vec<&str> = app.shards.iter().map(|(n, _)| n).collect();
    assert_eq!(shards, ["s0", "s1"]);
    assert_eq!(app.maps.len(), 1);
    assert_eq!(app.maps[0].shards(), ["s0", "s1"]);
    assert_eq!(app.reference_tables, ["countries"]);
}

#[test]
fn compose_tools_accept_the_file_where_installed() {
    // No container engine runs here; a compose client can still validate the file.
    let candidates: [&[&str]; 2] = [&["docker", "compose"], &["docker-compose"]];
    let mut ran = false;
    for c in candidates {
        let works = Command::new(c[0])
            .args(&c[1..])
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !works {
            continue;
        }
        let out = Command::new(c[0])
            .args(&c[1..])
            .args(["-f", "compose.yaml", "config", "-q"])
            .current_dir(docker_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{} config: {}",
            c.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        ran = true;
    }
    if !ran {
        eprintln!(
            "note: no compose client installed; compose.yaml checked by the other tests only"
        );
    }
}

// ---- the scripts against local PostgreSQL ------------------------------------------------

static SCRATCH: AtomicU32 = AtomicU32::new(0);

/// The unprivileged identity PostgreSQL runs as when the tests run as root.
fn server_identity() -> Option<(u32, u32)> {
    static IDENTITY: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDENTITY.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = std::ffi::CString::new(cluster::SERVER_OS_USER).unwrap();
        // SAFETY: getpwnam gets a NUL-terminated name; this runs once, under the OnceLock,
        // and its static record is read at once.
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(!pw.is_null(), "no OS user {}", cluster::SERVER_OS_USER);
        // SAFETY: pw is non-null and points to libc's passwd record.
        Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
    })
}

/// A directory of the test's own, owned by the server's OS user, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "sg-docker-{name}-{}-{}",
            std::process::id(),
            SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The scripts run from here as the server's user.
        for script in ["primary-init.sh", "replica-bootstrap.sh"] {
            let to = dir.join(script);
            std::fs::copy(docker_dir().join(script), &to).unwrap();
        }
        if let Some((uid, gid)) = server_identity() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                std::os::unix::fs::chown(entry.unwrap().path(), Some(uid), Some(gid)).unwrap();
            }
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A command for one of docker/'s scripts (copied into `scratch`), run as the server's OS
/// user with only `env`, the PostgreSQL binaries first on PATH.
fn script_command(
    scratch: &Scratch,
    script: &str,
    bindir: &Path,
    env: &BTreeMap<String, String>,
) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(scratch.0.join(script))
        .current_dir(&scratch.0)
        .env_clear()
        .env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", bindir.display()),
        )
        .env("HOME", &scratch.0)
        .env("LC_ALL", "C")
        .envs(env)
        .stdin(Stdio::null());
    if let Some((uid, gid)) = server_identity() {
        cmd.gid(gid).uid(uid);
    }
    cmd
}

/// A local primary started with the compose service's settings, initialised by
/// primary-init.sh with the service's environment.
fn start_primary(compose: &Value, name: &str, scratch: &Scratch) -> Cluster {
    let s = service(compose, name);
    let primary = Cluster::start(ClusterOptions {
        password: Some(SUPERUSER_PASSWORD.into()),
        auth: AuthMethod::ScramSha256,
        settings: settings_of(&string_list(&s["command"])),
        ..ClusterOptions::default()
    })
    .expect("start a primary");
    let mut env = environment(s);
    env.remove("POSTGRES_PASSWORD");
    env.extend([
        ("POSTGRES_USER".into(), primary.superuser().to_owned()),
        ("POSTGRES_DB".into(), "postgres".into()),
        ("PGDATA".into(), primary.data_dir().display().to_string()),
        ("PGHOST".into(), primary.host().to_owned()),
        ("PGPORT".into(), primary.port().to_string()),
        ("PGPASSWORD".into(), SUPERUSER_PASSWORD.into()),
    ]);
    let out = script_command(scratch, "primary-init.sh", &primary.binaries().bindir, &env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "primary-init.sh for {name}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    primary
}

/// A loopback port below the ephemeral range that nothing listens on right now.
fn fixed_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let port = 25_400 + (NEXT.fetch_add(1, Ordering::Relaxed) % 500) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A replica made by replica-bootstrap.sh and run by it (the script execs postgres, so the
/// child is the postmaster).
struct ScriptReplica {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
}

impl ScriptReplica {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ScriptReplica {
    fn drop(&mut self) {
        // SIGINT: PostgreSQL's fast shutdown.
        // SAFETY: plain kill(2) on the postmaster this test started.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The replica service's environment with its primary replaced by the local one.
fn replica_env(
    compose: &Value,
    name: &str,
    primary: &Cluster,
    data_dir: &Path,
) -> BTreeMap<String, String> {
    let mut env = environment(service(compose, name));
    env.insert("PRIMARY_HOST".into(), primary.host().into());
    env.insert("PRIMARY_PORT".into(), primary.port().to_string());
    env.insert("PGDATA".into(), data_dir.display().to_string());
    env.insert("WAIT_TIMEOUT".into(), "30".into());
    env
}

/// Runs replica-bootstrap.sh to the end: bootstrap (unless done) and postgres, with the
/// compose service's command plus what a local server needs (its own port and socket).
fn run_replica(
    compose: &Value,
    name: &str,
    primary: &Cluster,
    scratch: &Scratch,
    data_dir: &Path,
) -> ScriptReplica {
    let port = fixed_port();
    let log = scratch.0.join(format!("{name}.log"));
    let mut args = string_list(&service(compose, name)["command"]);
    args.extend([
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-k".into(),
        scratch.0.display().to_string(),
    ]);
    let env = replica_env(compose, name, primary, data_dir);
    let log_file = File::create(&log).unwrap();
    let child = script_command(
        scratch,
        "replica-bootstrap.sh",
        &primary.binaries().bindir,
        &env,
    )
    .args(&args)
    .stdout(log_file.try_clone().unwrap())
    .stderr(log_file)
    .spawn()
    .expect("run replica-bootstrap.sh");
    let mut replica = ScriptReplica {
        child,
        port,
        data_dir: data_dir.to_owned(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(Some(status)) = replica.child.try_wait() {
            panic!(
                "replica-bootstrap.sh for {name} exited ({status}):\n{}",
                replica.log_text()
            );
        }
        if psql_at(primary, port, "postgres", "SELECT 1").is_ok() {
            return replica;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never accepted connections:\n{}",
            replica.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `psql -c sql` as the superuser on a local port.
fn psql_at(primary: &Cluster, port: u16, db: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(primary.binaries().psql())
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-U", primary.superuser(), "-d", db])
        .args(["-c", sql])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .env("PGCONNECT_TIMEOUT", "5")
        .env_remove("PGHOST")
        .env_remove("PGPORT")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Polls `sql` on a port until it prints `want`.
fn wait_for(primary: &Cluster, port: u16, db: &str, sql: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = psql_at(primary, port, db, sql);
        if got.as_deref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql} on port {port}: {got:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn primary_init_and_replica_bootstrap_make_a_streaming_replica() {
    let compose = compose();
    let scratch = Scratch::new("replica");
    let primary = start_primary(&compose, "shard0-primary", &scratch);
    let penv = environment(service(&compose, "shard0-primary"));
    let repl_user = &penv["REPLICATION_USER"];
    let app_user = &penv["APP_USER"];
    let app_db = &penv["APP_DATABASE"];

    // primary-init.sh: the roles, the database, the demo schema owned by the app role.
    let q = |db: &str, sql: &str| primary.psql(db, sql).unwrap();
    assert_eq!(
        q(
            "postgres",
            &format!(
                "SELECT rolreplication, rolcanlogin FROM pg_roles WHERE rolname = '{repl_user}'"
            )
        ),
        "t|t"
    );
    assert_eq!(
        q(
            "postgres",
            &format!("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{app_db}'")
        ),
        *app_user
    );
    assert_eq!(
        q(
            app_db,
            "SELECT string_agg(tablename || ':' || tableowner, ',' ORDER BY tablename) \
             FROM pg_tables WHERE schemaname = 'public'"
        ),
        format!("countries:{app_user},customers:{app_user},orders:{app_user}")
    );
    assert_eq!(q(app_db, "SELECT count(*) FROM countries"), "4");
    // The app role logs in over TCP with its password, as the proxy will.
    let login = Command::new(primary.binaries().psql())
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p"])
        .arg(primary.port().to_string())
        .args(["-U", app_user, "-d", app_db, "-c", "SELECT current_user"])
        .env("PGPASSWORD", &penv["APP_PASSWORD"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&login.stdout).trim(), *app_user);
    assert!(read(&primary.data_dir().join("pg_hba.conf"))
        .contains(&format!("host replication {repl_user} all scram-sha-256")));

    // replica-bootstrap.sh with BOOTSTRAP_ONLY=1: a standby's data directory, no server.
    let data_dir = scratch.0.join("replica-data");
    let mut env = replica_env(&compose, "shard0-replica", &primary, &data_dir);
    let slot = env["REPLICATION_SLOT"].clone();
    env.insert("BOOTSTRAP_ONLY".into(), "1".into());
    let out = script_command(
        &scratch,
        "replica-bootstrap.sh",
        &primary.binaries().bindir,
        &env,
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "bootstrap only:\n{said}");
    assert!(
        said.contains("BOOTSTRAP_ONLY=1: not starting postgres"),
        "{said}"
    );
    assert!(data_dir.join("standby.signal").is_file());
    assert!(
        !data_dir.join("postmaster.pid").exists(),
        "no server started"
    );
    let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
    let auto = read(&data_dir.join("postgresql.auto.conf"));
    assert!(auto.contains("primary_conninfo"), "{auto}");
    assert!(
        auto.contains(&format!("primary_slot_name = '{slot}'")),
        "{auto}"
    );
    assert_eq!(
        q(
            "postgres",
            &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'")
        ),
        "1"
    );

    // Run again, to the end: the data directory is kept and postgres started on it.
    let replica = run_replica(&compose, "shard0-replica", &primary, &scratch, &data_dir);
    assert!(
        replica.log_text().contains("already holds a standby"),
        "{}",
        replica.log_text()
    );
    assert_eq!(
        psql_at(
            &primary,
            replica.port,
            "postgres",
            "SELECT pg_is_in_recovery()"
        )
        .unwrap(),
        "t"
    );
    assert_eq!(replica.data_dir, data_dir);
    q(
        app_db,
        "INSERT INTO customers VALUES (4242, 'written on the primary', 'jp')",
    );
    wait_for(
        &primary,
        replica.port,
        app_db,
        "SELECT name FROM customers WHERE id = 4242",
        "written on the primary",
    );
    // It streams through its slot.
    assert_eq!(
        q(
            "postgres",
            &format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{slot}'")
        ),
        "t"
    );
    // Writes are refused on the replica.
    let refused = psql_at(
        &primary,
        replica.port,
        app_db,
        "INSERT INTO countries VALUES ('xx', 'nowhere')",
    );
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("read-only transaction")),
        "{refused:?}"
    );
}

#[test]
fn the_docker_setup_serves_sharded_queries_locally() {
    let compose = compose();
    let config = load_docker_config();
    let map = config.databases["app"].maps[0].clone();
    let config_yaml = parse_yaml(&docker_dir().join("shardgate.yaml"));
    let scratch = Scratch::new("setup");

    // Each compose PostgreSQL service as a local server: primaries with primary-init.sh,
    // replicas made and run by replica-bootstrap.sh in one go.
    let mut primaries: Vec<(String, Cluster)> = Vec::new();
    let mut replicas: Vec<(String, ScriptReplica)> = Vec::new();
    let mut local_port: BTreeMap<String, u16> = BTreeMap::new();
    for (_, primary_url, replica_urls) in shard_urls(&config_yaml) {
        let pname = address(&primary_url).host;
        let primary = start_primary(&compose, &pname, &scratch);
        local_port.insert(pname.clone(), primary.port());
        for url in replica_urls {
            let rname = address(&url).host;
            let data_dir = scratch.0.join(format!("{rname}-data"));
            let replica = run_replica(&compose, &rname, &primary, &scratch, &data_dir);
            local_port.insert(rname.clone(), replica.port);
            replicas.push((rname, replica));
        }
        primaries.push((pname, primary));
    }

    // docker/shardgate.yaml with each service's host:port pointed at its local server.
    let mut yaml = read(&docker_dir().join("shardgate.yaml"));
    for (name, port) in &local_port {
        yaml = yaml.replace(
            &format!("@{name}:{CONTAINER_PG_PORT}/"),
            &format!("@127.0.0.1:{port}/"),
        );
    }
    assert!(
        !yaml.contains("-primary:") && !yaml.contains("-replica:"),
        "{yaml}"
    );
    // Metrics are not what this test is about (and an in-process proxy must not take the
    // fixed metrics port; the in-process proxy does not serve them anyway).
    yaml = without_top_level_key(&yaml, "metrics");
    let config_dir = scratch.0.join("proxy");
    std::fs::create_dir_all(config_dir.join("shard-maps")).unwrap();
    for entry in std::fs::read_dir(docker_dir().join("shard-maps")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            config_dir
                .join("shard-maps")
                .join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    let addr = e2e::start_proxy_from(&config_dir, &yaml);

    let app_password = environment(service(&compose, &primaries[0].0))["APP_PASSWORD"].clone();
    let through_proxy = |sql: &str| -> String {
        let out = Command::new(primaries[0].1.binaries().psql())
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host=127.0.0.1 port={} user=app password={app_password} dbname=app",
                addr.port()
            ))
            .args(["-c", sql])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    };
    let ids: Vec<i64> = (1..=20).collect();
    let values: Vec<String> = ids
        .iter()
        .map(|id| format!("({id}, 'customer {id}', 'de')"))
        .collect();
    assert_eq!(
        through_proxy(&format!(
            "INSERT INTO customers (id, name, country) VALUES {}",
            values.join(", ")
        )),
        "INSERT 0 20"
    );
    assert_eq!(
        through_proxy("SELECT name FROM customers WHERE id = 7"),
        "customer 7"
    );
    assert_eq!(
        through_proxy("SELECT name FROM countries WHERE code = 'de'"),
        "Germany"
    );
    // An order lands with its customer (its foreign key holds only there).
    through_proxy("INSERT INTO orders (id, customer_id, amount) VALUES (1, 7, 9.99)");
    assert_eq!(
        through_proxy("SELECT amount FROM orders WHERE customer_id = 7"),
        "9.99"
    );

    // Each customer is on the primary the map names, and on its replica.
    for (shard, (pname, primary)) in ["s0", "s1"].iter().zip(&primaries) {
        let want: Vec<String> = ids
            .iter()
            .filter(|id| {
                router::sharding::shard_for_key(&map, &[sgconfig::KeyValue::Int(**id)])
                    == Some(*shard)
            })
            .map(|id| id.to_string())
            .collect();
        assert!(!want.is_empty(), "{shard} holds some of the 20");
        let sql = "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM customers";
        assert_eq!(primary.psql("app", sql).unwrap(), want.join(","), "{pname}");
        for (rname, replica) in &replicas {
            let renv = environment(service(&compose, rname));
            if &renv["PRIMARY_HOST"] == pname {
                wait_for(primary, replica.port, "app", sql, &want.join(","));
                assert_eq!(
                    psql_at(
                        primary,
                        replica.port,
                        "postgres",
                        "SELECT pg_is_in_recovery()"
                    )
                    .unwrap(),
                    "t",
                    "{rname}"
                );
            }
        }
    }
    drop(replicas);
}
