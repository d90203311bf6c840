//! One statement on several shards, its answers merged into one.
//!
//! Every shard runs the same statement (or, for a multi-row INSERT, its own rows of it), so
//! every shard answers with the same sequence of messages; only the rows and the counts
//! differ. The merge walks the answers in lockstep, one result at a time: the first shard's
//! messages go to the client as they are, the other shards' rows are appended after the
//! first shard's, and the results' CommandComplete counts are summed. The first error any
//! shard reports is the one the client sees, after which every shard is read to its end.
//!
//! Rows are streamed: the client gets the first shard's rows while the others wait in their
//! sockets, so a large result never sits in memory.

use bytes::{Bytes, BytesMut};
use pool::PooledConn;
use transport::Stream;
use wire::messages::{self, tag, ProxyError};
use wire::Frame;

/// Write to the client once this much is buffered.
const FLUSH_AT: usize = 64 * 1024;

/// How a fan-out ended.
pub(crate) enum Failure {
    /// The client's socket failed.
    ClientGone,
    /// A shard's connection failed or answered out of step; the text says which and how.
    Server(String),
}

/// What the merge reports.
pub(crate) struct Outcome {
    /// A shard reported an error (the first one was sent to the client).
    pub error: bool,
    /// The transaction status of the last ReadyForQuery.
    pub status: u8,
}

/// Options of one merge.
pub(crate) struct Merge {
    /// Drop every ParseComplete: the client's Parse was answered before the fan-out.
    pub drop_parse_complete: bool,
    /// Drop every BindComplete: the proxy answered the Bind already.
    pub drop_bind_complete: bool,
    /// Sum the shards' row counts (otherwise the first shard's stands: a write to
    /// reference tables, the same rows on every shard).
    pub sum: bool,
    /// Send one ReadyForQuery at the end (simple Query); otherwise the client's own Sync
    /// gets its ReadyForQuery later.
    pub ready: bool,
    /// COPY TO STDOUT with a header line: only the first shard's header reaches the client.
    pub copy_header: bool,
}

/// COPY TO STDOUT in one result: every shard's CopyData, one CopyDone at the end.
#[derive(Default)]
struct CopyOut {
    /// A shard started copying out in this result.
    seen: bool,
    /// Per shard: its next CopyData is its header line, which the client already has.
    skip_header: Vec<bool>,
}

/// Sends `requests[i]` to `legs[i]` and merges the answers into `out`, writing to `client`
/// as it fills. Each request must end in Sync or be a simple Query.
pub(crate) async fn run(
    legs: &mut [PooledConn],
    shards: &[String],
    requests: &[Bytes],
    client: &mut Stream,
    out: &mut BytesMut,
    merge: Merge,
) -> Result<Outcome, Failure> {
    debug_assert_eq!(legs.len(), requests.len());
    for (i, (leg, req)) in legs.iter_mut().zip(requests).enumerate() {
        leg.stream
            .send_all(req)
            .await
            .map_err(|e| lost(&shards[i], e))?;
    }
    let mut outcome = Outcome {
        error: false,
        status: b'I',
    };
    let n = legs.len();
    let mut ended = vec![false; n];
    let mut copy = CopyOut {
        seen: false,
        skip_header: vec![false; n],
    };
    loop {
        // One result from every shard that has not ended.
        let mut boundaries: Vec<Option<Frame>> = Vec::with_capacity(n);
        for i in 0..n {
            if ended[i] {
                boundaries.push(None);
                continue;
            }
            let first = boundaries.iter().all(Option::is_none);
            let b = next_result(
                &mut legs[i],
                i,
                &shards[i],
                first,
                &merge,
                &mut copy,
                client,
                out,
            )
            .await?;
            boundaries.push(Some(b));
        }
        let present: Vec<&Frame> = boundaries.iter().flatten().collect();
        if present.is_empty() {
            break;
        }
        if let Some(err) = present.iter().find(|f| f.tag() == tag::ERROR_RESPONSE) {
            // The first error stands for all; every shard is read to its ReadyForQuery.
            outcome.error = true;
            out.extend_from_slice(err.raw());
            for i in 0..n {
                let at_ready = boundaries[i]
                    .as_ref()
                    .is_some_and(|f| f.tag() == tag::READY_FOR_QUERY);
                if !ended[i] && !at_ready {
                    skip_to_ready(&mut legs[i], &shards[i], &mut outcome).await?;
                } else if let Some(f) = boundaries[i].as_ref() {
                    if f.tag() == tag::READY_FOR_QUERY {
                        outcome.status = messages::ready_status(f).unwrap_or(b'I');
                        legs[i].note_ready(outcome.status);
                    }
                }
                ended[i] = true;
            }
            if merge.ready {
                messages::ready_for_query(out, outcome.status);
            }
            break;
        }
        let first = present[0];
        if present.iter().any(|f| f.tag() != first.tag()) {
            return Err(Failure::Server(
                "shards answered the same statement differently".into(),
            ));
        }
        match first.tag() {
            tag::READY_FOR_QUERY => {
                outcome.status = messages::ready_status(first).unwrap_or(b'I');
                if merge.ready {
                    out.extend_from_slice(first.raw());
                }
                break;
            }
            tag::COMMAND_COMPLETE => {
                if std::mem::take(&mut copy.seen) {
                    messages::empty_message(out, tag::COPY_DONE);
                }
                let tags: Vec<&[u8]> = present
                    .iter()
                    .map(|f| messages::command_tag(*f).unwrap_or_default())
                    .collect();
                match summed_tag(&tags).filter(|_| merge.sum) {
                    Some(t) => messages::command_complete(out, &t),
                    None => out.extend_from_slice(first.raw()),
                }
            }
            tag::PORTAL_SUSPENDED => {
                return Err(Failure::Server(
                    "a shard suspended a portal of a statement run on several shards".into(),
                ))
            }
            _ => out.extend_from_slice(first.raw()),
        }
        for (i, b) in boundaries.iter().enumerate() {
            if let Some(f) = b.as_ref().filter(|f| f.tag() == tag::READY_FOR_QUERY) {
                ended[i] = true;
                legs[i].note_ready(messages::ready_status(f).unwrap_or(b'I'));
            }
        }
    }
    Ok(outcome)
}

/// Ends every shard's transaction with `sql` (COMMIT or ROLLBACK); the first error, if any.
pub(crate) async fn end_all(
    legs: &mut [PooledConn],
    sql: &str,
    shards: &[String],
) -> Result<Option<wire::Frame>, Failure> {
    let mut q = BytesMut::new();
    messages::query(&mut q, sql);
    let mut first_error = None;
    for (i, leg) in legs.iter_mut().enumerate() {
        let lost = |e: std::io::Error| {
            Failure::Server(format!("connection to shard `{}` lost: {e}", shards[i]))
        };
        leg.send(&q).await.map_err(lost)?;
        loop {
            let f = leg.read_frame().await.map_err(lost)?;
            match f.tag() {
                tag::ERROR_RESPONSE => {
                    first_error.get_or_insert(f);
                }
                tag::READY_FOR_QUERY => break,
                _ => {}
            }
        }
    }
    Ok(first_error)
}

/// Sends `sql` (BEGIN) to every shard and reads each to its ReadyForQuery; an error is a failure.
pub(crate) async fn begin_all(legs: &mut [PooledConn], shards: &[String]) -> Result<(), Failure> {
    match end_all(legs, "BEGIN", shards).await? {
        None => Ok(()),
        Some(_) => Err(Failure::Server("a shard refused BEGIN".into())),
    }
}

/// Reads one shard's messages up to the end of its next result (CommandComplete,
/// EmptyQueryResponse, PortalSuspended, ErrorResponse or ReadyForQuery), which it returns.
/// Rows go to the client; the rest of the messages only from the `first` shard.
#[allow(clippy::too_many_arguments)]
async fn next_result(
    leg: &mut PooledConn,
    index: usize,
    shard: &str,
    first: bool,
    merge: &Merge,
    copy: &mut CopyOut,
    client: &mut Stream,
    out: &mut BytesMut,
) -> Result<Frame, Failure> {
    loop {
        let f = leg.read_frame().await.map_err(|e| lost(shard, e))?;
        match f.tag() {
            tag::COMMAND_COMPLETE
            | tag::EMPTY_QUERY
            | tag::PORTAL_SUSPENDED
            | tag::ERROR_RESPONSE
            | tag::READY_FOR_QUERY => return Ok(f),
            tag::COPY_IN_RESPONSE | tag::COPY_BOTH_RESPONSE => {
                return Err(Failure::Server(format!(
                    "shard `{shard}` started a COPY in a statement run on several shards"
                )))
            }
            tag::COPY_OUT_RESPONSE => {
                // The first shard to start copying out announces it (the first shard may
                // have failed before it did).
                copy.skip_header[index] = merge.copy_header && copy.seen;
                if !copy.seen {
                    out.extend_from_slice(f.raw());
                }
                copy.seen = true;
            }
            tag::COPY_DATA if std::mem::take(&mut copy.skip_header[index]) => {}
            tag::COPY_DATA | tag::DATA_ROW => out.extend_from_slice(f.raw()),
            // One CopyDone, after every shard's data.
            tag::COPY_DONE => {}
            tag::PARSE_COMPLETE if merge.drop_parse_complete => {}
            tag::BIND_COMPLETE if merge.drop_bind_complete => {}
            // Notices of every shard reach the client; the rest only once.
            tag::NOTICE_RESPONSE => out.extend_from_slice(f.raw()),
            _ if first => out.extend_from_slice(f.raw()),
            _ => {}
        }
        if out.len() >= FLUSH_AT {
            client
                .send_all(out)
                .await
                .map_err(|_| Failure::ClientGone)?;
            out.clear();
        }
    }
}

async fn skip_to_ready(
    leg: &mut PooledConn,
    shard: &str,
    outcome: &mut Outcome,
) -> Result<(), Failure> {
    loop {
        let f = leg.read_frame().await.map_err(|e| lost(shard, e))?;
        if f.tag() == tag::READY_FOR_QUERY {
            outcome.status = messages::ready_status(&f).unwrap_or(b'I');
            leg.note_ready(outcome.status);
            return Ok(());
        }
        if matches!(
            f.tag(),
            tag::COPY_IN_RESPONSE | tag::COPY_OUT_RESPONSE | tag::COPY_BOTH_RESPONSE
        ) {
            return Err(Failure::Server(format!(
                "shard `{shard}` started a COPY in a statement run on several shards"
            )));
        }
    }
}

fn lost(shard: &str, e: std::io::Error) -> Failure {
    Failure::Server(format!("connection to shard `{shard}` lost: {e}"))
}

/// The command tag of several shards' results: counts summed (`SELECT 3` + `SELECT 4` =
/// `SELECT 7`, `INSERT 0 2` + `INSERT 0 1` = `INSERT 0 3`). `None` when the tags carry no
/// count (DDL) and the first one stands.
pub(crate) fn summed_tag(tags: &[&[u8]]) -> Option<String> {
    let first = std::str::from_utf8(tags.first()?).ok()?;
    let (head, _) = first.rsplit_once(' ')?;
    if !matches!(
        head,
        "SELECT" | "INSERT 0" | "UPDATE" | "DELETE" | "MERGE" | "FETCH" | "MOVE" | "COPY"
    ) {
        return None;
    }
    let mut total: u64 = 0;
    for t in tags {
        let t = std::str::from_utf8(t).ok()?;
        let (h, n) = t.rsplit_once(' ')?;
        if h != head {
            return None;
        }
        total += n.parse::<u64>().ok()?;
    }
    Some(format!("{head} {total}"))
}

/// A Parse's parameter types (`int16 n | int32 oid * n`) for the parameters `keep` (1-based
/// original numbers), in that order; unknown ones left for the server to infer (0).
pub(crate) fn select_param_types(raw: &[u8], keep: &[usize]) -> Vec<u8> {
    let oids = crate::statements::parse_oids(raw);
    let mut out = Vec::with_capacity(2 + 4 * keep.len());
    out.extend_from_slice(&(keep.len() as i16).to_be_bytes());
    for k in keep {
        let oid = oids.get(k.wrapping_sub(1)).copied().unwrap_or(0);
        out.extend_from_slice(&oid.to_be_bytes());
    }
    out
}

/// A Bind's body after its portal and statement names, with only the parameters `keep`
/// (1-based original numbers), in that order. `None` when it does not parse.
pub(crate) fn select_bind_values(rest: &[u8], keep: &[usize]) -> Option<Vec<u8>> {
    let rd16 = |at: usize| {
        rest.get(at..at + 2)
            .map(|x| i16::from_be_bytes([x[0], x[1]]))
    };
    let nfmt = usize::try_from(rd16(0)?).ok()?;
    let formats: Vec<&[u8]> = (0..nfmt)
        .map(|i| rest.get(2 + 2 * i..4 + 2 * i))
        .collect::<Option<_>>()?;
    let mut at = 2 + 2 * nfmt;
    let nval = usize::try_from(rd16(at)?).ok()?;
    at += 2;
    let mut values: Vec<&[u8]> = Vec::with_capacity(nval);
    for _ in 0..nval {
        let len = i32::from_be_bytes(rest.get(at..at + 4)?.try_into().ok()?);
        let end = at + 4 + usize::try_from(len.max(0)).ok()?;
        values.push(rest.get(at..end)?);
        at = end;
    }
    let results = rest.get(at..)?;
    let mut out = Vec::with_capacity(rest.len());
    if nfmt <= 1 {
        out.extend_from_slice(&rest[..2 + 2 * nfmt]);
    } else {
        out.extend_from_slice(&(keep.len() as i16).to_be_bytes());
        for k in keep {
            out.extend_from_slice(formats.get(k.checked_sub(1)?)?);
        }
    }
    out.extend_from_slice(&(keep.len() as i16).to_be_bytes());
    for k in keep {
        out.extend_from_slice(values.get(k.checked_sub(1)?)?);
    }
    out.extend_from_slice(results);
    Some(out)
}

/// The error a client gets when a shard fails mid-fan-out (the session goes on).
pub(crate) fn failure_error(why: &str) -> ProxyError {
    ProxyError::error(
        "08006",
        format!("a statement run on several shards failed: {why}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `$0` is no parameter (they count from `$1`): selecting it selects nothing, and
    /// never underflows.
    #[test]
    fn parameter_zero_selects_nothing() {
        let types = select_param_types(&[0, 1, 0, 0, 0, 20], &[0]);
        assert_eq!(types, vec![0, 1, 0, 0, 0, 0]);
        // No formats, one text value "7", no result formats.
        let rest = [0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0];
        assert_eq!(select_bind_values(&rest, &[0]), None);
        assert!(select_bind_values(&rest, &[1]).is_some());
    }

    #[test]
    fn bind_values_are_selected_with_their_formats() {
        // formats: text, binary, text; values: "a", [1, 2], NULL; results: 1 format (binary)
        let mut rest = vec![0, 3, 0, 0, 0, 1, 0, 0, 0, 3];
        rest.extend_from_slice(&1i32.to_be_bytes());
        rest.push(b'a');
        rest.extend_from_slice(&2i32.to_be_bytes());
        rest.extend_from_slice(&[1, 2]);
        rest.extend_from_slice(&(-1i32).to_be_bytes());
        rest.extend_from_slice(&[0, 1, 0, 1]);
        let got = select_bind_values(&rest, &[3, 2]).unwrap();
        let mut want = vec![0, 2, 0, 0, 0, 1, 0, 2];
        want.extend_from_slice(&(-1i32).to_be_bytes());
        want.extend_from_slice(&2i32.to_be_bytes());
        want.extend_from_slice(&[1, 2]);
        want.extend_from_slice(&[0, 1, 0, 1]);
        assert_eq!(got, want);
        assert_eq!(select_bind_values(&rest[..12], &[1]), None);
        assert_eq!(
            select_param_types(&[0, 2, 0, 0, 0, 20, 0, 0, 0, 25], &[2, 3]),
            vec![0, 2, 0, 0, 0, 25, 0, 0, 0, 0]
        );
    }

    #[test]
    fn counts_are_summed() {
        assert_eq!(
            summed_tag(&[b"SELECT 3", b"SELECT 4"]).as_deref(),
            Some("SELECT 7")
        );
        assert_eq!(
            summed_tag(&[b"INSERT 0 2", b"INSERT 0 1", b"INSERT 0 0"]).as_deref(),
            Some("INSERT 0 3")
        );
        assert_eq!(
            summed_tag(&[b"DELETE 1", b"DELETE 0"]).as_deref(),
            Some("DELETE 1")
        );
        assert_eq!(summed_tag(&[b"CREATE TABLE", b"CREATE TABLE"]), None);
        assert_eq!(summed_tag(&[b"UPDATE 1", b"DELETE 1"]), None);
    }
}
