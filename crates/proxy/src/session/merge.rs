//! Reads merged across shards: the plan made with the database's collation, the shard query
//! sent to each shard through the extended protocol (the client's formats for its columns,
//! binary for the helper columns the proxy compares by), and the shards' rows pushed through
//! the merge executor to the client as they come (see docs/merge.md).
//!
//! The session hands the executor its legs and the client's socket; the executor decides
//! which shard's next row it needs, so an ORDER BY holds one row per shard and a LIMIT stops
//! reading once it has its rows (the rest of each shard's answer is read and dropped).

use super::*;
use ::merge::{Executor, Format, MergePlan, Want};

/// What a read to merge needs at its run: the plan is made then, with the database's
/// collation (learned from a shard on first use).
pub(super) struct MergeInput {
    pub analysis: router::analyze::Analysis,
    pub text: String,
    pub params: Vec<Option<String>>,
}

/// The client's extended-protocol messages around the merged statement.
pub(super) struct Extended<'a> {
    /// Parse's parameter types (count, then OIDs), for the shards' Parse.
    pub param_types: &'a [u8],
    /// Bind's body after the statement name: parameter formats and values, result formats.
    pub bind_rest: &'a [u8],
    /// The client described the portal: it gets the RowDescription.
    pub describe: bool,
    /// The client's Execute came: it gets the rows and the CommandComplete.
    pub execute: bool,
    /// The proxy owes the client its BindComplete.
    pub bind_complete: bool,
}

/// How one shard's answer arrives.
enum Event {
    Row(Bytes),
    End,
    Error(Frame),
}

/// Write to the client once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;

/// The parameter section of a Bind body (formats and values) and its result format codes.
fn split_bind(rest: &[u8]) -> Option<(&[u8], Vec<i16>)> {
    let mut r = wire::frame::BodyReader::new(rest);
    let nformats = r.i16().ok()?;
    for _ in 0..nformats {
        r.i16().ok()?;
    }
    let nparams = r.i16().ok()?;
    for _ in 0..nparams {
        let len = r.i32().ok()?;
        if len > 0 {
            r.bytes(len as usize).ok()?;
        }
    }
    let params_len = rest.len() - r.remaining().len();
    let nresults = r.i16().ok()?;
    let mut codes = Vec::with_capacity(nresults.max(0) as usize);
    for _ in 0..nresults {
        codes.push(r.i16().ok()?);
    }
    Some((&rest[..params_len], codes))
}

fn merge_error(e: ::merge::MergeError) -> ProxyError {
    let hint = e.hint().map(str::to_owned);
    let err = ProxyError::error(e.sqlstate(), format!("shardgate: {e}"));
    match hint {
        Some(h) => err.with_hint(h),
        None => err,
    }
}

impl Session {
    /// The database's text order, as the merge must reproduce it: asked of a shard once.
    async fn collation(&self, leg: &mut PooledConn) -> router::merge_plan::Collation {
        use router::merge_plan::Collation;
        if let Some(c) = self.proxy.collation_of(&self.client.database) {
            return c;
        }
        let c_like = leg
            .query_bool(
                "SELECT datlocprovider = 'c' AND datcollate IN ('C', 'POSIX', 'C.UTF-8', 'C.utf8') \
                 FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()",
            )
            .await
            .ok()
            .flatten();
        let c = match c_like {
            Some(true) => Collation::C,
            Some(false) => Collation::Other("the database's".into()),
            // Not known: text is not ordered by the proxy.
            None => return Collation::Other("unknown".into()),
        };
        self.proxy.set_collation(&self.client.database, c.clone());
        c
    }

    /// Runs a read merged across shards. `ext`: the client's extended-protocol messages
    /// (`None`: a simple Query, answered whole with its ReadyForQuery). An error before
    /// anything reached the client comes back as the inner error; one after is sent to the
    /// client here, and the outcome says so.
    pub(super) async fn run_merge(
        &mut self,
        input: &MergeInput,
        shards: &[String],
        ext: Option<Extended<'_>>,
    ) -> Result<Result<fanout::Outcome, ProxyError>, End> {
        let (params, result_codes): (&[u8], Vec<i16>) = match &ext {
            Some(e) => match split_bind(e.bind_rest) {
                Some(x) => x,
                None => return Err(malformed(wire::frame::Malformed("Bind"))),
            },
            None => (&[0, 0, 0, 0], Vec::new()),
        };
        let param_types: &[u8] = ext.as_ref().map_or(&[0, 0], |e| e.param_types);
        let mut legs = match self.take_legs(shards).await? {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let collation = self.collation(&mut legs.conns[0]).await;
        let config = self.proxy.config.load_full();
        let Some(db) = config.databases.get(&self.client.database) else {
            self.put_back(legs);
            return Ok(Err(ProxyError::error("3D000", "the database is gone")));
        };
        let plan = match router::merge_plan::plan_merge(
            db,
            &input.analysis,
            &input.text,
            &input.params,
            &collation,
        ) {
            Ok(p) if p.shards() == shards => p,
            Ok(_) => {
                self.put_back(legs);
                return Ok(Err(refuse(
                    "its shards changed between routing and running (a reload)".into(),
                    "Run it again.",
                )));
            }
            Err(r) => {
                self.put_back(legs);
                return Ok(Err(refuse(r.reason, &r.hint)));
            }
        };
        let limit = config.limits.merge_memory as usize;
        self.proxy.stats.merge(&self.client.database);
        let result = Box::pin(drive(
            &plan,
            &mut legs.conns,
            shards,
            params,
            param_types,
            &result_codes,
            ext.as_ref(),
            limit,
            &mut self.client.conn.stream,
            &mut self.wbuf,
        ))
        .await;
        match result {
            Ok(Ok(mut outcome)) => {
                let in_tx = legs.in_tx;
                if in_tx {
                    outcome.status = if outcome.error { b'E' } else { b'T' };
                }
                if ext.is_none() {
                    messages::ready_for_query(&mut self.wbuf, outcome.status);
                }
                self.put_back(legs);
                if in_tx && outcome.error && self.server.is_some() {
                    // The attached server's transaction fails too, as PostgreSQL's would.
                    self.abort_server_transaction(true);
                }
                Ok(Ok(outcome))
            }
            Ok(Err(e)) => {
                self.put_back(legs);
                Ok(Err(e))
            }
            Err(fanout::Failure::ClientGone) => {
                self.lose_legs(legs);
                Err(End::ClientGone)
            }
            Err(fanout::Failure::Server(why)) => {
                tracing::warn!(client = self.client.id, why = %why, "merge failed");
                self.lose_legs(legs);
                Ok(Err(fanout::failure_error(&why)))
            }
        }
    }
}

/// Reads shard `i`'s answer up to its next row, its end or an error; notices go to the
/// client.
async fn next_event(
    leg: &mut PooledConn,
    shard: &str,
    out: &mut BytesMut,
) -> Result<Event, fanout::Failure> {
    loop {
        let f = leg.read_frame().await.map_err(|e| {
            fanout::Failure::Server(format!("connection to shard `{shard}` lost: {e}"))
        })?;
        match f.tag() {
            tag::DATA_ROW => return Ok(Event::Row(f.body_bytes())),
            tag::COMMAND_COMPLETE => return Ok(Event::End),
            tag::ERROR_RESPONSE => return Ok(Event::Error(f)),
            tag::NOTICE_RESPONSE => out.extend_from_slice(f.raw()),
            tag::READY_FOR_QUERY => {
                return Err(fanout::Failure::Server(format!(
                    "shard `{shard}` ended its answer early"
                )))
            }
            _ => {}
        }
    }
}

/// Reads a shard's answer to its ReadyForQuery, dropping what is left of it.
async fn drain(leg: &mut PooledConn, shard: &str) -> Result<(), fanout::Failure> {
    loop {
        let f = leg.read_frame().await.map_err(|e| {
            fanout::Failure::Server(format!("connection to shard `{shard}` lost: {e}"))
        })?;
        if f.tag() == tag::READY_FOR_QUERY {
            leg.note_ready(messages::ready_status(&f).unwrap_or(b'I'));
            return Ok(());
        }
    }
}

async fn flush(client: &mut transport::Stream, out: &mut BytesMut) -> Result<(), fanout::Failure> {
    client
        .send_all(out)
        .await
        .map_err(|_| fanout::Failure::ClientGone)?;
    out.clear();
    Ok(())
}

/// The merge itself: requests, heads, rows, end. Every leg is read to its ReadyForQuery
/// before this returns `Ok`.
#[allow(clippy::too_many_arguments)]
async fn drive(
    plan: &MergePlan,
    legs: &mut [PooledConn],
    shards: &[String],
    params: &[u8],
    param_types: &[u8],
    result_codes: &[i16],
    ext: Option<&Extended<'_>>,
    memory_limit: usize,
    client: &mut transport::Stream,
    out: &mut BytesMut,
) -> Result<Result<fanout::Outcome, ProxyError>, fanout::Failure> {
    let sql = plan.shard_sql().as_bytes();
    let lost = |i: usize, e: std::io::Error| {
        fanout::Failure::Server(format!("connection to shard `{}` lost: {e}", shards[i]))
    };
    // How many columns the client sees: from the plan, or (with `*`) from a Describe.
    let visible = match plan.visible {
        Some(n) => n,
        None => {
            let mut b = BytesMut::new();
            messages::parse(&mut b, b"", sql, param_types);
            messages::target(&mut b, tag::DESCRIBE, b'S', b"");
            messages::empty_message(&mut b, tag::SYNC);
            legs[0].note_request();
            legs[0].send(&b).await.map_err(|e| lost(0, e))?;
            let mut width = None;
            let mut error = None;
            loop {
                let f = legs[0].read_frame().await.map_err(|e| lost(0, e))?;
                match f.tag() {
                    tag::ROW_DESCRIPTION => {
                        width = ::merge::rowdesc::column_types(f.body())
                            .ok()
                            .map(|t| t.len())
                    }
                    tag::ERROR_RESPONSE => error = Some(f),
                    tag::READY_FOR_QUERY => {
                        legs[0].note_ready(messages::ready_status(&f).unwrap_or(b'I'));
                        break;
                    }
                    _ => {}
                }
            }
            if let Some(e) = error {
                out.extend_from_slice(e.raw());
                return Ok(Ok(fanout::Outcome {
                    error: true,
                    status: b'I',
                }));
            }
            match width.and_then(|w| w.checked_sub(plan.helpers)) {
                Some(n) => n,
                None => return Ok(Err(ProxyError::error(
                    "XX000",
                    "shardgate: the shards described the merged query without its helper columns",
                ))),
            }
        }
    };
    let client_formats = match Format::per_column(result_codes, visible) {
        Ok(f) => f,
        Err(e) => return Ok(Err(merge_error(e))),
    };
    let shard_formats = plan.shard_formats(&client_formats);
    // Parse, Bind (the client's parameters, our result formats), Describe, Execute, Sync.
    let mut request = BytesMut::with_capacity(sql.len() + params.len() + 64);
    messages::parse(&mut request, b"", sql, param_types);
    let mut rest = BytesMut::with_capacity(params.len() + 2 * shard_formats.len() + 2);
    rest.extend_from_slice(params);
    rest.extend_from_slice(&(shard_formats.len() as i16).to_be_bytes());
    for f in &shard_formats {
        rest.extend_from_slice(&f.code().to_be_bytes());
    }
    messages::bind(&mut request, b"", b"", &rest);
    messages::target(&mut request, tag::DESCRIBE, b'P', b"");
    messages::execute(&mut request, b"", 0);
    messages::empty_message(&mut request, tag::SYNC);
    for (i, leg) in legs.iter_mut().enumerate() {
        leg.note_request();
        leg.send(&request).await.map_err(|e| lost(i, e))?;
    }
    // Every shard's head: its RowDescription, or its error.
    let mut description: Option<Frame> = None;
    let mut error: Option<Frame> = None;
    let mut ended = vec![false; legs.len()];
    for (i, leg) in legs.iter_mut().enumerate() {
        loop {
            let f = leg.read_frame().await.map_err(|e| lost(i, e))?;
            match f.tag() {
                tag::ROW_DESCRIPTION => {
                    description.get_or_insert(f);
                    break;
                }
                tag::ERROR_RESPONSE => {
                    error.get_or_insert(f);
                    ended[i] = true;
                    break;
                }
                tag::NO_DATA => {
                    error.get_or_insert_with(|| {
                        let mut b = BytesMut::new();
                        ProxyError::error(
                            "XX000",
                            "shardgate: a shard returned no rows for a merged query",
                        )
                        .encode(&mut b);
                        Frame::from_raw(b.freeze())
                    });
                    break;
                }
                tag::NOTICE_RESPONSE => out.extend_from_slice(f.raw()),
                _ => {}
            }
        }
    }
    let failed = |e: Frame, out: &mut BytesMut| {
        out.extend_from_slice(e.raw());
        fanout::Outcome {
            error: true,
            status: b'I',
        }
    };
    let description = match (error, description) {
        (Some(e), _) => {
            for (i, leg) in legs.iter_mut().enumerate() {
                drain(leg, &shards[i]).await?;
            }
            return Ok(Ok(failed(e, out)));
        }
        (None, None) => {
            for (i, leg) in legs.iter_mut().enumerate() {
                drain(leg, &shards[i]).await?;
            }
            return Ok(Err(ProxyError::error(
                "XX000",
                "shardgate: no shard described the merged query",
            )));
        }
        (None, Some(d)) => d,
    };
    let columns: Vec<::merge::Column> = match ::merge::rowdesc::column_types(description.body()) {
        Ok(types) if types.len() == shard_formats.len() => types
            .into_iter()
            .zip(&shard_formats)
            .map(|(type_oid, &format)| ::merge::Column { type_oid, format })
            .collect(),
        _ => {
            for (i, leg) in legs.iter_mut().enumerate() {
                drain(leg, &shards[i]).await?;
            }
            return Ok(Err(ProxyError::error(
                "XX000",
                "shardgate: the shards' columns do not match the merged query",
            )));
        }
    };
    let built = Executor::new(plan, &columns, &client_formats, memory_limit).and_then(|x| {
        ::merge::rowdesc::client_row_description(plan, description.body(), &client_formats)
            .map(|d| (x, d))
    });
    let (mut exec, client_description) = match built {
        Ok(x) => x,
        Err(e) => {
            // Refused before anything reached the client (a float sum, text under a
            // collation the proxy cannot order by, ...).
            for (i, leg) in legs.iter_mut().enumerate() {
                drain(leg, &shards[i]).await?;
            }
            return Ok(Err(merge_error(e)));
        }
    };
    if ext.is_some_and(|e| e.bind_complete) {
        messages::empty_message(out, tag::BIND_COMPLETE);
    }
    if ext.is_none_or(|e| e.describe) {
        out.extend_from_slice(&[tag::ROW_DESCRIPTION]);
        out.extend_from_slice(&((client_description.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(&client_description);
    }
    let execute = ext.is_none_or(|e| e.execute);
    // The rows.
    let mut shard_error: Option<Frame> = None;
    let mut merge_failed: Option<::merge::MergeError> = None;
    loop {
        let shard = match exec.wants() {
            Want::Done => break,
            Want::Row(s) => s,
            Want::Any => match ended.iter().position(|e| !e) {
                Some(s) => s,
                None => break,
            },
        };
        if ended[shard] {
            merge_failed = Some(::merge::MergeError::Usage(format!(
                "the executor asked for shard {shard} after its end"
            )));
            break;
        }
        let pushed = match next_event(&mut legs[shard], &shards[shard], out).await? {
            Event::Row(body) => exec.push(shard, Some(body)),
            Event::End => {
                ended[shard] = true;
                exec.push(shard, None)
            }
            Event::Error(e) => {
                ended[shard] = true;
                shard_error = Some(e);
                break;
            }
        };
        if let Err(e) = pushed {
            merge_failed = Some(e);
            break;
        }
        if exec.pending_output() + out.len() >= FLUSH_AT {
            if execute {
                out.extend_from_slice(&exec.take_output());
            } else {
                exec.take_output();
            }
            flush(client, out).await?;
        }
    }
    if shard_error.is_none() && merge_failed.is_none() {
        if let Err(e) = exec.finish() {
            merge_failed = Some(e);
        }
    }
    let output = exec.take_output();
    if execute {
        out.extend_from_slice(&output);
    }
    // Whatever the shards still owe (a LIMIT met early, an error) is read and dropped.
    for (i, leg) in legs.iter_mut().enumerate() {
        drain(leg, &shards[i]).await?;
    }
    if let Some(e) = shard_error {
        return Ok(Ok(failed(e, out)));
    }
    if let Some(e) = merge_failed {
        merge_error(e).encode(out);
        return Ok(Ok(fanout::Outcome {
            error: true,
            status: b'I',
        }));
    }
    if execute {
        messages::command_complete(out, &format!("SELECT {}", exec.rows_sent()));
    }
    Ok(Ok(fanout::Outcome {
        error: false,
        status: b'I',
    }))
}
