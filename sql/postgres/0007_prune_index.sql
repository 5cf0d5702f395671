-- 0007_prune_index: retention (`prune`, `retention_days`) finds finished runs oldest first.
--
-- Numbered 0007: 0005 and 0006 belong to changes made at the same time.
CREATE INDEX runs_finished_at ON runs (finished_at) WHERE finished_at IS NOT NULL;
