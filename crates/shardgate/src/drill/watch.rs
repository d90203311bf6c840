//! Watching the proxy's view of the drilled shard: `SHOW SHARDS` on the admin console every
//! 50 ms, keeping each change of the shard's rows (role and state per server) with its time.
//!
//! Relies on these columns of `SHOW SHARDS`, by name: `database`, `shard`, `role` (the
//! proxy's live view: `primary` or `replica`), `host`, `port`, and `state` (`up`, `down`,
//! `fenced`) when the proxy has it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::SimpleQueryMessage;

use super::{connect, Target};

const POLL: Duration = Duration::from_millis(50);
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One server of the shard as `SHOW SHARDS` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    pub host: String,
    pub port: u16,
    pub role: String,
    /// `None` when the proxy's `SHOW SHARDS` has no `state` column.
    pub state: Option<String>,
}

impl ServerView {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// `primary up`, `replica down`, ... (just the role without a state column).
    pub fn describe(&self) -> String {
        match &self.state {
            Some(s) => format!("{} {s}", self.role),
            None => self.role.clone(),
        }
    }
}

/// Each distinct view of the shard, from when it was first seen.
pub type History = Vec<(Instant, Vec<ServerView>)>;

struct Shared {
    stop: AtomicBool,
    history: Mutex<History>,
    failed_polls: Mutex<u64>,
}

/// The running watcher.
pub struct Watch {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Connects to the console and takes the first view (an error when it cannot), then
    /// keeps polling in a task.
    pub async fn start(admin: tokio_postgres::Config, target: &Target) -> Result<Watch, String> {
        let client = connect(&admin).await?;
        let first = poll(&client, &target.database, &target.shard).await?;
        if first.is_empty() {
            return Err(format!(
                "it lists no server of database {} shard {}",
                target.database, target.shard
            ));
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            history: Mutex::new(vec![(Instant::now(), first)]),
            failed_polls: Mutex::new(0),
        });
        let task = tokio::spawn(watch(
            admin,
            client,
            target.database.clone(),
            target.shard.clone(),
            Arc::clone(&shared),
        ));
        Ok(Watch { shared, task })
    }

    /// The latest view.
    pub fn latest(&self) -> Vec<ServerView> {
        let h = self.shared.history.lock().unwrap();
        h.last().map(|(_, v)| v.clone()).unwrap_or_default()
    }

    /// Stops polling; every view seen.
    pub async fn finish(self) -> History {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(QUERY_TIMEOUT * 2, self.task).await;
        let failed = *self.shared.failed_polls.lock().unwrap();
        if failed > 0 {
            super::say(&format!("{failed} poll(s) of SHOW SHARDS failed"));
        }
        std::mem::take(&mut *self.shared.history.lock().unwrap())
    }
}

async fn watch(
    admin: tokio_postgres::Config,
    client: tokio_postgres::Client,
    database: String,
    shard: String,
    shared: Arc<Shared>,
) {
    let mut client = Some(client);
    while !shared.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(POLL).await;
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(&admin).await.ok();
        }
        let Some(c) = &client else {
            *shared.failed_polls.lock().unwrap() += 1;
            continue;
        };
        match poll(c, &database, &shard).await {
            Ok(view) => {
                let now = Instant::now();
                let mut h = shared.history.lock().unwrap();
                if h.last().is_none_or(|(_, last)| *last != view) {
                    h.push((now, view));
                }
            }
            Err(_) => {
                *shared.failed_polls.lock().unwrap() += 1;
                client = None;
            }
        }
    }
}

/// The shard's rows of `SHOW SHARDS`, sorted by address.
async fn poll(
    client: &tokio_postgres::Client,
    database: &str,
    shard: &str,
) -> Result<Vec<ServerView>, String> {
    let messages = tokio::time::timeout(QUERY_TIMEOUT, client.simple_query("SHOW SHARDS"))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| super::workload::describe(&e))?;
    let mut view = Vec::new();
    for m in messages {
        let SimpleQueryMessage::Row(row) = m else {
            continue;
        };
        let col = |name: &str| -> Option<String> {
            let i = row.columns().iter().position(|c| c.name() == name)?;
            row.get(i).map(str::to_owned)
        };
        if col("database").as_deref() != Some(database) || col("shard").as_deref() != Some(shard) {
            continue;
        }
        let (Some(host), Some(port), Some(role)) = (col("host"), col("port"), col("role")) else {
            return Err("SHOW SHARDS lacks a host, port or role column".into());
        };
        view.push(ServerView {
            host,
            port: port.parse().map_err(|_| format!("bad port {port}"))?,
            role,
            state: col("state"),
        });
    }
    view.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
    Ok(view)
}

/// When, after `t0`, the proxy first showed `victim` (host:port) as no longer a live
/// primary, and when another server first showed as a primary that is up (with which).
pub fn detect_and_promote(
    history: &History,
    t0: Instant,
    victim: &str,
) -> (Option<Instant>, Option<(Instant, String)>) {
    let mut detected = None;
    let mut promoted = None;
    for (at, view) in history.iter().filter(|(at, _)| *at >= t0) {
        if detected.is_none() {
            let gone = view.iter().find(|s| s.addr() == victim).is_none_or(|s| {
                s.role != "primary" || matches!(s.state.as_deref(), Some("down" | "fenced"))
            });
            if gone {
                detected = Some(*at);
            }
        }
        if promoted.is_none() {
            if let Some(new) = view.iter().find(|s| {
                s.addr() != victim
                    && s.role == "primary"
                    && s.state.as_deref().is_none_or(|st| st == "up")
            }) {
                promoted = Some((*at, new.addr()));
            }
        }
    }
    // A promotion is also a detection, whether or not the old primary's row said so first.
    if let Some((at, _)) = &promoted {
        detected = Some(detected.map_or(*at, |d| d.min(*at)));
    }
    (detected, promoted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(servers: &[(u16, &str, Option<&str>)]) -> Vec<ServerView> {
        servers
            .iter()
            .map(|&(port, role, state)| ServerView {
                host: "127.0.0.1".into(),
                port,
                role: role.into(),
                state: state.map(str::to_owned),
            })
            .collect()
    }

    #[test]
    fn detection_then_promotion() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let history = vec![
            (
                t0 - Duration::from_secs(1),
                view(&[(1, "primary", Some("up")), (2, "replica", Some("up"))]),
            ),
            (
                ms(300),
                view(&[(1, "primary", Some("down")), (2, "replica", Some("up"))]),
            ),
            (
                ms(900),
                view(&[(1, "replica", Some("fenced")), (2, "primary", Some("up"))]),
            ),
        ];
        let (d, p) = detect_and_promote(&history, t0, "127.0.0.1:1");
        assert_eq!(d, Some(ms(300)));
        assert_eq!(p, Some((ms(900), "127.0.0.1:2".to_owned())));
    }

    #[test]
    fn nothing_changes_without_a_state_column() {
        let t0 = Instant::now();
        let history = vec![(
            t0 - Duration::from_secs(1),
            view(&[(1, "primary", None), (2, "replica", None)]),
        )];
        assert_eq!(
            detect_and_promote(&history, t0, "127.0.0.1:1"),
            (None, None)
        );
    }

    #[test]
    fn a_new_primary_that_is_not_up_is_no_promotion() {
        let t0 = Instant::now();
        let at = t0 + Duration::from_millis(100);
        let history = vec![(
            at,
            view(&[(1, "primary", Some("down")), (2, "primary", Some("down"))]),
        )];
        let (d, p) = detect_and_promote(&history, t0, "127.0.0.1:1");
        assert_eq!(d, Some(at));
        assert_eq!(p, None);
    }
}
