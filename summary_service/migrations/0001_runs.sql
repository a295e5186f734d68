-- The dashboard's runs: one row per run, written once at STOP RUN.
CREATE TABLE IF NOT EXISTS runs (
    run_id             uuid PRIMARY KEY,
    user_id            text NOT NULL,
    start_time         timestamptz NOT NULL,
    end_time           timestamptz NOT NULL,
    distance_m         double precision NOT NULL,
    moving_time_us     bigint NOT NULL,
    elevation_gain_m   double precision NOT NULL,
    point_count        bigint NOT NULL,
    avg_heart_rate_bpm double precision,
    polyline           text NOT NULL DEFAULT '',
    stopped_at         timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A user's runs newest first (ListRuns keyset pages, GetUserStats week ranges).
CREATE INDEX IF NOT EXISTS runs_by_user_newest ON runs (user_id, start_time DESC, run_id DESC);
