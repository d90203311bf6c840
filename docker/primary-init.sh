#!/usr/bin/env bash
# First-start initialisation of a shard's primary. The postgres image runs it once, from
# /docker-entrypoint-initdb.d/, as the postgres OS user, while a server is up on the Unix
# socket only (psql reaches it without -h; PGHOST and PGPORT, when set, point it elsewhere).
#
# It creates
#   - the replication role REPLICATION_USER and a pg_hba.conf entry letting it stream from
#     any address with SCRAM (replica-bootstrap.sh connects as it and makes its own slot);
#   - the application role APP_USER and its database APP_DATABASE;
#   - the demo schema in APP_DATABASE, owned by APP_USER: the reference table countries
#     (same rows on every shard) and the sharded customers and orders (docker/shard-maps/).
#
# Environment: REPLICATION_USER, REPLICATION_PASSWORD, APP_USER, APP_PASSWORD, APP_DATABASE,
# plus the image's POSTGRES_USER (superuser, default postgres), POSTGRES_DB and PGDATA.
set -euo pipefail

: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
: "${PGDATA:?PGDATA must name the data directory}"
: "${REPLICATION_USER:=replicator}"
: "${REPLICATION_PASSWORD:?REPLICATION_PASSWORD must be set}"
: "${APP_USER:=app}"
: "${APP_PASSWORD:?APP_PASSWORD must be set}"
: "${APP_DATABASE:=app}"

log() { echo "primary-init: $*" >&2; }

# Role and database names go into pg_hba.conf unquoted: keep them plain.
for name in "$REPLICATION_USER" "$APP_USER" "$APP_DATABASE"; do
    if [[ ! "$name" =~ ^[a-z_][a-z0-9_]*$ ]]; then
        log "name '$name' must be lower case letters, digits and _"
        exit 1
    fi
done

run_psql() {
    psql -X -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" "$@"
}

log "creating roles ${REPLICATION_USER} and ${APP_USER}, database ${APP_DATABASE}"
run_psql --dbname "$POSTGRES_DB" \
    -v repl_user="$REPLICATION_USER" -v repl_password="$REPLICATION_PASSWORD" \
    -v app_user="$APP_USER" -v app_password="$APP_PASSWORD" -v app_db="$APP_DATABASE" <<'SQL'
CREATE ROLE :"repl_user" WITH LOGIN REPLICATION PASSWORD :'repl_password';
CREATE ROLE :"app_user" WITH LOGIN PASSWORD :'app_password';
CREATE DATABASE :"app_db" OWNER :"app_user";
-- The proxy connects as the application role; with failover: auto it promotes a replica
-- with pg_promote(), which only superusers may call unless granted.
GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO :"app_user";
SQL

log "creating the demo schema in ${APP_DATABASE}"
run_psql --dbname "$APP_DATABASE" -v app_user="$APP_USER" <<'SQL'
SET ROLE :"app_user";
CREATE TABLE countries (code text PRIMARY KEY, name text NOT NULL);
INSERT INTO countries VALUES ('us', 'United States'), ('de', 'Germany'), ('fr', 'France'), ('jp', 'Japan');
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL, country text NOT NULL REFERENCES countries(code));
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
                     amount numeric(10,2) NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
SQL

log "allowing replication connections for ${REPLICATION_USER}"
printf '\n# replication for the shard replicas (docker/primary-init.sh)\nhost replication %s all scram-sha-256\n' \
    "$REPLICATION_USER" >> "$PGDATA/pg_hba.conf"
run_psql --dbname "$POSTGRES_DB" -c 'SELECT pg_reload_conf()' >/dev/null
log "done"
