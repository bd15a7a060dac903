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

{{/* Labels on every object, without the component (each object adds its own once). */}}
{{- define "dtcp-relay.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "dtcp-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels on the relay's objects. */}}
{{- define "dtcp-relay.labels" -}}
{{ include "dtcp-relay.commonLabels" . }}
app.kubernetes.io/component: relay
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
{{- if and (not .Values.redis.urls) (not .Values.redis.existingSecret) (not .Values.redis.sentinel.addresses) }}true{{ end }}
{{- end }}

{{/* The pod termination grace: longer than the drain, with room for the preStop sleep. */}}
{{- define "dtcp-relay.terminationGrace" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add .Values.relay.drainTimeout .Values.preStopSleepSeconds 10 }}
{{- else }}
{{- $grace := int .Values.terminationGracePeriodSeconds }}
{{- if le $grace (add .Values.relay.drainTimeout .Values.preStopSleepSeconds | int) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be longer than relay.drainTimeout + preStopSleepSeconds (%d), or the kubelet kills draining sessions" $grace (add .Values.relay.drainTimeout .Values.preStopSleepSeconds | int)) }}
{{- end }}
{{- $grace }}
{{- end }}
{{- end }}

{{/* The service account of the relay pods. */}}
{{- define "dtcp-relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dtcp-relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The job label of the relay's series in Prometheus. */}}
{{- define "dtcp-relay.job" -}}
{{- default (include "dtcp-relay.fullname" .) .Values.monitoring.job }}
{{- end }}

{{/* The host the listeners bind: [::] serves IPv6 and IPv4 (Linux dual-stack sockets). */}}
{{- define "dtcp-relay.listenHost" -}}
{{- if or .Values.network.dualStack (eq .Values.network.podIPFamily "IPv6") }}[::]{{ else }}0.0.0.0{{ end }}
{{- end }}

{{/* What other nodes dial: the pod IP, bracketed when it is IPv6. */}}
{{- define "dtcp-relay.advertiseAddr" -}}
{{- if eq .Values.network.podIPFamily "IPv6" }}[$(POD_IP)]:{{ .Values.ports.forward }}{{ else }}$(POD_IP):{{ .Values.ports.forward }}{{ end }}
{{- end }}

{{/* A Service's IP families (nothing: the cluster's default). */}}
{{- define "dtcp-relay.ipFamilies" -}}
{{- with .Values.service.ipFamilyPolicy }}
ipFamilyPolicy: {{ . }}
{{- end }}
{{- with .Values.service.ipFamilies }}
ipFamilies:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
