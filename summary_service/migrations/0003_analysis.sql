-- What the server computed from the trail (splits, best efforts...), once the trail is complete.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS analysis jsonb;
