{{/*
Names and labels.
*/}}
{{- define "ponte.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ponte.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ponte.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ponte.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ponte
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "c" $component) */}}
{{- define "ponte.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ponte.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .c.name }}
{{- end -}}

{{/*
The services. `values` is the key of the component's values, `name` its command and the stem
of its resource names, `section` its configuration section, `auditKey` the name of its audit
signing key (<key_dir>/<auditKey>.pk8), `kafkaUser` the principal name in
deploy/local/kafka.sh and docs/security.md.
*/}}
{{- define "ponte.components" -}}
educationAdapter:
  values: educationAdapter
  name: education-adapter
  section: education_adapter
  auditKey: education
  kafkaUser: education-adapter
  adapter: true
healthAdapter:
  values: healthAdapter
  name: health-adapter
  section: health_adapter
  auditKey: health
  kafkaUser: health-adapter
  adapter: true
assistanceAdapter:
  values: assistanceAdapter
  name: assistance-adapter
  section: assistance_adapter
  auditKey: assistance
  kafkaUser: assistance-adapter
  adapter: true
reconciler:
  values: reconciler
  name: reconciler
  section: reconciler
  auditKey: reconciler
  kafkaUser: reconciler
  adapter: false
{{- end -}}

{{- define "ponte.adapterKeys" -}}
- educationAdapter
- healthAdapter
- assistanceAdapter
{{- end -}}

{{/* Resource name of a component: (dict "root" $ "c" $component) */}}
{{- define "ponte.componentName" -}}
{{- printf "%s-%s" (include "ponte.fullname" .root) .c.name -}}
{{- end -}}

{{/* The job label Prometheus gives a component's metrics (deploy/monitoring rules use it). */}}
{{- define "ponte.metricsJob" -}}
{{- printf "ponte-%s" .c.name -}}
{{- end -}}

{{- define "ponte.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ponte.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ponte.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
Kafka.
*/}}
{{- define "ponte.kafkaNamespace" -}}
{{- default .Release.Namespace .Values.kafka.namespace -}}
{{- end -}}

{{- define "ponte.kafkaBootstrap" -}}
{{- if .Values.kafka.bootstrapServers -}}
{{- .Values.kafka.bootstrapServers -}}
{{- else if and .Values.kafka.namespace (ne .Values.kafka.namespace .Release.Namespace) -}}
{{- printf "%s-kafka-bootstrap.%s.svc:%d" .Values.kafka.clusterName .Values.kafka.namespace (int .Values.kafka.port) -}}
{{- else -}}
{{- printf "%s-kafka-bootstrap:%d" .Values.kafka.clusterName (int .Values.kafka.port) -}}
{{- end -}}
{{- end -}}

{{- define "ponte.kafkaClusterCaSecret" -}}
{{- default (printf "%s-cluster-ca-cert" .Values.kafka.clusterName) .Values.kafka.clusterCaSecret -}}
{{- end -}}

{{/* Name of a component's KafkaUser: (dict "root" $ "c" $component) */}}
{{- define "ponte.kafkaUserName" -}}
{{- printf "%s-%s" (include "ponte.fullname" .root) .c.kafkaUser -}}
{{- end -}}

{{/* Secret with a component's Kafka client certificate: (dict "root" $ "c" $component) */}}
{{- define "ponte.kafkaUserSecret" -}}
{{- $explicit := get .root.Values.kafkaUserSecrets .c.values -}}
{{- if $explicit -}}
{{- $explicit -}}
{{- else -}}
{{- include "ponte.kafkaUserName" . -}}
{{- end -}}
{{- end -}}

{{- define "ponte.brokerPodLabels" -}}
{{- if .Values.kafka.brokerPodLabels -}}
{{- toYaml .Values.kafka.brokerPodLabels -}}
{{- else -}}
strimzi.io/cluster: {{ .Values.kafka.clusterName }}
strimzi.io/kind: Kafka
{{- end -}}
{{- end -}}

{{/*
The topic catalogue of crates/ponte-bus/src/topics.rs: base name, cleanup policy and the
retention configs Ponte manages (`Topic::retention`). deploy/helm/test_manifests.py checks it
against topics.rs. `shared` are `Topic::ALL` (named <prefix><base>), `reconciler` are
`Topic::RECONCILER` (named <prefix>reconciler.<group>.<base>).
*/}}
{{- define "ponte.catalogue" -}}
shared:
  - base: education.attendance.v1
    configs: {cleanup.policy: delete, retention.ms: "604800000"}
  - base: health.records.v1
    configs: {cleanup.policy: delete, retention.ms: "604800000"}
  - base: registry.persons.v1
    configs: {cleanup.policy: delete, retention.ms: "604800000"}
  - base: assistance.person.v1
    configs: {cleanup.policy: delete, retention.ms: "604800000"}
  - base: assistance.family.v1
    configs: {cleanup.policy: delete, retention.ms: "604800000"}
  - base: compliance.changes.v1
    configs: {cleanup.policy: compact, delete.retention.ms: "86400000", max.compaction.lag.ms: "604800000"}
  - base: compliance.alerts.v1
    configs: {cleanup.policy: delete, retention.ms: "2592000000"}
  - base: deadletter.v1
    configs: {cleanup.policy: delete, retention.ms: "2592000000"}
  - base: audit.v1
    configs: {cleanup.policy: delete, retention.ms: "157680000000"}
reconciler:
  - base: changelog.v1
    configs: {cleanup.policy: compact, delete.retention.ms: "86400000", max.compaction.lag.ms: "604800000"}
  - base: crosswalk.v1
    configs: {cleanup.policy: delete, retention.ms: "604800000"}
  - base: health-by-nis.v1
    configs: {cleanup.policy: delete, retention.ms: "604800000"}
  - base: members.v1
    configs: {cleanup.policy: delete, retention.ms: "604800000"}
{{- end -}}

{{/*
TOML.
*/}}
{{/* A scalar or a list of scalars as a TOML value. Helm reads YAML numbers as floats: whole
ones are written as integers. */}}
{{- define "ponte.tomlValue" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}
{{- toJson $v -}}
{{- else if kindIs "bool" $v -}}
{{- ternary "true" "false" $v -}}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) -}}
{{- if eq (float64 (int64 $v)) (float64 $v) -}}{{- int64 $v -}}{{- else -}}{{- $v -}}{{- end -}}
{{- else if kindIs "slice" $v -}}
[{{- range $i, $e := $v -}}{{- if $i }}, {{ end -}}{{- include "ponte.tomlValue" $e -}}{{- end -}}]
{{- else -}}
{{- fail (printf "not a TOML scalar or list: %v" $v) -}}
{{- end -}}
{{- end -}}

{{/* `key = value` lines of a map of scalars. */}}
{{- define "ponte.tomlKeys" -}}
{{- range $k, $v := . }}
{{ toJson $k }} = {{ include "ponte.tomlValue" $v }}
{{- end -}}
{{- end -}}

{{/* Mount points inside the pods. */}}
{{- define "ponte.paths" -}}
config: /etc/ponte/config
tls: /etc/ponte/tls
clientCa: /etc/ponte/client-ca
access: /etc/ponte/access
jwks: /etc/ponte/jwks
kafkaCa: /etc/ponte/kafka/cluster-ca
kafkaUser: /etc/ponte/kafka/user
audit: /etc/ponte/audit
rules: /etc/ponte/rules
peerTls: /etc/ponte/peer-tls
peerCa: /etc/ponte/peer-ca
data: /var/lib/ponte
tmp: /tmp
{{- end -}}

{{/* A component's ponte.toml: (dict "root" $ "c" $component) */}}
{{- define "ponte.toml" -}}
{{- $root := .root -}}
{{- $c := .c -}}
{{- $v := get $root.Values $c.values -}}
{{- $p := fromYaml (include "ponte.paths" .) -}}
{{- $V := $root.Values -}}
# Written by the Ponte Helm chart for `ponte {{ $c.name }}`; keys: crates/ponte/config/default.toml.
[log]
format = {{ toJson $V.log.format }}
filter = {{ toJson $V.log.filter }}

[kafka]
bootstrap_servers = {{ include "ponte.kafkaBootstrap" $root | toJson }}
message_timeout_ms = {{ int64 $V.kafka.messageTimeoutMs }}

[kafka.properties]
"security.protocol" = "SSL"
"ssl.ca.location" = {{ printf "%s/ca.crt" $p.kafkaCa | toJson }}
"ssl.certificate.location" = {{ printf "%s/user.crt" $p.kafkaUser | toJson }}
"ssl.key.location" = {{ printf "%s/user.key" $p.kafkaUser | toJson }}
{{- include "ponte.tomlKeys" $V.kafka.properties }}

[topics]
prefix = {{ toJson $V.topics.prefix }}
partitions = {{ int64 $V.topics.partitions }}
replication_factor = {{ int64 $V.topics.replicationFactor }}
{{- range $base, $o := $V.topics.overrides }}

[topics.overrides.{{ toJson $base }}]
{{- if $o.partitions }}
partitions = {{ int64 $o.partitions }}
{{- end }}
{{- if $o.config }}
[topics.overrides.{{ toJson $base }}.configs]
{{- include "ponte.tomlKeys" $o.config }}
{{- end }}
{{- end }}

[tls]
cert_file = {{ printf "%s/tls.crt" $p.tls | toJson }}
key_file = {{ printf "%s/tls.key" $p.tls | toJson }}
{{- if ne $V.tls.clientAuth "none" }}
client_ca_file = {{ printf "%s/ca.pem" $p.clientCa | toJson }}
{{- end }}
client_auth = {{ toJson $V.tls.clientAuth }}
insecure = false

[access]
policy_file = {{ printf "%s/policy.toml" $p.access | toJson }}
{{- if $V.access.tokens.enabled }}

[access.tokens]
jwks_file = {{ printf "%s/jwks.json" $p.jwks | toJson }}
issuer = {{ required "access.tokens.issuer is required with access.tokens.enabled" $V.access.tokens.issuer | toJson }}
audience = {{ toJson $V.access.tokens.audience }}
principal_claim = {{ toJson $V.access.tokens.principalClaim }}
leeway_secs = {{ int64 $V.access.tokens.leewaySecs }}
{{- end }}

[audit]
{{- if $V.audit.enabled }}
key_dir = {{ printf "%s/keys" $p.audit | toJson }}
subject_key_file = {{ printf "%s/subject-key" $p.audit | toJson }}
{{- else }}
disabled = true
{{- end }}

[audit.keys]
{{- include "ponte.tomlKeys" $V.audit.publicKeys }}

[{{ $c.section }}]
{{- if $c.adapter }}
listen = {{ printf "0.0.0.0:%d" (int $v.port) | toJson }}
admin_listen = {{ printf "0.0.0.0:%d" (int $v.adminPort) | toJson }}
{{- else }}
grpc_listen = {{ printf "0.0.0.0:%d" (int $v.grpcPort) | toJson }}
admin_listen = {{ printf "0.0.0.0:%d" (int $v.adminPort) | toJson }}
state_dir = {{ printf "%s/reconciler" $p.data | toJson }}
group_id = {{ toJson $v.groupId }}
batch_max = {{ int64 $v.batchMax }}
batch_linger_ms = {{ int64 $v.batchLingerMs }}
behind_after_ms = {{ int64 $v.behindAfterMs }}
behind_batch_max = {{ int64 $v.behindBatchMax }}
behind_linger_ms = {{ int64 $v.behindLingerMs }}
apply_threads = {{ int64 $v.applyThreads }}
transaction_timeout_ms = {{ int64 $v.transactionTimeoutMs }}
session_timeout_ms = {{ int64 $v.sessionTimeoutMs }}
monitor_from = {{ toJson $v.monitorFrom }}
monitor_to = {{ toJson $v.monitorTo }}
state_memory_mb = {{ int64 $v.stateMemoryMb }}
state_compaction = {{ toJson $v.stateCompaction }}
{{- if $v.rulesConfigMap }}
rules_file = {{ printf "%s/%s" $p.rules $v.rulesKey | toJson }}
{{- end }}
{{- end }}
{{- include "ponte.tomlKeys" $v.config }}
{{- if and (not $c.adapter) $v.peer.enabled }}

# Reads across instances (docs/operations.md); advertise comes from the pod's environment.
[reconciler.peer]
ca_file = {{ printf "%s/ca.pem" $p.peerCa | toJson }}
cert_file = {{ printf "%s/tls.crt" $p.peerTls | toJson }}
key_file = {{ printf "%s/tls.key" $p.peerTls | toJson }}
{{- end }}
{{- with $V.extraConfig }}

# extraConfig
{{ . }}
{{- end }}
{{- end -}}

{{/* ponte.toml of the audit verify CronJob: only what `ponte audit verify` reads. */}}
{{- define "ponte.verifyToml" -}}
{{- $V := .Values -}}
{{- $p := fromYaml (include "ponte.paths" .) -}}
# Written by the Ponte Helm chart for `ponte audit verify`.
[log]
format = {{ toJson $V.log.format }}
filter = {{ toJson $V.log.filter }}

[kafka]
bootstrap_servers = {{ include "ponte.kafkaBootstrap" . | toJson }}
message_timeout_ms = {{ int64 $V.kafka.messageTimeoutMs }}

[kafka.properties]
"security.protocol" = "SSL"
"ssl.ca.location" = {{ printf "%s/ca.crt" $p.kafkaCa | toJson }}
"ssl.certificate.location" = {{ printf "%s/user.crt" $p.kafkaUser | toJson }}
"ssl.key.location" = {{ printf "%s/user.key" $p.kafkaUser | toJson }}
{{- include "ponte.tomlKeys" $V.kafka.properties }}

[topics]
prefix = {{ toJson $V.topics.prefix }}
partitions = {{ int64 $V.topics.partitions }}
replication_factor = {{ int64 $V.topics.replicationFactor }}

[audit.keys]
{{- if not $V.audit.publicKeys }}
{{- fail "auditVerify.enabled: audit.publicKeys must list the services' public keys, or every seal is reported as signed by an unknown key" }}
{{- end }}
{{- include "ponte.tomlKeys" $V.audit.publicKeys }}
{{- end -}}

{{/* NetworkPolicy egress to the Kafka brokers and the cluster DNS. */}}
{{- define "ponte.egressKafkaDns" -}}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ include "ponte.kafkaNamespace" . }}
      podSelector:
        matchLabels:
          {{- include "ponte.brokerPodLabels" . | nindent 10 }}
  ports:
    - protocol: TCP
      port: {{ int .Values.kafka.port }}
- to:
    - namespaceSelector:
        {{- toYaml .Values.networkPolicy.dns.namespaceSelector | nindent 8 }}
      podSelector:
        {{- toYaml .Values.networkPolicy.dns.podSelector | nindent 8 }}
  ports:
    - protocol: UDP
      port: 53
    - protocol: TCP
      port: 53
{{- end -}}
