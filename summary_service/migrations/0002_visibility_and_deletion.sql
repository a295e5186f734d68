-- Sharing: a run is PRIVATE (1) until its owner makes it PUBLIC (2).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS visibility smallint NOT NULL DEFAULT 1;

-- Another runner's list shows only the PUBLIC runs: their own index, newest first.
CREATE INDEX IF NOT EXISTS runs_public_by_user_newest ON runs (user_id, start_time DESC, run_id DESC)
    WHERE visibility = 2;

-- Runs deleted for good, and by whom: a late STOP RUN for one is refused.
CREATE TABLE IF NOT EXISTS deleted_runs (
    run_id     uuid PRIMARY KEY,
    user_id    text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
