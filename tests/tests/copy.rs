//! COPY through a two-shard proxy, with psql's `\copy` (a simple-protocol COPY): rows into
//! a sharded table are split by their key, text and CSV alike; rows into a reference table
//! reach every shard; COPY TO STDOUT gathers every shard's rows; a row without a usable key
//! stops the COPY on every shard.

use std::process::Command;

use e2e::{create_database, psql_direct, APP_PASSWORD};

/// 4 hash partitions of `items.id` (bigint): s0 owns remainders 0 and 2, s1 owns 1 and 3.
fn proxy(name: &str) -> ([String; 2], String, std::path::PathBuf) {
    let shards = [
        create_database(&format!("{name}_s0")),
        create_database(&format!("{name}_s1")),
    ];
    for db in &shards {
        psql_direct(
            db,
            "CREATE TABLE items_parent (id bigint) PARTITION BY HASH (id)",
        );
    }
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
    (shards, url, dir)
}

/// Runs psql commands against the proxy: (success, stdout, stderr).
fn psql(url: &str, commands: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd
        .arg(url)
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn count(db: &str, sql: &str) -> i64 {
    psql_direct(db, sql).parse().unwrap()
}

/// Rows on a shard that the map does not send there.
fn misplaced(db: &str, remainders: &str) -> i64 {
    count(
        db,
        &format!("SELECT count(*) FROM items WHERE NOT (SELECT bool_or(satisfies_hash_partition('items_parent'::regclass, 4, r, id)) FROM unnest(ARRAY[{remainders}]) r)"),
    )
}

#[test]
fn copy_splits_rows_by_shard_and_gathers_them_back() {
    let (shards, url, dir) = proxy("copy");
    let (ok, _, err) = psql(
        &url,
        &[
            "CREATE TABLE items (id bigint PRIMARY KEY, owner text, note text)",
            "CREATE TABLE countries (code text, name text)",
        ],
    );
    assert!(ok, "{err}");

    // Text format, with escapes and NULLs, in one COPY of 10,000 rows.
    let text: String = (1..=10_000)
        .map(|i| match i % 4 {
            0 => format!("{i}\towner\\t{i}\t\\N\n"),
            1 => format!("{i}\tback\\\\slash\tline\\nbreak\n"),
            2 => format!("{i}\t\\N\tplain\n"),
            _ => format!("{i}\tutf8 é {i}\tx\n"),
        })
        .collect();
    let file = dir.join("items.txt");
    std::fs::write(&file, &text).unwrap();
    let (ok, out, err) = psql(
        &url,
        &[&format!(
            "\\copy items (id, owner, note) FROM '{}'",
            file.display()
        )],
    );
    assert!(ok, "{err}");
    assert_eq!(out, "", "{out}");
    let on = [
        count(&shards[0], "SELECT count(*) FROM items"),
        count(&shards[1], "SELECT count(*) FROM items"),
    ];
    assert_eq!(on[0] + on[1], 10_000, "{on:?}");
    assert!(on[0] > 4000 && on[1] > 4000, "{on:?}");
    assert_eq!(misplaced(&shards[0], "0, 2"), 0);
    assert_eq!(misplaced(&shards[1], "1, 3"), 0);
    // The values arrived as PostgreSQL read them.
    let probe = |id: i64| {
        let a = psql_direct(
            &shards[0],
            &format!("SELECT owner || '|' || coalesce(note, 'NULL') FROM items WHERE id = {id}"),
        );
        let b = psql_direct(
            &shards[1],
            &format!("SELECT owner || '|' || coalesce(note, 'NULL') FROM items WHERE id = {id}"),
        );
        a + &b
    };
    assert_eq!(probe(4), "owner\t4|NULL");
    assert_eq!(probe(5), "back\\slash|line\nbreak");

    // CSV with a header, quoted fields holding delimiters and newlines, no column list (the
    // columns come from the catalog).
    let csv: String = std::iter::once("id,owner,note\n".to_owned())
        .chain((20_001..=20_500).map(|i| format!("{i},\"a, \"\"quoted\"\"\nname {i}\",\n")))
        .collect();
    let file = dir.join("items.csv");
    std::fs::write(&file, &csv).unwrap();
    let (ok, _, err) = psql(
        &url,
        &[&format!(
            "\\copy items FROM '{}' WITH (FORMAT csv, HEADER true)",
            file.display()
        )],
    );
    assert!(ok, "{err}");
    assert_eq!(
        count(&shards[0], "SELECT count(*) FROM items WHERE id > 20000")
            + count(&shards[1], "SELECT count(*) FROM items WHERE id > 20000"),
        500
    );
    assert_eq!(misplaced(&shards[0], "0, 2"), 0);
    assert_eq!(misplaced(&shards[1], "1, 3"), 0);
    assert_eq!(
        count(&shards[0], "SELECT count(*) FROM items WHERE id > 20000 AND note IS NULL AND owner LIKE 'a, \"quoted\"' || chr(10) || 'name %'")
            + count(&shards[1], "SELECT count(*) FROM items WHERE id > 20000 AND note IS NULL AND owner LIKE 'a, \"quoted\"' || chr(10) || 'name %'"),
        500
    );

    // A reference table gets every row on every shard.
    let file = dir.join("countries.txt");
    std::fs::write(&file, "de\tGermany\nfr\tFrance\n").unwrap();
    let (ok, _, err) = psql(
        &url,
        &[&format!("\\copy countries FROM '{}'", file.display())],
    );
    assert!(ok, "{err}");
    for db in &shards {
        assert_eq!(psql_direct(db, "SELECT count(*) FROM countries"), "2");
    }

    // COPY TO STDOUT gathers every shard's rows, with one header.
    let out_file = dir.join("out.csv");
    let (ok, _, err) = psql(
        &url,
        &[&format!(
            "\\copy items TO '{}' WITH (FORMAT csv, HEADER)",
            out_file.display()
        )],
    );
    assert!(ok, "{err}");
    let back = std::fs::read_to_string(&out_file).unwrap();
    assert_eq!(back.matches("id,owner,note\n").count(), 1);
    assert!(back.starts_with("id,owner,note\n"));
    let (ok, n, err) = psql(
        &url,
        &["COPY (SELECT id FROM items WHERE id <= 100) TO STDOUT"],
    );
    assert!(ok, "{err}");
    assert_eq!(n.lines().count(), 100);

    // A row without a usable key stops the COPY on every shard: nothing of it is kept.
    let file = dir.join("bad.txt");
    std::fs::write(&file, "30001\tok\n\\N\tnull key\n30002\tok\n").unwrap();
    let (ok, _, err) = psql(
        &url,
        &[&format!(
            "\\copy items (id, owner) FROM '{}'",
            file.display()
        )],
    );
    assert!(!ok);
    assert!(err.contains("shard key is NULL"), "{err}");
    let file = dir.join("bad2.txt");
    std::fs::write(&file, "30003\tok\nnot-a-number\tx\n").unwrap();
    let (ok, _, err) = psql(
        &url,
        &[&format!(
            "\\copy items (id, owner) FROM '{}'",
            file.display()
        )],
    );
    assert!(!ok);
    assert!(
        err.contains("invalid input syntax for type bigint"),
        "{err}"
    );
    // A shard's own error (a duplicate key) fails the COPY; the session goes on.
    let file = dir.join("dup.txt");
    std::fs::write(&file, "30004\tnew\n1\tduplicate\n").unwrap();
    let (ok, out, err) = psql(
        &url,
        &[
            "SELECT 1",
            &format!("\\copy items (id, owner) FROM '{}'", file.display()),
        ],
    );
    assert!(!ok && err.contains("duplicate key"), "{out} {err}");
    for db in &shards {
        assert_eq!(
            count(db, "SELECT count(*) FROM items WHERE id > 30000"),
            0,
            "{db}"
        );
    }
    // Without the key column in the column list it cannot be split.
    let (ok, _, err) = psql(&url, &["COPY items (owner) FROM STDIN"]);
    assert!(!ok && err.contains("shard key column"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

/// COPY through the extended protocol (tokio-postgres) into a sharded table is refused, not
/// sent to one shard.
#[tokio::test]
async fn extended_protocol_copy_into_a_sharded_table_is_refused() {
    let (_shards, url, dir) = proxy("copyext");
    let (ok, _, err) = psql(
        &url,
        &["CREATE TABLE items (id bigint PRIMARY KEY, owner text)"],
    );
    assert!(ok, "{err}");
    let c = e2e::connect(&url).await;
    let e = c
        .copy_in::<_, bytes::Bytes>("COPY items (id, owner) FROM STDIN")
        .await
        .err()
        .expect("refused");
    assert_eq!(e2e::sqlstate(&e), "0A000", "{e:?}");
    let _ = std::fs::remove_dir_all(dir);
}
