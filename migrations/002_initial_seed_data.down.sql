-- 002_initial_seed_data.down.sql
-- Purpose:    undo 002_initial_seed_data.up.sql: delete exactly the seeded grants,
--             permissions and roles, matched by name.
-- Depends on: 003_add_mask_tables rolled back first (the runner rolls back newest
--             first).
-- Rollback:   this is the rollback of 002_initial_seed_data.up.sql.
--
-- Grants, memberships or project roles added later that still point at a seeded
-- role or permission make this rollback fail (foreign keys without CASCADE):
-- remove or reassign them first. Nothing but the seed rows is ever deleted here.

DELETE FROM security.role_permission rp
USING (VALUES
        ('SUPER_ADMIN',   'USER'),
        ('SUPER_ADMIN',   'PROJECT'),
        ('SUPER_ADMIN',   'STUDY'),
        ('SUPER_ADMIN',   'SERIES'),
        ('SUPER_ADMIN',   'INSTANCE'),
        ('SUPER_ADMIN',   'ANNOTATION'),
        ('SUPER_ADMIN',   'MASK'),
        ('SUPER_ADMIN',   'HANGING_PROTOCOL'),
        ('PROJECT_ADMIN', 'PROJECT'),
        ('PROJECT_ADMIN', 'STUDY'),
        ('PROJECT_ADMIN', 'SERIES'),
        ('PROJECT_ADMIN', 'INSTANCE'),
        ('PROJECT_ADMIN', 'ANNOTATION'),
        ('PROJECT_ADMIN', 'MASK'),
        ('PROJECT_ADMIN', 'HANGING_PROTOCOL'),
        ('RESEARCHER',    'STUDY'),
        ('RESEARCHER',    'SERIES'),
        ('RESEARCHER',    'INSTANCE'),
        ('RESEARCHER',    'ANNOTATION'),
        ('RESEARCHER',    'MASK'),
        ('RESEARCHER',    'HANGING_PROTOCOL'),
        ('VIEWER',        'STUDY'),
        ('VIEWER',        'SERIES'),
        ('VIEWER',        'INSTANCE'),
        ('VIEWER',        'HANGING_PROTOCOL'),
        ('ANNOTATOR',     'STUDY'),
        ('ANNOTATOR',     'SERIES'),
        ('ANNOTATOR',     'INSTANCE'),
        ('ANNOTATOR',     'ANNOTATION'),
        ('ANNOTATOR',     'MASK')
     ) AS g (role_name, permission_name),
     security.roles r,
     security.permissions p
WHERE r.name = g.role_name
  AND p.name = g.permission_name
  AND rp.role_id = r.id
  AND rp.permission_id = p.id;

DELETE FROM security.permissions
WHERE name IN ('USER', 'PROJECT', 'STUDY', 'SERIES', 'INSTANCE',
               'ANNOTATION', 'MASK', 'HANGING_PROTOCOL');

DELETE FROM security.roles
WHERE name IN ('SUPER_ADMIN', 'PROJECT_ADMIN', 'RESEARCHER', 'VIEWER', 'ANNOTATOR');
