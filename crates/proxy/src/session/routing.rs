//! Routing decisions: where each statement of the session runs (one shard, the session's
//! shard, or several), from the route cache, the shard maps, hints and the client's
//! encoding; and the `SET shardgate.*` session hints the proxy keeps itself.

use super::*;

impl Session {
    /// `SET shardgate.shard|key = ...` and `RESET shardgate.*`: session hints the proxy keeps
    /// and never sends to PostgreSQL.
    pub(super) fn proxy_setting(&mut self, cmds: &VecDeque<SessionCommand>) -> Result<(), End> {
        if cmds.len() != 1 {
            return self.simple_error(
                ProxyError::error(
                    "0A000",
                    "SET shardgate.* must be sent as a query of its own",
                )
                .with_hint("Send SET shardgate.shard = '...' without other statements."),
            );
        }
        let (done, result) = match &cmds[0] {
            SessionCommand::Set { name, sql } => (
                "SET",
                self.set_proxy_setting(name, Some(setting_value(sql))),
            ),
            SessionCommand::Reset { name } => ("RESET", self.set_proxy_setting(name, None)),
            _ => ("SET", Ok(())),
        };
        if let Err(e) = result {
            return self.simple_error(e);
        }
        self.push_synthetic(Expect::SyntheticDone(done));
        self.push_synthetic(Expect::SyntheticReady);
        Ok(())
    }

    pub(super) fn set_proxy_setting(
        &mut self,
        name: &str,
        value: Option<String>,
    ) -> Result<(), ProxyError> {
        match name {
            "shardgate.shard" => {
                if let Some(v) = &value {
                    let config = self.proxy.config.load();
                    let known = config
                        .databases
                        .get(&self.client.database)
                        .is_some_and(|d| d.shards.iter().any(|(n, _)| n == v));
                    if !known {
                        return Err(ProxyError::error(
                            "22023",
                            format!("shardgate.shard: shard \"{v}\" does not exist"),
                        ));
                    }
                }
                self.session_hints
                    .get_or_insert_with(Default::default)
                    .shard = value;
            }
            "shardgate.key" => self.session_hints.get_or_insert_with(Default::default).key = value,
            other => {
                return Err(ProxyError::error(
                    "42704",
                    format!("unrecognized configuration parameter \"{other}\""),
                )
                .with_hint("shardgate knows shardgate.shard and shardgate.key."))
            }
        }
        Ok(())
    }

    /// Whether this client's database routes statements at all (several shards and maps or
    /// reference tables); the others send everything home and pay nothing for routing.
    pub(super) fn routes(&self) -> bool {
        if !self
            .proxy
            .any_routes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return false;
        }
        let config = self.proxy.config.load();
        config
            .databases
            .get(&self.client.database)
            .is_some_and(database_routes)
    }

    /// Where a statement with no parameters to wait for runs.
    pub(super) fn route(&self, sql: &[u8]) -> Result<Routing, ProxyError> {
        match self.route_plan(sql, &[])? {
            Routing::AtBind => Err(ProxyError::error(
                "0A000",
                "shardgate cannot route this statement: its shard key is a parameter and no values are bound",
            )
            .with_hint("Give the key as a constant, or name the shard: /* shardgate: shard=NAME */.")),
            r => Ok(r),
        }
    }

    /// Where a statement with its parameters `bound` (empty: not known yet).
    pub(super) fn route_plan(
        &self,
        sql: &[u8],
        bound: &[Option<String>],
    ) -> Result<Routing, ProxyError> {
        if !self
            .proxy
            .any_routes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(Routing::To(None));
        }
        let config = self.proxy.config.load();
        let Some(db) = config.databases.get(&self.client.database) else {
            return Ok(Routing::To(None));
        };
        if !database_routes(db) {
            return Ok(Routing::To(None));
        }
        let text = String::from_utf8_lossy(sql);
        // Only a query with a `;` before its end can hold several statements.
        let several = text.trim_end().trim_end_matches(';').contains(';');
        let statements = if several {
            router::lexer::split_statements(&text)
        } else {
            Vec::new()
        };
        if statements.len() > 1 {
            // Each statement of a multi-statement query routes; they must agree. A query
            // whose statements all run on every shard (a batch of DDL) runs whole on each.
            let mut target: Option<String> = None;
            let (mut everywhere, mut elsewhere) = (0, 0);
            let mut writes = false;
            for st in statements {
                match self.route_plan(st.as_bytes(), bound)? {
                    Routing::AtBind => return Ok(Routing::AtBind),
                    Routing::Fanout(f)
                        if f.parts.is_none()
                            && f.merge.is_none()
                            && f.shards.len() == db.shards.len()
                            && f.sum =>
                    {
                        writes |= f.write;
                        everywhere += 1
                    }
                    Routing::Fanout(_) => {
                        return Err(ProxyError::error(
                            "0A000",
                            "shardgate cannot route this query: one of its statements runs on several shards",
                        )
                        .with_hint("Send a statement that runs on several shards as a query of its own."))
                    }
                    Routing::To(next) => {
                        elsewhere += 1;
                        if let Some(t) = next {
                            match &target {
                                Some(prev) if *prev != t => {
                                    return Err(ProxyError::error(
                                        "0A000",
                                        format!("shardgate cannot route this query: its statements need shards `{prev}` and `{t}`"),
                                    )
                                    .with_hint("Send the statements of each shard in a query of their own."))
                                }
                                _ => target = Some(t),
                            }
                        }
                    }
                }
            }
            if everywhere > 0 {
                if elsewhere > 0 {
                    return Err(ProxyError::error(
                        "0A000",
                        "shardgate cannot route this query: some of its statements run on every shard and others on one",
                    )
                    .with_hint("Send the statements that run on every shard (DDL) in a query of their own."));
                }
                return Ok(Routing::Fanout(Box::new(Fanout {
                    shards: db.shards.iter().map(|(n, _)| n.to_owned()).collect(),
                    parts: None,
                    copy_header: copy_header(&text),
                    // A query of writes: all of it commits on every shard, or none of it.
                    write: writes,
                    sum: true,
                    merge: None,
                })));
            }
            return Ok(Routing::To(target));
        }
        let mut hints = router::hints::parse_hints(&text)
            .map_err(|e| ProxyError::error("42601", format!("shardgate hint: {e}")))?;
        self.merge_session_hints(&mut hints);
        if hints.shard.is_none() && !sql.is_ascii() && !self.client_utf8() {
            return Err(refuse(
                "the client's encoding is not UTF8 and the statement has characters beyond ASCII, which the router would read wrongly".into(),
                "Connect with client_encoding=UTF8, or name the shard: /* shardgate: shard=NAME */.",
            ));
        }
        let keys = |t: &str| router::plan::map_for(db, t).map(|(_, c)| c.to_vec());
        let routed = match self
            .proxy
            .route_cache
            .route_in(self.scope(), &text, bound, &keys)
        {
            Ok(r) => r,
            Err(_) if hints.shard.is_some() => {
                return Ok(Routing::To(hints.shard.clone()));
            }
            Err(e) => {
                return Err(refuse(
                    format!("it does not parse ({e})"),
                    "Name the shard in the statement: /* shardgate: shard=NAME */.",
                ))
            }
        };
        if let Some(full) = self.with_insert_columns(&routed.analysis, &text) {
            return self.route_plan(full.as_bytes(), bound);
        }
        self.routing(
            db,
            &text,
            &routed.analysis,
            &routed.params,
            &hints,
            bound.is_empty(),
        )
    }

    /// `INSERT INTO t VALUES ...` into a sharded table, with the table's columns written
    /// out (once the session knows them: [`Self::learn_insert_columns`]).
    fn with_insert_columns(
        &self,
        analysis: &router::analyze::Analysis,
        text: &str,
    ) -> Option<String> {
        let table = analysis.insert_without_columns.as_deref()?;
        let columns = self.proxy.table_columns_of(&self.client.database, table)?;
        router::rewrite::with_insert_columns(text, &columns)
    }

    /// The route cache's analysis of a statement of this client's database (no parameters
    /// bound), for what the proxy learns before routing it.
    fn analysis_of(&self, sql: &[u8]) -> Option<Arc<router::analyze::Analysis>> {
        let config = self.proxy.config.load();
        let db = config.databases.get(&self.client.database)?;
        let keys = |t: &str| router::plan::map_for(db, t).map(|(_, c)| c.to_vec());
        let text = String::from_utf8_lossy(sql);
        self.proxy
            .route_cache
            .route_in(self.scope(), &text, &[], &keys)
            .ok()
            .map(|r| r.analysis)
    }

    /// Before a read with function calls routes over several shards: whether the catalog
    /// has aggregates of those names, asked of the home shard once per name.
    pub(super) async fn learn_functions(&mut self, sql: &[u8]) {
        if let Some(names) = self.functions_to_learn(sql) {
            // Boxed: rare, and its state would otherwise sit in every idle session.
            Box::pin(self.learn_aggregates(names)).await;
        }
    }

    /// The function names of a read that may route over several shards that the proxy
    /// does not know yet.
    fn functions_to_learn(&self, sql: &[u8]) -> Option<Vec<String>> {
        let head = sql.trim_ascii_start();
        let read = head
            .get(..6)
            .is_some_and(|h| h.eq_ignore_ascii_case(b"select"))
            || head
                .get(..4)
                .is_some_and(|h| h.eq_ignore_ascii_case(b"with"));
        if !read || !sql.contains(&b'(') || !self.routes() {
            return None;
        }
        let analysis = self.analysis_of(sql)?;
        let names = self
            .proxy
            .unknown_functions(&self.client.database, &analysis.functions);
        (!names.is_empty()).then_some(names)
    }

    /// Asks the home shard which of `names` are aggregates.
    async fn learn_aggregates(&mut self, names: Vec<String>) {
        let Ok(mut conn) = attach::checkout(&self.client.pool, &self.client).await else {
            return;
        };
        let list = names
            .iter()
            .map(|n| format!("'{}'", n.replace('\'', "''")))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT p.proname FROM pg_catalog.pg_proc p WHERE p.prokind = 'a' AND p.proname IN ({list})"
        );
        match crate::copyin::first_column(&mut conn, &sql).await {
            Ok(Ok(aggregates)) => {
                conn.release();
                let mut known = self.proxy.functions.lock();
                for n in names {
                    let agg = aggregates.contains(&n);
                    known.insert((self.client.database.clone(), n), agg);
                }
            }
            Ok(Err(_)) => conn.release(),
            Err(_) => {}
        }
    }

    /// Before an `INSERT INTO t VALUES ...` without a column list into a sharded table is
    /// routed: the table's column order, read from the home shard's catalog once.
    pub(super) async fn learn_insert_columns(&mut self, sql: &[u8]) {
        if let Some(table) = self.insert_table_to_learn(sql) {
            // Boxed: rare, and its state would otherwise sit in every idle session.
            Box::pin(self.learn_table_columns(table)).await;
        }
    }

    /// The table of an `INSERT` without a column list whose columns the proxy does not know
    /// yet.
    fn insert_table_to_learn(&self, sql: &[u8]) -> Option<String> {
        let head = sql.trim_ascii_start();
        let insert = head
            .get(..6)
            .is_some_and(|h| h.eq_ignore_ascii_case(b"insert"))
            || ((head.starts_with(b"/*") || head.starts_with(b"--"))
                && first_word(sql).eq_ignore_ascii_case("insert"));
        if !insert || !self.routes() || router::lexer::insert_names_columns(sql) {
            return None;
        }
        let table = self
            .analysis_of(sql)
            .and_then(|a| a.insert_without_columns.clone())?;
        self.proxy
            .table_columns_of(&self.client.database, &table)
            .is_none()
            .then_some(table)
    }

    /// Reads `table`'s column order from the home shard's catalog.
    async fn learn_table_columns(&mut self, table: String) {
        let Ok(mut conn) = attach::checkout(&self.client.pool, &self.client).await else {
            return;
        };
        let found = crate::copyin::catalog_columns(&mut conn, &table, true).await;
        match found {
            Ok(Ok(columns)) if !columns.is_empty() => {
                conn.release();
                self.proxy
                    .table_columns
                    .lock()
                    .insert((self.client.database.clone(), table), Arc::new(columns));
            }
            // The table is not there (the INSERT is refused as it stands) or the
            // connection failed (it is dropped).
            Ok(_) => conn.release(),
            Err(_) => {}
        }
    }

    /// Whether the client's text is UTF-8, as the router reads it (`client_encoding` UTF8,
    /// or SQL_ASCII, whose bytes reach the server unconverted).
    pub(super) fn client_utf8(&self) -> bool {
        if self.encoding_doubt {
            return false;
        }
        match self.client.settings.desired().get("client_encoding") {
            None => true,
            Some(sql) => is_utf8_name(sql),
        }
    }

    /// A statement that may change the client's encoding in a way the settings do not track
    /// (`SET LOCAL client_encoding`, `set_config(...)`, `SET NAMES`): from then on the
    /// session's text is not taken for UTF-8.
    pub(super) fn note_encoding_change(&mut self, sql: &[u8], words: Words) {
        if !self.encoding_doubt && untracked_encoding_change(sql, words) {
            self.encoding_doubt = true;
        }
    }

    /// The route cache's scope of this client's database.
    pub(super) fn scope(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.client.database.hash(&mut h);
        h.finish()
    }

    /// A comment hint in the statement wins over `SET shardgate.*`.
    pub(super) fn merge_session_hints(&self, hints: &mut router::hints::Hints) {
        if let Some(session) = self.session_hints.as_deref() {
            if hints.shard.is_none() && hints.key.is_none() {
                hints.shard = session.shard.clone();
                hints.key = session.key.clone();
            }
        }
    }

    /// Where a prepared statement runs with its parameters `bound` (empty: not known yet).
    /// The statement is analysed on its first use and the analysis kept with it.
    pub(super) fn route_statement(
        &self,
        stmt: &Statement,
        bound: &[Option<String>],
    ) -> Result<Routing, ProxyError> {
        if !self
            .proxy
            .any_routes
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(Routing::To(None));
        }
        let config = self.proxy.config.load();
        let Some(db) = config.databases.get(&self.client.database) else {
            return Ok(Routing::To(None));
        };
        if !database_routes(db) {
            return Ok(Routing::To(None));
        }
        if !stmt.query.is_ascii() && !self.client_utf8() {
            // Judged (and refused unless a hint names the shard) as text.
            return self.route_plan(&stmt.query, bound);
        }
        let generation = self.proxy.generation();
        let scope = self.scope();
        let kept = stmt.route.load();
        let route = match kept
            .as_ref()
            .filter(|r| r.generation == generation && r.scope == scope)
        {
            Some(r) => r.clone(),
            None => {
                let text = String::from_utf8_lossy(&stmt.query);
                let Ok(hints) = router::hints::parse_hints(&text) else {
                    return self.route_plan(&stmt.query, bound);
                };
                let keys = |t: &str| router::plan::map_for(db, t).map(|(_, c)| c.to_vec());
                if text.trim_end().trim_end_matches(';').contains(';') {
                    return self.route_plan(&stmt.query, bound);
                }
                let Ok(routed) = self
                    .proxy
                    .route_cache
                    .route_in(self.scope(), &text, &[], &keys)
                else {
                    return self.route_plan(&stmt.query, bound);
                };
                let r = Arc::new(crate::statements::StatementRoute {
                    generation,
                    scope,
                    analysis: routed.analysis,
                    constants: routed.params[routed.own.min(routed.params.len())..].to_vec(),
                    own: routed.own,
                    hints,
                });
                stmt.route.store(Some(r.clone()));
                r
            }
        };
        let mut params: Vec<Option<String>> = Vec::with_capacity(route.own + route.constants.len());
        params.extend((0..route.own).map(|i| bound.get(i).cloned().flatten()));
        params.extend(route.constants.iter().cloned());
        let mut hints = route.hints.clone();
        self.merge_session_hints(&mut hints);
        let text = String::from_utf8_lossy(&stmt.query);
        if let Some(full) = self.with_insert_columns(&route.analysis, &text) {
            return self.route_plan(full.as_bytes(), bound);
        }
        self.routing(
            db,
            &text,
            &route.analysis,
            &params,
            &hints,
            bound.is_empty(),
        )
    }

    /// The routing of an analysed statement.
    pub(super) fn routing(
        &self,
        db: &sgconfig::DatabaseConfig,
        text: &str,
        analysis: &router::analyze::Analysis,
        params: &[Option<String>],
        hints: &router::hints::Hints,
        unbound: bool,
    ) -> Result<Routing, ProxyError> {
        use router::analyze::Kind;
        use router::plan::Plan;
        if analysis.kind == Kind::Ddl {
            // CREATE AGGREGATE and the like: what the catalog said of functions may change.
            self.proxy.forget_functions(&self.client.database);
        }
        let plan = router::plan::plan_with_hints(db, analysis, params, hints);
        let mergeable = router::plan::mergeable(analysis, hints);
        let several = matches!(plan, Plan::AllShards | Plan::Shards(_)) || mergeable;
        if several
            && analysis.kind == Kind::Read
            && !analysis.functions.is_empty()
            && hints.shard.is_none()
            && hints.key.is_none()
            && self
                .proxy
                .aggregate_among(&self.client.database, &analysis.functions)
        {
            return Err(refuse(
                format!(
                    "it calls {} over several shards, and the catalog has an aggregate of that name (or could not be asked): a user-defined aggregate's per-shard results cannot be combined",
                    analysis.functions.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
                ),
                "Give the shard key so that the statement runs on one shard, or name the shard: /* shardgate: shard=NAME */.",
            ));
        }
        match plan {
            Plan::Refuse { .. } if mergeable => self.merge_routing(db, text, analysis, params),
            Plan::Shard(s) => Ok(Routing::To(Some(s))),
            Plan::Session | Plan::AnyShard => Ok(Routing::To(None)),
            Plan::AllShards => Ok(Routing::Fanout(Box::new(Fanout {
                shards: db.shards.iter().map(|(n, _)| n.to_owned()).collect(),
                parts: None,
                copy_header: copy_header(text),
                write: analysis.kind == router::analyze::Kind::Write,
                sum: !(analysis.kind == router::analyze::Kind::Write
                    && !analysis.tables.is_empty()
                    && analysis
                        .tables
                        .iter()
                        .all(|t| db.reference_tables.contains(t))),
                merge: None,
            }))),
            Plan::Shards(some) => {
                // In the database's order.
                let shards: Vec<String> = db
                    .shards
                    .iter()
                    .map(|(n, _)| n)
                    .filter(|n| some.iter().any(|s| s == n))
                    .map(str::to_owned)
                    .collect();
                let parts = match router::plan::row_shards(db, analysis, params) {
                    None => None,
                    Some(rows) => Some(router::rewrite::split_insert(text, &rows, &shards).map_err(|why| {
                        refuse(
                            format!("its rows live on shards {} and {why}", shards.join(", ")),
                            "Send the rows of each shard in an INSERT of their own.",
                        )
                    })?),
                };
                Ok(Routing::Fanout(Box::new(Fanout {
                    shards,
                    parts,
                    copy_header: false,
                    write: analysis.kind == router::analyze::Kind::Write,
                    sum: true,
                    merge: None,
                })))
            }
            Plan::Pinned if self.server.is_some() && self.tx_status != b'I' => {
                Ok(Routing::To(None))
            }
            Plan::Pinned => Err(refuse(
                "the router cannot see which shards its code touches".into(),
                "Run it inside a transaction already on the shard it needs, or name the shard: /* shardgate: shard=NAME */.",
            )),
            Plan::AtBind if unbound => Ok(Routing::AtBind),
            Plan::AtBind => Err(refuse(
                "its shard key is a parameter the router cannot read (NULL, or binary of a type it does not decode)".into(),
                "Send the key in text format, or name the shard: /* shardgate: shard=NAME */.",
            )),
            Plan::Refuse { reason, hint } => Err(refuse(reason, &hint)),
        }
    }
}

impl Session {
    /// SQL-level PREPARE, EXECUTE and DEALLOCATE on a database that routes: the proxy
    /// keeps the statements, and an EXECUTE runs its statement with the arguments in place
    /// of the parameters, routed by them (a PREPARE whose statement carries a shard hint,
    /// and everything on databases that do not route, go to the server as before).
    pub(super) fn sql_prepared(&mut self, frame: &Frame) -> Result<SqlPrepared, End> {
        use router::sqlprepare::{parse_deallocate, parse_execute, parse_prepare, substitute};
        let sql = messages::query_text(frame).map_err(malformed)?;
        let head = sql.trim_ascii_start();
        let word = |w: &[u8]| {
            head.get(..w.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(w))
        };
        if !(word(b"prepare") || word(b"execute") || word(b"deallocate") || word(b"discard"))
            || !self.routes()
        {
            return Ok(SqlPrepared::No);
        }
        let text = String::from_utf8_lossy(sql).into_owned();
        if router::lexer::split_statements(&text).len() != 1 {
            return Ok(SqlPrepared::No);
        }
        if word(b"discard") {
            if text.to_ascii_lowercase().contains("all") {
                if let Some(n) = self.names.as_deref_mut() {
                    n.sql_prepared.clear();
                }
            }
            return Ok(SqlPrepared::No);
        }
        if let Some(p) = parse_prepare(&text) {
            let hinted = router::hints::parse_hints(&text)
                .map(|h| h.shard.is_some() || h.key.is_some())
                .unwrap_or(true);
            if hinted || self.session_hints.is_some() {
                return Ok(SqlPrepared::No);
            }
            if self
                .names
                .as_deref()
                .is_some_and(|n| n.sql_prepared.contains_key(&p.name))
            {
                self.simple_error(ProxyError::error(
                    "42P05",
                    format!("prepared statement \"{}\" already exists", p.name),
                ))?;
                return Ok(SqlPrepared::Answered);
            }
            self.names().sql_prepared.insert(p.name.clone(), p);
            self.push_synthetic(Expect::SyntheticDone("PREPARE"));
            self.push_synthetic(Expect::SyntheticReady);
            return Ok(SqlPrepared::Answered);
        }
        if let Some((name, args)) = parse_execute(&text) {
            let Some(p) = self
                .names
                .as_deref()
                .and_then(|n| n.sql_prepared.get(&name))
                .cloned()
            else {
                return Ok(SqlPrepared::No);
            };
            return match substitute(&p, &args) {
                Ok(query) => {
                    let mut b = BytesMut::with_capacity(query.len() + 6);
                    messages::query(&mut b, &query);
                    Ok(SqlPrepared::Run(Frame::from_raw(b.freeze())))
                }
                Err(why) => {
                    self.simple_error(
                        ProxyError::error(
                            if why.starts_with("wrong number") {
                                "42601"
                            } else {
                                "0A000"
                            },
                            format!("shardgate: {why}"),
                        )
                        .with_hint(
                            "EXECUTE prepared statements with constants as their arguments.",
                        ),
                    )?;
                    Ok(SqlPrepared::Answered)
                }
            };
        }
        match parse_deallocate(&text) {
            Some(Some(name)) => {
                let had = self
                    .names
                    .as_deref_mut()
                    .is_some_and(|n| n.sql_prepared.remove(&name).is_some());
                if !had {
                    return Ok(SqlPrepared::No);
                }
                self.push_synthetic(Expect::SyntheticDone("DEALLOCATE"));
                self.push_synthetic(Expect::SyntheticReady);
                Ok(SqlPrepared::Answered)
            }
            Some(None) => {
                if let Some(n) = self.names.as_deref_mut() {
                    n.sql_prepared.clear();
                }
                Ok(SqlPrepared::No)
            }
            None => Ok(SqlPrepared::No),
        }
    }

    /// A read whose rows must be merged across shards: planned now to find its shards (or
    /// its refusal), planned again at its run with the database's collation.
    fn merge_routing(
        &self,
        db: &sgconfig::DatabaseConfig,
        text: &str,
        analysis: &router::analyze::Analysis,
        params: &[Option<String>],
    ) -> Result<Routing, ProxyError> {
        use router::merge_plan::Collation;
        use router::union::UnionRoute;
        let keys = |t: &str| router::plan::map_for(db, t).map(|(_, c)| c.to_vec());
        match router::union::route_union_all(db, text, params, &keys) {
            None => {}
            Some(UnionRoute::Shard(s)) => return Ok(Routing::To(Some(s))),
            Some(UnionRoute::AtBind) => return Ok(Routing::AtBind),
            Some(UnionRoute::Refuse { reason, hint }) => return Err(refuse(reason, &hint)),
            Some(UnionRoute::Shards(shards, parts)) => {
                return Ok(Routing::Fanout(Box::new(Fanout {
                    shards,
                    parts: Some(parts),
                    copy_header: false,
                    write: false,
                    sum: true,
                    merge: None,
                })))
            }
        }
        let collation = self
            .proxy
            .collation_of(&self.client.database)
            .unwrap_or(Collation::C);
        let plan = router::merge_plan::plan_merge(db, analysis, text, params, &collation)
            .map_err(|r| refuse(r.reason, &r.hint))?;
        if let ::merge::Node::Route { shard, .. } = &plan.root {
            return Ok(Routing::To(Some(shard.clone())));
        }
        Ok(Routing::Fanout(Box::new(Fanout {
            shards: plan.shards().to_vec(),
            parts: None,
            copy_header: false,
            write: false,
            sum: true,
            merge: Some(Box::new(super::merge::MergeInput {
                analysis: analysis.clone(),
                text: text.to_owned(),
                params: params.to_vec(),
            })),
        })))
    }
}

/// A `COPY ... TO STDOUT` whose data starts with a header line.
pub(super) fn copy_header(text: &str) -> bool {
    if !router::lexer::Lexer::new(text)
        .next()
        .is_some_and(|t| t.is_keyword("copy"))
    {
        return false;
    }
    matches!(router::copy::parse_copy(text), Some(Ok(c)) if c.format.header)
}

/// An encoding name (or the statement that sets it) that means UTF-8 to the router: UTF8,
/// or SQL_ASCII, whose bytes reach the server unconverted.
pub(super) fn is_utf8_name(text: &str) -> bool {
    ["utf8", "utf-8", "unicode", "sql_ascii"].iter().any(|e| {
        text.as_bytes()
            .windows(e.len())
            .any(|w| w.eq_ignore_ascii_case(e.as_bytes()))
    })
}

/// The router's refusal: 0A000, the reason and what to do.
pub(super) fn refuse(reason: String, hint: &str) -> ProxyError {
    ProxyError::error(
        "0A000",
        format!("shardgate cannot route this statement: {reason}"),
    )
    .with_hint(hint.to_owned())
}

/// A database routes statements when it has several shards and shard maps or reference
/// tables; the others send everything to their one (home) shard.
pub(crate) fn database_routes(db: &sgconfig::DatabaseConfig) -> bool {
    db.shards.len() >= 2 && (!db.maps.is_empty() || !db.reference_tables.is_empty())
}

/// Whether `sql` (whose words are `words`) may change the client's encoding in a way the
/// settings do not track: a word of statements that change session state with `names`, or
/// with `client_encoding` unless the statement is a tracked `SET client_encoding`.
pub(super) fn untracked_encoding_change(sql: &[u8], words: Words) -> bool {
    if !words.may_change_session() {
        return false;
    }
    let encoding = super::words::EncodingWords::of(sql);
    encoding.names
        || encoding.client_encoding
            && !matches!(
                tracked_with(sql, words),
                Some(SessionCommand::Set { ref name, .. }) if name == "client_encoding"
            )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_changes_the_settings_do_not_track_are_found() {
        let untracked =
            |sql: &str| untracked_encoding_change(sql.as_bytes(), Words::of(sql.as_bytes()));
        for yes in [
            "SET NAMES 'LATIN1'",
            "set local client_encoding = 'LATIN1'",
            "SELECT set_config('client_encoding', 'LATIN1', true)",
            // The word is enough: taken for a change, whatever it names.
            "UPDATE t SET names = 1",
        ] {
            assert!(untracked(yes), "{yes}");
        }
        for no in [
            "SET client_encoding = 'LATIN1'",
            "SET client_encoding TO DEFAULT",
            "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 2",
            "SELECT client_encoding FROM t",
            "SHOW client_encoding",
        ] {
            assert!(!untracked(no), "{no}");
        }
    }
}
