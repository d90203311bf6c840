#!/usr/bin/env bash
# Makes PGDATA a streaming replica of a primary, then runs postgres on it.
#
#   1. waits until the primary accepts connections (pg_isready, up to WAIT_TIMEOUT seconds);
#   2. creates the physical replication slot REPLICATION_SLOT on the primary unless it exists
#      (no slot when REPLICATION_SLOT is empty);
#   3. clones the primary with pg_basebackup -R (standby.signal, primary_conninfo and
#      primary_slot_name written into PGDATA) as REPLICATION_USER;
#   4. execs `postgres -D PGDATA "$@"` (a leading "postgres" argument is dropped).
#
# A PGDATA that already holds a cluster (PG_VERSION) skips 1-3: a restarted replica starts as
# it is (and a promoted one as the primary it has become). BOOTSTRAP_ONLY=1 stops after 3.
# Sourcing the script defines the functions without running anything.
#
# Environment:
#   PRIMARY_HOST          (required) host of the primary
#   PRIMARY_PORT          default 5432
#   REPLICATION_USER      default replicator; a role with REPLICATION and a pg_hba.conf entry
#   REPLICATION_PASSWORD  (required)
#   REPLICATION_SLOT      default empty: no slot
#   PGDATA                (required) the replica's data directory; absent or empty
#   WAIT_TIMEOUT          default 120 (seconds to wait for the primary)
#   BOOTSTRAP_ONLY        default 0; 1: do not start postgres
#
# Run it as the OS user the server runs as (the postgres image's `postgres`): PostgreSQL
# refuses to run as root, and the data directory must belong to the server's user.
set -euo pipefail

log() { echo "replica-bootstrap: $*" >&2; }

# Checks the environment and fills in the defaults.
load_settings() {
    : "${PRIMARY_HOST:?PRIMARY_HOST must name the primary}"
    : "${PRIMARY_PORT:=5432}"
    : "${REPLICATION_USER:=replicator}"
    : "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
    : "${REPLICATION_SLOT:=}"
    : "${PGDATA:?PGDATA must name the data directory}"
    : "${WAIT_TIMEOUT:=120}"
    : "${BOOTSTRAP_ONLY:=0}"
    if [[ -n "$REPLICATION_SLOT" && ! "$REPLICATION_SLOT" =~ ^[a-z0-9_]+$ ]]; then
        log "REPLICATION_SLOT '$REPLICATION_SLOT' may hold only a-z, 0-9 and _"
        return 1
    fi
    # libpq reads the password from here; pg_basebackup -R also writes it into
    # primary_conninfo, so the replica can reconnect after a restart.
    export PGPASSWORD="$REPLICATION_PASSWORD"
    # The connection goes where PRIMARY_* say, not where stray PG* variables point.
    unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGSERVICE PGPASSFILE
}

# 1. Waits until the primary accepts connections.
wait_for_primary() {
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    log "waiting for the primary ${PRIMARY_HOST}:${PRIMARY_PORT}"
    until pg_isready -q -t 5 -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" -d postgres; do
        if ((SECONDS >= deadline)); then
            log "the primary ${PRIMARY_HOST}:${PRIMARY_PORT} did not accept connections within ${WAIT_TIMEOUT}s"
            return 1
        fi
        sleep 1
    done
}

# 2. Creates the replication slot unless it exists; a slot keeps the WAL this replica has not
#    received yet from being recycled while it is away.
create_slot() {
    [[ -n "$REPLICATION_SLOT" ]] || return 0
    log "making sure the replication slot ${REPLICATION_SLOT} exists"
    pg_receivewal --create-slot --if-not-exists --slot "$REPLICATION_SLOT" \
        -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" -w
}

# 3. Clones the primary into PGDATA and configures it as a standby of it.
base_backup() {
    mkdir -p "$PGDATA"
    chmod 0700 "$PGDATA"
    if [[ -n "$(ls -A "$PGDATA")" ]]; then
        log "$PGDATA is not empty but holds no cluster (no PG_VERSION); refusing to overwrite it"
        return 1
    fi
    local slot=()
    [[ -z "$REPLICATION_SLOT" ]] || slot=(--slot "$REPLICATION_SLOT")
    log "cloning ${PRIMARY_HOST}:${PRIMARY_PORT} into $PGDATA"
    pg_basebackup -D "$PGDATA" -h "$PRIMARY_HOST" -p "$PRIMARY_PORT" -U "$REPLICATION_USER" -w \
        -X stream -R -c fast "${slot[@]}"
    # PostgreSQL starts only on a data directory that only its owner can enter.
    chmod 0700 "$PGDATA"
}

# Steps 1-3, unless PGDATA already holds a cluster.
bootstrap() {
    load_settings
    if [[ -s "$PGDATA/PG_VERSION" ]]; then
        if [[ -f "$PGDATA/standby.signal" ]]; then
            log "$PGDATA already holds a standby; starting it as it is"
        else
            log "$PGDATA holds a cluster that is not a standby (promoted?); starting it as it is"
        fi
        return 0
    fi
    wait_for_primary
    create_slot
    base_backup
    log "standby ready in $PGDATA"
}

# 4. Runs the server in the foreground, as the container's main process.
start_postgres() {
    if [[ "${1:-}" == postgres ]]; then
        shift
    fi
    log "starting postgres"
    exec postgres -D "$PGDATA" "$@"
}

main() {
    bootstrap
    if [[ "$BOOTSTRAP_ONLY" == 1 ]]; then
        log "BOOTSTRAP_ONLY=1: not starting postgres"
        return 0
    fi
    start_postgres "$@"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
