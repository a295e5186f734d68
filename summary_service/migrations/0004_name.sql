-- What the runner calls the run; empty: the default from its start time (rows stored before names).
ALTER TABLE runs ADD COLUMN IF NOT EXISTS name text NOT NULL DEFAULT '';
