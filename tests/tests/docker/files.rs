//! docker/'s files checked without a container engine: the compose file, the proxy config,
//! the scripts and the Dockerfile.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::compose::*;

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
