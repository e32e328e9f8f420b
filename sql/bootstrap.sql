-- Run by `pgjobs migrate` before any migration: the schema and the table that records migrations.
-- Kept outside the numbered migrations so that rolling every migration back still leaves a record.
CREATE SCHEMA IF NOT EXISTS pgjobs;

CREATE TABLE IF NOT EXISTS pgjobs.migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
