-- Schema of the embedded Attune-compatible stack.
-- Table and column names mirror upstream Attune's migrations (schema `attune`), so that a test
-- probing the database (db_probe) reads the same names on either target.
-- Applied by `python -m attune_emulator migrate`; idempotent (every statement guards itself).

CREATE SCHEMA IF NOT EXISTS attune;
SET search_path TO attune, public;

DO $$ BEGIN
    CREATE TYPE execution_status_enum AS ENUM ('requested', 'scheduling', 'scheduled', 'running',
        'completed', 'failed', 'timeout', 'canceling', 'cancelled', 'abandoned');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    CREATE TYPE enforcement_status_enum AS ENUM ('created', 'processed', 'disabled');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    CREATE TYPE inquiry_status_enum AS ENUM ('pending', 'responded', 'timeout', 'cancelled');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;
DO $$ BEGIN
    CREATE TYPE owner_type_enum AS ENUM ('system', 'identity', 'pack', 'action', 'sensor');
EXCEPTION WHEN duplicate_object THEN NULL; END $$;

CREATE OR REPLACE FUNCTION attune.touch_updated() RETURNS trigger AS $$
BEGIN
    NEW.updated := now();
    RETURN NEW;
END $$ LANGUAGE plpgsql;

-- ---------------------------------------------------------------- identities and RBAC
CREATE TABLE IF NOT EXISTS identity (
    id            BIGSERIAL PRIMARY KEY,
    login         TEXT NOT NULL,
    display_name  TEXT,
    password_hash TEXT,
    attributes    JSONB NOT NULL DEFAULT '{}',
    frozen        BOOLEAN NOT NULL DEFAULT false,
    created       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT identity_login_key UNIQUE (login)
);

CREATE TABLE IF NOT EXISTS pack (
    id            BIGSERIAL PRIMARY KEY,
    ref           TEXT NOT NULL,
    label         TEXT NOT NULL,
    description   TEXT,
    version       TEXT NOT NULL,
    conf_schema   JSONB NOT NULL DEFAULT '{}',
    config        JSONB NOT NULL DEFAULT '{}',
    meta          JSONB NOT NULL DEFAULT '{}',
    tags          JSONB NOT NULL DEFAULT '[]',
    runtime_deps  JSONB NOT NULL DEFAULT '[]',
    dependencies  JSONB NOT NULL DEFAULT '[]',
    is_standard   BOOLEAN NOT NULL DEFAULT false,
    installed_by  BIGINT REFERENCES identity(id) ON DELETE SET NULL,
    storage_path  TEXT,
    created       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT pack_ref_key UNIQUE (ref),
    CONSTRAINT pack_ref_format CHECK (ref ~ '^[a-z][a-z0-9_-]+$'),
    CONSTRAINT pack_version_semver CHECK (version ~ '^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$')
);

CREATE TABLE IF NOT EXISTS permission_set (
    id          BIGSERIAL PRIMARY KEY,
    ref         TEXT NOT NULL,
    pack        BIGINT REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref    TEXT,
    label       TEXT,
    description TEXT,
    grants      JSONB NOT NULL DEFAULT '[]',
    created     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT permission_set_ref_key UNIQUE (ref),
    CONSTRAINT permission_set_ref_format CHECK (ref ~ '^[^.]+\.[^.]+$' AND ref = lower(ref))
);

CREATE TABLE IF NOT EXISTS permission_assignment (
    id       BIGSERIAL PRIMARY KEY,
    identity BIGINT NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
    permset  BIGINT NOT NULL REFERENCES permission_set(id) ON DELETE CASCADE,
    created  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT unique_identity_permset UNIQUE (identity, permset)
);

CREATE TABLE IF NOT EXISTS identity_role_assignment (
    id       BIGSERIAL PRIMARY KEY,
    identity BIGINT NOT NULL REFERENCES identity(id) ON DELETE CASCADE,
    role     TEXT NOT NULL,
    source   TEXT NOT NULL DEFAULT 'manual',
    managed  BOOLEAN NOT NULL DEFAULT false,
    created  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT unique_identity_role UNIQUE (identity, role)
);

CREATE TABLE IF NOT EXISTS permission_set_role_assignment (
    id      BIGSERIAL PRIMARY KEY,
    permset BIGINT NOT NULL REFERENCES permission_set(id) ON DELETE CASCADE,
    role    TEXT NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT unique_permset_role UNIQUE (permset, role)
);

-- ---------------------------------------------------------------- pack components
CREATE TABLE IF NOT EXISTS runtime (
    id               BIGSERIAL PRIMARY KEY,
    ref              TEXT NOT NULL,
    pack             BIGINT REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref         TEXT,
    description      TEXT,
    name             TEXT NOT NULL,
    aliases          JSONB NOT NULL DEFAULT '[]',
    distributions    JSONB NOT NULL DEFAULT '{}',
    installation     JSONB,
    execution_config JSONB NOT NULL DEFAULT '{}',
    created          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated          TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT runtime_ref_key UNIQUE (ref)
);

CREATE TABLE IF NOT EXISTS workflow_definition (
    id           BIGSERIAL PRIMARY KEY,
    ref          TEXT NOT NULL,
    pack         BIGINT REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref     TEXT NOT NULL,
    label        TEXT NOT NULL,
    description  TEXT,
    version      TEXT NOT NULL,
    param_schema JSONB,
    out_schema   JSONB,
    definition   JSONB NOT NULL,
    tags         JSONB NOT NULL DEFAULT '[]',
    created      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT workflow_definition_ref_key UNIQUE (ref)
);

CREATE TABLE IF NOT EXISTS action (
    id                         BIGSERIAL PRIMARY KEY,
    ref                        TEXT NOT NULL,
    pack                       BIGINT NOT NULL REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref                   TEXT NOT NULL,
    label                      TEXT NOT NULL,
    description                TEXT,
    entrypoint                 TEXT NOT NULL DEFAULT '',
    runtime                    BIGINT REFERENCES runtime(id) ON DELETE SET NULL,
    runtime_version_constraint TEXT,
    param_schema               JSONB,
    out_schema                 JSONB,
    is_adhoc                   BOOLEAN NOT NULL DEFAULT false,
    parameter_delivery         TEXT NOT NULL DEFAULT 'stdin',
    parameter_format           TEXT NOT NULL DEFAULT 'json',
    output_format              TEXT NOT NULL DEFAULT 'text',
    workflow_def               BIGINT REFERENCES workflow_definition(id) ON DELETE CASCADE,
    default_execution_permission_set_refs JSONB NOT NULL DEFAULT '[]',
    timeout_seconds            INTEGER,
    max_retries                INTEGER,
    accesses_mcp               BOOLEAN NOT NULL DEFAULT false,
    required_worker_runtimes   JSONB NOT NULL DEFAULT '{}',
    worker_selector            JSONB NOT NULL DEFAULT '{}',
    worker_tolerations         JSONB NOT NULL DEFAULT '[]',
    worker_affinity            JSONB,
    created                    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated                    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT action_ref_key UNIQUE (ref),
    CONSTRAINT action_ref_format CHECK (ref ~ '^[^.]+\.[^.]+$' AND ref = lower(ref)),
    CONSTRAINT action_parameter_delivery_check CHECK (parameter_delivery IN ('stdin', 'file')),
    CONSTRAINT action_parameter_format_check CHECK (parameter_format IN ('json', 'dotenv', 'yaml')),
    CONSTRAINT action_output_format_check CHECK (output_format IN ('text', 'json', 'yaml', 'jsonl'))
);

CREATE TABLE IF NOT EXISTS sensor (
    id            BIGSERIAL PRIMARY KEY,
    ref           TEXT NOT NULL,
    pack          BIGINT REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref      TEXT,
    label         TEXT NOT NULL,
    description   TEXT,
    entrypoint    TEXT NOT NULL DEFAULT '',
    runtime       BIGINT REFERENCES runtime(id) ON DELETE SET NULL,
    runtime_ref   TEXT,
    trigger_types JSONB NOT NULL DEFAULT '[]',
    enabled       BOOLEAN NOT NULL DEFAULT true,
    param_schema  JSONB,
    config        JSONB NOT NULL DEFAULT '{}',
    created       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT sensor_ref_key UNIQUE (ref),
    CONSTRAINT sensor_ref_format CHECK (ref ~ '^[^.]+\.[^.]+$' AND ref = lower(ref))
);

CREATE TABLE IF NOT EXISTS trigger (
    id              BIGSERIAL PRIMARY KEY,
    ref             TEXT NOT NULL,
    pack            BIGINT REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref        TEXT,
    label           TEXT NOT NULL,
    description     TEXT,
    enabled         BOOLEAN NOT NULL DEFAULT true,
    param_schema    JSONB,
    out_schema      JSONB,
    webhook_enabled BOOLEAN NOT NULL DEFAULT false,
    webhook_key     TEXT,
    webhook_config  JSONB NOT NULL DEFAULT '{}',
    is_adhoc        BOOLEAN NOT NULL DEFAULT false,
    sensor          BIGINT REFERENCES sensor(id) ON DELETE SET NULL,
    sensor_ref      TEXT,
    created         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT trigger_ref_key UNIQUE (ref),
    CONSTRAINT trigger_webhook_key_key UNIQUE (webhook_key),
    CONSTRAINT trigger_ref_format CHECK (ref ~ '^[^.]+\.[^.]+$' AND ref = lower(ref))
);

CREATE TABLE IF NOT EXISTS rule (
    id                  BIGSERIAL PRIMARY KEY,
    ref                 TEXT NOT NULL,
    pack                BIGINT NOT NULL REFERENCES pack(id) ON DELETE CASCADE,
    pack_ref            TEXT NOT NULL,
    label               TEXT NOT NULL,
    description         TEXT,
    action              BIGINT REFERENCES action(id) ON DELETE SET NULL,
    action_ref          TEXT NOT NULL,
    trigger             BIGINT REFERENCES trigger(id) ON DELETE SET NULL,
    trigger_ref         TEXT NOT NULL,
    conditions          JSONB NOT NULL DEFAULT '{}',
    action_params       JSONB NOT NULL DEFAULT '{}',
    trigger_params      JSONB NOT NULL DEFAULT '{}',
    permission_set_refs JSONB,
    enabled             BOOLEAN NOT NULL DEFAULT true,
    is_adhoc            BOOLEAN NOT NULL DEFAULT false,
    owner_identity      BIGINT REFERENCES identity(id) ON DELETE SET NULL,
    created             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT rule_ref_key UNIQUE (ref),
    CONSTRAINT rule_ref_format CHECK (ref ~ '^[^.]+\.[^.]+$' AND ref = lower(ref))
);

-- ---------------------------------------------------------------- runtime records
CREATE TABLE IF NOT EXISTS event (
    id                  BIGSERIAL PRIMARY KEY,
    trigger             BIGINT REFERENCES trigger(id) ON DELETE SET NULL,
    trigger_ref         TEXT NOT NULL,
    config              JSONB,
    payload             JSONB,
    source              BIGINT,
    source_ref          TEXT,
    rule                BIGINT REFERENCES rule(id) ON DELETE SET NULL,
    rule_ref            TEXT,
    trigger_instance_id TEXT,
    created             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS event_trigger_ref_idx ON event (trigger_ref, created DESC);
CREATE INDEX IF NOT EXISTS event_rule_ref_idx ON event (rule_ref, created DESC);
-- unfiltered listings page by (created DESC, id DESC): without this every page sorts the table
CREATE INDEX IF NOT EXISTS event_created_idx ON event (created DESC, id DESC);

CREATE TABLE IF NOT EXISTS enforcement (
    id          BIGSERIAL PRIMARY KEY,
    rule        BIGINT REFERENCES rule(id) ON DELETE SET NULL,
    rule_ref    TEXT NOT NULL,
    trigger_ref TEXT NOT NULL,
    config      JSONB,
    event       BIGINT REFERENCES event(id) ON DELETE SET NULL,
    status      enforcement_status_enum NOT NULL DEFAULT 'created',
    payload     JSONB,
    condition   TEXT NOT NULL DEFAULT 'all',
    conditions  JSONB NOT NULL DEFAULT '{}',
    created     TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at TIMESTAMPTZ,
    CONSTRAINT enforcement_rule_event_key UNIQUE (rule, event)
);
CREATE INDEX IF NOT EXISTS enforcement_event_idx ON enforcement (event);
CREATE INDEX IF NOT EXISTS enforcement_rule_ref_idx ON enforcement (rule_ref, created DESC);
CREATE INDEX IF NOT EXISTS enforcement_created_idx ON enforcement (created DESC, id DESC);

CREATE TABLE IF NOT EXISTS execution (
    id                  BIGSERIAL PRIMARY KEY,
    action              BIGINT REFERENCES action(id) ON DELETE SET NULL,
    action_ref          TEXT NOT NULL,
    config              JSONB,
    env_vars            JSONB,
    parent              BIGINT REFERENCES execution(id) ON DELETE SET NULL,
    enforcement         BIGINT REFERENCES enforcement(id) ON DELETE SET NULL,
    executor            BIGINT REFERENCES identity(id) ON DELETE SET NULL,
    worker              BIGINT,
    status              execution_status_enum NOT NULL DEFAULT 'requested',
    result              JSONB,
    original_execution  BIGINT REFERENCES execution(id) ON DELETE SET NULL,
    permission_set_refs JSONB NOT NULL DEFAULT '[]',
    workflow_task       JSONB,
    workflow_def        BIGINT REFERENCES workflow_definition(id) ON DELETE SET NULL,
    retry_count         INTEGER NOT NULL DEFAULT 0,
    max_retries         INTEGER,
    retry_reason        TEXT,
    started_at          TIMESTAMPTZ,
    created             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated             TIMESTAMPTZ NOT NULL DEFAULT now()
) WITH (fillfactor = 80);
-- An execution row is updated four times in its life (scheduling, scheduled, running, terminal).
-- No index covers a column those updates change (status, worker, result, started_at, updated,
-- workflow_task), and each page keeps room for the new versions, so they are HOT updates that
-- touch no index. Status filters scan (the active set is small) or go through created/parent.
CREATE INDEX IF NOT EXISTS execution_parent_idx ON execution (parent);
CREATE INDEX IF NOT EXISTS execution_enforcement_idx ON execution (enforcement);
CREATE INDEX IF NOT EXISTS execution_action_ref_idx ON execution (action_ref, created DESC);
DROP INDEX IF EXISTS execution_status_idx;
ALTER TABLE execution SET (fillfactor = 80);
CREATE INDEX IF NOT EXISTS execution_created_idx ON execution (created DESC, id DESC);

CREATE TABLE IF NOT EXISTS workflow_execution (
    id              BIGSERIAL PRIMARY KEY,
    execution       BIGINT NOT NULL REFERENCES execution(id) ON DELETE CASCADE,
    workflow_def    BIGINT REFERENCES workflow_definition(id) ON DELETE SET NULL,
    task_graph      JSONB NOT NULL DEFAULT '{}',
    variables       JSONB NOT NULL DEFAULT '{}',
    completed_tasks JSONB NOT NULL DEFAULT '[]',
    failed_tasks    JSONB NOT NULL DEFAULT '[]',
    status          execution_status_enum NOT NULL DEFAULT 'requested',
    created         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT workflow_execution_execution_key UNIQUE (execution)
);

CREATE TABLE IF NOT EXISTS inquiry (
    id              BIGSERIAL PRIMARY KEY,
    execution       BIGINT NOT NULL REFERENCES execution(id) ON DELETE CASCADE,
    prompt          TEXT NOT NULL,
    response_schema JSONB,
    assigned_to     BIGINT REFERENCES identity(id) ON DELETE SET NULL,
    status          inquiry_status_enum NOT NULL DEFAULT 'pending',
    response        JSONB,
    timeout_at      TIMESTAMPTZ,
    responded_at    TIMESTAMPTZ,
    created         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS key (
    id                  BIGSERIAL PRIMARY KEY,
    ref                 TEXT NOT NULL,
    owner_type          owner_type_enum NOT NULL,
    owner               TEXT,
    owner_identity      BIGINT REFERENCES identity(id) ON DELETE CASCADE,
    owner_pack          BIGINT REFERENCES pack(id) ON DELETE CASCADE,
    owner_pack_ref      TEXT,
    owner_action        BIGINT REFERENCES action(id) ON DELETE CASCADE,
    owner_action_ref    TEXT,
    owner_sensor        BIGINT REFERENCES sensor(id) ON DELETE CASCADE,
    owner_sensor_ref    TEXT,
    name                TEXT NOT NULL,
    encrypted           BOOLEAN NOT NULL DEFAULT false,
    encryption_key_hash TEXT,
    value               JSONB NOT NULL,
    created             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT key_ref_key UNIQUE (ref),
    CONSTRAINT key_ref_format CHECK (ref ~ '^[^.]+(\.[^.]+)*$' AND ref = lower(ref))
);
CREATE UNIQUE INDEX IF NOT EXISTS idx_key_unique ON key (owner_type, owner, name);

-- Owner fields follow the owner type (upstream enforces this with a trigger raising P0001).
CREATE OR REPLACE FUNCTION attune.key_validate_owner() RETURNS trigger AS $$
DECLARE n INT;
BEGIN
    n := (NEW.owner_identity IS NOT NULL)::int + (NEW.owner_pack IS NOT NULL)::int
       + (NEW.owner_action IS NOT NULL)::int + (NEW.owner_sensor IS NOT NULL)::int;
    IF NEW.owner_type = 'system' THEN
        IF n > 0 THEN RAISE EXCEPTION 'system keys cannot have owner ids'; END IF;
        NEW.owner := 'system';
    ELSE
        IF n <> 1 THEN
            RAISE EXCEPTION 'owner_type % requires exactly one matching owner id', NEW.owner_type;
        END IF;
        IF NEW.owner_type = 'identity' AND NEW.owner_identity IS NULL
           OR NEW.owner_type = 'pack' AND NEW.owner_pack IS NULL
           OR NEW.owner_type = 'action' AND NEW.owner_action IS NULL
           OR NEW.owner_type = 'sensor' AND NEW.owner_sensor IS NULL THEN
            RAISE EXCEPTION 'owner_type % requires its owner id', NEW.owner_type;
        END IF;
        NEW.owner := COALESCE(NEW.owner_identity, NEW.owner_pack, NEW.owner_action, NEW.owner_sensor)::text;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS key_validate_owner ON key;
CREATE TRIGGER key_validate_owner BEFORE INSERT OR UPDATE ON key
    FOR EACH ROW EXECUTE FUNCTION attune.key_validate_owner();

-- Encrypted values of secret parameters, addressed by a JSON path into the owning entity's JSON
-- (entity_type 'execution' / 'execution_config' / 'enforcement_config'); the public JSON keeps a
-- {"$attune_secret": true, "redacted": true} marker there. The worker restores them for the action.
CREATE TABLE IF NOT EXISTS execution_secret_value (
    id                  BIGSERIAL PRIMARY KEY,
    entity_type         TEXT NOT NULL,
    entity_id           BIGINT NOT NULL,
    json_path           TEXT NOT NULL,
    source_kind         TEXT NOT NULL,
    source_ref          TEXT,
    encrypted_value     JSONB NOT NULL,
    encryption_key_hash TEXT,
    created             TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT execution_secret_value_entity_path_key UNIQUE (entity_type, entity_id, json_path)
);
CREATE INDEX IF NOT EXISTS idx_execution_secret_value_entity
    ON execution_secret_value (entity_type, entity_id);

CREATE TABLE IF NOT EXISTS worker (
    id             BIGSERIAL PRIMARY KEY,
    name           TEXT NOT NULL,
    worker_type    TEXT NOT NULL DEFAULT 'local',
    worker_role    TEXT NOT NULL DEFAULT 'action',
    host           TEXT,
    port           INTEGER,
    status         TEXT NOT NULL DEFAULT 'active',
    capabilities   JSONB NOT NULL DEFAULT '{}',
    meta           JSONB NOT NULL DEFAULT '{}',
    pid            INTEGER,
    last_heartbeat TIMESTAMPTZ,
    created        TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated        TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT worker_name_key UNIQUE (name)
);

CREATE TABLE IF NOT EXISTS webhook_event_log (
    id            BIGSERIAL PRIMARY KEY,
    trigger_id    BIGINT,
    trigger_ref   TEXT,
    webhook_key   TEXT,
    event_id      BIGINT,
    source_ip     TEXT,
    status_code   INTEGER,
    error_message TEXT,
    rate_limited  BOOLEAN NOT NULL DEFAULT false,
    created       TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS audit_event (
    id               BIGSERIAL PRIMARY KEY,
    created          TIMESTAMPTZ NOT NULL DEFAULT now(),
    category         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    outcome          TEXT NOT NULL,
    actor_identity   BIGINT,
    actor_login      TEXT,
    actor_token_type TEXT,
    actor_ip         TEXT,
    actor_user_agent TEXT,
    request_id       TEXT,
    resource_type    TEXT,
    resource_id      TEXT,
    resource_ref     TEXT,
    http_method      TEXT,
    http_path        TEXT,
    http_status      INTEGER,
    duration_ms      INTEGER,
    details          JSONB,
    correlation_chain JSONB
);

-- ---------------------------------------------------------------- updated timestamps
DO $$
DECLARE t TEXT;
BEGIN
    FOREACH t IN ARRAY ARRAY['identity', 'pack', 'permission_set', 'identity_role_assignment',
        'runtime', 'workflow_definition', 'action', 'sensor', 'trigger', 'rule', 'execution',
        'workflow_execution', 'inquiry', 'key', 'worker'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I_touch_updated ON attune.%I', t, t);
        EXECUTE format('CREATE TRIGGER %I_touch_updated BEFORE UPDATE ON attune.%I '
                       'FOR EACH ROW EXECUTE FUNCTION attune.touch_updated()', t, t);
    END LOOP;
END $$;

-- ---------------------------------------------------------------- LISTEN/NOTIFY (notifier feed)
-- Channel names and payload keys as upstream's migrations (api.md section 13.3).
CREATE OR REPLACE FUNCTION attune.ts(t TIMESTAMPTZ) RETURNS TEXT AS $$
    SELECT CASE WHEN t IS NULL THEN NULL
                ELSE to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END
$$ LANGUAGE sql STABLE;  -- as volatile as to_char, so the planner inlines it into the triggers

CREATE OR REPLACE FUNCTION attune.notify_execution() RETURNS trigger AS $$
DECLARE
    payload JSONB;
    enf RECORD;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    IF NEW.enforcement IS NOT NULL THEN
        SELECT e.rule_ref, e.trigger_ref INTO enf FROM attune.enforcement e WHERE e.id = NEW.enforcement;
    ELSE
        SELECT NULL::text AS rule_ref, NULL::text AS trigger_ref INTO enf;
    END IF;
    payload := jsonb_build_object(
        'entity_type', 'execution', 'entity_id', NEW.id, 'id', NEW.id,
        'action_id', NEW.action, 'action_ref', NEW.action_ref, 'status', NEW.status,
        'enforcement', NEW.enforcement, 'rule_ref', enf.rule_ref, 'trigger_ref', enf.trigger_ref,
        'parent', NEW.parent, 'started_at', attune.ts(NEW.started_at),
        'workflow_task', NEW.workflow_task, 'created', attune.ts(NEW.created),
        'updated', attune.ts(NEW.updated));
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('execution_created', payload::text);
    ELSE
        payload := payload || jsonb_build_object('old_status', OLD.status);
        PERFORM pg_notify('execution_status_changed', payload::text);
        IF NEW.workflow_def IS NOT NULL THEN
            PERFORM pg_notify('workflow_execution_status_changed', jsonb_build_object(
                'entity_type', 'execution', 'entity_id', NEW.id, 'id', NEW.id,
                'action_ref', NEW.action_ref, 'status', NEW.status, 'old_status', OLD.status,
                'workflow_def', NEW.workflow_def, 'parent', NEW.parent,
                'created', attune.ts(NEW.created), 'updated', attune.ts(NEW.updated))::text);
        END IF;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS execution_notify ON execution;
CREATE TRIGGER execution_notify AFTER INSERT OR UPDATE ON execution
    FOR EACH ROW EXECUTE FUNCTION attune.notify_execution();

CREATE OR REPLACE FUNCTION attune.notify_event() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('event_created', jsonb_build_object(
        'entity_type', 'event', 'entity_id', NEW.id, 'id', NEW.id,
        'trigger', NEW.trigger, 'trigger_ref', NEW.trigger_ref, 'source', NEW.source,
        'source_ref', NEW.source_ref, 'rule', NEW.rule, 'rule_ref', NEW.rule_ref,
        'has_payload', NEW.payload IS NOT NULL, 'created', attune.ts(NEW.created))::text);
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS event_notify ON event;
CREATE TRIGGER event_notify AFTER INSERT ON event
    FOR EACH ROW EXECUTE FUNCTION attune.notify_event();

CREATE OR REPLACE FUNCTION attune.notify_enforcement() RETURNS trigger AS $$
DECLARE payload JSONB;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    payload := jsonb_build_object(
        'entity_type', 'enforcement', 'entity_id', NEW.id, 'id', NEW.id,
        'rule', NEW.rule, 'rule_ref', NEW.rule_ref, 'trigger_ref', NEW.trigger_ref,
        'event', NEW.event, 'status', NEW.status, 'condition', NEW.condition,
        'created', attune.ts(NEW.created), 'resolved_at', attune.ts(NEW.resolved_at));
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('enforcement_created', payload::text);
    ELSE
        PERFORM pg_notify('enforcement_status_changed',
                          (payload || jsonb_build_object('old_status', OLD.status))::text);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS enforcement_notify ON enforcement;
CREATE TRIGGER enforcement_notify AFTER INSERT OR UPDATE ON enforcement
    FOR EACH ROW EXECUTE FUNCTION attune.notify_enforcement();

CREATE OR REPLACE FUNCTION attune.notify_inquiry() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('inquiry_created', jsonb_build_object(
            'entity_type', 'inquiry', 'entity_id', NEW.id, 'id', NEW.id,
            'execution', NEW.execution, 'status', NEW.status,
            'timeout_at', attune.ts(NEW.timeout_at), 'created', attune.ts(NEW.created))::text);
    ELSIF NEW.status IS DISTINCT FROM OLD.status AND NEW.status = 'responded' THEN
        PERFORM pg_notify('inquiry_responded', jsonb_build_object(
            'entity_type', 'inquiry', 'entity_id', NEW.id, 'id', NEW.id,
            'execution', NEW.execution, 'status', NEW.status,
            'updated', attune.ts(NEW.updated))::text);
    ELSIF NEW.status IS DISTINCT FROM OLD.status AND NEW.status = 'timeout' THEN
        PERFORM pg_notify('inquiry_timeout', jsonb_build_object(
            'entity_type', 'inquiry', 'entity_id', NEW.id, 'id', NEW.id,
            'execution', NEW.execution, 'status', NEW.status,
            'timeout_at', attune.ts(NEW.timeout_at), 'updated', attune.ts(NEW.updated))::text);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS inquiry_notify ON inquiry;
CREATE TRIGGER inquiry_notify AFTER INSERT OR UPDATE ON inquiry
    FOR EACH ROW EXECUTE FUNCTION attune.notify_inquiry();

-- Extension E2 action_retry: the action-level retry policy {count, delay, backoff, max_delay?}
-- (the same object as a workflow task `retry`); NULL = no retries, as upstream.
ALTER TABLE action ADD COLUMN IF NOT EXISTS retry_policy JSONB;

-- Extension E7 key_expiry: a key is absent everywhere at or after expires_at (purged lazily).
ALTER TABLE key ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ;

-- Extension E11 rule_notify: a rule opts in to `rule_triggered` notifications (default: upstream, none).
ALTER TABLE rule ADD COLUMN IF NOT EXISTS notify_on_trigger BOOLEAN NOT NULL DEFAULT false;

-- Worker placement on executions (POST /executions/execute `worker_selector`, `worker_tolerations`,
-- `worker_affinity`; upstream's execution columns). NULL = use the action's placement.
ALTER TABLE execution ADD COLUMN IF NOT EXISTS worker_selector JSONB;
ALTER TABLE execution ADD COLUMN IF NOT EXISTS worker_tolerations JSONB;
ALTER TABLE execution ADD COLUMN IF NOT EXISTS worker_affinity JSONB;

-- Extension E12 container_runtime: an action's `container` object {image, command?, network?,
-- memory_mb?, cpus?, pull?, env?} for the `core.container` runtime; NULL = none (upstream).
ALTER TABLE action ADD COLUMN IF NOT EXISTS container JSONB;

-- ---------------------------------------------------------------- API caches (embedded stack only)
-- api_cache_epoch: counters bumped in the same transaction as any change to what the API caches
-- in memory (api/authz.py), so every API process re-validates its caches with one read per
-- request:
--   authz  what grants an identity holds (permission sets, assignments, role links)
--   pack   which packs exist and who may see them (ref, is_standard, installed_by)
--   action the action definitions `POST /executions/execute` looks up (actions, runtimes)
-- One row, so a transaction touching both never takes two locks in some order; the triggers are
-- deferred to commit time, so that lock is taken last and held only briefly. The first values
-- are time-based: a recreated database never repeats an epoch.
CREATE TABLE IF NOT EXISTS api_cache_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    authz BIGINT NOT NULL,
    pack  BIGINT NOT NULL
);
ALTER TABLE api_cache_epoch ADD COLUMN IF NOT EXISTS action BIGINT NOT NULL
    DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;
INSERT INTO api_cache_epoch (id, authz, pack, action)
    VALUES (1, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
               (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,
               (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
    ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION attune.bump_authz_epoch() RETURNS trigger AS $$
BEGIN
    UPDATE attune.api_cache_epoch SET authz = authz + 1 WHERE id = 1;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION attune.bump_pack_epoch() RETURNS trigger AS $$
BEGIN
    UPDATE attune.api_cache_epoch SET pack = pack + 1 WHERE id = 1;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION attune.bump_action_epoch() RETURNS trigger AS $$
BEGIN
    UPDATE attune.api_cache_epoch SET action = action + 1 WHERE id = 1;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

DO $$
DECLARE
    spec TEXT[];
BEGIN
    FOREACH spec SLICE 1 IN ARRAY ARRAY[
        ARRAY['permission_set', 'authz', 'INSERT OR UPDATE OR DELETE'],
        ARRAY['permission_assignment', 'authz', 'INSERT OR UPDATE OR DELETE'],
        ARRAY['identity_role_assignment', 'authz', 'INSERT OR UPDATE OR DELETE'],
        ARRAY['permission_set_role_assignment', 'authz', 'INSERT OR UPDATE OR DELETE'],
        ARRAY['pack', 'pack', 'INSERT OR DELETE OR UPDATE OF ref, is_standard, installed_by'],
        ARRAY['action', 'action', 'INSERT OR UPDATE OR DELETE'],
        ARRAY['runtime', 'action', 'INSERT OR UPDATE OR DELETE']] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I_cache_epoch ON attune.%I', spec[1], spec[1]);
        EXECUTE format('CREATE CONSTRAINT TRIGGER %I_cache_epoch AFTER %s ON attune.%I '
                       'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW '
                       'EXECUTE FUNCTION attune.bump_%s_epoch()', spec[1], spec[3], spec[1], spec[2]);
        EXECUTE format('DROP TRIGGER IF EXISTS %I_cache_epoch_truncate ON attune.%I',
                       spec[1], spec[1]);
        EXECUTE format('CREATE TRIGGER %I_cache_epoch_truncate AFTER TRUNCATE ON attune.%I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION attune.bump_%s_epoch()',
                       spec[1], spec[1], spec[2]);
    END LOOP;
END $$;

-- Extension E5 api_rate_limit: the sliding window shared by every API process. One row per
-- accepted request (`until` = when it leaves its window, for the idle sweep); unlogged: a crash
-- only forgets recent requests. api_rate_limit_hit() admits or refuses one request atomically
-- per key (advisory lock) on the database clock, and says whether a refusal is the first of its
-- window (at most one audit event per key and window).
CREATE UNLOGGED TABLE IF NOT EXISTS api_rate_limit_hit (
    key   TEXT NOT NULL,
    at    DOUBLE PRECISION NOT NULL,
    until DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS api_rate_limit_hit_key_at ON api_rate_limit_hit (key, at);
CREATE INDEX IF NOT EXISTS api_rate_limit_hit_until ON api_rate_limit_hit (until);
CREATE UNLOGGED TABLE IF NOT EXISTS api_rate_limit_audit (
    key TEXT PRIMARY KEY,
    at  DOUBLE PRECISION NOT NULL
);

CREATE OR REPLACE FUNCTION attune.api_rate_limit_hit(p_key TEXT, p_limit INTEGER,
                                                     p_window DOUBLE PRECISION,
                                                     OUT retry_after INTEGER, OUT audit BOOLEAN)
AS $$
DECLARE
    now_s  DOUBLE PRECISION;
    n      INTEGER;
    oldest DOUBLE PRECISION;
    last_a DOUBLE PRECISION;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('attune.api_rate_limit:' || p_key, 0));
    now_s := extract(epoch FROM clock_timestamp());
    DELETE FROM attune.api_rate_limit_hit WHERE key = p_key AND at <= now_s - p_window;
    SELECT count(*), min(at) INTO n, oldest FROM attune.api_rate_limit_hit WHERE key = p_key;
    audit := false;
    IF n < p_limit THEN
        INSERT INTO attune.api_rate_limit_hit (key, at, until) VALUES (p_key, now_s, now_s + p_window);
        retry_after := 0;
        RETURN;
    END IF;
    IF n = 0 THEN
        retry_after := greatest(1, ceil(p_window))::INTEGER;
    ELSE
        retry_after := greatest(1, ceil(oldest + p_window - now_s))::INTEGER;
    END IF;
    SELECT a.at INTO last_a FROM attune.api_rate_limit_audit a WHERE a.key = p_key;
    IF last_a IS NULL OR now_s - last_a >= p_window THEN
        INSERT INTO attune.api_rate_limit_audit (key, at) VALUES (p_key, now_s)
            ON CONFLICT (key) DO UPDATE SET at = EXCLUDED.at;
        audit := true;
    END IF;
END $$ LANGUAGE plpgsql;
