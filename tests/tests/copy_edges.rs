//! Edges of COPY over shards and of fan-out writes, each against what one PostgreSQL
//! database does with the same input (the same COPY run straight into a single database is
//! the reference where it helps): line ends, end markers, option spellings, notices sent
//! while copying, large rows, binary streams, reference-table counts.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{create_database, psql_direct, APP_PASSWORD, SERVER_PASSWORD};

/// 4 hash partitions of `items.id` (bigint): s0 owns remainders 0 and 2, s1 owns 1 and 3.
/// Returns the shard databases, the proxy URL, the config dir, and a single database with
/// the same table, reached directly, as the reference.
fn setup(name: &str, table_sql: &str) -> ([String; 2], String, std::path::PathBuf, String) {
    let shards = [
        create_database(&format!("{name}_s0")),
        create_database(&format!("{name}_s1")),
    ];
    for db in &shards {
        psql_direct(
            db,
            "CREATE TABLE items_parent (id bigint) PARTITION BY HASH (id)",
        );
        psql_direct(db, table_sql);
    }
    let single = create_database(&format!("{name}_single"));
    psql_direct(&single, table_sql);
    let (addr, dir) = e2e::sharded_proxy(
        name,
        &shards,
        &format!("name: {name}\ntype: hash\nkey_type: bigint\npartitions: 4\nassign: {{ s0: [0, 2], s1: [1, 3] }}\ntables: [{{ table: items, column: id }}]\n"),
        "reference_tables: [countries]",
        "{ size: 4 }",
    );
    let url = format!(
        "postgres://app:{APP_PASSWORD}@127.0.0.1:{}/app",
        addr.port()
    );
    let info = e2e::cluster();
    let single_url = format!(
        "postgres://{}:{SERVER_PASSWORD}@127.0.0.1:{}/{single}",
        info.superuser, info.port
    );
    (shards, url, dir, single_url)
}

/// Runs one psql command with `input` on its stdin: (success, stdout, stderr). Gives up
/// (kills psql) after `limit`, reporting `None`.
fn psql_in(
    url: &str,
    command: &str,
    input: &[u8],
    limit: Duration,
) -> Option<(bool, String, String)> {
    let mut child = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            command,
            url,
        ])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    // Drain psql's output as it comes (a pipe left full would stall psql itself).
    let drain = |mut r: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            // Keeps the first MiB (notices can run to hundreds of MiB).
            let mut v = Vec::new();
            let mut chunk = [0u8; 65536];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                if v.len() < 1 << 20 {
                    v.extend_from_slice(&chunk[..n]);
                }
            }
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = writer.join();
    let status = child.wait().unwrap();
    let (out, err) = (stdout.join().unwrap(), stderr.join().unwrap());
    Some((
        status.success(),
        String::from_utf8_lossy(&out).trim().to_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    ))
}

fn psql(url: &str, command: &str) -> (bool, String, String) {
    psql_in(url, command, b"", Duration::from_secs(60)).expect("psql finished")
}

fn count(db: &str, sql: &str) -> i64 {
    psql_direct(db, sql).parse().unwrap()
}

/// Rows on shard `i` that the map sends to the other shard.
fn misplaced(shards: &[String; 2]) -> [i64; 2] {
    let q = |remainders: &str| {
        format!("SELECT count(*) FROM items WHERE NOT (SELECT bool_or(satisfies_hash_partition('items_parent'::regclass, 4, r, id)) FROM unnest(ARRAY[{remainders}]) r)")
    };
    [count(&shards[0], &q("0, 2")), count(&shards[1], &q("1, 3"))]
}

fn total(shards: &[String; 2], sql: &str) -> i64 {
    count(&shards[0], sql) + count(&shards[1], sql)
}

/// Text-format data whose lines end in a lone carriage return: as PostgreSQL does, the line
/// end is taken from the first line (`\r`, `\n` or `\r\n`), and each of the 20 rows goes to
/// its own shard.
#[test]
fn text_rows_ending_in_carriage_returns_go_to_their_own_shards() {
    let (shards, url, dir, single) = setup(
        "cp_cr",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text)",
    );
    let data: String = (1..=20).map(|i| format!("{i}\tnote {i}\r")).collect();
    let (ok, _, err) = psql_in(
        &single,
        "COPY items FROM STDIN",
        data.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(ok, "the reference database takes CR line ends: {err}");
    assert_eq!(count_url(&single, "SELECT count(*) FROM items"), 20);

    let (ok, _, err) = psql_in(
        &url,
        "COPY items FROM STDIN",
        data.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(total(&shards, "SELECT count(*) FROM items"), 20);
    assert_eq!(misplaced(&shards), [0, 0], "rows on the wrong shard");
    let _ = std::fs::remove_dir_all(dir);
}

/// The same in CSV.
#[test]
fn csv_rows_ending_in_carriage_returns_go_to_their_own_shards() {
    let (shards, url, dir, single) = setup(
        "cp_crcsv",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text)",
    );
    let data: String = (1..=20).map(|i| format!("{i},note {i}\r")).collect();
    let (ok, _, err) = psql_in(
        &single,
        "COPY items FROM STDIN (FORMAT csv)",
        data.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(count_url(&single, "SELECT count(*) FROM items"), 20);

    let (ok, _, err) = psql_in(
        &url,
        "COPY items FROM STDIN (FORMAT csv)",
        data.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(total(&shards, "SELECT count(*) FROM items"), 20);
    assert_eq!(misplaced(&shards), [0, 0], "rows on the wrong shard");
    let _ = std::fs::remove_dir_all(dir);
}

fn count_url(url: &str, sql: &str) -> i64 {
    let (ok, out, err) = psql(url, sql);
    assert!(ok, "{err}");
    out.parse().unwrap()
}

/// A COPY followed by another statement in the same simple query is refused, never sent
/// whole (the other statement included) to every shard.
#[test]
fn a_statement_after_copy_in_the_same_query_does_not_run_on_every_shard() {
    let (shards, url, dir, _) = setup(
        "cp_multi",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text)",
    );
    let data = "1\ta\n2\tb\n3\tc\n4\td\n";
    let (ok, out, err) = psql_in(
        &url,
        "COPY items FROM STDIN; INSERT INTO items VALUES (100, 'once')",
        data.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    // Either refused, or run as PostgreSQL would: 4 rows copied, row 100 inserted once.
    if ok {
        assert_eq!(
            total(&shards, "SELECT count(*) FROM items WHERE id = 100"),
            1,
            "the INSERT ran on every shard ({out})"
        );
        assert_eq!(total(&shards, "SELECT count(*) FROM items"), 5);
        assert_eq!(misplaced(&shards), [0, 0]);
    } else {
        assert_eq!(total(&shards, "SELECT count(*) FROM items"), 0, "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// `HEADER 'false'` (a string, which PostgreSQL accepts for a boolean option) means no
/// header: the first data row goes to its own shard only.
#[test]
fn header_false_as_a_string_is_not_a_header_on_copy_in() {
    let (shards, url, dir, single) = setup("cp_hdrin", "CREATE TABLE items (id bigint, note text)");
    let data = "1,a\n2,b\n3,c\n4,d\n";
    let cmd = "COPY items FROM STDIN WITH (FORMAT csv, HEADER 'false')";
    let (ok, _, err) = psql_in(&single, cmd, data.as_bytes(), Duration::from_secs(30)).unwrap();
    assert!(ok, "{err}");
    assert_eq!(count_url(&single, "SELECT count(*) FROM items"), 4);
    let (ok, out, err) = psql_in(&url, cmd, data.as_bytes(), Duration::from_secs(30)).unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        total(&shards, "SELECT count(*) FROM items"),
        4,
        "rows per shard: {} / {} ({out})",
        psql_direct(&shards[0], "SELECT string_agg(id::text, ',') FROM items"),
        psql_direct(&shards[1], "SELECT string_agg(id::text, ',') FROM items"),
    );
    assert_eq!(misplaced(&shards), [0, 0], "rows on the wrong shard");
    let _ = std::fs::remove_dir_all(dir);
}

/// The same option on COPY TO: no shard's first row is taken for a header.
#[test]
fn header_false_as_a_string_keeps_every_row_on_copy_out() {
    let (shards, url, dir, _) = setup("cp_hdrout", "CREATE TABLE items (id bigint, note text)");
    psql_direct(&shards[0], "INSERT INTO items VALUES (2, 'a'), (4, 'b')");
    psql_direct(&shards[1], "INSERT INTO items VALUES (1, 'c'), (3, 'd')");
    // (placement does not matter for a COPY TO of the whole table)
    let (ok, out, err) = psql(
        &url,
        "COPY items TO STDOUT WITH (FORMAT csv, HEADER 'false')",
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Binary COPY TO STDOUT over several shards: each shard's stream has its own file header
/// and trailer, which cannot be concatenated; the client gets one valid stream or a refusal.
#[tokio::test]
async fn binary_copy_out_over_shards_is_one_valid_stream() {
    let (shards, url, dir, _) = setup("cp_bin", "CREATE TABLE items (id bigint, note text)");
    psql_direct(&shards[0], "INSERT INTO items VALUES (2, 'a'), (4, 'b')");
    psql_direct(&shards[1], "INSERT INTO items VALUES (1, 'c'), (3, 'd')");
    let c = e2e::connect(&url).await;
    let copy = c.copy_out("COPY items TO STDOUT (FORMAT binary)").await;
    match copy {
        Err(e) => {
            // A refusal would be fine.
            assert_eq!(e2e::sqlstate(&e), "0A000", "{e:?}");
        }
        Ok(stream) => {
            use futures_util::TryStreamExt;
            let chunks: Vec<bytes::Bytes> = stream.try_collect().await.unwrap();
            let all: Vec<u8> = chunks.concat();
            let signature = b"PGCOPY\n\xff\r\n\0";
            let headers = all
                .windows(signature.len())
                .filter(|w| w == signature)
                .count();
            assert_eq!(headers, 1, "binary COPY stream with {headers} file headers");
            // Load it into one database: a valid stream gives 4 rows.
            let single = create_database("cp_bin_load");
            psql_direct(&single, "CREATE TABLE items (id bigint, note text)");
            let info = e2e::cluster();
            let single_url = format!(
                "postgres://{}:{SERVER_PASSWORD}@127.0.0.1:{}/{single}",
                info.superuser, info.port
            );
            let (ok, _, err) = psql_in(
                &single_url,
                "COPY items FROM STDIN (FORMAT binary)",
                &all,
                Duration::from_secs(30),
            )
            .unwrap();
            assert!(ok, "the merged binary stream does not load: {err}");
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A shard that sends messages while it copies (here a trigger's NOTICE per row) is read
/// while the proxy writes to it: the COPY finishes, and the notices reach the client.
#[test]
fn a_shard_sending_notices_while_copying_does_not_hang_the_copy() {
    let table = "CREATE TABLE items (id bigint, note text); \
        CREATE FUNCTION noisy() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
        RAISE NOTICE 'row % arrived: %', NEW.id, repeat('x', 2000); \
        RETURN NEW; END $$; \
        CREATE TRIGGER noisy BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION noisy()";
    let (shards, url, dir, _single) = setup("cp_noisy", table);
    // Far more data and notices (30 MB and 40 MB) than socket buffers hold.
    let pad = "p".repeat(1500);
    let data: String = (1..=20_000).map(|i| format!("{i}\t{pad}\n")).collect();
    // A bound on a hang, not a measure of speed: the COPY takes about a second.
    let (ok, _, err) = psql_in(
        &url,
        "COPY items FROM STDIN",
        data.as_bytes(),
        Duration::from_secs(120),
    )
    .expect("the COPY through the proxy hung");
    assert!(ok, "{}", &err[err.len().saturating_sub(500)..]);
    assert_eq!(total(&shards, "SELECT count(*) FROM items"), 20_000);
    // (psql_in keeps the first MiB of psql's output.)
    assert!(
        err.matches("NOTICE:  row ").count() > 400,
        "the shards' notices reach the client"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// In text format PostgreSQL (15) ends the data at `\.` wherever it appears (the rest of
/// the line before it is the last row; all that follows is ignored): so does every shard.
#[test]
fn text_end_marker_at_the_end_of_a_line_ends_the_data_everywhere() {
    let (shards, url, dir, single) = setup("cp_eod", "CREATE TABLE items (id bigint, note text)");
    let data = "1\ta\n2\tb\\.\n3\tc\n4\td\n5\te\n6\tf\n";
    let (ok, _, err) = psql_in(
        &single,
        "COPY items FROM STDIN",
        data.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(ok, "{err}");
    let want = count_url(&single, "SELECT count(*) FROM items");
    assert_eq!(want, 2, "PostgreSQL stops at the marker");
    let (ok, _, err) = psql_in(
        &url,
        "COPY items FROM STDIN",
        data.as_bytes(),
        Duration::from_secs(30),
    )
    .unwrap();
    assert!(ok, "{err}");
    let ids = psql_direct(
        &shards[0],
        "SELECT string_agg(id::text, ',' ORDER BY id) FROM items",
    ) + " | "
        + &psql_direct(
            &shards[1],
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM items",
        );
    assert_eq!(
        total(&shards, "SELECT count(*) FROM items"),
        want,
        "rows kept after the end marker (s0 | s1: {ids})"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Writes to a reference table run on every shard, each writing the same rows: the client
/// is told the rows once (`COPY 2`, `UPDATE 1`), as by PostgreSQL, so that clients checking
/// the rows affected (an optimistic-locking UPDATE expecting 1) work.
#[tokio::test]
async fn reference_table_writes_report_their_rows_once() {
    let (_shards, url, dir, _) = setup(
        "cp_refcount",
        "CREATE TABLE countries (code text PRIMARY KEY, name text)",
    );
    // psql prints the COPY's tag when not quiet.
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "COPY countries FROM STDIN", &url])
        .env_remove("PGPASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin
                .take()
                .unwrap()
                .write_all(b"de\tGermany\nfr\tFrance\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let tag = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let c = e2e::connect(&url).await;
    let inserted = c
        .execute("INSERT INTO countries VALUES ($1, $2)", &[&"it", &"Italy"])
        .await
        .unwrap();
    let updated = c
        .execute(
            "UPDATE countries SET name = 'Italia' WHERE code = $1",
            &[&"it"],
        )
        .await
        .unwrap();
    assert_eq!(
        (tag.as_str(), inserted, updated),
        ("COPY 2", 1, 1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// One large row (a 16 MiB field) arrives in psql's 8 KiB CopyData messages and reaches its
/// shard whole.
#[test]
fn a_large_row_arrives_whole() {
    let (shards, url, dir, _single) =
        setup("cp_bigrow", "CREATE TABLE items (id bigint, note text)");
    let data = format!("1\t{}\n2\tsmall\n", "x".repeat(16 << 20));
    let (ok, _, err) = psql_in(
        &url,
        "COPY items FROM STDIN",
        data.as_bytes(),
        Duration::from_secs(120),
    )
    .expect("the COPY through the proxy hung");
    assert!(ok, "{err}");
    assert_eq!(total(&shards, "SELECT count(*) FROM items"), 2);
    assert_eq!(
        total(
            &shards,
            "SELECT coalesce(sum(length(note)), 0) FROM items WHERE id = 1"
        ),
        16 << 20
    );
    let _ = std::fs::remove_dir_all(dir);
}
