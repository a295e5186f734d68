-- Whether heart rate and cadence reach anyone but the owner: not unless the owner says so.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS share_health boolean NOT NULL DEFAULT false;
