//! Subqueries over sharded tables answered before their statement (see
//! `router::subquery`): each runs on the shards it routes to, its values are gathered (within
//! `limits.merge_memory`), and the statement with those values in their place routes again.
//! Outside a transaction only: the subqueries read other server sessions than the
//! statement, so inside one they would not share its snapshot.

use super::*;

impl Session {
    /// The statement `sql` (refused as it stands) with its subqueries over sharded tables
    /// answered, as a new Query; `None` when there is nothing to answer first.
    pub(super) async fn answer_subqueries_first(
        &mut self,
        sql: &[u8],
    ) -> Result<Result<Option<Frame>, ProxyError>, End> {
        if self.tx_status != b'I' || self.held_begin.is_some() || self.server.is_some() {
            return Ok(Ok(None));
        }
        let config = self.proxy.config.load_full();
        let Some(db) = config.databases.get(&self.client.database) else {
            return Ok(Ok(None));
        };
        let sharded = |t: &str| router::plan::map_for(db, t).is_some();
        let text = String::from_utf8_lossy(sql).into_owned();
        let inner = router::subquery::plan(&text, &sharded);
        if inner.is_empty() {
            return Ok(Ok(None));
        }
        let limit = config.limits.merge_memory as usize;
        let mut held = 0usize;
        let mut values = Vec::with_capacity(inner.len());
        for i in &inner {
            match self
                .first_column(&i.sql, limit.saturating_sub(held))
                .await?
            {
                Ok(v) => {
                    held += v
                        .iter()
                        .map(|x| x.as_ref().map_or(8, |s| s.len() + 24))
                        .sum::<usize>();
                    values.push(v);
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        let Some(done) = router::subquery::finish(&text, &sharded, &values) else {
            return Ok(Ok(None));
        };
        let mut b = BytesMut::with_capacity(done.len() + 6);
        messages::query(&mut b, &done);
        Ok(Ok(Some(Frame::from_raw(b.freeze()))))
    }

    /// The first column of every row `sql` returns on the shards it routes to (a
    /// concatenation: its routing must not need a merge), as text.
    async fn first_column(
        &mut self,
        sql: &str,
        limit: usize,
    ) -> Result<Result<Vec<Option<String>>, ProxyError>, End> {
        let shards = match self.route(sql.as_bytes()) {
            Ok(Routing::To(Some(s))) => vec![s],
            Ok(Routing::To(None)) => vec![self.home_shard()],
            Ok(Routing::Fanout(f)) if f.merge.is_none() && f.parts.is_none() && !f.write => {
                f.shards
            }
            Ok(_) => {
                return Ok(Err(refuse(
                    "a subquery over a sharded table that the proxy cannot answer first".into(),
                    "Give the subquery's shard key, or run it as a query of its own.",
                )))
            }
            Err(e) => return Ok(Err(e)),
        };
        let mut legs = match self.take_legs(&shards).await? {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let mut q = BytesMut::with_capacity(sql.len() + 6);
        messages::query(&mut q, sql);
        let mut out = Vec::new();
        let mut held = 0usize;
        let mut error: Option<ProxyError> = None;
        let mut lost = None;
        'legs: for (i, leg) in legs.conns.iter_mut().enumerate() {
            leg.note_request();
            if let Err(e) = leg.send(&q).await {
                lost = Some(format!("connection to shard `{}` lost: {e}", shards[i]));
                break;
            }
            loop {
                let f = match leg.read_frame().await {
                    Ok(f) => f,
                    Err(e) => {
                        lost = Some(format!("connection to shard `{}` lost: {e}", shards[i]));
                        break 'legs;
                    }
                };
                match f.tag() {
                    tag::DATA_ROW if error.is_none() => {
                        let body = f.body();
                        let value = (body.len() >= 6)
                            .then(|| i32::from_be_bytes([body[2], body[3], body[4], body[5]]))
                            .and_then(|len| {
                                (len >= 0).then(|| {
                                    String::from_utf8_lossy(
                                        body.get(6..6 + len as usize).unwrap_or_default(),
                                    )
                                    .into_owned()
                                })
                            });
                        held += value.as_ref().map_or(8, |v| v.len() + 24);
                        if held > limit {
                            error = Some(ProxyError::error(
                                "54000",
                                format!("shardgate: the subquery's values need more than limits.merge_memory ({limit} bytes)"),
                            )
                            .with_hint("Give the subquery's shard key, narrow it, or raise limits.merge_memory."));
                        }
                        out.push(value);
                    }
                    tag::ERROR_RESPONSE if error.is_none() => {
                        let fields =
                            wire::messages::ErrorFields::parse(f.body()).unwrap_or_default();
                        error = Some(ProxyError {
                            fatal: false,
                            code: fields.code.into(),
                            message: fields.message,
                            detail: fields.detail,
                            hint: fields.hint,
                        });
                    }
                    tag::READY_FOR_QUERY => {
                        leg.note_ready(messages::ready_status(&f).unwrap_or(b'I'));
                        break;
                    }
                    _ => {}
                }
            }
        }
        if let Some(why) = lost {
            self.lose_legs(legs);
            return Ok(Err(fanout::failure_error(&why)));
        }
        self.put_back(legs);
        Ok(match error {
            Some(e) => Err(e),
            None => Ok(out),
        })
    }
}
