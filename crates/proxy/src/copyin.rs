//! COPY FROM STDIN into a sharded (or reference) table: every shard starts the same COPY,
//! and the client's data is cut into rows, each sent to the shard its key belongs to (every
//! row of a reference table to every shard). The client sees one COPY: the first shard's
//! CopyInResponse, then one CommandComplete with the rows of all shards, or the first error.
//!
//! Each shard copies inside a transaction of its own, committed only when every shard's
//! COPY succeeded and rolled back everywhere otherwise: a row one shard rejects (a duplicate
//! key, a bad value) leaves nothing of the COPY on any shard. (Only a failure between the
//! shards' COMMITs could leave part of it; two-phase commit closes that.)

use bytes::{BufMut, Bytes, BytesMut};
use pool::PooledConn;
use router::copy::{CopyStatement, Row, RowSplitter};
use sgconfig::shardmap::{KeyValue, ShardMap};
use wire::messages::{self, tag, ProxyError};

use crate::fanout::{end_all, summed_tag, Failure};
use crate::startup::ClientConn;

/// Send a shard its buffered rows once this much has gathered.
const FLUSH_AT: usize = 64 * 1024;

/// Where a COPY FROM STDIN's rows go.
pub(crate) struct CopyTarget {
    /// Every shard of the database, in order.
    pub shards: Vec<String>,
    pub stmt: CopyStatement,
    /// The table's map and key columns; `None`: a reference table (every row everywhere).
    pub map: Option<(ShardMap, Vec<String>)>,
    /// The client's encoding is not UTF-8: keys beyond ASCII cannot be read.
    pub ascii_keys: bool,
}

/// How a COPY ended when the client is still there: its answer is in `out`.
pub(crate) enum Ended {
    /// Every shard is idle again: the connections can go back.
    Clean,
    /// The client's data was refused mid-way; the client may still be sending CopyData,
    /// which the session ignores from now on, as PostgreSQL does.
    Refused,
}

/// Runs the COPY: `query` is the client's Query message.
/// `tx`: inside the client's transaction over several shards (`Some(database)`: no
/// transaction of the COPY's own; a failure fails the client's transaction) or not
/// (`None`: each shard copies in a transaction that commits with two-phase commit).
/// Returns how it ended and the transaction status it reported to the client.
pub(crate) async fn run(
    legs: &mut [PooledConn],
    target: &CopyTarget,
    query: &Bytes,
    client: &mut ClientConn,
    out: &mut BytesMut,
    db: &str,
    in_tx: bool,
) -> Result<(Ended, u8), Failure> {
    let shards = &target.shards;
    // The ReadyForQuery status after the COPY: outside a transaction always idle; inside,
    // failed unless it succeeded.
    let status = |ok: bool| {
        if !in_tx {
            b'I'
        } else if ok {
            b'T'
        } else {
            b'E'
        }
    };
    let lost = |i: usize| {
        let s = shards[i].clone();
        move |e: std::io::Error| Failure::Server(format!("connection to shard `{s}` lost: {e}"))
    };
    // Where the key fields are among a row's fields.
    let key_fields = match &target.map {
        None => Vec::new(),
        Some((_, key_columns)) => {
            let columns = if target.stmt.columns.is_empty() {
                match table_columns(&mut legs[0], &target.stmt.table_sql).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        // The table does not exist (or is not visible): PostgreSQL's error.
                        out.extend_from_slice(&e);
                        messages::ready_for_query(out, status(false));
                        return Ok((Ended::Clean, status(false)));
                    }
                    Err(e) => return Err(lost(0)(e)),
                }
            } else {
                target.stmt.columns.clone()
            };
            let mut fields = Vec::new();
            for k in key_columns {
                match columns.iter().position(|c| c == k) {
                    Some(p) => fields.push(p),
                    None => {
                        ProxyError::error(
                            "0A000",
                            format!("shardgate cannot split this COPY by shard: its columns do not include the shard key column `{k}`"),
                        )
                        .with_hint("Name the shard key column in the COPY's column list.")
                        .encode(out);
                        messages::ready_for_query(out, status(false));
                        return Ok((Ended::Clean, status(false)));
                    }
                }
            }
            fields
        }
    };
    // Every shard starts a transaction (unless already in the client's) and the COPY in it.
    let mut begin = BytesMut::new();
    messages::query(&mut begin, "BEGIN");
    for (i, leg) in legs.iter_mut().enumerate() {
        if in_tx {
            leg.send(query).await.map_err(lost(i))?;
            continue;
        }
        leg.send(&begin).await.map_err(lost(i))?;
        leg.send(query).await.map_err(lost(i))?;
        loop {
            let f = leg.read_frame().await.map_err(lost(i))?;
            match f.tag() {
                tag::READY_FOR_QUERY => break,
                tag::ERROR_RESPONSE => {
                    return Err(Failure::Server(format!(
                        "shard `{}` refused BEGIN",
                        shards[i]
                    )))
                }
                _ => {}
            }
        }
    }
    // What was already waiting for the client (answers to earlier messages) stays.
    let before = out.len();
    let mut first_error: Option<wire::Frame> = None;
    let mut copying = vec![false; legs.len()];
    for (i, leg) in legs.iter_mut().enumerate() {
        loop {
            let f = leg.read_frame().await.map_err(lost(i))?;
            match f.tag() {
                tag::COPY_IN_RESPONSE => {
                    if i == 0 {
                        out.extend_from_slice(f.raw());
                    }
                    copying[i] = true;
                    break;
                }
                tag::ERROR_RESPONSE => {
                    first_error.get_or_insert(f);
                }
                tag::READY_FOR_QUERY => break,
                tag::NOTICE_RESPONSE if i == 0 => out.extend_from_slice(f.raw()),
                _ => {}
            }
        }
    }
    if let Some(e) = first_error {
        // A shard refused the COPY itself: the others are stopped.
        out.truncate(before);
        abort(legs, &copying, "another shard refused the COPY", shards).await?;
        if !in_tx {
            end_all(legs, "ROLLBACK", shards).await?;
        }
        out.extend_from_slice(e.raw());
        messages::ready_for_query(out, status(false));
        return Ok((Ended::Clean, status(false)));
    }
    client
        .stream
        .send_all(out)
        .await
        .map_err(|_| Failure::ClientGone)?;
    out.clear();

    let mut inbox: Vec<Inbox> = (0..legs.len()).map(|_| Inbox::default()).collect();
    let mut splitter = RowSplitter::new(target.stmt.format.clone(), key_fields);
    let mut pending: Vec<BytesMut> = vec![BytesMut::new(); legs.len()];
    let route = |row: Row<'_>, pending: &mut Vec<BytesMut>| -> Result<(), String> {
        let Some((map, _)) = target.map.as_ref().filter(|_| !row.header) else {
            for p in pending.iter_mut() {
                p.extend_from_slice(row.bytes);
            }
            return Ok(());
        };
        let mut key = Vec::with_capacity(row.keys.len());
        for (ty, v) in map.key_types.iter().zip(&row.keys) {
            let Some(v) = v else {
                return Err("a row's shard key is NULL".into());
            };
            if target.ascii_keys && !v.is_ascii() {
                return Err("a row's shard key has characters beyond ASCII and the client's encoding is not UTF8 (connect with client_encoding=UTF8)".into());
            }
            key.push(KeyValue::parse(*ty, v)?);
        }
        let shard = router::sharding::shard_for_key(map, &key)
            .ok_or_else(|| "no shard holds a row's key".to_owned())?;
        let i = shards.iter().position(|s| s == shard).unwrap_or(0);
        pending[i].extend_from_slice(row.bytes);
        Ok(())
    };
    loop {
        let f = match client.read_frame().await {
            Ok(f) => f,
            Err(e) if e.code == "08P01" => {
                abort(
                    legs,
                    &copying,
                    "the client sent a malformed message",
                    shards,
                )
                .await?;
                if !in_tx {
                    end_all(legs, "ROLLBACK", shards).await?;
                }
                e.encode(out); // the session closes the client with it
                return Err(Failure::ClientGone);
            }
            Err(_) => return Err(Failure::ClientGone),
        };
        // What the shards said meanwhile (notices; an error that ended a shard's COPY).
        for (i, leg) in legs.iter_mut().enumerate() {
            drain(leg, &mut inbox[i], out).map_err(lost(i))?;
        }
        if let Some(i) = inbox.iter().position(|b| b.error.is_some()) {
            let copying: Vec<bool> = inbox.iter().map(|b| !b.ready).collect();
            abort(legs, &copying, "another shard failed", shards).await?;
            if !in_tx {
                end_all(legs, "ROLLBACK", shards).await?;
            }
            if let Some(e) = inbox[i].error.take() {
                out.extend_from_slice(e.raw());
            }
            messages::ready_for_query(out, status(false));
            return Ok((Ended::Refused, status(false)));
        }
        if !out.is_empty() {
            flush_client(client, out).await?;
        }
        match f.tag() {
            tag::COPY_DATA => {
                let mut refused = None;
                let r = splitter.feed(f.body(), &mut |row| route(row, &mut pending));
                if let Err(e) = r {
                    refused = Some(e);
                }
                if let Some(why) = refused {
                    let copying: Vec<bool> = inbox.iter().map(|b| !b.ready).collect();
                    abort(legs, &copying, &why, shards).await?;
                    if !in_tx {
                        end_all(legs, "ROLLBACK", shards).await?;
                    }
                    ProxyError::error(
                        "22P04",
                        format!("shardgate cannot route a row of this COPY: {why}"),
                    )
                    .with_hint("Every row needs a valid, non-NULL shard key.")
                    .encode(out);
                    messages::ready_for_query(out, status(false));
                    return Ok((Ended::Refused, status(false)));
                }
                for (i, p) in pending.iter_mut().enumerate() {
                    if p.len() >= FLUSH_AT {
                        send_data(&mut legs[i], p, &mut inbox[i], out)
                            .await
                            .map_err(lost(i))?;
                    }
                }
            }
            tag::COPY_DONE => {
                if let Err(why) = splitter.finish(&mut |row| route(row, &mut pending)) {
                    let copying: Vec<bool> = inbox.iter().map(|b| !b.ready).collect();
                    abort(legs, &copying, &why, shards).await?;
                    if !in_tx {
                        end_all(legs, "ROLLBACK", shards).await?;
                    }
                    ProxyError::error(
                        "22P04",
                        format!("shardgate cannot route a row of this COPY: {why}"),
                    )
                    .encode(out);
                    messages::ready_for_query(out, status(false));
                    return Ok((Ended::Clean, status(false)));
                }
                for (i, p) in pending.iter_mut().enumerate() {
                    messages::empty_message(p, tag::COPY_DONE);
                    let at = p.len() - 5;
                    // The rows as one CopyData, then the CopyDone.
                    let done = p.split_off(at);
                    send_data(&mut legs[i], p, &mut inbox[i], out)
                        .await
                        .map_err(lost(i))?;
                    send(&mut legs[i], &done, &mut inbox[i], out)
                        .await
                        .map_err(lost(i))?;
                }
                let (mut tag, error) = finish(legs, &mut inbox, shards, out).await?;
                if target.map.is_none() {
                    // A reference table: every shard copied the same rows.
                    tag = format!("COPY {}", splitter.rows());
                }
                let failed = match error {
                    Some(e) => {
                        if !in_tx {
                            end_all(legs, "ROLLBACK", shards).await?;
                        }
                        out.extend_from_slice(e.raw());
                        true
                    }
                    None if in_tx => false,
                    None => {
                        // All or nothing: two-phase commit when several shards wrote.
                        let done = crate::twophase::commit_all(db, legs, shards).await;
                        if done.clean.iter().any(|c| !c) {
                            return Err(Failure::Server(
                                "a shard's connection was lost while the COPY committed".into(),
                            ));
                        }
                        match done.result {
                            Ok(_) => false,
                            Err(e) => {
                                e.encode(out);
                                true
                            }
                        }
                    }
                };
                if !failed {
                    messages::command_complete(out, &tag);
                }
                messages::ready_for_query(out, status(!failed));
                return Ok((Ended::Clean, status(!failed)));
            }
            tag::COPY_FAIL => {
                let why = String::from_utf8_lossy(f.body().strip_suffix(&[0]).unwrap_or(f.body()))
                    .into_owned();
                let mut fail = BytesMut::new();
                fail.put_u8(tag::COPY_FAIL);
                fail.put_i32(4 + why.len() as i32 + 1);
                fail.extend_from_slice(why.as_bytes());
                fail.put_u8(0);
                for (i, leg) in legs.iter_mut().enumerate() {
                    if !inbox[i].ready {
                        send(leg, &fail, &mut inbox[i], out)
                            .await
                            .map_err(lost(i))?;
                    }
                }
                let (_, error) = finish(legs, &mut inbox, shards, out).await?;
                if !in_tx {
                    end_all(legs, "ROLLBACK", shards).await?;
                }
                if let Some(e) = error {
                    out.extend_from_slice(e.raw());
                }
                messages::ready_for_query(out, status(false));
                return Ok((Ended::Clean, status(false)));
            }
            // Ignored during COPY, as by PostgreSQL.
            tag::FLUSH | tag::SYNC => {}
            tag::TERMINATE => return Err(Failure::ClientGone),
            other => {
                let copying: Vec<bool> = inbox.iter().map(|b| !b.ready).collect();
                abort(legs, &copying, "unexpected message", shards).await?;
                if !in_tx {
                    end_all(legs, "ROLLBACK", shards).await?;
                }
                ProxyError::error(
                    "08P01",
                    format!("unexpected message type 0x{other:02X} during COPY from stdin"),
                )
                .encode(out);
                messages::ready_for_query(out, status(false));
                return Ok((Ended::Refused, status(false)));
            }
        }
    }
}

/// What a shard said while the proxy was writing to it.
#[derive(Default)]
struct Inbox {
    /// The error that ended its COPY.
    error: Option<wire::Frame>,
    /// Its CommandComplete tag.
    tag: Option<Vec<u8>>,
    /// It sent its ReadyForQuery: its COPY is over.
    ready: bool,
}

/// Sends a shard the rows gathered for it.
async fn send_data(
    leg: &mut PooledConn,
    rows: &mut BytesMut,
    inbox: &mut Inbox,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut head = [0u8; 5];
    head[0] = tag::COPY_DATA;
    head[1..].copy_from_slice(&(rows.len() as i32 + 4).to_be_bytes());
    send(leg, &head, inbox, out).await?;
    send(leg, rows, inbox, out).await?;
    rows.clear();
    Ok(())
}

/// Writes to a shard, reading what it sends meanwhile: a shard that writes notices while it
/// copies would otherwise stop reading once its own output is not read.
async fn send(
    leg: &mut PooledConn,
    data: &[u8],
    inbox: &mut Inbox,
    out: &mut BytesMut,
) -> std::io::Result<()> {
    use tokio::io::Interest;
    let mut at = 0;
    while at < data.len() || leg.stream.wants_write() {
        let r = if at < data.len() {
            leg.stream.try_write_slice(&data[at..])
        } else {
            // TLS bytes the socket did not take yet.
            leg.stream.try_write_from(&mut BytesMut::new()).map(|()| 0)
        };
        match r {
            Ok(n) if n > 0 || !leg.stream.wants_write() => at += n,
            Ok(_) => wait(leg, inbox, out, Interest::READABLE | Interest::WRITABLE).await?,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                wait(leg, inbox, out, Interest::READABLE | Interest::WRITABLE).await?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits until the shard's socket is ready as `interest` says, reading what it sent.
async fn wait(
    leg: &mut PooledConn,
    inbox: &mut Inbox,
    out: &mut BytesMut,
    interest: tokio::io::Interest,
) -> std::io::Result<()> {
    let ready = leg.stream.tcp().ready(interest).await?;
    if ready.is_readable() {
        drain(leg, inbox, out)?;
    }
    Ok(())
}

/// Reads what a shard has sent without waiting: notices go to the client, an error, the
/// command tag and ReadyForQuery are noted.
fn drain(leg: &mut PooledConn, inbox: &mut Inbox, out: &mut BytesMut) -> std::io::Result<()> {
    let leg: &mut pool::ServerConn = leg;
    loop {
        let before = leg.read_buf.len();
        leg.stream.try_read_into(&mut leg.read_buf, 16 * 1024)?;
        if leg.read_buf.len() == before {
            break;
        }
    }
    while let Some(f) = leg
        .decoder
        .decode(&mut leg.read_buf)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
    {
        match f.tag() {
            tag::NOTICE_RESPONSE => out.extend_from_slice(f.raw()),
            tag::ERROR_RESPONSE => {
                inbox.error.get_or_insert(f);
            }
            tag::COMMAND_COMPLETE => {
                inbox.tag = Some(messages::command_tag(&f).unwrap_or_default().to_vec())
            }
            tag::READY_FOR_QUERY => inbox.ready = true,
            _ => {}
        }
    }
    Ok(())
}

/// Sends the client what is waiting for it, without waiting unless much has gathered.
async fn flush_client(client: &mut ClientConn, out: &mut BytesMut) -> Result<(), Failure> {
    if client.stream.try_write_from(out).is_err() {
        return Err(Failure::ClientGone);
    }
    if out.len() > 1 << 20 {
        client
            .stream
            .send_all(out)
            .await
            .map_err(|_| Failure::ClientGone)?;
        out.clear();
    }
    Ok(())
}

/// Stops the COPY on every shard still copying, and reads each to its ReadyForQuery.
async fn abort(
    legs: &mut [PooledConn],
    copying: &[bool],
    why: &str,
    shards: &[String],
) -> Result<(), Failure> {
    let mut fail = BytesMut::new();
    fail.put_u8(tag::COPY_FAIL);
    let text = format!("shardgate: {why}");
    fail.put_i32(4 + text.len() as i32 + 1);
    fail.extend_from_slice(text.as_bytes());
    fail.put_u8(0);
    for (i, leg) in legs.iter_mut().enumerate() {
        if !copying[i] {
            continue;
        }
        let lost = |e: std::io::Error| {
            Failure::Server(format!("connection to shard `{}` lost: {e}", shards[i]))
        };
        leg.send(&fail).await.map_err(lost)?;
        loop {
            let f = leg.read_frame().await.map_err(lost)?;
            if f.tag() == tag::READY_FOR_QUERY {
                break;
            }
        }
    }
    Ok(())
}

/// Reads every shard's answer to the end of its COPY: the summed tag, and the first error.
async fn finish(
    legs: &mut [PooledConn],
    inbox: &mut [Inbox],
    shards: &[String],
    out: &mut BytesMut,
) -> Result<(String, Option<wire::Frame>), Failure> {
    let mut first_error: Option<wire::Frame> = None;
    let mut tags: Vec<Vec<u8>> = Vec::with_capacity(legs.len());
    for (i, leg) in legs.iter_mut().enumerate() {
        let b = &mut inbox[i];
        if let Some(e) = b.error.take() {
            first_error.get_or_insert(e);
        }
        if let Some(t) = b.tag.take() {
            tags.push(t);
        }
        if b.ready {
            continue;
        }
        loop {
            let f = leg.read_frame().await.map_err(|e| {
                Failure::Server(format!("connection to shard `{}` lost: {e}", shards[i]))
            })?;
            match f.tag() {
                tag::COMMAND_COMPLETE => {
                    tags.push(messages::command_tag(&f).unwrap_or_default().to_vec())
                }
                tag::ERROR_RESPONSE => {
                    first_error.get_or_insert(f);
                }
                tag::NOTICE_RESPONSE => out.extend_from_slice(f.raw()),
                tag::READY_FOR_QUERY => break,
                _ => {}
            }
        }
    }
    let tags: Vec<&[u8]> = tags.iter().map(Vec::as_slice).collect();
    let tag = summed_tag(&tags).unwrap_or_else(|| "COPY 0".to_owned());
    Ok((tag, first_error))
}

/// The columns COPY without a column list reads, in order (generated columns excepted), as
/// the first shard's catalog has them; `Err(frame)`: the server's error.
async fn table_columns(
    leg: &mut PooledConn,
    table_sql: &str,
) -> std::io::Result<Result<Vec<String>, Vec<u8>>> {
    catalog_columns(leg, table_sql, false).await
}

/// The first column of a catalog query's rows, as text; `Err(frame)`: the server's error.
pub(crate) async fn first_column(
    leg: &mut PooledConn,
    sql: &str,
) -> std::io::Result<Result<Vec<String>, Vec<u8>>> {
    run_first_column(leg, sql).await
}

/// A table's columns in order, as its server's catalog has them: with `generated`, the
/// generated ones too (an INSERT without a column list counts them); `Err(frame)`: the
/// server's error.
pub(crate) async fn catalog_columns(
    leg: &mut PooledConn,
    table_sql: &str,
    generated: bool,
) -> std::io::Result<Result<Vec<String>, Vec<u8>>> {
    let sql = format!(
        "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = '{}'::pg_catalog.regclass AND attnum > 0 AND NOT attisdropped{} ORDER BY attnum",
        table_sql.replace('\'', "''"),
        if generated { "" } else { " AND attgenerated = ''" }
    );
    run_first_column(leg, &sql).await
}

/// Runs a simple query and returns its rows' first column as text.
async fn run_first_column(
    leg: &mut PooledConn,
    sql: &str,
) -> std::io::Result<Result<Vec<String>, Vec<u8>>> {
    let mut q = BytesMut::new();
    messages::query(&mut q, sql);
    leg.send(&q).await?;
    let mut columns = Vec::new();
    let mut error = None;
    loop {
        let f = leg.read_frame().await?;
        match f.tag() {
            tag::DATA_ROW => {
                // int16 count | int32 len | bytes
                let b = f.body();
                if b.len() >= 6 {
                    let len = i32::from_be_bytes([b[2], b[3], b[4], b[5]]).max(0) as usize;
                    if let Some(v) = b.get(6..6 + len) {
                        columns.push(String::from_utf8_lossy(v).into_owned());
                    }
                }
            }
            tag::ERROR_RESPONSE => error = Some(f.raw().to_vec()),
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
    }
    Ok(match error {
        Some(e) => Err(e),
        None => Ok(columns),
    })
}
