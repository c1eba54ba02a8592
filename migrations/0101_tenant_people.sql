-- People, their roles and sessions; and the columns the control plane needs beyond 0100.
-- Like 0100, every row here is written in the same transaction as the event that changed it.

-- People who sign in to the admin APIs. Platform roles (operator, finance) live here; roles in
-- tenants live in tenant_memberships.
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    -- argon2id PHC string; NULL for people who sign in only through single sign-on.
    password_hash text,
    platform_roles text[] NOT NULL DEFAULT '{}'
        CHECK (platform_roles <@ ARRAY['operator', 'finance']::text[]),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    -- The single sign-on identity linked on the first OIDC sign-in: later sign-ins must present
    -- the same subject, so a changed email at the identity provider cannot take over an account.
    oidc_issuer text,
    oidc_subject text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_oidc_key ON users (oidc_issuer, oidc_subject)
    WHERE oidc_subject IS NOT NULL;

CREATE TABLE tenant_memberships (
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    user_id uuid NOT NULL REFERENCES users (id),
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX tenant_memberships_user_idx ON tenant_memberships (user_id);

-- An invitation into a tenant (tenant role) or to the platform (tenant_id NULL, platform role).
-- The token is shown once; only its SHA-256 is kept (256 random bits, like API keys).
CREATE TABLE invitations (
    id uuid PRIMARY KEY,
    tenant_id uuid REFERENCES tenants (id),
    email text NOT NULL,
    role text NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'operator', 'finance')),
    token_hash bytea NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'accepted', 'revoked')),
    invited_by text,
    expires_at timestamptz NOT NULL,
    accepted_by uuid REFERENCES users (id),
    accepted_at timestamptz,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((tenant_id IS NULL) = (role IN ('operator', 'finance')))
);
CREATE INDEX invitations_tenant_idx ON invitations (tenant_id, created_at DESC, id DESC);
CREATE INDEX invitations_pending_email_idx ON invitations (lower(email)) WHERE status = 'pending';

-- Refresh tokens: opaque, stored hashed, single use. Each use rotates the token within its
-- family (one family per sign-in); presenting an already rotated token revokes the family.
CREATE TABLE refresh_tokens (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    family_id uuid NOT NULL,
    token_hash bytea NOT NULL UNIQUE,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    rotated_at timestamptz,
    revoked_at timestamptz
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id) WHERE revoked_at IS NULL;

ALTER TABLE tenants
    ADD COLUMN suspended_reason text,
    ADD COLUMN suspended_at timestamptz;
-- Per-tenant rate limits the gateway enforces beside each key's own (NULL: its defaults). The
-- gateway's migration 0300 adds the same columns IF NOT EXISTS; whichever runs first wins.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS rpm_limit integer CHECK (rpm_limit > 0);
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS tpm_limit integer CHECK (tpm_limit > 0);
-- The tenant list pages newest first.
CREATE INDEX tenants_created_idx ON tenants (created_at DESC, id DESC);

ALTER TABLE api_keys
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    -- Set when the key was rotated: the key that replaced it.
    ADD COLUMN replaced_by uuid REFERENCES api_keys (id);

CREATE INDEX model_routes_credential_idx ON model_routes (credential_id);

-- The audit log is the event log without the usage stream: these partial indexes let the audit
-- listing page through admin events newest first without scanning usage events, and cost the
-- gateway's usage appends almost nothing (their rows fall outside the predicate).
CREATE INDEX events_audit_idx ON events (position) WHERE type <> 'UsageRecorded';
CREATE INDEX events_audit_tenant_idx ON events (tenant_id, position)
    WHERE type <> 'UsageRecorded' AND tenant_id IS NOT NULL;
