-- 002_initial_seed_data.up.sql
-- Purpose:    seed the role and permission catalogue and the default grants.
--             Permissions are one row per protected resource type; what a role
--             may do with a resource (read/write) is decided by the application
--             from the role.
-- Depends on: 001_initial_schema.up.sql (security.roles, security.permissions,
--             security.role_permission).
-- Rollback:   002_initial_seed_data.down.sql
--
-- Plain INSERTs on purpose (no ON CONFLICT): the runner applies this file exactly
-- once, and a duplicate means the database was not built by these migrations.
-- Rows are matched by name, never by id: identity values are not reused after a
-- rollback.

INSERT INTO security.roles (name, description) VALUES
    ('SUPER_ADMIN',   'Super administrator with full access to every project and user'),
    ('PROJECT_ADMIN', 'Project administrator: manages a project, its members and data'),
    ('RESEARCHER',    'Researcher: works with the studies, annotations and masks of a project'),
    ('VIEWER',        'Viewer: read-only access to the studies of a project'),
    ('ANNOTATOR',     'Annotator: creates annotations and masks on the studies of a project');

INSERT INTO security.permissions (name, description) VALUES
    ('USER',             'Access to user accounts'),
    ('PROJECT',          'Access to projects and project membership'),
    ('STUDY',            'Access to DICOM studies'),
    ('SERIES',           'Access to DICOM series'),
    ('INSTANCE',         'Access to DICOM instances'),
    ('ANNOTATION',       'Access to annotations'),
    ('MASK',             'Access to segmentation masks'),
    ('HANGING_PROTOCOL', 'Access to viewer hanging protocols');

-- Default grants (30 rows):
--   SUPER_ADMIN    all 8
--   PROJECT_ADMIN  all but USER
--   RESEARCHER     STUDY SERIES INSTANCE ANNOTATION MASK HANGING_PROTOCOL
--   VIEWER         STUDY SERIES INSTANCE HANGING_PROTOCOL
--   ANNOTATOR      STUDY SERIES INSTANCE ANNOTATION MASK
INSERT INTO security.role_permission (role_id, permission_id)
SELECT r.id, p.id
FROM (VALUES
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
     ) AS g (role_name, permission_name)
JOIN security.roles r ON r.name = g.role_name
JOIN security.permissions p ON p.name = g.permission_name;

-- A misspelt name above would silently drop a grant through the JOIN: fail instead.
DO $$
DECLARE
    granted bigint;
BEGIN
    SELECT count(*) INTO granted FROM security.role_permission;
    IF granted <> 30 THEN
        RAISE EXCEPTION '002_initial_seed_data: expected 30 role_permission rows, found %', granted;
    END IF;
END;
$$;
