{{/* Names and labels shared by every manifest. */}}

{{- define "farebox.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "farebox.fullname" -}}
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

{{- define "farebox.selectorLabels" -}}
app.kubernetes.io/name: {{ include "farebox.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "farebox.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "farebox.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: farebox
{{- end }}

{{- define "farebox.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "farebox.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "farebox.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "farebox.configMapName" -}}
{{- default (printf "%s-config" (include "farebox.fullname" .)) .Values.config.existingConfigMap }}
{{- end }}

{{/* Seconds Kubernetes waits after SIGTERM: the preStop pause, uvicorn's drain, then the
ledger writer's final flush. Always longer than the drain, so a pod is never killed mid-drain. */}}
{{- define "farebox.terminationGracePeriod" -}}
{{- $needed := ceil (addf .Values.drain.preStopSleepSeconds .Values.drain.seconds .Values.drain.ledgerFlushSeconds) | int }}
{{- if .Values.terminationGracePeriodSeconds }}
{{- if lt (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must be at least drain.preStopSleepSeconds + drain.seconds + drain.ledgerFlushSeconds (%d): the kubelet would kill pods mid-stream or mid-flush" .Values.terminationGracePeriodSeconds $needed) }}
{{- end }}
{{- .Values.terminationGracePeriodSeconds }}
{{- else }}
{{- $needed }}
{{- end }}
{{- end }}

{{/* A secret reference: env var NAME from {name, key}; nothing when name is empty. */}}
{{- define "farebox.secretEnv" -}}
{{- if .ref.name }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .ref.name }}
      key: {{ .ref.key }}
{{- end }}
{{- end }}

{{/* Settings and secrets both the gateway and the migration Job need. */}}
{{- define "farebox.databaseEnv" -}}
{{- if .Values.secrets.databaseUrl.name }}
{{- include "farebox.secretEnv" (dict "env" "FAREBOX_DATABASE_URL" "ref" .Values.secrets.databaseUrl) }}
{{- else }}
- name: FAREBOX_DATABASE_URL
  value: "sqlite+aiosqlite:////var/lib/farebox/farebox.db"
{{- end }}
{{- end }}
