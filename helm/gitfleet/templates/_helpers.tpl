{{/* Names, labels and the pieces every gitfleet pod shares. */}}

{{- define "gitfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "gitfleet.fullname" -}}
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

{{/* Labels of every object; "component" is serve, relay, worker, migrate or apply. */}}
{{- define "gitfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "gitfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: gitfleet
{{- end }}

{{- define "gitfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "gitfleet.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "gitfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "gitfleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "gitfleet.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must name a version, not latest: a rollout must be repeatable" }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* The worker's termination grace period: its drain plus a margin. */}}
{{- define "gitfleet.workerGracePeriod" -}}
{{- add .Values.worker.shutdownGraceSeconds .Values.worker.terminationGraceMarginSeconds }}
{{- end }}

{{- define "gitfleet.required" -}}
{{- if not .Values.database.existingSecret }}
{{- fail "database.existingSecret is required: the Secret holding the PostgreSQL URL" }}
{{- end }}
{{- if not .Values.broker.existingSecret }}
{{- fail "broker.existingSecret is required: the Secret holding the AMQP URL(s)" }}
{{- end }}
{{- if and .Values.worker.keda.enabled (not .Values.worker.keda.managementSecret) }}
{{- fail "worker.keda.managementSecret is required with worker.keda.enabled: the Secret holding the management API URL" }}
{{- end }}
{{- if lt (int .Values.worker.databasePoolSize) (add 4 (mul 2 .Values.worker.prefetch) | int) }}
{{- fail "worker.databasePoolSize must be at least 2 x worker.prefetch + 4: each sync in flight holds a connection for its repository lock and uses another (the worker would raise it, and the connection budget would be wrong)" }}
{{- end }}
{{- end }}

{{/* Environment of every process: the database, logs, traces. */}}
{{- define "gitfleet.env.common" -}}
- name: GITFLEET_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.urlKey }}
- name: GITFLEET_DATABASE_SCHEMA
  value: {{ .Values.database.schema | quote }}
- name: GITFLEET_LOG
  value: {{ .Values.log.filter | quote }}
- name: GITFLEET_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- with .Values.tracing.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- with .Values.tracing.sampler }}
- name: OTEL_TRACES_SAMPLER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.tracing.samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with .Values.tracing.resourceAttributes }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The broker, for the relay and the workers (both declare the same queues). */}}
{{- define "gitfleet.env.broker" -}}
- name: GITFLEET_AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.broker.existingSecret }}
      key: {{ .Values.broker.urlKey }}
- name: GITFLEET_AMQP_PREFIX
  value: {{ .Values.broker.prefix | quote }}
- name: GITFLEET_DELIVERY_LIMIT
  value: {{ .Values.broker.deliveryLimit | quote }}
- name: GITFLEET_DEFER_DELAY_MS
  value: {{ .Values.broker.deferDelayMs | quote }}
- name: GITFLEET_RETRY_DELAYS
  value: {{ .Values.broker.retryDelays | quote }}
{{- end }}

{{- define "gitfleet.env.metrics" -}}
- name: GITFLEET_METRICS_ADDR
  value: {{ printf "0.0.0.0:%d" (int .Values.metricsPort) | quote }}
{{- end }}


{{/* Probes on /healthz (alive) and /readyz (the database and, for the worker, the broker answer). */}}
{{- define "gitfleet.probes" -}}
startupProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 2
  failureThreshold: 60
livenessProbe:
  httpGet: {path: /healthz, port: {{ .port }}}
  periodSeconds: 10
  timeoutSeconds: 3
  failureThreshold: 3
readinessProbe:
  httpGet: {path: /readyz, port: {{ .port }}}
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end }}

{{/* Secrets groups as folders under /etc/gitfleet/secrets; "only" limits them to a list of names. */}}
{{- define "gitfleet.secretsGroups.volumes" -}}
{{- range .groups }}
- name: {{ printf "secrets-%s" .name | lower | replace "_" "-" | trunc 63 | trimSuffix "-" }}
  secret:
    secretName: {{ .existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{- define "gitfleet.secretsGroups.mounts" -}}
{{- range .groups }}
- name: {{ printf "secrets-%s" .name | lower | replace "_" "-" | trunc 63 | trimSuffix "-" }}
  mountPath: {{ printf "/etc/gitfleet/secrets/%s" .name }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "gitfleet.podSpecCommon" -}}
serviceAccountName: {{ include "gitfleet.serviceAccountName" . }}
automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end }}
