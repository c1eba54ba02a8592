-- Control-plane projections. Each row is written in the same transaction as the event that
-- changed it, so callers read their own writes at once; the log stays the source of truth.
CREATE TABLE tenants (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    mode text NOT NULL CHECK (mode IN ('prepaid', 'metered')),
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    billing_email text,
    tax_id text,
    address jsonb,
    country text,
    margin_override_pct numeric,
    budget_cap_nano bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tenants_name_key ON tenants (lower(name));

CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    name text NOT NULL,
    -- The first characters of the key, shown in listings so people can tell keys apart.
    prefix text NOT NULL,
    -- SHA-256 of the whole key: keys carry 256 random bits, so a fast hash is safe here.
    key_hash bytea NOT NULL UNIQUE,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    expires_at timestamptz,
    allowed_models text[],
    rpm_limit integer CHECK (rpm_limit > 0),
    tpm_limit integer CHECK (tpm_limit > 0),
    spend_cap_nano bigint CHECK (spend_cap_nano >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at, id);

CREATE TABLE provider_credentials (
    id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('openai', 'anthropic', 'gemini', 'bedrock', 'deepseek',
                                       'ollama', 'openrouter', 'xai', 'doubao', 'poe')),
    name text NOT NULL UNIQUE,
    base_url text,
    -- Provider-specific non-secret options, e.g. {"region": "us-east-1"} for Bedrock.
    options jsonb NOT NULL DEFAULT '{}'::jsonb,
    weight integer NOT NULL DEFAULT 1 CHECK (weight >= 0),
    enabled boolean NOT NULL DEFAULT true,
    disabled_reason text,
    -- AES-256-GCM: nonce || ciphertext || tag, under the key named by secret_key_id.
    secret_ciphertext bytea NOT NULL,
    secret_key_id text NOT NULL,
    last4 text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE models (
    name text PRIMARY KEY,
    enabled boolean NOT NULL DEFAULT true,
    context_window integer CHECK (context_window > 0),
    max_output_tokens integer CHECK (max_output_tokens > 0),
    modalities text[] NOT NULL DEFAULT ARRAY['text'],
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_routes (
    id uuid PRIMARY KEY,
    model text NOT NULL REFERENCES models (name),
    credential_id uuid NOT NULL REFERENCES provider_credentials (id),
    upstream_model text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    weight integer NOT NULL DEFAULT 1 CHECK (weight >= 0),
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model, credential_id, upstream_model)
);
