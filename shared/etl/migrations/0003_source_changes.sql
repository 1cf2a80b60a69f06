-- How many writes MongoDB had counted when each run started, and whether the run skipped its
-- reads because that count had not moved since the last run that read.
ALTER TABLE etl_run ADD COLUMN source_changes bigint;
ALTER TABLE etl_run ADD COLUMN skipped_reads boolean NOT NULL DEFAULT false;

-- The reader role may create nothing in `public` (PostgreSQL 15 made this the default; older
-- servers, such as Azure's 11-14, still grant CREATE there to everyone).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
