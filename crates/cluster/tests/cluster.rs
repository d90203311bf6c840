//! Integration tests against real PostgreSQL servers started by the `cluster` crate.

use std::process::Command;
use std::time::Duration;

use cluster::{AuthMethod, Cluster, ClusterError, ClusterOptions, PgBinaries};

fn poll_until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

#[test]
fn finds_binaries() {
    let bins = PgBinaries::find().expect("PostgreSQL binaries");
    assert!(bins.tool("initdb").is_file(), "{:?}", bins.bindir);
    assert!(bins.tool("pg_ctl").is_file());
    assert!(bins.tool("pg_basebackup").is_file());
    assert!(bins.major_version().is_some());
}

#[test]
fn trust_cluster_lifecycle() {
    let cluster = Cluster::start(ClusterOptions::default()).expect("start cluster");
    assert!(cluster.is_running());
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.superuser(), "postgres");
    assert_eq!(cluster.password(), None);
    assert_eq!(cluster.psql("postgres", "select 1").unwrap(), "1");
    assert_eq!(
        cluster.url("app"),
        format!("postgres://postgres@127.0.0.1:{}/app", cluster.port())
    );
    assert_eq!(
        cluster.psql("postgres", "show listen_addresses").unwrap(),
        "127.0.0.1"
    );
    assert_eq!(cluster.psql("postgres", "show fsync").unwrap(), "off");

    cluster.create_database("app").unwrap();
    assert_eq!(
        cluster.psql("app", "select current_database()").unwrap(),
        "app"
    );
    let err = cluster
        .psql("app", "select * from no_such_table")
        .unwrap_err();
    assert!(
        err.to_string().contains("no_such_table"),
        "unexpected error: {err}"
    );

    let dir = cluster.dir().to_path_buf();
    let data_dir = cluster.data_dir().to_path_buf();
    assert!(data_dir.join("PG_VERSION").is_file());
    assert!(data_dir.starts_with(&dir));
    drop(cluster);
    assert!(!dir.exists(), "{} should be removed on drop", dir.display());
}

#[test]
fn scram_cluster_checks_passwords() {
    let cluster = Cluster::start(ClusterOptions {
        auth: AuthMethod::ScramSha256,
        password: Some("s3cret'pw".to_string()),
        ..Default::default()
    })
    .expect("start scram cluster");
    assert_eq!(cluster.psql("postgres", "select 1").unwrap(), "1");
    assert_eq!(
        cluster
            .psql(
                "postgres",
                "select left(rolpassword, 13) from pg_authid where rolname = current_user"
            )
            .unwrap(),
        "SCRAM-SHA-256"
    );
    assert!(cluster.url("db").contains(":s3cret%27pw@"));

    let wrong = Command::new(cluster.binaries().psql())
        .args(["-X", "-A", "-t", "-w", "-h", "127.0.0.1"])
        .args(["-p", &cluster.port().to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-c", "select 1"])
        .env("PGPASSWORD", "wrong")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "unexpected stderr: {stderr}"
    );
}

#[test]
fn md5_cluster_stores_md5_password() {
    let cluster = Cluster::start(ClusterOptions {
        auth: AuthMethod::Md5,
        password: Some("md5pw".to_string()),
        ..Default::default()
    })
    .expect("start md5 cluster");
    assert_eq!(
        cluster
            .psql(
                "postgres",
                "select left(rolpassword, 3) from pg_authid where rolname = current_user"
            )
            .unwrap(),
        "md5"
    );
}

#[test]
fn password_auth_without_password_is_rejected() {
    let err = Cluster::start(ClusterOptions {
        auth: AuthMethod::ScramSha256,
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, ClusterError::InvalidOptions(_)), "{err}");
}

#[test]
fn failed_start_reports_server_log() {
    let err = Cluster::start(ClusterOptions {
        settings: vec![("shared_buffers".into(), "'lots'".into())],
        ..Default::default()
    })
    .unwrap_err();
    match &err {
        ClusterError::StartFailed { log_tail, .. } => {
            assert!(log_tail.contains("shared_buffers"), "log tail: {log_tail}")
        }
        other => panic!("expected StartFailed, got {other}"),
    }
}

#[test]
fn stop_kill_and_restart() {
    let mut cluster = Cluster::start(ClusterOptions {
        settings: vec![("work_mem".into(), "'7MB'".into())],
        ..Default::default()
    })
    .expect("start cluster");
    assert_eq!(cluster.psql("postgres", "show work_mem").unwrap(), "7MB");
    let port = cluster.port();

    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    cluster.stop().unwrap();
    cluster.start_again().unwrap();
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.psql("postgres", "select 2").unwrap(), "2");

    let pid = cluster.postmaster_pid().expect("postmaster pid");
    cluster.kill().unwrap();
    assert!(!cluster.is_running());
    assert_eq!(cluster.postmaster_pid(), None);
    assert!(cluster.psql("postgres", "select 1").is_err());
    cluster.kill().unwrap();

    cluster.start_again().unwrap();
    assert_ne!(cluster.postmaster_pid(), Some(pid));
    assert_eq!(cluster.psql("postgres", "select 3").unwrap(), "3");
}

/// Runs a shell command the way `shardgate drill failover` runs a `stop_command`.
fn sh(command: &str) {
    let out = Command::new("sh").args(["-c", command]).output().unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stop_and_start_commands_work_from_a_shell() {
    // Test clusters commit without waiting for the WAL flush; this one waits, so that its
    // commits survive the abrupt stop.
    let mut cluster = Cluster::start(ClusterOptions {
        settings: vec![("synchronous_commit".into(), "on".into())],
        ..Default::default()
    })
    .expect("start cluster");
    cluster
        .psql(
            "postgres",
            "create table t (i int); insert into t values (1)",
        )
        .unwrap();
    let pid = cluster.postmaster_pid().expect("postmaster pid");
    let stop = cluster.stop_command();
    assert!(stop.contains("-m immediate"), "{stop}");
    sh(&stop);
    assert!(!cluster.is_running());
    assert!(cluster.psql("postgres", "select 1").is_err());
    // Abrupt: the next start had to recover from the crash.
    sh(&cluster.start_command());
    assert_ne!(cluster.postmaster_pid(), Some(pid));
    assert_eq!(cluster.psql("postgres", "select i from t").unwrap(), "1");
    let log = std::fs::read_to_string(cluster.log_file()).unwrap();
    assert!(
        log.contains("was not properly shut down"),
        "no crash recovery in the log:\n{log}"
    );
    cluster.stop().unwrap();
}

#[test]
fn keep_leaves_directory_behind() {
    let base = std::env::temp_dir().join(format!("shardgate-keep-test-{}", std::process::id()));
    let cluster = Cluster::start(ClusterOptions {
        base_dir: Some(base.clone()),
        keep: true,
        ..Default::default()
    })
    .expect("start cluster");
    let dir = cluster.dir().to_path_buf();
    assert!(dir.starts_with(&base));
    drop(cluster);
    assert!(dir.join("data").join("PG_VERSION").is_file());
    assert!(!dir.join("data").join("postmaster.pid").exists());
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn concurrent_clusters_get_distinct_ports() {
    let handles: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(|| Cluster::start(ClusterOptions::default())))
        .collect();
    let clusters: Vec<Cluster> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("start cluster"))
        .collect();
    let mut ports: Vec<u16> = clusters.iter().map(Cluster::port).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), clusters.len());
    for c in &clusters {
        assert_eq!(
            c.psql("postgres", "show port").unwrap(),
            c.port().to_string()
        );
    }
}

#[test]
fn replica_follows_and_takes_over() {
    let mut primary = Cluster::start(ClusterOptions {
        auth: AuthMethod::ScramSha256,
        password: Some("replpw".to_string()),
        ..Default::default()
    })
    .expect("start primary");
    let replica = primary
        .start_replica(primary.replica_options())
        .expect("start replica");
    assert_ne!(replica.port(), primary.port());
    assert_eq!(replica.password(), Some("replpw"));
    assert_eq!(
        primary
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    assert_eq!(
        replica
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "t"
    );

    primary
        .psql(
            "postgres",
            "create table drill (id int primary key, note text); \
             insert into drill values (1, 'from primary')",
        )
        .unwrap();
    poll_until("row to reach the replica", || {
        replica
            .psql("postgres", "select note from drill where id = 1")
            .map(|out| out == "from primary")
            .unwrap_or(false)
    });
    assert!(replica
        .psql("postgres", "insert into drill values (2, 'x')")
        .is_err());

    primary.kill().unwrap();
    assert!(!primary.is_running());

    replica.promote().unwrap();
    assert_eq!(
        replica
            .psql("postgres", "select pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    replica
        .psql("postgres", "insert into drill values (2, 'after failover')")
        .unwrap();
    assert_eq!(
        replica
            .psql("postgres", "select count(*) from drill")
            .unwrap(),
        "2"
    );
}

#[test]
fn taken_fixed_port_fails_with_log() {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = Cluster::start(ClusterOptions {
        port: Some(port),
        ..Default::default()
    })
    .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ClusterError::StartFailed { .. }) && text.contains("could not bind"),
        "unexpected error: {text}"
    );
}

#[test]
fn long_base_dir_uses_short_socket_dir() {
    let base = std::env::temp_dir()
        .join(format!("shardgate-long-{}", std::process::id()))
        .join("d".repeat(90));
    let cluster = Cluster::start(ClusterOptions {
        base_dir: Some(base.clone()),
        ..Default::default()
    })
    .expect("start cluster");
    assert_ne!(cluster.socket_dir(), cluster.data_dir());
    assert_eq!(cluster.psql("postgres", "select 1").unwrap(), "1");
    let socket_dir = cluster.socket_dir().to_path_buf();
    drop(cluster);
    assert!(!socket_dir.exists());
    std::fs::remove_dir_all(base.parent().unwrap()).unwrap();
}
