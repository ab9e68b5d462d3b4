//! Schema migrations, tracked by `PRAGMA user_version`.
//!
//! `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`. Each step runs in its own
//! transaction together with the `user_version` update, so a crash leaves the schema at a
//! step boundary. Steps are append-only: never edit one that has shipped.

use rusqlite::Connection;

use crate::error::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: the policy tables.
    r#"
    CREATE TABLE meta (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        store_id TEXT NOT NULL,
        version INTEGER NOT NULL CHECK (version >= 1),
        key_check BLOB NOT NULL
    ) STRICT;

    CREATE TABLE providers (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        base_url TEXT NOT NULL,
        api_key_env TEXT,
        api_key_enc BLOB,
        CHECK (api_key_env IS NULL OR api_key_enc IS NULL)
    ) STRICT;

    CREATE TABLE routes (
        alias TEXT PRIMARY KEY,
        strategy TEXT NOT NULL
    ) STRICT;

    CREATE TABLE route_targets (
        alias TEXT NOT NULL REFERENCES routes(alias) ON DELETE CASCADE,
        position INTEGER NOT NULL,
        provider TEXT NOT NULL REFERENCES providers(name),
        model TEXT NOT NULL,
        weight INTEGER NOT NULL CHECK (weight >= 1),
        PRIMARY KEY (alias, position)
    ) STRICT;
    CREATE INDEX route_targets_by_provider ON route_targets(provider);

    CREATE TABLE prices (
        model TEXT PRIMARY KEY,
        input_per_mtok REAL NOT NULL,
        output_per_mtok REAL NOT NULL,
        cached_input_per_mtok REAL
    ) STRICT;

    CREATE TABLE modules (
        name TEXT PRIMARY KEY,
        enabled INTEGER NOT NULL CHECK (enabled IN (0, 1))
    ) STRICT;
    "#,
    // 2: the Azure OpenAI `api-version` of a provider; NULL: the data plane's default.
    r#"
    ALTER TABLE providers ADD COLUMN api_version TEXT;
    "#,
    // 3: the usage ledger (see `store::usage` for how the tables relate).
    r#"
    CREATE TABLE usage (
        request_id TEXT NOT NULL,
        time_unix_ms INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        alias TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_input_tokens INTEGER NOT NULL,
        cache_creation_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_nano_usd INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        ttft_ms INTEGER NOT NULL,
        status INTEGER NOT NULL,
        cache_hit INTEGER NOT NULL,
        saved_nano_usd INTEGER NOT NULL,
        policy_version INTEGER NOT NULL,
        unpriced INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        endpoint TEXT NOT NULL,
        failed INTEGER NOT NULL,
        dataplane_id TEXT NOT NULL
    ) STRICT;
    CREATE INDEX usage_by_time ON usage(time_unix_ms);

    CREATE TABLE usage_daily (
        day TEXT NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        requests INTEGER NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_input_tokens INTEGER NOT NULL,
        cost_nano_usd INTEGER NOT NULL,
        cache_hits INTEGER NOT NULL,
        saved_nano_usd INTEGER NOT NULL,
        failed INTEGER NOT NULL,
        unpriced INTEGER NOT NULL,
        PRIMARY KEY (day, tenant, key_id, provider, model)
    ) STRICT, WITHOUT ROWID;

    CREATE TABLE usage_seen (
        request_id TEXT PRIMARY KEY,
        time_unix_ms INTEGER NOT NULL,
        compacted_unix_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX usage_seen_by_compaction ON usage_seen(compacted_unix_ms);

    CREATE TABLE usage_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        compacted_before_unix_ms INTEGER NOT NULL
    ) STRICT;
    INSERT INTO usage_state (id, compacted_before_unix_ms) VALUES (1, 0);
    "#,
    // 4: response cache TTL per route.
    r#"
    ALTER TABLE routes ADD COLUMN cache_ttl_secs INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5: raw usage rows keyed and clustered by (time, request id): a record is written to one
    // B-tree instead of three, time ranges are read from the table itself, and a resent record
    // (same id, same time: a data plane never changes a record) is refused by the key.
    r#"
    CREATE TABLE usage_v5 (
        request_id TEXT NOT NULL,
        time_unix_ms INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        key_id TEXT NOT NULL,
        alias TEXT NOT NULL,
        provider TEXT NOT NULL,
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cached_input_tokens INTEGER NOT NULL,
        cache_creation_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost_nano_usd INTEGER NOT NULL,
        latency_ms INTEGER NOT NULL,
        ttft_ms INTEGER NOT NULL,
        status INTEGER NOT NULL,
        cache_hit INTEGER NOT NULL,
        saved_nano_usd INTEGER NOT NULL,
        policy_version INTEGER NOT NULL,
        unpriced INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        endpoint TEXT NOT NULL,
        failed INTEGER NOT NULL,
        dataplane_id TEXT NOT NULL,
        PRIMARY KEY (time_unix_ms, request_id)
    ) STRICT, WITHOUT ROWID;
    INSERT INTO usage_v5 SELECT * FROM usage ORDER BY time_unix_ms, request_id;
    DROP TABLE usage;
    ALTER TABLE usage_v5 RENAME TO usage;
    "#,
    // 6: whether a route retries an attempt that broke after the request was sent.
    r#"
    ALTER TABLE routes ADD COLUMN retry_after_send INTEGER NOT NULL DEFAULT 0
        CHECK (retry_after_send IN (0, 1));
    "#,
    // 7: tenants and virtual keys. `rev` is the policy version of a row's last change, so the
    // policy stream can send what changed since a version; deleted tenants and revoked keys
    // stay as rows (their `rev` says when they went) and are never reused. `config_version`
    // is the version of the last change to providers, routes, prices or modules. `idempotency`
    // keeps the answer of each create called with a request id, encrypted, for retries.
    r#"
    ALTER TABLE meta ADD COLUMN config_version INTEGER NOT NULL DEFAULT 0;
    UPDATE meta SET config_version = version;

    CREATE TABLE tenants (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'suspended', 'deleted')),
        created_unix_ms INTEGER NOT NULL,
        rev INTEGER NOT NULL
    ) STRICT;
    CREATE UNIQUE INDEX tenants_by_name ON tenants(name) WHERE state != 'deleted';
    CREATE INDEX tenants_by_rev ON tenants(rev);

    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        tenant_id INTEGER NOT NULL REFERENCES tenants(id),
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash BLOB NOT NULL UNIQUE,
        models TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        expires_unix_ms INTEGER NOT NULL,
        revoked_unix_ms INTEGER NOT NULL,
        previous_hash BLOB,
        previous_expires_unix_ms INTEGER NOT NULL,
        last_used_unix_ms INTEGER NOT NULL,
        rev INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX keys_by_rev ON keys(rev);
    CREATE INDEX keys_by_tenant ON keys(tenant_id, id);

    CREATE TABLE idempotency (
        rpc TEXT NOT NULL,
        request_id TEXT NOT NULL,
        request_hash BLOB NOT NULL,
        response_enc BLOB NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        PRIMARY KEY (rpc, request_id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX idempotency_by_time ON idempotency(created_unix_ms);
    "#,
    // 8: rate limits and spend caps of tenants and keys, and what a tenant's requests do when
    // a data plane loses the control plane. A row of `limits` or `caps` belongs to exactly one
    // tenant or key; a tenant or key has at most one `limits` row (a row has at least one
    // limit) and one cap per period. Their changes set the owner's `rev`. Deleting a tenant or
    // revoking a key deletes its rows. The `usage_daily` indexes serve a cap's spend in its
    // period (by tenant name or key id); only new rollup rows touch them.
    r#"
    ALTER TABLE tenants ADD COLUMN on_cp_loss TEXT NOT NULL DEFAULT 'open'
        CHECK (on_cp_loss IN ('open', 'closed'));

    CREATE TABLE limits (
        tenant_id INTEGER REFERENCES tenants(id),
        key_id TEXT REFERENCES keys(id),
        rpm INTEGER CHECK (rpm >= 1),
        tpm INTEGER CHECK (tpm >= 1),
        concurrency INTEGER CHECK (concurrency >= 1),
        CHECK ((tenant_id IS NULL) != (key_id IS NULL)),
        CHECK (rpm IS NOT NULL OR tpm IS NOT NULL OR concurrency IS NOT NULL)
    ) STRICT;
    CREATE UNIQUE INDEX limits_of_tenants ON limits(tenant_id) WHERE tenant_id IS NOT NULL;
    CREATE UNIQUE INDEX limits_of_keys ON limits(key_id) WHERE key_id IS NOT NULL;

    CREATE TABLE caps (
        tenant_id INTEGER REFERENCES tenants(id),
        key_id TEXT REFERENCES keys(id),
        period TEXT NOT NULL CHECK (period IN ('day', 'month', 'total')),
        limit_nano_usd INTEGER NOT NULL CHECK (limit_nano_usd >= 1),
        soft_at REAL CHECK (soft_at > 0 AND soft_at < 1),
        allow_unpriced INTEGER NOT NULL CHECK (allow_unpriced IN (0, 1)),
        CHECK ((tenant_id IS NULL) != (key_id IS NULL))
    ) STRICT;
    CREATE UNIQUE INDEX caps_of_tenants ON caps(tenant_id, period) WHERE tenant_id IS NOT NULL;
    CREATE UNIQUE INDEX caps_of_keys ON caps(key_id, period) WHERE key_id IS NOT NULL;

    CREATE INDEX usage_daily_by_tenant ON usage_daily(tenant, day);
    CREATE INDEX usage_daily_by_key ON usage_daily(key_id, day);
    "#,
    // 9: until when a lease this control plane granted (or renewed) may still be spent by a
    // data plane: after a restart it grants nothing before then, so that leases held while it
    // was away are reported first (docs/limits-and-caps.md).
    r#"
    ALTER TABLE meta ADD COLUMN lease_horizon_unix_ms INTEGER NOT NULL DEFAULT 0;
    "#,
    // 10: admin identities (tokens as SHA-256; a name is unique among the active ones) and the
    // hash-chained audit log, with the checkpoint retention leaves where it pruned.
    r#"
    CREATE TABLE admins (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
        tenant_id INTEGER REFERENCES tenants(id),
        token_hash BLOB NOT NULL UNIQUE,
        token_prefix TEXT NOT NULL,
        created_unix_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        revoked_unix_ms INTEGER
    ) STRICT;
    CREATE UNIQUE INDEX admins_by_name ON admins(name) WHERE revoked_unix_ms IS NULL;

    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY,
        time_unix_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        role TEXT NOT NULL,
        actor_tenant TEXT NOT NULL,
        source TEXT NOT NULL,
        rpc TEXT NOT NULL,
        target TEXT NOT NULL,
        tenant_id INTEGER,
        request TEXT NOT NULL,
        outcome TEXT NOT NULL,
        message TEXT NOT NULL,
        version INTEGER NOT NULL,
        unrecorded INTEGER NOT NULL,
        prev_hash BLOB NOT NULL,
        hash BLOB NOT NULL
    ) STRICT;
    CREATE INDEX audit_by_time ON audit(time_unix_ms);
    CREATE INDEX audit_by_tenant ON audit(tenant_id, seq) WHERE tenant_id IS NOT NULL;

    CREATE TABLE audit_checkpoint (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        seq INTEGER NOT NULL,
        hash BLOB NOT NULL,
        time_unix_ms INTEGER NOT NULL,
        pruned INTEGER NOT NULL
    ) STRICT;
    INSERT INTO audit_checkpoint (id, seq, hash, time_unix_ms, pruned) VALUES (1, 0, zeroblob(32), 0, 0);
    "#,
    // 11: how a provider of OpenAI's format gets Responses API calls; NULL: its kind's default.
    // Providers added before keep what they got: OpenAI-compatible ones had the call relayed,
    // Azure ones translated.
    r#"
    ALTER TABLE providers ADD COLUMN responses_api TEXT CHECK (responses_api IN ('relay', 'translate'));
    UPDATE providers SET responses_api = 'relay' WHERE kind = 'openai-compatible';
    UPDATE providers SET responses_api = 'translate' WHERE kind = 'azure';
    "#,
];

/// Brings the schema up to date. Fails on a database from a newer build.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    let current: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if current > supported {
        return Err(StoreError::TooNew {
            found: current,
            supported,
        });
    }
    for (step, sql) in (current..).zip(MIGRATIONS.iter().skip(usize::try_from(current).unwrap_or(0))) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", step + 1)?;
        tx.commit()?;
        tracing::debug!(version = step + 1, "applied schema migration");
    }
    Ok(())
}

/// Builds the schema as an older build left it, at `version`, for tests that upgrade it.
#[cfg(test)]
pub(super) fn create_at(conn: &mut Connection, version: usize) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for sql in &MIGRATIONS[..version] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", i64::try_from(version).unwrap_or(i64::MAX))?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer_schemas() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        conn.pragma_update(None, "user_version", 99).unwrap();
        let err = migrate(&mut conn).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn a_version_1_database_gains_api_version_and_keeps_its_providers() {
        let mut conn = Connection::open_in_memory().unwrap();
        create_at(&mut conn, 1).unwrap();
        conn.execute(
            "INSERT INTO providers (name, kind, base_url, api_key_env)
             VALUES ('az', 'azure', 'https://r.openai.azure.com', 'K')",
            [],
        )
        .unwrap();

        migrate(&mut conn).unwrap();
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        let (name, env, api_version): (String, String, Option<String>) = conn
            .query_row("SELECT name, api_key_env, api_version FROM providers", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!((name.as_str(), env.as_str(), api_version), ("az", "K", None));
        conn.execute("UPDATE providers SET api_version = '2024-10-21'", [])
            .unwrap();
    }

    #[test]
    fn a_version_10_provider_keeps_how_it_got_responses_calls() {
        let mut conn = Connection::open_in_memory().unwrap();
        create_at(&mut conn, 10).unwrap();
        conn.execute_batch(
            "INSERT INTO providers (name, kind, base_url) VALUES
                 ('az', 'azure', 'https://r.openai.azure.com'),
                 ('local', 'openai-compatible', 'http://127.0.0.1:8000/v1'),
                 ('oa', 'openai', 'https://api.openai.com/v1'),
                 ('claude', 'anthropic', 'https://api.anthropic.com/v1');",
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let modes: Vec<(String, Option<String>)> = conn
            .prepare("SELECT name, responses_api FROM providers ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let modes: Vec<(&str, Option<&str>)> =
            modes.iter().map(|(n, m)| (n.as_str(), m.as_deref())).collect();
        assert_eq!(
            modes,
            [
                ("az", Some("translate")),
                ("claude", None),
                ("local", Some("relay")),
                ("oa", None),
            ]
        );
        let bad = conn.execute(
            "UPDATE providers SET responses_api = 'native' WHERE name = 'oa'",
            [],
        );
        assert!(bad.is_err(), "the column takes relay or translate only");
    }

    #[test]
    fn a_version_7_tenant_fails_open_and_limits_and_caps_are_checked() {
        let mut conn = Connection::open_in_memory().unwrap();
        create_at(&mut conn, 7).unwrap();
        conn.execute(
            "INSERT INTO tenants (name, labels, state, created_unix_ms, rev) VALUES ('acme', '', 'active', 1, 2)",
            [],
        )
        .unwrap();
        migrate(&mut conn).unwrap();
        let mode: String = conn
            .query_row("SELECT on_cp_loss FROM tenants", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "open");
        let refused = [
            "UPDATE tenants SET on_cp_loss = 'ajar'",
            "INSERT INTO limits (tenant_id, rpm) VALUES (1, 0)",
            "INSERT INTO limits (tenant_id) VALUES (1)",
            "INSERT INTO limits (rpm) VALUES (5)",
            "INSERT INTO caps (tenant_id, period, limit_nano_usd, allow_unpriced) VALUES (1, 'week', 5, 0)",
            "INSERT INTO caps (tenant_id, period, limit_nano_usd, soft_at, allow_unpriced) VALUES (1, 'day', 5, 1.0, 0)",
        ];
        for sql in refused {
            assert!(conn.execute(sql, []).is_err(), "{sql}");
        }
        conn.execute("INSERT INTO limits (tenant_id, rpm) VALUES (1, 5)", [])
            .unwrap();
        assert!(
            conn.execute("INSERT INTO limits (tenant_id, tpm) VALUES (1, 5)", [])
                .is_err(),
            "one row per tenant"
        );
        let cap =
            "INSERT INTO caps (tenant_id, period, limit_nano_usd, allow_unpriced) VALUES (1, 'day', 5, 0)";
        conn.execute(cap, []).unwrap();
        assert!(conn.execute(cap, []).is_err(), "one cap per period");
    }

    #[test]
    fn a_version_4_ledger_keeps_its_rows_and_still_refuses_a_second_copy_of_a_record() {
        let mut conn = Connection::open_in_memory().unwrap();
        create_at(&mut conn, 4).unwrap();
        let insert = |conn: &Connection, id: &str, time: i64| {
            conn.execute(
                "INSERT INTO usage VALUES (?1, ?2, 't', 'k', 'a', 'p', 'm', 1, 2, 0, 0, 0, 30, 5, 0,
                 200, 0, 0, 1, 0, 0, '/v1/chat/completions', 0, 'dp')",
                rusqlite::params![id, time],
            )
        };
        insert(&conn, "r2", 2_000).unwrap();
        insert(&conn, "r1", 1_000).unwrap();

        migrate(&mut conn).unwrap();
        let rows: Vec<(String, i64, i64)> = conn
            .prepare("SELECT request_id, time_unix_ms, cost_nano_usd FROM usage")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [("r1".into(), 1_000, 30), ("r2".into(), 2_000, 30)],
            "in time order"
        );
        let err = insert(&conn, "r1", 1_000).unwrap_err();
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        insert(&conn, "r3", 1_500).unwrap();
    }
}
