{{/*
Names, labels and the environment every Tally container shares.
*/}}

{{- define "tally.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tally.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<component>", kept within the 63 characters of a DNS label. */}}
{{- define "tally.componentName" -}}
{{- printf "%s-%s" (include "tally.fullname" .root | trunc 54 | trimSuffix "-") .component }}
{{- end }}

{{- define "tally.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tally.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tally.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tally.labels" -}}
helm.sh/chart: {{ include "tally.chart" .root }}
{{ include "tally.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tally
{{- end }}

{{/* Labels for objects that belong to the release as a whole (ConfigMap, Secret, ...). */}}
{{- define "tally.commonLabels" -}}
helm.sh/chart: {{ include "tally.chart" . }}
app.kubernetes.io/name: {{ include "tally.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tally
{{- end }}

{{- define "tally.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tally.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tally.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The port each HTTP service listens on: the TALLY_*_PORT defaults in tally.config. */}}
{{- define "tally.containerPort" -}}
{{- get (dict "gateway" 8080 "billing" 8081 "tenant" 8082) . }}
{{- end }}

{{- define "tally.configMapName" -}}
{{- include "tally.fullname" . }}
{{- end }}

{{/* The Secret the chart creates for values given inline; the migration hook gets a copy. */}}
{{- define "tally.secretName" -}}
{{- include "tally.fullname" . }}
{{- end }}

{{- define "tally.hookSecretName" -}}
{{- printf "%s-migrate" (include "tally.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* True when the chart must create a Secret at all (some value is given inline). */}}
{{- define "tally.createsSecret" -}}
{{- if or (not .Values.postgres.existingSecret) (not .Values.redis.existingSecret) (not .Values.secrets.existingSecret) }}true{{ end }}
{{- end }}

{{/*
Fail early, at render time, with the value to set: better than pods that crash on start-up.
*/}}
{{- define "tally.validateValues" -}}
{{- if and (not .Values.postgres.url) (not .Values.postgres.existingSecret) }}
{{- fail "tally: set postgres.url or postgres.existingSecret (the Postgres DSN)" }}
{{- end }}
{{- if and (not .Values.redis.url) (not .Values.redis.existingSecret) }}
{{- fail "tally: set redis.url or redis.existingSecret (the Redis URL)" }}
{{- end }}
{{- if and (eq (toString .Values.config.env) "production") (not .Values.secrets.secretKey) (not .Values.secrets.existingSecret) }}
{{- fail "tally: set secrets.secretKey or secrets.existingSecret (TALLY_SECRET_KEY is required in production)" }}
{{- end }}
{{- if and (eq (toString .Values.config.env) "production") (not .Values.secrets.jwtKeys) (not .Values.secrets.existingSecret) }}
{{- fail "tally: set secrets.jwtKeys or secrets.existingSecret (TALLY_JWT_KEYS is required in production)" }}
{{- end }}
{{- if and .Values.gateway.autoscaling.enabled (lt (int .Values.gateway.autoscaling.maxReplicas) (int .Values.gateway.autoscaling.minReplicas)) }}
{{- fail "tally: gateway.autoscaling.maxReplicas must not be below minReplicas" }}
{{- end }}
{{- range .Values.ingress.hosts }}
{{- range .paths }}
{{- if not (has .service (list "gateway" "billing" "tenant")) }}
{{- fail (printf "tally: ingress path %s routes to %q; use gateway, billing or tenant" .path .service) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* ConfigMap data: `config` as TALLY_* variables, empty values left out (the default applies). */}}
{{- define "tally.configData" -}}
TALLY_HOST: "0.0.0.0"
{{- range $key, $value := .Values.config }}
{{- if or (kindIs "bool" $value) (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) $value }}
{{- /* Values files give numbers as float64, which would print as 4.194304e+06. */}}
{{- $text := ternary ($value | int64 | toString) ($value | toString) (kindIs "float64" $value) }}
{{ printf "TALLY_%s" (snakecase $key | upper) }}: {{ $text | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Secret-backed variables. `hook` is true for the migration Job, which runs before the release's
own Secret exists and so reads the hook copy; values from an existing Secret are read from it.
`stripe` adds the Stripe keys (billing and the worker only: least privilege). `jwt` adds the
access-token signing keys (tenant, which issues tokens, and billing, which verifies them): a
process holding them could mint a token for anyone, so no other gets them.
*/}}
{{- define "tally.secretEnv" -}}
{{- $root := .root }}
{{- $own := ternary (include "tally.hookSecretName" $root) (include "tally.secretName" $root) .hook -}}
- name: TALLY_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ default $own $root.Values.postgres.existingSecret }}
      key: {{ ternary $root.Values.postgres.existingSecretKey "database-url" (ne $root.Values.postgres.existingSecret "") }}
{{- if .redis }}
- name: TALLY_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ default $own $root.Values.redis.existingSecret }}
      key: {{ ternary $root.Values.redis.existingSecretKey "redis-url" (ne $root.Values.redis.existingSecret "") }}
{{- end }}
- name: TALLY_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default $own $root.Values.secrets.existingSecret }}
      key: secret-key
      {{- if ne (toString $root.Values.config.env) "production" }}
      optional: true
      {{- end }}
{{- if .jwt }}
- name: TALLY_JWT_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ default $own $root.Values.secrets.existingSecret }}
      key: jwt-keys
      {{- /* Outside production a missing ring means a key generated in the data folder. */}}
      {{- if ne (toString $root.Values.config.env) "production" }}
      optional: true
      {{- end }}
{{- end }}
{{- if .stripe }}
- name: TALLY_STRIPE_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ default $own $root.Values.secrets.existingSecret }}
      key: stripe-api-key
      optional: true
- name: TALLY_STRIPE_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ default $own $root.Values.secrets.existingSecret }}
      key: stripe-webhook-secret
      optional: true
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by every Deployment and the Job; takes root and serviceAccount. */}}
{{- define "tally.podCommon" -}}
{{- $values := .root.Values -}}
serviceAccountName: {{ .serviceAccount }}
# Tally never calls the Kubernetes API: no token in its pods.
automountServiceAccountToken: false
{{- with $values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  {{- toYaml $values.podSecurityContext | nindent 2 }}
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "tally.tmpVolume" -}}
- name: tmp
  {{- with .Values.tmpVolume.sizeLimit }}
  emptyDir:
    sizeLimit: {{ . }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}

{{/* The keys of the chart's Secret: only what is not read from an existing Secret. */}}
{{- define "tally.secretData" -}}
{{- if not .Values.postgres.existingSecret }}
database-url: {{ .Values.postgres.url | quote }}
{{- end }}
{{- if not .Values.redis.existingSecret }}
redis-url: {{ .Values.redis.url | quote }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- with .Values.secrets.secretKey }}
secret-key: {{ . | quote }}
{{- end }}
{{- with .Values.secrets.jwtKeys }}
jwt-keys: {{ . | quote }}
{{- end }}
{{- with .Values.secrets.stripeApiKey }}
stripe-api-key: {{ . | quote }}
{{- end }}
{{- with .Values.secrets.stripeWebhookSecret }}
stripe-webhook-secret: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tally.hookServiceAccountName" -}}
{{- printf "%s-migrate" (include "tally.serviceAccountName" . | trunc 55 | trimSuffix "-") }}
{{- end }}
