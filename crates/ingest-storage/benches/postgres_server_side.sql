-- What PostgreSQL itself can do with the writer's statements, with no client
-- in the way (docs/benchmarks.md, "Storage floor"): 100,000 rows, COPY
-- against INSERT … ON CONFLICT DO NOTHING in 5000-row transactions, for the
-- unpartitioned schema (m0002) and the partitioned one with its key table
-- (m0003). Run on an empty scratch database:
--   psql -h 127.0.0.1 -U postgres -d scratch -q -f postgres_server_side.sql
\set ON_ERROR_STOP on
DROP TABLE IF EXISTS flat, parted, parted_keys, src;
CREATE TABLE flat (
  organization_id varchar NOT NULL, request_id uuid NOT NULL, project_id varchar, user_id varchar,
  provider varchar NOT NULL, model_name varchar NOT NULL, model_version varchar, context_window bigint,
  prompt_tokens bigint NOT NULL, completion_tokens bigint NOT NULL, total_tokens bigint NOT NULL,
  cached_tokens bigint, reasoning_tokens bigint, latency_ms double precision, time_to_first_token_ms double precision,
  tags jsonb NOT NULL, metadata jsonb, occurred_at timestamptz NOT NULL, received_at timestamptz NOT NULL,
  source varchar(16) NOT NULL, PRIMARY KEY (organization_id, request_id));
CREATE INDEX ON flat (organization_id, occurred_at);
CREATE TABLE parted (LIKE flat INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (occurred_at);
ALTER TABLE parted ADD PRIMARY KEY (organization_id, occurred_at, request_id);
CREATE TABLE parted_default PARTITION OF parted DEFAULT;
DO $$ DECLARE m timestamp; BEGIN
  FOR m IN SELECT generate_series(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month',
                                  date_trunc('month', now() AT TIME ZONE 'UTC'), interval '1 month') LOOP
    EXECUTE format('CREATE TABLE %I PARTITION OF parted FOR VALUES FROM (%L) TO (%L)',
      to_char(m, '"parted_"YYYY"m"MM'), m::text || '+00', (m + interval '1 month')::text || '+00');
  END LOOP; END $$;
CREATE TABLE parted_keys (organization_id varchar NOT NULL, request_id uuid NOT NULL,
  occurred_at timestamptz NOT NULL, PRIMARY KEY (organization_id, request_id));
CREATE UNLOGGED TABLE src AS SELECT i AS n, 'org-' || (i % 50) AS organization_id, gen_random_uuid() AS request_id,
  'proj-' || (i % 7) AS project_id, 'user-' || (i % 100) AS user_id, 'openai'::varchar AS provider,
  'gpt-4o'::varchar AS model_name, '2024-08-06'::varchar AS model_version, 128000::bigint AS context_window,
  (i % 1000)::bigint AS prompt_tokens, (i % 500)::bigint AS completion_tokens,
  (i % 1000 + i % 500)::bigint AS total_tokens, 10::bigint AS cached_tokens, NULL::bigint AS reasoning_tokens,
  812.5::float8 AS latency_ms, 120.0::float8 AS time_to_first_token_ms, '["test"]'::jsonb AS tags,
  jsonb_build_object('i', i) AS metadata, now() - (i || ' seconds')::interval AS occurred_at,
  now() AS received_at, 'http'::varchar AS source
  FROM generate_series(1, 100000) i;
CREATE INDEX ON src (n);
\copy (SELECT organization_id, request_id, project_id, user_id, provider, model_name, model_version, context_window, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, latency_ms, time_to_first_token_ms, tags, metadata, occurred_at, received_at, source FROM src) TO '/tmp/ingestd_rows.bin' WITH (FORMAT binary)
\copy (SELECT organization_id, request_id, occurred_at FROM src) TO '/tmp/ingestd_keys.bin' WITH (FORMAT binary)
CREATE OR REPLACE PROCEDURE insert_flat(sz int) LANGUAGE plpgsql AS $$
DECLARE i int := 0; BEGIN
  WHILE i < 100000 LOOP
    INSERT INTO flat SELECT organization_id, request_id, project_id, user_id, provider, model_name, model_version,
      context_window, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens, latency_ms,
      time_to_first_token_ms, tags, metadata, occurred_at, received_at, source
      FROM src WHERE n > i AND n <= i + sz ON CONFLICT DO NOTHING;
    COMMIT; i := i + sz; END LOOP; END $$;
CREATE OR REPLACE PROCEDURE insert_parted(sz int) LANGUAGE plpgsql AS $$
DECLARE i int := 0; BEGIN
  WHILE i < 100000 LOOP
    WITH t AS MATERIALIZED (SELECT * FROM src WHERE n > i AND n <= i + sz),
    k AS (INSERT INTO parted_keys SELECT organization_id, request_id, occurred_at FROM t
          ON CONFLICT DO NOTHING RETURNING organization_id, request_id)
    INSERT INTO parted SELECT t.organization_id, t.request_id, project_id, user_id, provider, model_name,
      model_version, context_window, prompt_tokens, completion_tokens, total_tokens, cached_tokens, reasoning_tokens,
      latency_ms, time_to_first_token_ms, tags, metadata, occurred_at, received_at, source
      FROM t JOIN k ON k.organization_id = t.organization_id AND k.request_id = t.request_id;
    COMMIT; i := i + sz; END LOOP; END $$;
CHECKPOINT;
\echo m0002 schema: COPY into the table, then INSERT … ON CONFLICT DO NOTHING (5000-row transactions)
TRUNCATE flat;
\timing on
\copy flat FROM '/tmp/ingestd_rows.bin' WITH (FORMAT binary)
\timing off
TRUNCATE flat;
\timing on
CALL insert_flat(5000);
\timing off
\echo m0003 schema: COPY into usage_records, COPY into the key table, then the writer's statement (5000-row transactions)
TRUNCATE parted, parted_keys;
\timing on
\copy parted FROM '/tmp/ingestd_rows.bin' WITH (FORMAT binary)
\copy parted_keys FROM '/tmp/ingestd_keys.bin' WITH (FORMAT binary)
\timing off
TRUNCATE parted, parted_keys;
\timing on
CALL insert_parted(5000);
\timing off
DROP TABLE flat, parted, parted_keys, src;
DROP PROCEDURE insert_flat, insert_parted;
