-- durable-postgres schema v1. Runs with search_path set to the configured schema, so every
-- name below lives there (two apps share a database by using two schemas).

-- Keys and logs share one namespace: a name is either a key or a log, never both.
CREATE TABLE cache_items (
    name        text COLLATE "C" PRIMARY KEY,
    is_log      boolean NOT NULL,
    value       bytea,
    next_cursor bigint NOT NULL DEFAULT 0,
    fence       bigint NOT NULL DEFAULT 0,
    expires_at  timestamptz
);
CREATE INDEX cache_items_expiry ON cache_items (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE log_events (
    name    text COLLATE "C" NOT NULL,
    cursor  bigint NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (name, cursor)
);

-- Oversized or binary pubsub payloads: NOTIFY carries only the row id.
CREATE TABLE outbox (
    id         bigserial PRIMARY KEY,
    payload    bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_age ON outbox (created_at);

CREATE TABLE queue_groups (
    topic      text COLLATE "C" NOT NULL,
    grp        text COLLATE "C" NOT NULL,
    PRIMARY KEY (topic, grp)
);

CREATE TABLE queue_jobs (
    id         bigserial PRIMARY KEY,
    topic      text COLLATE "C" NOT NULL,
    grp        text COLLATE "C" NOT NULL,
    payload    bytea NOT NULL,
    attempt    integer NOT NULL DEFAULT 0,
    visible_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_jobs_fetch ON queue_jobs (topic, grp, visible_at, id);

CREATE TABLE runs (
    run_id           text COLLATE "C" PRIMARY KEY,
    status           text NOT NULL,
    epoch            bigint NOT NULL DEFAULT 0,
    owner            text,
    lease_expires_at bigint,
    resource_id      text,
    created_at       bigint NOT NULL,
    updated_at       bigint NOT NULL,
    data             text NOT NULL,
    expires_at       timestamptz
);
CREATE INDEX runs_status ON runs (status, created_at, run_id);
CREATE INDEX runs_expiry ON runs (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE checkpoints (
    run_id text COLLATE "C" NOT NULL,
    key    text COLLATE "C" NOT NULL,
    seq    bigserial,
    output text NOT NULL,
    PRIMARY KEY (run_id, key)
);

-- Errors raised below carry their own SQLSTATE, mapped to durable's ErrorKind in Rust:
-- DUR01 Fenced, DUR02 LimitExceeded, DUR03 NotFound, DUR04 Conflict, DUR05 InvalidState.

CREATE FUNCTION durable_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
$$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Lock the live item `p_name`, removing it first if it has expired. Returns is_log or NULL.
CREATE FUNCTION durable_lock_item(p_name text, OUT o_is_log boolean, OUT o_next bigint, OUT o_fence bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_exp timestamptz;
BEGIN
    SELECT is_log, next_cursor, fence, expires_at INTO o_is_log, o_next, o_fence, v_exp
      FROM cache_items WHERE name = p_name FOR UPDATE;
    IF FOUND AND v_exp IS NOT NULL AND v_exp <= clock_timestamp() THEN
        DELETE FROM log_events WHERE name = p_name;
        DELETE FROM cache_items WHERE name = p_name;
        o_is_log := NULL; o_next := NULL; o_fence := NULL;
    END IF;
END $$;

-- The whole append: fence, max_len, store, optional NOTIFY; one statement, one round trip.
CREATE FUNCTION durable_append(
    p_name text, p_payloads bytea[], p_fence bigint, p_max_len bigint, p_must_exist boolean,
    p_channel text, p_notify_head text, p_notify_tail text
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_is_log boolean; v_next bigint; v_fence bigint;
    n bigint := coalesce(cardinality(p_payloads), 0);
BEGIN
    LOOP
        SELECT o_is_log, o_next, o_fence INTO v_is_log, v_next, v_fence FROM durable_lock_item(p_name);
        EXIT WHEN v_is_log IS NOT NULL;
        IF p_must_exist THEN
            RAISE EXCEPTION 'no log % (never created, deleted or expired)', p_name USING ERRCODE = 'DUR03';
        END IF;
        INSERT INTO cache_items (name, is_log) VALUES (p_name, true) ON CONFLICT (name) DO NOTHING;
    END LOOP;
    IF NOT v_is_log THEN
        RAISE EXCEPTION '% is a key: a key and a log may not share a name', p_name USING ERRCODE = 'DUR04';
    END IF;
    IF p_fence IS NOT NULL AND p_fence < v_fence THEN
        RAISE EXCEPTION 'epoch % is older than the log''s fence %', p_fence, v_fence USING ERRCODE = 'DUR01';
    END IF;
    IF p_max_len IS NOT NULL AND v_next + n > p_max_len THEN
        RAISE EXCEPTION 'log % would exceed % entries', p_name, p_max_len USING ERRCODE = 'DUR02';
    END IF;
    IF n > 0 THEN
        INSERT INTO log_events (name, cursor, payload)
            SELECT p_name, v_next + t.o - 1, t.p FROM unnest(p_payloads) WITH ORDINALITY AS t(p, o);
    END IF;
    UPDATE cache_items SET next_cursor = v_next + n, fence = greatest(fence, coalesce(p_fence, fence))
     WHERE name = p_name;
    IF n > 0 AND p_channel IS NOT NULL THEN
        PERFORM pg_notify(p_channel, p_notify_head || v_next::text || p_notify_tail);
    END IF;
    RETURN v_next;
END $$;

CREATE FUNCTION durable_set(p_name text, p_value bytea, p_ttl_ms bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_is_log boolean;
BEGIN
    SELECT o_is_log INTO v_is_log FROM durable_lock_item(p_name);
    IF v_is_log THEN
        RAISE EXCEPTION '% is a log: a key and a log may not share a name', p_name USING ERRCODE = 'DUR04';
    END IF;
    INSERT INTO cache_items (name, is_log, value, expires_at)
         VALUES (p_name, false, p_value,
                 CASE WHEN p_ttl_ms IS NULL THEN NULL ELSE now() + p_ttl_ms * interval '1 millisecond' END)
    ON CONFLICT (name) DO UPDATE SET value = excluded.value, expires_at = excluded.expires_at;
END $$;

CREATE FUNCTION durable_increment(p_name text, p_by bigint, p_ttl_ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_is_log boolean; v_value bytea; v_text text; v_new bigint;
BEGIN
    LOOP
        SELECT o_is_log INTO v_is_log FROM durable_lock_item(p_name);
        EXIT WHEN v_is_log IS NOT NULL;
        INSERT INTO cache_items (name, is_log, value, expires_at)
             VALUES (p_name, false, '0'::bytea,
                     CASE WHEN p_ttl_ms IS NULL THEN NULL ELSE now() + p_ttl_ms * interval '1 millisecond' END)
        ON CONFLICT (name) DO NOTHING;
    END LOOP;
    IF v_is_log THEN
        RAISE EXCEPTION '% is a log: a key and a log may not share a name', p_name USING ERRCODE = 'DUR04';
    END IF;
    SELECT value INTO v_value FROM cache_items WHERE name = p_name;
    v_text := convert_from(v_value, 'UTF8');
    IF v_text !~ '^-?[0-9]{1,19}$' THEN
        RAISE EXCEPTION '% does not hold an integer', p_name USING ERRCODE = 'DUR04';
    END IF;
    v_new := v_text::bigint + p_by;
    UPDATE cache_items SET value = convert_to(v_new::text, 'UTF8') WHERE name = p_name;
    RETURN v_new;
END $$;

CREATE FUNCTION durable_delete(p_name text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_is_log boolean;
BEGIN
    SELECT o_is_log INTO v_is_log FROM durable_lock_item(p_name);
    IF v_is_log IS NULL THEN
        RETURN false;
    END IF;
    DELETE FROM log_events WHERE name = p_name;
    DELETE FROM cache_items WHERE name = p_name;
    RETURN true;
END $$;

-- Remove up to p_limit expired items (with their events), outbox rows older than p_outbox_ms,
-- and up to p_limit expired runs (with their checkpoints). Index-backed; returns rows removed.
CREATE FUNCTION durable_purge(p_limit integer, p_outbox_ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_names text[]; v_runs text[]; v_count bigint := 0; v_n bigint;
BEGIN
    SELECT array_agg(name) INTO v_names FROM (
        SELECT name FROM cache_items WHERE expires_at <= now()
         ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED) s;
    IF v_names IS NOT NULL THEN
        DELETE FROM log_events WHERE name = ANY (v_names);
        DELETE FROM cache_items WHERE name = ANY (v_names);
        v_count := v_count + cardinality(v_names);
    END IF;
    SELECT array_agg(run_id) INTO v_runs FROM (
        SELECT run_id FROM runs WHERE expires_at <= now()
         ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED) s;
    IF v_runs IS NOT NULL THEN
        DELETE FROM checkpoints WHERE run_id = ANY (v_runs);
        DELETE FROM runs WHERE run_id = ANY (v_runs);
        v_count := v_count + cardinality(v_runs);
    END IF;
    DELETE FROM outbox WHERE created_at < now() - p_outbox_ms * interval '1 millisecond';
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_count + v_n;
END $$;

-- Lock the live run, removing it first if it has expired. Raises DUR03 when there is none.
CREATE FUNCTION durable_lock_run(p_run text) RETURNS runs LANGUAGE plpgsql AS $$
DECLARE
    r runs;
BEGIN
    SELECT * INTO r FROM runs WHERE run_id = p_run FOR UPDATE;
    IF FOUND AND r.expires_at IS NOT NULL AND r.expires_at <= clock_timestamp() THEN
        DELETE FROM checkpoints WHERE run_id = p_run;
        DELETE FROM runs WHERE run_id = p_run;
        r := NULL;
    END IF;
    IF r.run_id IS NULL THEN
        RAISE EXCEPTION 'no run %', p_run USING ERRCODE = 'DUR03';
    END IF;
    RETURN r;
END $$;

CREATE FUNCTION durable_create_run(p_run text, p_status text, p_resource text, p_data text)
RETURNS SETOF runs LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := durable_now_ms();
BEGIN
    DELETE FROM checkpoints WHERE run_id = p_run
       AND EXISTS (SELECT 1 FROM runs WHERE run_id = p_run AND expires_at <= clock_timestamp());
    DELETE FROM runs WHERE run_id = p_run AND expires_at <= clock_timestamp();
    RETURN QUERY INSERT INTO runs (run_id, status, resource_id, created_at, updated_at, data)
         VALUES (p_run, p_status, p_resource, v_now, v_now, p_data)
    ON CONFLICT (run_id) DO NOTHING RETURNING *;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'run % already exists', p_run USING ERRCODE = 'DUR04';
    END IF;
END $$;

CREATE FUNCTION durable_claim(p_run text, p_owner text, p_ttl_ms bigint) RETURNS runs
LANGUAGE plpgsql AS $$
DECLARE
    r runs := durable_lock_run(p_run);
    v_now bigint := durable_now_ms();
BEGIN
    IF r.status IN ('completed', 'failed', 'aborted') THEN
        RAISE EXCEPTION 'run % is %', p_run, r.status USING ERRCODE = 'DUR05';
    END IF;
    IF r.owner IS NOT NULL AND r.lease_expires_at > v_now AND r.owner <> p_owner THEN
        RAISE EXCEPTION 'run % is leased by another owner', p_run USING ERRCODE = 'DUR04';
    END IF;
    UPDATE runs SET epoch = epoch + 1, owner = p_owner, lease_expires_at = v_now + p_ttl_ms,
                    updated_at = v_now
     WHERE run_id = p_run RETURNING * INTO r;
    RETURN r;
END $$;

CREATE FUNCTION durable_fence(r runs, p_epoch bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF r.epoch <> p_epoch THEN
        RAISE EXCEPTION 'epoch % is stale: run % is at epoch %', p_epoch, r.run_id, r.epoch
            USING ERRCODE = 'DUR01';
    END IF;
END $$;

CREATE FUNCTION durable_renew(p_run text, p_epoch bigint, p_owner text, p_ttl_ms bigint) RETURNS runs
LANGUAGE plpgsql AS $$
DECLARE
    r runs := durable_lock_run(p_run);
    v_now bigint := durable_now_ms();
BEGIN
    PERFORM durable_fence(r, p_epoch);
    UPDATE runs SET owner = p_owner, lease_expires_at = v_now + p_ttl_ms, updated_at = v_now
     WHERE run_id = p_run RETURNING * INTO r;
    RETURN r;
END $$;

CREATE FUNCTION durable_release(p_run text, p_epoch bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r runs := durable_lock_run(p_run);
BEGIN
    PERFORM durable_fence(r, p_epoch);
    UPDATE runs SET owner = NULL, lease_expires_at = NULL, updated_at = durable_now_ms()
     WHERE run_id = p_run;
END $$;

CREATE FUNCTION durable_checkpoint(p_run text, p_epoch bigint, p_key text, p_output text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r runs := durable_lock_run(p_run);
    v_out text;
BEGIN
    PERFORM durable_fence(r, p_epoch);
    INSERT INTO checkpoints (run_id, key, output) VALUES (p_run, p_key, p_output)
    ON CONFLICT (run_id, key) DO NOTHING;
    IF FOUND THEN
        UPDATE runs SET updated_at = durable_now_ms() WHERE run_id = p_run;
        RETURN p_output;
    END IF;
    SELECT output INTO v_out FROM checkpoints WHERE run_id = p_run AND key = p_key;
    RETURN v_out;
END $$;

CREATE FUNCTION durable_set_status(p_run text, p_epoch bigint, p_status text, p_data text) RETURNS runs
LANGUAGE plpgsql AS $$
DECLARE
    r runs := durable_lock_run(p_run);
    v_release boolean := p_status IN ('completed', 'failed', 'aborted', 'suspended');
BEGIN
    IF p_epoch IS NOT NULL THEN
        PERFORM durable_fence(r, p_epoch);
    END IF;
    IF r.status IN ('completed', 'failed', 'aborted') THEN
        RAISE EXCEPTION 'run % is already %', p_run, r.status USING ERRCODE = 'DUR05';
    END IF;
    UPDATE runs SET status = p_status, data = coalesce(p_data, data),
                    owner = CASE WHEN v_release THEN NULL ELSE owner END,
                    lease_expires_at = CASE WHEN v_release THEN NULL ELSE lease_expires_at END,
                    updated_at = durable_now_ms()
     WHERE run_id = p_run RETURNING * INTO r;
    RETURN r;
END $$;

CREATE FUNCTION durable_delete_run(p_run text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM runs WHERE run_id = p_run FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM checkpoints WHERE run_id = p_run;
    DELETE FROM runs WHERE run_id = p_run;
    RETURN true;
END $$;
