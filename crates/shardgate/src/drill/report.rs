//! The failover drill's report: the figures from what the workload, the watcher and the
//! read-back recorded, as text for people and as one JSON object for scripts, and the
//! verdict (exit code and reason).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;

use super::watch::{self, History};
use super::workload::{self, Results};
use super::{ReadBack, Server, Target};

pub struct Report {
    database: String,
    shard: String,
    proxy: String,
    stopped: String,
    stop_command: String,
    duration: Duration,
    warmup: Duration,
    notes: Vec<String>,
    /// Why the drill stopped half-way, if it did.
    aborted: Option<String>,
    /// When the stop command was started (T0) and how long it ran.
    t0: Option<Instant>,
    stop_took: Option<Duration>,
    /// Whether `SHOW SHARDS` was watched.
    watched: bool,
    detect: Option<Instant>,
    promote: Option<(Instant, String)>,
    writes_back: Option<Instant>,
    acknowledged: u64,
    transactions: u64,
    explicit: u64,
    writes_failed: u64,
    reads_ok: u64,
    reads_failed: u64,
    errors: BTreeMap<String, u64>,
    error_examples: BTreeMap<String, String>,
    errors_after_stop: u64,
    tx_during: u64,
    tx_during_committed: u64,
    /// Write transactions the stopped server acknowledged after T0 (before it died).
    acked_by_stopped_after_t0: u64,
    /// Milliseconds from T0 (negative before it) and what happened.
    timeline: Vec<(i64, String)>,
    read_back_from: Option<String>,
    read_back_error: Option<String>,
    lost: Option<u64>,
    lost_examples: Vec<(i32, i64)>,
    unacknowledged_present: Option<u64>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// Signed milliseconds from `t0` to `at`.
fn rel(at: Instant, t0: Instant) -> i64 {
    if at >= t0 {
        (at - t0).as_millis() as i64
    } else {
        -((t0 - at).as_millis() as i64)
    }
}

impl Report {
    pub fn new(
        target: &Target,
        victim: &Server,
        stop_command: &str,
        duration: Duration,
        warmup: Duration,
        notes: Vec<String>,
    ) -> Report {
        Report {
            database: target.database.clone(),
            shard: target.shard.clone(),
            proxy: target.proxy_addr.clone(),
            stopped: victim.addr(),
            stop_command: stop_command.to_owned(),
            duration,
            warmup,
            notes,
            aborted: None,
            t0: None,
            stop_took: None,
            watched: false,
            detect: None,
            promote: None,
            writes_back: None,
            acknowledged: 0,
            transactions: 0,
            explicit: 0,
            writes_failed: 0,
            reads_ok: 0,
            reads_failed: 0,
            errors: BTreeMap::new(),
            error_examples: BTreeMap::new(),
            errors_after_stop: 0,
            tx_during: 0,
            tx_during_committed: 0,
            acked_by_stopped_after_t0: 0,
            timeline: Vec::new(),
            read_back_from: None,
            read_back_error: None,
            lost: None,
            lost_examples: Vec::new(),
            unacknowledged_present: None,
        }
    }

    pub fn abort(&mut self, reason: &str) {
        self.aborted = Some(reason.to_owned());
    }

    pub fn stopped_at(&mut self, t0: Instant) {
        self.t0 = Some(t0);
    }

    pub fn stop_took(&mut self, took: Duration) {
        self.stop_took = Some(took);
    }

    /// Whether the stop command was run (so there is something to read back).
    pub fn stopped(&self) -> bool {
        self.t0.is_some()
    }

    /// The server the proxy promoted, as `host:port`.
    pub fn new_primary(&self) -> Option<&str> {
        self.promote.as_ref().map(|(_, s)| s.as_str())
    }

    /// Takes in what the workload and the watcher recorded.
    pub fn add_workload(&mut self, r: &Results, history: Option<&History>) {
        self.acknowledged = r.acked.len() as u64;
        self.transactions = r.txs.len() as u64;
        self.explicit = r.txs.iter().filter(|t| t.explicit).count() as u64;
        self.writes_failed = r.txs.iter().filter(|t| t.committed.is_none()).count() as u64;
        self.reads_ok = r.reads_ok;
        self.reads_failed = r.errors.iter().filter(|e| !e.write).count() as u64;
        (self.errors, self.error_examples) = workload::by_kind(&r.errors);
        self.watched = history.is_some();
        let Some(t0) = self.t0 else {
            return;
        };
        self.errors_after_stop = r.errors.iter().filter(|e| e.at >= t0).count() as u64;
        // Writes are back with the first acknowledgement after T0 from another server than
        // the stopped one (the last to acknowledge a write before T0): one just after T0
        // may still come from the dying primary. Without the servers' names, with the first
        // acknowledgement after the stop command returned.
        let stopped = r
            .txs
            .iter()
            .filter(|t| t.committed.is_some_and(|c| c < t0))
            .max_by_key(|t| t.committed)
            .and_then(|t| t.server.clone());
        let after_t0 = r
            .txs
            .iter()
            .filter(|t| t.committed.is_some_and(|c| c >= t0));
        match &stopped {
            Some(old) => {
                self.writes_back = after_t0
                    .clone()
                    .filter(|t| t.server.as_ref().is_some_and(|s| s != old))
                    .filter_map(|t| t.committed)
                    .min();
                self.acked_by_stopped_after_t0 =
                    after_t0.filter(|t| t.server.as_ref() == Some(old)).count() as u64;
            }
            None => {
                if let Some(down) = self.stop_took.map(|d| t0 + d) {
                    self.writes_back = after_t0
                        .filter_map(|t| t.committed)
                        .filter(|&c| c >= down)
                        .min();
                }
            }
        }
        let until = self.writes_back;
        for t in r
            .txs
            .iter()
            .filter(|t| t.begun >= t0 && until.is_none_or(|u| t.begun < u))
        {
            self.tx_during += 1;
            self.tx_during_committed += u64::from(t.committed.is_some());
        }
        if let Some(h) = history {
            (self.detect, self.promote) = watch::detect_and_promote(h, t0, &self.stopped);
            // The view just before the stop, and every change after it.
            let before = h.iter().rposition(|(at, _)| *at < t0).unwrap_or(0);
            for (at, view) in &h[before..] {
                let servers: Vec<String> = view
                    .iter()
                    .map(|s| format!("{} {}", s.addr(), s.describe()))
                    .collect();
                self.timeline
                    .push((rel(*at, t0), format!("SHOW SHARDS: {}", servers.join(", "))));
            }
        }
        self.timeline
            .push((0, format!("stop_command started on {}", self.stopped)));
        if let Some(d) = self.stop_took {
            self.timeline
                .push((ms(d) as i64, "stop_command returned".to_owned()));
        }
        if let Some(e) = r.errors.iter().filter(|e| e.at >= t0).min_by_key(|e| e.at) {
            self.timeline.push((
                rel(e.at, t0),
                format!("first client error after the stop: {}", e.message),
            ));
        }
        if let Some(b) = self.writes_back {
            self.timeline
                .push((rel(b, t0), "first write acknowledged again".to_owned()));
        }
        self.timeline.sort_by_key(|(at, _)| *at);
    }

    /// Compares what was read back with what was acknowledged.
    pub fn add_read_back(&mut self, r: &Results, back: ReadBack) {
        self.read_back_from = Some(back.from);
        let rows = match back.rows {
            Ok(rows) => rows,
            Err(e) => {
                self.read_back_error = Some(e);
                return;
            }
        };
        let present: HashSet<(i32, i64)> = rows.into_iter().collect();
        let acked: HashSet<(i32, i64)> = r.acked.iter().copied().collect();
        let mut lost: Vec<(i32, i64)> = acked.difference(&present).copied().collect();
        lost.sort_unstable();
        self.lost = Some(lost.len() as u64);
        lost.truncate(10);
        self.lost_examples = lost;
        self.unacknowledged_present = Some(present.difference(&acked).count() as u64);
    }

    /// Why the drill failed, each reason; empty when it passed.
    fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = &self.aborted {
            out.push(a.clone());
        }
        if self.t0.is_none() {
            return out;
        }
        match (self.lost, &self.read_back_error) {
            (Some(0), _) => {}
            (Some(n), _) => out.push(format!("{n} acknowledged write(s) lost")),
            (None, Some(e)) => out.push(format!(
                "the acknowledged writes could not be read back: {e}"
            )),
            (None, None) => out.push("the acknowledged writes were not read back".into()),
        }
        if self.aborted.is_none() && self.writes_back.is_none() {
            let left = self.duration.saturating_sub(self.warmup);
            out.push(format!(
                "writes did not come back within the drill ({:.1} s after the stop)",
                left.as_secs_f64()
            ));
        }
        out
    }

    pub fn exit_code(&self) -> u8 {
        u8::from(!self.failures().is_empty())
    }

    fn exit_reason(&self) -> String {
        let failures = self.failures();
        if failures.is_empty() {
            format!(
                "passed: nothing acknowledged was lost and writes came back after {} ms",
                self.writes_back_ms().unwrap_or(0)
            )
        } else {
            failures.join("; ")
        }
    }

    fn since_t0(&self, at: Option<Instant>) -> Option<u64> {
        Some(ms(at?.checked_duration_since(self.t0?)?))
    }

    fn detect_ms(&self) -> Option<u64> {
        self.since_t0(self.detect)
    }

    fn promote_ms(&self) -> Option<u64> {
        self.since_t0(self.promote.as_ref().map(|(at, _)| *at))
    }

    fn writes_back_ms(&self) -> Option<u64> {
        self.since_t0(self.writes_back)
    }

    pub fn to_json(&self) -> String {
        let timeline: Vec<_> = self
            .timeline
            .iter()
            .map(|(at, what)| json!({ "ms": at, "event": what }))
            .collect();
        json!({
            "database": self.database,
            "shard": self.shard,
            "proxy": self.proxy,
            "stopped_server": self.stopped,
            "stop_command": self.stop_command,
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "stop_command_ms": self.stop_took.map(ms),
            "watched_show_shards": self.watched,
            "detect_ms": self.detect_ms(),
            "promote_ms": self.promote_ms(),
            "new_primary": self.new_primary(),
            "writes_back_ms": self.writes_back_ms(),
            "writes_came_back": self.writes_back.is_some(),
            "acknowledged": self.acknowledged,
            "lost": self.lost,
            "lost_examples": self.lost_examples,
            "unacknowledged_present": self.unacknowledged_present,
            "read_back_from": self.read_back_from,
            "read_back_error": self.read_back_error,
            "transactions": self.transactions,
            "explicit_transactions": self.explicit,
            "writes_failed": self.writes_failed,
            "reads_ok": self.reads_ok,
            "reads_failed": self.reads_failed,
            "errors": self.errors,
            "error_examples": self.error_examples,
            "errors_after_stop": self.errors_after_stop,
            "tx_during_failover": self.tx_during,
            "tx_during_failover_committed": self.tx_during_committed,
            "tx_committed_by_stopped_server_after_stop": self.acked_by_stopped_after_t0,
            "timeline": timeline,
            "notes": self.notes,
            "exit_code": self.exit_code(),
            "exit_reason": self.exit_reason(),
        })
        .to_string()
    }

    pub fn to_text(&self) -> String {
        let mut t = String::new();
        let opt = |v: Option<u64>, none: &str| v.map_or(none.to_owned(), |v| format!("{v} ms"));
        let _ = writeln!(
            t,
            "failover drill: database {}, shard {}, through {}",
            self.database, self.shard, self.proxy
        );
        let _ = writeln!(
            t,
            "  stopped          {} after a {:.1} s warm-up, with: {}",
            self.stopped,
            self.warmup.as_secs_f64(),
            self.stop_command
        );
        if let Some(d) = self.stop_took {
            let _ = writeln!(t, "  stop_command     returned after {} ms", ms(d));
        }
        let unwatched = if self.watched {
            "not seen"
        } else {
            "not measured"
        };
        let _ = writeln!(t, "  detected         {}", opt(self.detect_ms(), unwatched));
        let promoted = match (self.promote_ms(), self.new_primary()) {
            (Some(m), Some(p)) => format!("{m} ms ({p})"),
            _ => unwatched.to_owned(),
        };
        let _ = writeln!(t, "  promoted         {promoted}");
        let _ = writeln!(
            t,
            "  writes back      {}",
            opt(self.writes_back_ms(), "never")
        );
        let _ = writeln!(
            t,
            "  writes           {} acknowledged in {} transactions ({} explicit), {} failed",
            self.acknowledged,
            self.transactions - self.writes_failed,
            self.explicit,
            self.writes_failed
        );
        let _ = writeln!(
            t,
            "  reads            {} ok, {} failed",
            self.reads_ok, self.reads_failed
        );
        let _ = writeln!(
            t,
            "  begun during the failover: {} transactions, {} committed",
            self.tx_during, self.tx_during_committed
        );
        if self.acked_by_stopped_after_t0 > 0 {
            let _ = writeln!(
                t,
                "  committed by the stopped primary after the stop began: {} transactions",
                self.acked_by_stopped_after_t0
            );
        }
        if self.errors.is_empty() {
            let _ = writeln!(t, "  client errors    none");
        } else {
            let _ = writeln!(
                t,
                "  client errors    {} after the stop; by kind:",
                self.errors_after_stop
            );
            for (kind, n) in &self.errors {
                let example = self.error_examples.get(kind).cloned().unwrap_or_default();
                let _ = writeln!(t, "    {kind:<12} {n:>6}  e.g. {example}");
            }
        }
        match (self.lost, &self.read_back_error) {
            (Some(lost), _) => {
                let _ = writeln!(
                    t,
                    "  read back        from {}: {} of {} acknowledged writes present, {lost} lost{}",
                    self.read_back_from.as_deref().unwrap_or("?"),
                    self.acknowledged - lost,
                    self.acknowledged,
                    match self.unacknowledged_present {
                        Some(n) if n > 0 => format!(
                            " ({n} write(s) whose acknowledgement never came are present too)"
                        ),
                        _ => String::new(),
                    }
                );
                if !self.lost_examples.is_empty() {
                    let ex: Vec<String> = self
                        .lost_examples
                        .iter()
                        .map(|(w, s)| format!("({w}, {s})"))
                        .collect();
                    let _ = writeln!(t, "    lost (writer, seq), first ones: {}", ex.join(" "));
                }
            }
            (None, Some(e)) => {
                let _ = writeln!(t, "  read back        failed: {e}");
            }
            (None, None) => {}
        }
        if !self.timeline.is_empty() {
            let _ = writeln!(t, "  timeline (ms from the stop):");
            for (at, what) in &self.timeline {
                let _ = writeln!(t, "    {at:>+7}  {what}");
            }
        }
        for n in &self.notes {
            let _ = writeln!(t, "  note: {n}");
        }
        let _ = writeln!(
            t,
            "result: {} (exit {})",
            self.exit_reason(),
            self.exit_code()
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drill::workload::Tx;

    fn target() -> (Target, Server) {
        let server = |port| Server {
            host: "127.0.0.1".into(),
            port,
            url: format!("postgres://127.0.0.1:{port}/app"),
            stop_command: Some("true".into()),
        };
        let target = Target {
            database: "app".into(),
            shard: "s0".into(),
            proxy: tokio_postgres::Config::new(),
            proxy_addr: "127.0.0.1:6432".into(),
            admin: None,
            server_user: "app".into(),
            server_password: None,
            servers: vec![server(5432), server(5433)],
        };
        let victim = target.servers[0].clone();
        (target, victim)
    }

    /// A drill whose primary was stopped at `t0` (the stop took 100 ms) with these
    /// transactions: (begun, committed) in ms from `t0`, and the server that committed.
    /// A report of a 12 s drill whose stop (at `t0`) took 100 ms.
    fn stopped_report(t0: Instant) -> Report {
        let (target, victim) = target();
        let mut report = Report::new(
            &target,
            &victim,
            "true",
            Duration::from_secs(12),
            Duration::from_secs(3),
            Vec::new(),
        );
        report.stopped_at(t0);
        report.stop_took(Duration::from_millis(100));
        report
    }

    fn drill(
        t0: Instant,
        txs: &[(i64, Option<i64>, &str)],
        acked: &[(i32, i64)],
    ) -> (Report, Results) {
        let mut report = stopped_report(t0);
        let at = |ms: i64| {
            if ms >= 0 {
                t0 + Duration::from_millis(ms as u64)
            } else {
                t0 - Duration::from_millis(ms.unsigned_abs())
            }
        };
        let results = Results {
            acked: acked.to_vec(),
            txs: txs
                .iter()
                .map(|&(begun, committed, server)| Tx {
                    begun: at(begun),
                    committed: committed.map(at),
                    explicit: false,
                    server: committed.map(|_| server.into()),
                })
                .collect(),
            reads_ok: 0,
            errors: Vec::new(),
        };
        report.add_workload(&results, None);
        (report, results)
    }

    fn read_back(rows: &[(i32, i64)]) -> ReadBack {
        ReadBack {
            from: "proxy".into(),
            rows: Ok(rows.to_vec()),
        }
    }

    #[test]
    fn acknowledged_writes_missing_are_lost() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let txs = [
            (-1000, Some(-1), "old"),  // before the stop
            (10, Some(20), "old"),     // acknowledged by the dying primary: not "back"
            (50, None, ""),            // failed during the failover
            (-5, Some(1500), "new"),   // begun before the stop, the first write back
            (300, Some(1600), "new"),  // begun before writes were back
            (2000, Some(2100), "new"), // after
        ];
        let acked = [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1)];
        let (mut report, results) = drill(t0, &txs, &acked);
        assert_eq!(report.writes_back_ms(), Some(1500));
        assert_eq!(report.acked_by_stopped_after_t0, 1);
        assert_eq!((report.tx_during, report.tx_during_committed), (3, 2));
        report.add_read_back(
            &results,
            read_back(&[(0, 1), (1, 1), (1, 2), (2, 1), (3, 1)]),
        );
        assert_eq!(report.lost, Some(1));
        assert_eq!(report.lost_examples, [(0, 2)]);
        assert_eq!(report.unacknowledged_present, Some(1));
        assert_eq!(report.exit_code(), 1);
        assert!(report
            .exit_reason()
            .contains("1 acknowledged write(s) lost"));
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["lost"], 1);
        assert_eq!(json["writes_back_ms"], 1500);
        assert_eq!(json["exit_code"], 1);
    }

    #[test]
    fn passes_when_nothing_is_lost_and_writes_came_back() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let txs = [(-10, Some(-5), "old"), (500, Some(900), "new")];
        let (mut report, results) = drill(t0, &txs, &[(0, 1), (0, 2)]);
        report.add_read_back(&results, read_back(&[(0, 1), (0, 2)]));
        assert_eq!(report.exit_code(), 0, "{}", report.to_text());
        assert!(report.to_text().contains("passed"));
    }

    #[test]
    fn fails_when_writes_never_came_back_or_nothing_was_read_back() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let txs = [(-10, Some(-5), "old"), (500, None, "")];
        let (mut report, results) = drill(t0, &txs, &[(0, 1)]);
        report.add_read_back(&results, read_back(&[(0, 1)]));
        assert_eq!(report.lost, Some(0));
        assert_eq!(report.exit_code(), 1);
        assert!(report.exit_reason().contains("writes did not come back"));

        let txs = [(-10, Some(-5), "old"), (500, Some(600), "new")];
        let (mut report, results) = drill(t0, &txs, &[(0, 1)]);
        report.add_read_back(
            &results,
            ReadBack {
                from: "nowhere".into(),
                rows: Err("connection refused".into()),
            },
        );
        assert_eq!(report.exit_code(), 1);
        assert!(report.exit_reason().contains("could not be read back"));
    }

    #[test]
    fn without_server_names_writes_are_back_after_the_stop_returned() {
        let t0 = Instant::now() + Duration::from_secs(5);
        let mut report = stopped_report(t0);
        let tx = |committed: u64| Tx {
            begun: t0,
            committed: Some(t0 + Duration::from_millis(committed)),
            explicit: false,
            server: None,
        };
        let results = Results {
            acked: vec![(0, 1), (0, 2)],
            txs: vec![tx(50), tx(700)],
            reads_ok: 0,
            errors: Vec::new(),
        };
        report.add_workload(&results, None);
        assert_eq!(report.writes_back_ms(), Some(700));
    }
}
