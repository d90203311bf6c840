//! PostgreSQL 15's regression suite through the proxy, in session and in transaction pool
//! mode: each file's psql output through the proxy must equal its output straight against
//! PostgreSQL (see docs/regress.md).
//!
//! `ci_*` run a few files that exercise session state (settings, roles, temporary tables,
//! two-phase commit, cursors) and are part of `cargo test`: every file must come out identical
//! unless [`KNOWN_DIFFERENCES`] lists it. `full_*` run every file of `parallel_schedule`, are
//! ignored by default and print a summary rather than fail on differences:
//! `cargo test -p e2e --test regress -- --ignored full`.

use std::io::Write as _;
use std::path::PathBuf;

use e2e::regress::{
    compare, in_schedule_order, regress_dir, schedule, session_state_uses, Report, Via,
};

/// The files the CI tests run (after `test_setup`).
const CI_FILES: &[&str] = &[
    "guc",
    "transactions",
    "privileges",
    "temp",
    "prepared_xacts",
    "portals",
];

/// Files whose output differs through the proxy by design, and why. The CI tests require every
/// other file to come out identical. Keep docs/regress.md's table in step; a difference that
/// comes from a proxy bug does not belong here.
const KNOWN_DIFFERENCES: &[(Via, &str, &str)] = &[
    (
        Via::Session,
        "stats",
        "psql's \\c through the proxy may get a pooled server session, not a new one, so \
         pg_stat_database.sessions may not grow",
    ),
    (
        Via::Transaction,
        "sequence",
        "currval and lastval are per server session and do not follow the client",
    ),
    (
        Via::Transaction,
        "constraints",
        "currval and lastval are per server session and do not follow the client",
    ),
    (
        Via::Transaction,
        "triggers",
        "the refint module keeps prepared plans per server session",
    ),
];

fn known(via: Via, file: &str) -> Option<&'static str> {
    KNOWN_DIFFERENCES
        .iter()
        .find(|(v, f, _)| *v == via && *f == file)
        .map(|(_, _, why)| *why)
}

/// Where runs write their outputs and diffs.
fn out_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("regress")
}

/// The summary, with each differing file's known reason or, in transaction mode, the session
/// state it uses; then the start of each diff when `diffs`. Returns it and the differing files
/// no known difference lists.
fn annotate(report: &Report, diffs: bool) -> (String, Vec<String>) {
    let mut text = report.summary(false);
    let mut unexpected = Vec::new();
    for f in report.differing() {
        match known(report.via, &f.name) {
            Some(why) => text.push_str(&format!("  {}: known: {why}\n", f.name)),
            None => {
                let uses = match report.via {
                    Via::Transaction => session_state_uses(&f.name),
                    _ => Vec::new(),
                };
                if !uses.is_empty() {
                    text.push_str(&format!("  {}: uses {}\n", f.name, uses.join(", ")));
                }
                unexpected.push(f.name.clone());
            }
        }
    }
    for (via, file, _) in KNOWN_DIFFERENCES {
        let now_identical = report.files.iter().any(|f| f.name == *file && f.identical);
        if *via == report.via && now_identical {
            text.push_str(&format!(
                "  {file}: listed as a known difference but identical now\n"
            ));
        }
    }
    if diffs {
        for f in report.differing() {
            if known(report.via, &f.name).is_none() {
                text.push_str(&format!("---- {} ----\n{}\n", f.name, f.diff_head));
            }
        }
    }
    (text, unexpected)
}

fn ci(via: Via) {
    let files = in_schedule_order(&regress_dir(), CI_FILES);
    let report = compare("ci", &files, via, &out_root());
    let (text, unexpected) = annotate(&report, true);
    assert!(
        unexpected.is_empty(),
        "{} files differ direct vs {}: {}\n{text}",
        unexpected.len(),
        via.label(),
        unexpected.join(" ")
    );
}

#[test]
fn ci_files_identical_through_session_mode() {
    ci(Via::Session);
}

#[test]
fn ci_files_identical_through_transaction_mode() {
    ci(Via::Transaction);
}

/// Every file of the schedule, or those `SHARDGATE_REGRESS_FILES` names (comma or space
/// separated; `test_setup` always runs first). Returns the run's name and its files.
fn full_files() -> (&'static str, Vec<String>) {
    let dir = regress_dir();
    match std::env::var("SHARDGATE_REGRESS_FILES") {
        Ok(list) if !list.trim().is_empty() => {
            let names: Vec<&str> = list
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .collect();
            ("selected", in_schedule_order(&dir, &names))
        }
        _ => ("full", schedule(&dir)),
    }
}

/// Runs the files and prints the summary straight to stderr (past the test harness's
/// capture). A survey: differences do not fail it.
fn full(via: Via) {
    let (name, files) = full_files();
    let report = compare(name, &files, via, &out_root());
    let (text, _) = annotate(&report, false);
    let _ = writeln!(std::io::stderr(), "\n{text}");
}

#[test]
#[ignore = "runs the whole regression schedule (minutes); see docs/regress.md"]
fn full_schedule_through_session_mode() {
    full(Via::Session);
}

#[test]
#[ignore = "runs the whole regression schedule (minutes); see docs/regress.md"]
fn full_schedule_through_transaction_mode() {
    full(Via::Transaction);
}

/// Two direct runs on two fresh clusters: what differs here differs without any proxy.
#[test]
#[ignore = "runs the whole regression schedule (minutes); see docs/regress.md"]
fn full_schedule_control_direct_twice() {
    full(Via::Control);
}
