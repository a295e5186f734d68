-- Secrets the replicas share and no client knows: made once by the first replica that needs one
-- (import ids are derived with the `import_ids` key, so nobody can compute another runner's).
CREATE TABLE IF NOT EXISTS server_keys (
    name text PRIMARY KEY,
    key bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
