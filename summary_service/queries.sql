-- name: insert_run
INSERT INTO runs (run_id, user_id, start_time, end_time, distance_m, moving_time_us,
                  elevation_gain_m, point_count, avg_heart_rate_bpm, polyline)
VALUES (%(run_id)s, %(user_id)s, %(start_time)s, %(end_time)s, %(distance_m)s, %(moving_time_us)s,
        %(elevation_gain_m)s, %(point_count)s, %(avg_heart_rate_bpm)s, %(polyline)s)
ON CONFLICT (run_id) DO NOTHING
RETURNING *;

-- name: get_run
SELECT * FROM runs WHERE run_id = %(run_id)s;

-- name: list_runs_first
SELECT * FROM runs WHERE user_id = %(user_id)s
ORDER BY start_time DESC, run_id DESC
LIMIT %(limit)s;

-- name: list_runs_after
SELECT * FROM runs
WHERE user_id = %(user_id)s AND (start_time, run_id) < (%(start_time)s, %(run_id)s)
ORDER BY start_time DESC, run_id DESC
LIMIT %(limit)s;

-- Weeks start on Monday in the asked zone; each week's bounds are local midnights turned
-- into instants, so a week with a DST change is 167 or 169 hours long, as it should be.
-- name: user_stats
WITH weeks AS (
    SELECT (date_trunc('week', now() AT TIME ZONE %(tz)s)::date - 7 * g) AS week_start
    FROM generate_series(0, %(weeks)s - 1) AS g
),
bounds AS (
    SELECT week_start,
           (week_start::timestamp AT TIME ZONE %(tz)s) AS lo,
           ((week_start + 7)::timestamp AT TIME ZONE %(tz)s) AS hi
    FROM weeks
),
totals AS (
    SELECT count(*) AS total_runs, coalesce(sum(distance_m), 0) AS total_distance_m
    FROM runs WHERE user_id = %(user_id)s
)
SELECT b.week_start,
       count(r.run_id) AS run_count,
       coalesce(sum(r.distance_m), 0) AS distance_m,
       coalesce(sum(r.moving_time_us), 0)::bigint AS moving_time_us,
       coalesce(sum(r.elevation_gain_m), 0) AS elevation_gain_m,
       t.total_runs,
       t.total_distance_m
FROM bounds b
CROSS JOIN totals t
LEFT JOIN runs r ON r.user_id = %(user_id)s AND r.start_time >= b.lo AND r.start_time < b.hi
GROUP BY b.week_start, t.total_runs, t.total_distance_m
ORDER BY b.week_start;

-- name: ping
SELECT 1;
