-- 001_initial_schema.up.sql
-- Purpose:    initial PACS Extension Server schema: the security, viewer and
--             annotation schemas; users, projects, roles, permissions and their
--             links (security); hanging protocols (viewer). The annotation schema
--             is created empty here and filled by 003_add_mask_tables.up.sql.
-- Depends on: nothing (first migration).
-- Rollback:   001_initial_schema.down.sql
--
-- Locking: every table below is new, so no existing traffic is blocked. The runner
-- sets lock_timeout (MIGRATE_DDL_LOCK_TIMEOUT) itself; do not add SET statements here.
-- When applying by hand with psql, set it in the session first, e.g.
--   PGOPTIONS='-c lock_timeout=5s' psql -X -1 -v ON_ERROR_STOP=1 -f 001_initial_schema.up.sql
--
-- Objects are created without IF NOT EXISTS on purpose: a database that already
-- has this schema (built by the old psql init containers) must be adopted with
-- `migration-runner baseline --to N`, not silently re-applied.

CREATE SCHEMA security;
CREATE SCHEMA viewer;
CREATE SCHEMA annotation;

COMMENT ON SCHEMA security IS 'PACS Extension Server: users, projects, roles and permissions';
COMMENT ON SCHEMA viewer IS 'PACS Extension Server: viewer settings such as hanging protocols';
COMMENT ON SCHEMA annotation IS 'PACS Extension Server: annotations and segmentation masks';

-- Keeps updated_at current on every UPDATE (used by the tables of all three schemas).
CREATE FUNCTION security.set_updated_at() RETURNS trigger
    LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- ---------------------------------------------------------------------------
-- security.roles: the role catalogue (seeded by 002).
-- ---------------------------------------------------------------------------
CREATE TABLE security.roles (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    name        text        NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_roles PRIMARY KEY (id),
    CONSTRAINT uq_roles_name UNIQUE (name),
    CONSTRAINT ck_roles_name CHECK (name ~ '^[A-Z][A-Z0-9_]{0,49}$')
);

CREATE TRIGGER trg_roles_set_updated_at
    BEFORE UPDATE ON security.roles
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();

-- ---------------------------------------------------------------------------
-- security.permissions: one row per protected resource type (seeded by 002).
-- ---------------------------------------------------------------------------
CREATE TABLE security.permissions (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    name        text        NOT NULL,
    description text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_permissions PRIMARY KEY (id),
    CONSTRAINT uq_permissions_name UNIQUE (name),
    CONSTRAINT ck_permissions_name CHECK (name ~ '^[A-Z][A-Z0-9_]{0,49}$')
);

CREATE TRIGGER trg_permissions_set_updated_at
    BEFORE UPDATE ON security.permissions
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();

-- ---------------------------------------------------------------------------
-- security.role_permission: which role is granted which permission.
-- A role or permission that is still granted cannot be deleted (NO ACTION).
-- ---------------------------------------------------------------------------
CREATE TABLE security.role_permission (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    role_id       bigint      NOT NULL,
    permission_id bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_role_permission PRIMARY KEY (id),
    CONSTRAINT uq_role_permission UNIQUE (role_id, permission_id),
    CONSTRAINT fk_role_permission_role
        FOREIGN KEY (role_id) REFERENCES security.roles (id),
    CONSTRAINT fk_role_permission_permission
        FOREIGN KEY (permission_id) REFERENCES security.permissions (id)
);

-- role_id is covered by uq_role_permission (leading column).
CREATE INDEX idx_role_permission_permission_id ON security.role_permission (permission_id);

CREATE TRIGGER trg_role_permission_set_updated_at
    BEFORE UPDATE ON security.role_permission
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();

-- ---------------------------------------------------------------------------
-- security.users: application users; authentication lives in the identity
-- provider (Keycloak), keycloak_id is its subject.
-- ---------------------------------------------------------------------------
CREATE TABLE security.users (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    keycloak_id  uuid,
    username     text        NOT NULL,
    email        text        NOT NULL,
    display_name text,
    is_active    boolean     NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_users PRIMARY KEY (id),
    CONSTRAINT uq_users_keycloak_id UNIQUE (keycloak_id),
    CONSTRAINT uq_users_username UNIQUE (username),
    CONSTRAINT uq_users_email UNIQUE (email),
    CONSTRAINT ck_users_username CHECK (char_length(username) BETWEEN 1 AND 100),
    CONSTRAINT ck_users_email CHECK (char_length(email) <= 254 AND email LIKE '_%@_%'),
    CONSTRAINT ck_users_display_name CHECK (char_length(display_name) <= 200)
);

CREATE TRIGGER trg_users_set_updated_at
    BEFORE UPDATE ON security.users
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();

-- ---------------------------------------------------------------------------
-- security.projects: a research project groups studies, members and masks.
-- ---------------------------------------------------------------------------
CREATE TABLE security.projects (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    name        text        NOT NULL,
    description text,
    is_active   boolean     NOT NULL DEFAULT true,
    created_by  bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_projects PRIMARY KEY (id),
    CONSTRAINT uq_projects_name UNIQUE (name),
    CONSTRAINT ck_projects_name CHECK (char_length(name) BETWEEN 1 AND 255),
    CONSTRAINT fk_projects_created_by
        FOREIGN KEY (created_by) REFERENCES security.users (id) ON DELETE SET NULL
);

CREATE INDEX idx_projects_created_by ON security.projects (created_by);

CREATE TRIGGER trg_projects_set_updated_at
    BEFORE UPDATE ON security.projects
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();

-- ---------------------------------------------------------------------------
-- security.user_project: project membership, with the member's role in that
-- project (NULL: a member without a project role).
-- ---------------------------------------------------------------------------
CREATE TABLE security.user_project (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    user_id    bigint      NOT NULL,
    project_id bigint      NOT NULL,
    role_id    bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_user_project PRIMARY KEY (id),
    CONSTRAINT uq_user_project UNIQUE (user_id, project_id),
    CONSTRAINT fk_user_project_user
        FOREIGN KEY (user_id) REFERENCES security.users (id) ON DELETE CASCADE,
    CONSTRAINT fk_user_project_project
        FOREIGN KEY (project_id) REFERENCES security.projects (id) ON DELETE CASCADE,
    CONSTRAINT fk_user_project_role
        FOREIGN KEY (role_id) REFERENCES security.roles (id)
);

-- user_id is covered by uq_user_project (leading column).
CREATE INDEX idx_user_project_project_id ON security.user_project (project_id);
CREATE INDEX idx_user_project_role_id ON security.user_project (role_id);

CREATE TRIGGER trg_user_project_set_updated_at
    BEFORE UPDATE ON security.user_project
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();

-- ---------------------------------------------------------------------------
-- security.project_role: the roles that can be assigned within a project.
-- ---------------------------------------------------------------------------
CREATE TABLE security.project_role (
    id         bigint GENERATED ALWAYS AS IDENTITY,
    project_id bigint      NOT NULL,
    role_id    bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_project_role PRIMARY KEY (id),
    CONSTRAINT uq_project_role UNIQUE (project_id, role_id),
    CONSTRAINT fk_project_role_project
        FOREIGN KEY (project_id) REFERENCES security.projects (id) ON DELETE CASCADE,
    CONSTRAINT fk_project_role_role
        FOREIGN KEY (role_id) REFERENCES security.roles (id)
);

-- project_id is covered by uq_project_role (leading column).
CREATE INDEX idx_project_role_role_id ON security.project_role (role_id);

CREATE TRIGGER trg_project_role_set_updated_at
    BEFORE UPDATE ON security.project_role
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();

-- ---------------------------------------------------------------------------
-- viewer.hanging_protocols: how the viewer lays out series for a kind of study.
-- project_id NULL: available in every project.
-- ---------------------------------------------------------------------------
CREATE TABLE viewer.hanging_protocols (
    id          bigint GENERATED ALWAYS AS IDENTITY,
    project_id  bigint,
    name        text        NOT NULL,
    description text,
    modality    text,
    body_part   text,
    -- squawk-ignore prefer-bigint-over-smallint -- a viewport grid, 1..16 (CHECK below)
    layout_rows smallint    NOT NULL DEFAULT 1,
    -- squawk-ignore prefer-bigint-over-smallint -- a viewport grid, 1..16 (CHECK below)
    layout_cols smallint    NOT NULL DEFAULT 1,
    rules       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    is_default  boolean     NOT NULL DEFAULT false,
    created_by  bigint,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_hanging_protocols PRIMARY KEY (id),
    CONSTRAINT uq_hanging_protocols_project_name UNIQUE NULLS NOT DISTINCT (project_id, name),
    CONSTRAINT ck_hanging_protocols_name CHECK (char_length(name) BETWEEN 1 AND 255),
    -- DICOM code strings (VR CS): upper case, digits, space, underscore; at most 16.
    CONSTRAINT ck_hanging_protocols_modality CHECK (modality ~ '^[A-Z0-9_ ]{1,16}$'),
    CONSTRAINT ck_hanging_protocols_body_part CHECK (body_part ~ '^[A-Z0-9_ ]{1,16}$'),
    CONSTRAINT ck_hanging_protocols_layout CHECK (layout_rows BETWEEN 1 AND 16
                                                  AND layout_cols BETWEEN 1 AND 16),
    CONSTRAINT fk_hanging_protocols_project
        FOREIGN KEY (project_id) REFERENCES security.projects (id) ON DELETE CASCADE,
    CONSTRAINT fk_hanging_protocols_created_by
        FOREIGN KEY (created_by) REFERENCES security.users (id) ON DELETE SET NULL
);

-- project_id is covered by uq_hanging_protocols_project_name (leading column).
CREATE INDEX idx_hanging_protocols_created_by ON viewer.hanging_protocols (created_by);

CREATE TRIGGER trg_hanging_protocols_set_updated_at
    BEFORE UPDATE ON viewer.hanging_protocols
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();
