-- 001_initial_schema.down.sql
-- Purpose:    undo 001_initial_schema.up.sql: drop every table, the trigger function
--             and the security, viewer and annotation schemas.
--             WARNING: destroys all users, projects, roles and hanging protocols.
-- Depends on: 002_initial_seed_data and 003_add_mask_tables rolled back first
--             (the runner rolls back newest first).
-- Rollback:   this is the rollback of 001_initial_schema.up.sql.
--
-- The schemas are dropped without CASCADE: if anything not created by these
-- migrations was put in them, this rollback fails instead of destroying it.
-- Dropping a table drops its indexes, constraints and triggers with it.

-- Dropping is the point of a rollback file:
-- squawk-ignore-file ban-drop-table, ban-drop-function, ban-drop-schema

DROP TABLE IF EXISTS viewer.hanging_protocols;
DROP TABLE IF EXISTS security.project_role;
DROP TABLE IF EXISTS security.user_project;
DROP TABLE IF EXISTS security.projects;
DROP TABLE IF EXISTS security.users;
DROP TABLE IF EXISTS security.role_permission;
DROP TABLE IF EXISTS security.permissions;
DROP TABLE IF EXISTS security.roles;

DROP FUNCTION IF EXISTS security.set_updated_at();

DROP SCHEMA IF EXISTS annotation;
DROP SCHEMA IF EXISTS viewer;
DROP SCHEMA IF EXISTS security;
