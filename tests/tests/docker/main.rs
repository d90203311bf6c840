//! docker/, checked without a container engine. The compose file parses and names only files
//! of the repository and services it defines; the proxy config in docker/ loads and points at
//! the compose services with their passwords; the Dockerfile builds the proxy in two stages
//! and runs it unprivileged; the scripts are executable and parse. And the scripts run for
//! real against local PostgreSQL: `primary-init.sh` sets a primary up, `replica-bootstrap.sh`
//! makes a streaming replica of it, and the proxy with docker/'s config, its hosts pointed at
//! the local servers, serves the demo schema over both shards.
//!
//! This binary runs PostgreSQL servers of its own (as the `postgres` OS user when root).

mod compose;
mod files;
mod scripts;
