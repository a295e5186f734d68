-- Stores the run unless it exists or was deleted.
-- name: insert_run
INSERT INTO runs (run_id, user_id, start_time, end_time, distance_m, moving_time_us,
                  elevation_gain_m, point_count, avg_heart_rate_bpm, polyline, name, sport)
SELECT %(run_id)s::uuid, %(user_id)s::text, %(start_time)s::timestamptz, %(end_time)s::timestamptz,
       %(distance_m)s::double precision, %(moving_time_us)s::bigint, %(elevation_gain_m)s::double precision,
       %(point_count)s::bigint, %(avg_heart_rate_bpm)s::double precision, %(polyline)s::text, %(name)s::text,
       %(sport)s::text
WHERE NOT EXISTS (SELECT 1 FROM deleted_runs WHERE run_id = %(run_id)s)
ON CONFLICT (run_id) DO NOTHING
RETURNING *;

-- name: get_run
SELECT * FROM runs WHERE run_id = %(run_id)s;

-- name: list_runs_first
SELECT * FROM runs WHERE user_id = %(user_id)s
ORDER BY start_time DESC, run_id DESC
LIMIT %(limit)s;

-- name: list_public_runs_first
SELECT * FROM runs WHERE user_id = %(user_id)s AND visibility = 2
ORDER BY start_time DESC, run_id DESC
LIMIT %(limit)s;

-- name: list_public_runs_after
SELECT * FROM runs
WHERE user_id = %(user_id)s AND visibility = 2 AND (start_time, run_id) < (%(start_time)s, %(run_id)s)
ORDER BY start_time DESC, run_id DESC
LIMIT %(limit)s;

-- name: list_runs_after
SELECT * FROM runs
WHERE user_id = %(user_id)s AND (start_time, run_id) < (%(start_time)s, %(run_id)s)
ORDER BY start_time DESC, run_id DESC
LIMIT %(limit)s;

-- Weeks start on Monday in the asked zone: a run counts in the week of its local start date,
-- and the window starts at the local midnight of the oldest Monday, so weeks with a DST change
-- are bucketed right. One index range scan of the user's runs, grouped, joined to every week.
-- name: user_stats
WITH bounds AS (
    SELECT date_trunc('week', now() AT TIME ZONE %(tz)s)::date AS this_monday
),
per_week AS (
    SELECT date_trunc('week', r.start_time AT TIME ZONE %(tz)s)::date AS week_start,
           count(*) AS run_count,
           sum(r.distance_m) AS distance_m,
           sum(r.moving_time_us) AS moving_time_us,
           sum(r.elevation_gain_m) AS elevation_gain_m
    FROM runs r, bounds b
    WHERE r.user_id = %(user_id)s
      AND r.start_time >= ((b.this_monday - 7 * (%(weeks)s - 1))::timestamp AT TIME ZONE %(tz)s)
    GROUP BY 1
),
totals AS (
    SELECT count(*) AS total_runs, coalesce(sum(distance_m), 0) AS total_distance_m
    FROM runs WHERE user_id = %(user_id)s
)
SELECT w.week_start,
       coalesce(p.run_count, 0) AS run_count,
       coalesce(p.distance_m, 0) AS distance_m,
       coalesce(p.moving_time_us, 0)::bigint AS moving_time_us,
       coalesce(p.elevation_gain_m, 0) AS elevation_gain_m,
       t.total_runs,
       t.total_distance_m
FROM bounds b
CROSS JOIN generate_series(%(weeks)s - 1, 0, -1) AS g
CROSS JOIN LATERAL (SELECT (b.this_monday - 7 * g) AS week_start) AS w
LEFT JOIN per_week p ON p.week_start = w.week_start
CROSS JOIN totals t
ORDER BY w.week_start;

-- name: set_visibility
UPDATE runs SET visibility = %(visibility)s WHERE run_id = %(run_id)s RETURNING *;

-- Removes the dashboard's row and remembers the deletion, in one statement.
-- name: delete_run
WITH gone AS (DELETE FROM runs WHERE run_id = %(run_id)s RETURNING run_id)
INSERT INTO deleted_runs (run_id, user_id) VALUES (%(run_id)s, %(user_id)s)
ON CONFLICT (run_id) DO NOTHING;

-- name: deleted_by
SELECT user_id FROM deleted_runs WHERE run_id = %(run_id)s;

-- name: ping
SELECT 1;

-- An analysis of fewer points never replaces one of more (two computed at once, one with late points).
-- name: set_analysis
UPDATE runs SET analysis = %(analysis)s::jsonb
WHERE run_id = %(run_id)s
  AND (analysis IS NULL OR COALESCE((analysis->>'point_count')::int, 0) <= %(point_count)s)
RETURNING run_id;

-- Every time a runner's best effort over a distance improved, oldest first: an effort is an
-- improvement when it beats every earlier run's (by start time). Computed from the runs that exist,
-- so a deleted run's efforts are gone and the next best is the record again. Only runs whose sport
-- holds records (running, or none declared): a ride or a drive declared as such sets none.
-- name: record_improvements
WITH efforts AS (
    SELECT r.run_id, r.start_time, e->>'name' AS name, (e->>'distance_m')::double precision AS distance_m,
           (e->>'elapsed_s')::double precision AS elapsed_s
    FROM runs r CROSS JOIN LATERAL jsonb_array_elements(r.analysis->'best_efforts') e
    JOIN jsonb_each_text(%(max_mps)s::jsonb) cap ON cap.key = e->>'name'
    WHERE r.user_id = %(user_id)s AND r.analysis IS NOT NULL AND r.sport = ANY(%(record_sports)s::text[])
      -- only efforts at a speed a runner can reach: a drive around town sets no 1 km record
      AND (e->>'elapsed_s')::double precision > 0
      AND (e->>'distance_m')::double precision / (e->>'elapsed_s')::double precision <= cap.value::double precision
), ranked AS (
    SELECT *, min(elapsed_s) OVER (PARTITION BY name ORDER BY start_time, run_id
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS best_before
    FROM efforts
)
SELECT run_id, start_time, name, distance_m, elapsed_s FROM ranked
WHERE best_before IS NULL OR elapsed_s < best_before
ORDER BY distance_m, start_time, run_id;

-- name: set_name
UPDATE runs SET name = %(name)s WHERE run_id = %(run_id)s RETURNING *;

-- name: add_server_key
INSERT INTO server_keys (name, key) VALUES (%(name)s, %(key)s) ON CONFLICT (name) DO NOTHING;

-- name: server_key
SELECT key FROM server_keys WHERE name = %(name)s;

-- name: set_share_health
UPDATE runs SET share_health = %(share_health)s WHERE run_id = %(run_id)s RETURNING *;
