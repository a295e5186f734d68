-- The phone's point queue (SqlitePointQueue). Every point of a run stays until the run is forgotten
-- (stopped and all of it durable on the server): the overview is computed from the whole trail. A
-- point is waiting while its seq is above the run's durable_seq.

-- name: create_runs
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    phase        TEXT NOT NULL,
    last_seq     INTEGER NOT NULL DEFAULT 0,
    durable_seq  INTEGER NOT NULL DEFAULT 0,
    stop_request BLOB
);

-- name: create_points
CREATE TABLE IF NOT EXISTS points (
    run_id TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    point  BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- Cursors only move forward: a late answer never takes back what a newer one said.
-- name: save_run
INSERT INTO runs (run_id, user_id, phase, last_seq, durable_seq, stop_request)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (run_id) DO UPDATE SET
    user_id = excluded.user_id,
    phase = excluded.phase,
    last_seq = MAX(runs.last_seq, excluded.last_seq),
    durable_seq = MAX(runs.durable_seq, excluded.durable_seq),
    stop_request = excluded.stop_request;

-- name: get_run
SELECT run_id, user_id, phase, last_seq, durable_seq, stop_request FROM runs WHERE run_id = ?;

-- name: list_runs
SELECT run_id, user_id, phase, last_seq, durable_seq, stop_request FROM runs ORDER BY rowid;

-- A seq is the point's key, as on the server: the same seq again replaces it.
-- name: append_point
INSERT OR REPLACE INTO points (run_id, seq, point) VALUES (?, ?, ?);

-- name: raise_last_seq
UPDATE runs SET last_seq = MAX(last_seq, ?) WHERE run_id = ?;

-- name: unacknowledged
SELECT p.point FROM points p JOIN runs r ON r.run_id = p.run_id
WHERE p.run_id = ? AND p.seq > MAX(?, r.durable_seq)
ORDER BY p.seq
LIMIT ?;

-- name: acknowledge
UPDATE runs SET durable_seq = MAX(durable_seq, ?) WHERE run_id = ?;

-- name: pending_count
SELECT COUNT(*) FROM points p JOIN runs r ON r.run_id = p.run_id
WHERE p.run_id = ? AND p.seq > r.durable_seq;

-- name: pending_runs
SELECT r.run_id FROM runs r
WHERE EXISTS (SELECT 1 FROM points p WHERE p.run_id = r.run_id AND p.seq > r.durable_seq)
ORDER BY r.rowid;

-- name: trail
SELECT point FROM points WHERE run_id = ? ORDER BY seq;

-- name: forget_points
DELETE FROM points WHERE run_id = ?;

-- name: forget_run
DELETE FROM runs WHERE run_id = ?;
