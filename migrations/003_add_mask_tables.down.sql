-- 003_add_mask_tables.down.sql
-- Purpose:    undo 003_add_mask_tables.up.sql: drop annotation.masks and
--             annotation.mask_groups (their indexes, constraints and triggers go
--             with them). WARNING: destroys all mask records.
-- Depends on: nothing newer applied (the runner rolls back newest first).
-- Rollback:   this is the rollback of 003_add_mask_tables.up.sql.

-- Dropping is the point of a rollback file:
-- squawk-ignore-file ban-drop-table

DROP TABLE IF EXISTS annotation.masks;
DROP TABLE IF EXISTS annotation.mask_groups;
