-- 003_add_mask_tables.up.sql
-- Purpose:    segmentation masks: annotation.mask_groups (a set of masks drawn on
--             one study or series of a project) and annotation.masks (one mask
--             file per DICOM instance / frame / label).
-- Depends on: 001_initial_schema.up.sql (annotation schema, security.projects,
--             security.users, security.set_updated_at()).
-- Rollback:   003_add_mask_tables.down.sql
--
-- Locking: both tables are new. Their foreign keys briefly take a SHARE ROW
-- EXCLUSIVE lock on security.projects and security.users (writes wait, reads do
-- not); the runner's lock_timeout (MIGRATE_DDL_LOCK_TIMEOUT) makes that fail fast
-- and retry instead of queueing behind a long transaction. No SET statements here.
--
-- DICOM UIDs are at most 64 characters (PS3.5 section 9.1), hence varchar(64).

-- ---------------------------------------------------------------------------
-- annotation.mask_groups
-- series_instance_uid NULL: the group spans the whole study.
-- ---------------------------------------------------------------------------
CREATE TABLE annotation.mask_groups (
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    project_id          bigint      NOT NULL,
    -- squawk-ignore prefer-text-field -- a DICOM UID is at most 64 characters
    study_instance_uid  varchar(64) NOT NULL,
    -- squawk-ignore prefer-text-field -- a DICOM UID is at most 64 characters
    series_instance_uid varchar(64),
    name                text        NOT NULL,
    description         text,
    modality            text,
    mask_type           text        NOT NULL DEFAULT 'segmentation',
    ai_model            text,
    created_by          bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_mask_groups PRIMARY KEY (id),
    CONSTRAINT ck_mask_groups_name CHECK (char_length(name) BETWEEN 1 AND 255),
    -- DICOM code string (VR CS): upper case, digits, space, underscore; at most 16.
    CONSTRAINT ck_mask_groups_modality CHECK (modality ~ '^[A-Z0-9_ ]{1,16}$'),
    CONSTRAINT ck_mask_groups_mask_type CHECK (mask_type ~ '^[a-z][a-z0-9_]{0,49}$'),
    CONSTRAINT fk_mask_groups_project
        FOREIGN KEY (project_id) REFERENCES security.projects (id) ON DELETE CASCADE,
    CONSTRAINT fk_mask_groups_created_by
        FOREIGN KEY (created_by) REFERENCES security.users (id) ON DELETE SET NULL
);

COMMENT ON COLUMN annotation.mask_groups.ai_model IS
    'model that produced the masks; NULL when drawn by hand';

-- Also serves the project_id foreign key (leading column).
CREATE INDEX idx_mask_groups_project_study
    ON annotation.mask_groups (project_id, study_instance_uid);
CREATE INDEX idx_mask_groups_study_series
    ON annotation.mask_groups (study_instance_uid, series_instance_uid);
CREATE INDEX idx_mask_groups_created_by ON annotation.mask_groups (created_by);

CREATE TRIGGER trg_mask_groups_set_updated_at
    BEFORE UPDATE ON annotation.mask_groups
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();

-- ---------------------------------------------------------------------------
-- annotation.masks: the mask files themselves live in object storage;
-- file_path is their key there. frame_number NULL: a single-frame instance.
-- ---------------------------------------------------------------------------
CREATE TABLE annotation.masks (
    id                  bigint GENERATED ALWAYS AS IDENTITY,
    mask_group_id       bigint      NOT NULL,
    -- squawk-ignore prefer-text-field -- a DICOM UID is at most 64 characters
    study_instance_uid  varchar(64) NOT NULL,
    -- squawk-ignore prefer-text-field -- a DICOM UID is at most 64 characters
    series_instance_uid varchar(64) NOT NULL,
    -- squawk-ignore prefer-text-field -- a DICOM UID is at most 64 characters
    sop_instance_uid    varchar(64) NOT NULL,
    -- squawk-ignore prefer-bigint-over-int -- DICOM Number of Frames is at most 2^31-1
    frame_number        integer,
    label               text,
    file_path           text        NOT NULL,
    mime_type           text,
    file_size           bigint,
    checksum_sha256     text,
    -- squawk-ignore prefer-bigint-over-int -- DICOM Columns is a 16-bit value
    width               integer,
    -- squawk-ignore prefer-bigint-over-int -- DICOM Rows is a 16-bit value
    height              integer,
    created_by          bigint,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_masks PRIMARY KEY (id),
    CONSTRAINT uq_masks_group_instance_frame_label
        UNIQUE NULLS NOT DISTINCT (mask_group_id, sop_instance_uid, frame_number, label),
    CONSTRAINT ck_masks_file_path CHECK (file_path <> ''),
    CONSTRAINT ck_masks_checksum_sha256 CHECK (checksum_sha256 ~ '^[0-9a-f]{64}$'),
    CONSTRAINT ck_masks_frame_number CHECK (frame_number >= 1),
    CONSTRAINT ck_masks_file_size CHECK (file_size >= 0),
    CONSTRAINT ck_masks_dimensions CHECK (width > 0 AND height > 0),
    CONSTRAINT fk_masks_mask_group
        FOREIGN KEY (mask_group_id) REFERENCES annotation.mask_groups (id) ON DELETE CASCADE,
    CONSTRAINT fk_masks_created_by
        FOREIGN KEY (created_by) REFERENCES security.users (id) ON DELETE SET NULL
);

-- mask_group_id is covered by uq_masks_group_instance_frame_label (leading column).
CREATE INDEX idx_masks_sop_instance_uid ON annotation.masks (sop_instance_uid);
CREATE INDEX idx_masks_study_series
    ON annotation.masks (study_instance_uid, series_instance_uid);
CREATE INDEX idx_masks_created_by ON annotation.masks (created_by);

CREATE TRIGGER trg_masks_set_updated_at
    BEFORE UPDATE ON annotation.masks
    FOR EACH ROW EXECUTE FUNCTION security.set_updated_at();
