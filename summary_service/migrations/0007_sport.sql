-- The sport an imported file declared ("running", "cycling"...); empty: none declared (and every run
-- recorded by the phone). Personal records count only "running" and empty.
ALTER TABLE runs ADD COLUMN IF NOT EXISTS sport text NOT NULL DEFAULT '';
