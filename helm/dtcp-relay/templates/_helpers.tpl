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

{{/* The relay's environment as the chart sets it (a YAML list). */}}
{{- define "dtcp-relay.env" -}}
{{- $fullname := include "dtcp-relay.fullname" . }}
{{- $listen := include "dtcp-relay.listenHost" . }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
# Other nodes dial this pod's forwarding plane by its IP.
- name: DTCP_ADVERTISE_ADDR
  value: {{ include "dtcp-relay.advertiseAddr" . | quote }}
- name: DTCP_NODE_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: DTCP_LISTEN
  value: "{{ $listen }}:{{ .Values.ports.client }}"
- name: DTCP_FORWARD_LISTEN
  value: "{{ $listen }}:{{ .Values.ports.forward }}"
- name: DTCP_METRICS_LISTEN
  value: "{{ $listen }}:{{ .Values.ports.metrics }}"
- name: DTCP_PENDING_TTL
  value: {{ .Values.relay.pendingTtl | quote }}
- name: DTCP_CONNECT_GRACE
  value: {{ .Values.relay.connectGrace | quote }}
- name: DTCP_HANDSHAKE_TIMEOUT
  value: {{ .Values.relay.handshakeTimeout | quote }}
- name: DTCP_MAX_CONNECTIONS
  value: {{ .Values.relay.maxConnections | quote }}
- name: DTCP_MAX_PENDING_PER_IP
  value: {{ .Values.relay.maxPendingPerIp | quote }}
- name: DTCP_MAX_CONNECTIONS_PER_IP
  value: {{ .Values.relay.maxConnectionsPerIp | quote }}
- name: DTCP_MAX_SESSIONS_PER_IP
  value: {{ .Values.relay.maxSessionsPerIp | quote }}
- name: DTCP_IPV6_PREFIX_LEN
  value: {{ .Values.relay.ipv6PrefixLen | quote }}
- name: DTCP_IDLE_TIMEOUT
  value: {{ .Values.relay.idleTimeout | quote }}
- name: DTCP_DRAIN_TIMEOUT
  value: {{ .Values.relay.drainTimeout | quote }}
- name: DTCP_LOG_FORMAT
  value: {{ .Values.relay.logFormat | quote }}
{{- if .Values.relay.proxyProtocol.enabled }}
- name: DTCP_PROXY_PROTOCOL
  value: "true"
- name: DTCP_PROXY_PROTOCOL_FROM
  value: {{ required "relay.proxyProtocol.trustedCidrs: the load balancers' networks, when the PROXY protocol is on" (join "," .Values.relay.proxyProtocol.trustedCidrs | default "") | quote }}
{{- end }}
# Always set: unset, the relay limits to 20/s; 0 turns the limit off.
- name: DTCP_MAX_CONNECTION_RATE_PER_IP
  value: {{ printf "%v/s" (.Values.relay.maxConnectionRatePerIp | int) | quote }}
{{- if and .Values.relay.maxConnectionRatePerIp .Values.relay.connectionBurstPerIp }}
- name: DTCP_CONNECTION_BURST_PER_IP
  value: {{ .Values.relay.connectionBurstPerIp | quote }}
{{- end }}
{{- with .Values.relay.maxSessionRate }}
- name: DTCP_MAX_SESSION_RATE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.relay.maxNodeRate }}
- name: DTCP_MAX_NODE_RATE
  value: {{ . | quote }}
{{- end }}
- name: DTCP_MAX_KEY_LEN
  value: {{ .Values.relay.maxKeyLen | quote }}
- name: DTCP_MAX_JID_LEN
  value: {{ .Values.relay.maxJidLen | quote }}
- name: DTCP_MAX_COMMAND_LEN
  value: {{ .Values.relay.maxCommandLen | quote }}
{{- if not .Values.relay.lanes }}
- name: DTCP_NO_LANES
  value: "true"
{{- end }}
- name: DTCP_LANE_POOL
  value: {{ .Values.relay.lanePool | quote }}
{{- if not .Values.relay.splice }}
- name: DTCP_NO_SPLICE
  value: "true"
{{- end }}
{{- with .Values.relay.clusterFormatVersion | toString }}
- name: DTCP_CLUSTER_FORMAT_VERSION
  value: {{ . | quote }}
{{- end }}
{{- with .Values.relay.allowDomains }}
- name: DTCP_ALLOW_DOMAINS
  value: {{ join "," . | quote }}
{{- end }}
- name: DTCP_REDIS_PREFIX
  value: {{ .Values.redis.prefix | quote }}
{{- if .Values.redis.sentinel.addresses }}
{{- if or .Values.redis.urls .Values.redis.existingSecret }}
{{- fail "redis.sentinel.addresses: give either Sentinels or redis.urls/existingSecret, not both" }}
{{- end }}
- name: DTCP_REDIS_SENTINELS
  value: {{ join "," .Values.redis.sentinel.addresses | quote }}
- name: DTCP_REDIS_SENTINEL_MASTER
  value: {{ required "redis.sentinel.masterName: the master name the Sentinels monitor" .Values.redis.sentinel.masterName | quote }}
{{- else if .Values.redis.existingSecret }}
- name: DTCP_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret }}
      key: {{ .Values.redis.existingSecretKey }}
{{- else if .Values.redis.urls }}
- name: DTCP_REDIS_URL
  value: {{ join "," .Values.redis.urls | quote }}
{{- else }}
- name: DTCP_REDIS_URL
  value: "redis://{{ $fullname }}-redis:6379"
{{- end }}
{{- if .Values.redis.cluster }}
- name: DTCP_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- if .Values.redis.password.existingSecret }}
- name: DTCP_REDIS_PASSWORD_FILE
  value: /etc/dtcp/redis-password/redis-password
{{- end }}
{{- if .Values.redis.sentinelPassword.existingSecret }}
- name: DTCP_REDIS_SENTINEL_PASSWORD_FILE
  value: /etc/dtcp/sentinel-password/sentinel-password
{{- end }}
{{- if .Values.redis.tls.ca.existingSecret }}
- name: DTCP_REDIS_CA
  value: /etc/dtcp/redis-ca/ca.crt
{{- end }}
{{- if .Values.redis.tls.clientCert.existingSecret }}
- name: DTCP_REDIS_CLIENT_CERT
  value: /etc/dtcp/redis-client/tls.crt
- name: DTCP_REDIS_CLIENT_KEY
  value: /etc/dtcp/redis-client/tls.key
{{- end }}
- name: DTCP_REDIS_CONNECT_TIMEOUT
  value: {{ .Values.redis.timeouts.connect | quote }}
- name: DTCP_REDIS_RESPONSE_TIMEOUT
  value: {{ .Values.redis.timeouts.response | quote }}
- name: DTCP_REDIS_OPERATION_TIMEOUT
  value: {{ .Values.redis.timeouts.operation | quote }}
- name: DTCP_PLANE_MAX_CONNECTIONS
  value: {{ .Values.plane.maxConnections | quote }}
- name: DTCP_PLANE_MAX_STREAMS
  value: {{ .Values.plane.maxStreams | quote }}
{{- if .Values.xmpp.enabled }}
# XEP-0065 mode: every pod connects as the same component; the XMPP server
# keeps one link and the others wait as hot standbys.
- name: DTCP_XMPP_COMPONENT
  value: {{ required "xmpp.component: the component's JID, when xmpp.enabled" .Values.xmpp.component | quote }}
- name: DTCP_XMPP_SERVER
  value: {{ required "xmpp.server: the XMPP server's component port (HOST:PORT), when xmpp.enabled" .Values.xmpp.server | quote }}
- name: DTCP_XMPP_SECRET_FILE
  value: /etc/dtcp/xmpp-secret/component-secret
- name: DTCP_SOCKS5_ADVERTISE
  value: {{ include "dtcp-relay.socks5Advertise" . | quote }}
- name: DTCP_SOCKS5_ACTIVATION_TIMEOUT
  value: {{ .Values.xmpp.activationTimeout | quote }}
{{- with .Values.xmpp.allowDomains }}
- name: DTCP_XMPP_ALLOW_DOMAINS
  value: {{ join "," . | quote }}
{{- end }}
{{- else if .Values.xmpp.acceptSocks5 }}
# SOCKS5 for a component another release runs (over the same store).
- name: DTCP_ACCEPT_SOCKS5
  value: "true"
{{- end }}
# Secrets as files, not environment variables: they stay out of
# `kubectl describe`, and an update of the Secret reaches the
# running relay, which re-reads them (a rotation needs no restart).
- name: DTCP_CLUSTER_SECRET_FILE
  value: /etc/dtcp/cluster-secret/cluster-secret
{{- if .Values.keySecret.existingSecret }}
- name: DTCP_KEY_SECRET_FILES
  value: /etc/dtcp/key-secret/key-secret
- name: DTCP_MAX_KEY_LIFETIME
  value: {{ .Values.keySecret.maxKeyLifetime | quote }}
{{- end }}
{{- if .Values.forwardTls.enabled }}
- name: DTCP_FORWARD_TLS_CERT
  value: /etc/dtcp/tls/tls.crt
- name: DTCP_FORWARD_TLS_KEY
  value: /etc/dtcp/tls/tls.key
{{- if .Values.forwardTls.mutual }}
- name: DTCP_FORWARD_TLS_CA
  value: /etc/dtcp/tls/ca.crt
{{- end }}
- name: DTCP_FORWARD_TLS_SERVER_NAME
  value: {{ .Values.forwardTls.serverName | quote }}
{{- end }}
{{- end }}

{{/* The relay's image: fully qualified, with the digest when one is given. */}}
{{- define "dtcp-relay.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- with .Values.image.digest }}{{ $ref = printf "%s@%s" $ref . }}{{ end }}
{{- $ref }}
{{- end }}

{{/* Where XMPP clients reach the SOCKS5 port: given, or the Service's
cluster name (only in-cluster clients resolve it, so only a ClusterIP
Service may leave it out). */}}
{{- define "dtcp-relay.socks5Advertise" -}}
{{- if .Values.xmpp.socks5Advertise }}
{{- .Values.xmpp.socks5Advertise }}
{{- else if eq .Values.service.type "ClusterIP" }}
{{- printf "%s.%s.svc:%v" (include "dtcp-relay.fullname" .) .Release.Namespace .Values.service.port }}
{{- else }}
{{- fail (printf "xmpp.socks5Advertise: the address (HOST:PORT) XMPP clients reach this %s Service at, its load balancer's name or address; the chart cannot know it before the Service exists" .Values.service.type) }}
{{- end }}
{{- end }}

{{/* Labels on the helm test Pod (its own component: the relay's selectors never match it). */}}
{{- define "dtcp-relay.testLabels" -}}
app.kubernetes.io/name: {{ include "dtcp-relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}
