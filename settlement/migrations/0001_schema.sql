-- The settlement service owns the schema "settlement" (settlements, processed feed events).
-- Tables arrive with the settlement issue, each in a new numbered migration.
CREATE SCHEMA IF NOT EXISTS settlement;
