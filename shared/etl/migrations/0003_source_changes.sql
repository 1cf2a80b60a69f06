-- How many writes MongoDB had counted when each run started: a run that finds the same count
-- as the last successful one has nothing to read.
ALTER TABLE etl_run ADD COLUMN source_changes bigint;
