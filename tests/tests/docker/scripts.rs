//! docker/'s scripts run for real against local PostgreSQL: `primary-init.sh` sets a primary
//! up, `replica-bootstrap.sh` makes a streaming replica of it, and the proxy with docker/'s
//! config, its hosts pointed at the local servers, serves the demo schema over both shards.

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

use crate::compose::*;

/// Superuser password of the local primaries (the compose file's POSTGRES_PASSWORD plays
/// this part in containers).
const SUPERUSER_PASSWORD: &str = "docker-test-pw";

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
