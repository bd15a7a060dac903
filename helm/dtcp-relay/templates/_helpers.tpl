{{/* The chart's name. */}}
{{- define "dtcp-relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects. */}}
{{- define "dtcp-relay.fullname" -}}
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

{{/* Labels on every object. */}}
{{- define "dtcp-relay.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "dtcp-relay.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the relay pods. */}}
{{- define "dtcp-relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dtcp-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end }}

{{/* The Secret holding the cluster secret, and its key. */}}
{{- define "dtcp-relay.secretName" -}}
{{- default (include "dtcp-relay.fullname" .) .Values.clusterSecret.existingSecret }}
{{- end }}
{{- define "dtcp-relay.secretKey" -}}
{{- if .Values.clusterSecret.existingSecret }}{{ .Values.clusterSecret.existingSecretKey }}{{ else }}cluster-secret{{ end }}
{{- end }}

{{/* Whether the in-chart Redis is used. */}}
{{- define "dtcp-relay.internalRedis" -}}
{{- if and (not .Values.redis.urls) (not .Values.redis.existingSecret) }}true{{ end }}
{{- end }}

{{/* The pod termination grace: longer than the drain, with room for the preStop sleep. */}}
{{- define "dtcp-relay.terminationGrace" -}}
{{- add .Values.relay.drainTimeout .Values.preStopSleepSeconds 10 }}
{{- end }}
