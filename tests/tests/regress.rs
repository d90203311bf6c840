//! PostgreSQL 15's regression suite through the proxy, in session and in transaction pool
//! mode: each file's psql output through the proxy must equal its output straight against
//! PostgreSQL (see docs/regress.md).
//!
//! `ci_*` run a few files that exercise session state (settings, roles, temporary tables,
//! two-phase commit, cursors) and are part of `cargo test`. `full_*` run every file of
//! `parallel_schedule` and are ignored by default:
//! `cargo test -p e2e --test regress -- --ignored --nocapture full`.

use std::path::PathBuf;

use e2e::regress::{compare, in_schedule_order, regress_dir, schedule, Report, Via};

/// The files the CI tests run (after `test_setup`).
const CI_FILES: &[&str] = &[
    "guc",
    "transactions",
    "privileges",
    "temp",
    "prepared_xacts",
    "portals",
];

/// Files whose output is known to differ through the proxy, and why. Everything else must be
/// identical. Keep docs/regress.md's table in step.
const KNOWN_DIFFERENCES: &[(Via, &str, &str)] = &[
    (
        Via::Transaction,
        "portals",
        "WITH HOLD cursors, temporary tables and SQL PREPARE live on one server connection \
         and do not follow the client (docs/pooling.md)",
    ),
    (
        Via::Transaction,
        "temp",
        "temporary tables and functions live on one server connection and do not follow the \
         client (docs/pooling.md)",
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

/// Prints the report and fails on every differing file the known differences do not list.
fn check(report: &Report) {
    let mut text = report.summary(false);
    let mut unexpected = Vec::new();
    for f in report.differing() {
        match known(report.via, &f.name) {
            Some(why) => {
                text.push_str(&format!("known difference {}: {why}\n", f.name));
            }
            None => {
                text.push_str(&format!("---- {} ----\n{}\n", f.name, f.diff_head));
                unexpected.push(f.name.as_str());
            }
        }
    }
    for (via, file, _) in KNOWN_DIFFERENCES {
        let now_identical = report.files.iter().any(|f| f.name == *file && f.identical);
        if *via == report.via && now_identical {
            text.push_str(&format!(
                "{file} is listed as a known difference but is now identical\n"
            ));
        }
    }
    eprintln!("{text}");
    assert!(
        unexpected.is_empty(),
        "{} files differ direct vs {}: {}\n{text}",
        unexpected.len(),
        report.via.label(),
        unexpected.join(" ")
    );
}

fn ci(via: Via) {
    let files = in_schedule_order(&regress_dir(), CI_FILES);
    check(&compare("ci", &files, via, &out_root()));
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
/// separated; `test_setup` always runs first).
fn full_files() -> Vec<String> {
    let dir = regress_dir();
    match std::env::var("SHARDGATE_REGRESS_FILES") {
        Ok(list) if !list.trim().is_empty() => {
            let names: Vec<&str> = list
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|s| !s.is_empty())
                .collect();
            in_schedule_order(&dir, &names)
        }
        _ => schedule(&dir),
    }
}

fn full(via: Via) {
    check(&compare("full", &full_files(), via, &out_root()));
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
