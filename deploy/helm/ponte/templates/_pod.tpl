{{/*
The pod template every service shares: (dict "root" $ "c" $component). The reconciler's state
volume comes from its StatefulSet's volumeClaimTemplate `state`; the adapters get an emptyDir
there (the health adapter's pull watermark).
*/}}
{{- define "ponte.podTemplate" -}}
{{- $root := .root -}}
{{- $c := .c -}}
{{- $V := $root.Values -}}
{{- $v := get $V $c.values -}}
{{- $p := fromYaml (include "ponte.paths" .) -}}
metadata:
  labels:
    {{- include "ponte.selectorLabels" . | nindent 4 }}
    {{- with $V.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Restart on a change of ponte.toml (the access policy is reloaded without a restart).
    checksum/config: {{ include "ponte.toml" . | sha256sum }}
    {{- with $V.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "ponte.serviceAccountName" $root }}
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- with $V.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $V.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ int64 $v.terminationGracePeriodSeconds }}
  containers:
    - name: {{ $c.name }}
      image: {{ include "ponte.image" $root }}
      imagePullPolicy: {{ $V.image.pullPolicy }}
      command:
        {{- toYaml $V.image.command | nindent 8 }}
      args: [{{ $c.name | quote }}]
      securityContext:
        {{- toYaml $V.securityContext | nindent 8 }}
      env:
        - name: PONTE_CONFIG
          value: {{ printf "%s/ponte.toml" $p.config }}
        {{- if and (not $c.adapter) $v.instanceIdFromPodName }}
        # [reconciler] instance_id = the pod's name: Kafka static membership (operations.md,
        # "Restarts"). The config loader maps PONTE__<SECTION>__<KEY> onto the key.
        - name: PONTE__RECONCILER__INSTANCE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- if and (not $c.adapter) $v.peer.enabled }}
        # [reconciler.peer] advertise: the pod's name under the StatefulSet's governing
        # Service, where the other instances ask it for its partitions' persons and families.
        - name: PONTE_POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        - name: PONTE_POD_NAMESPACE
          valueFrom:
            fieldRef:
              fieldPath: metadata.namespace
        - name: PONTE__RECONCILER__PEER__ADVERTISE
          value: {{ printf "$(PONTE_POD_NAME).%s-admin.$(PONTE_POD_NAMESPACE).svc:%d" (include "ponte.componentName" .) (int $v.grpcPort) | quote }}
        {{- end }}
        {{- if eq $c.values "healthAdapter" }}
        # The pull mode's watermark, on the writable data volume.
        - name: PONTE__HEALTH_ADAPTER__PULL__WATERMARK_FILE
          value: {{ printf "%s/health-adapter/pull-watermark.json" $p.data }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        {{- if $c.adapter }}
        - name: https
          containerPort: {{ int $v.port }}
          protocol: TCP
        {{- else }}
        - name: grpc
          containerPort: {{ int $v.grpcPort }}
          protocol: TCP
        {{- end }}
        - name: admin
          containerPort: {{ int $v.adminPort }}
          protocol: TCP
      # The admin listener (crates/ponte-runtime/src/admin.rs): /health/live answers while the
      # process runs; /health/ready answers 503 with the reason while the service cannot do its
      # job (adapter: no broker answered the last metadata probe; reconciler: no partitions,
      # restoring, assignment incomplete, read path failed).
      livenessProbe:
        httpGet:
          path: /health/live
          port: admin
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 6
      readinessProbe:
        httpGet:
          path: /health/ready
          port: admin
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 2
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ $p.config }}
          readOnly: true
        - name: server-tls
          mountPath: {{ $p.tls }}
          readOnly: true
        {{- if ne $V.tls.clientAuth "none" }}
        - name: client-ca
          mountPath: {{ $p.clientCa }}
          readOnly: true
        {{- end }}
        - name: access-policy
          mountPath: {{ $p.access }}
          readOnly: true
        {{- if $V.access.tokens.enabled }}
        - name: jwks
          mountPath: {{ $p.jwks }}
          readOnly: true
        {{- end }}
        - name: kafka-cluster-ca
          mountPath: {{ $p.kafkaCa }}
          readOnly: true
        - name: kafka-user
          mountPath: {{ $p.kafkaUser }}
          readOnly: true
        {{- if $V.audit.enabled }}
        - name: audit-keys
          mountPath: {{ $p.audit }}
          readOnly: true
        {{- end }}
        {{- if and (not $c.adapter) $v.rulesConfigMap }}
        - name: rules
          mountPath: {{ $p.rules }}
          readOnly: true
        {{- end }}
        {{- if and (not $c.adapter) $v.peer.enabled }}
        - name: peer-tls
          mountPath: {{ $p.peerTls }}
          readOnly: true
        - name: peer-ca
          mountPath: {{ $p.peerCa }}
          readOnly: true
        {{- end }}
        - name: state
          mountPath: {{ $p.data }}
        - name: tmp
          mountPath: {{ $p.tmp }}
  volumes:
    - name: config
      configMap:
        name: {{ include "ponte.componentName" . }}-config
    - name: server-tls
      secret:
        secretName: {{ default $V.tls.serverSecret $v.tls.serverSecret }}
        # 0440: readable by the pod's group (fsGroup) only.
        defaultMode: 288
        items:
          - {key: tls.crt, path: tls.crt}
          - {key: tls.key, path: tls.key}
    {{- if ne $V.tls.clientAuth "none" }}
    - name: client-ca
      secret:
        secretName: {{ $V.tls.clientCaSecret }}
        defaultMode: 288
        items:
          - {key: {{ $V.tls.clientCaKey }}, path: ca.pem}
    {{- end }}
    - name: access-policy
      configMap:
        name: {{ default (printf "%s-access-policy" (include "ponte.fullname" $root)) $V.access.existingConfigMap }}
        items:
          - {key: policy.toml, path: policy.toml}
    {{- if $V.access.tokens.enabled }}
    - name: jwks
      configMap:
        name: {{ required "access.tokens.jwksConfigMap is required with access.tokens.enabled" $V.access.tokens.jwksConfigMap }}
        items:
          - {key: jwks.json, path: jwks.json}
    {{- end }}
    - name: kafka-cluster-ca
      secret:
        secretName: {{ include "ponte.kafkaClusterCaSecret" $root }}
        defaultMode: 288
        items:
          - {key: ca.crt, path: ca.crt}
    - name: kafka-user
      secret:
        secretName: {{ include "ponte.kafkaUserSecret" . }}
        defaultMode: 288
        items:
          - {key: user.crt, path: user.crt}
          - {key: user.key, path: user.key}
    {{- if $V.audit.enabled }}
    - name: audit-keys
      secret:
        secretName: {{ $V.audit.keysSecret }}
        defaultMode: 288
        items:
          # Only this service's signing key, and the subject key.
          - {key: {{ printf "%s.pk8" $c.auditKey }}, path: {{ printf "keys/%s.pk8" $c.auditKey }}}
          - {key: {{ $V.audit.subjectKeyKey }}, path: subject-key}
    {{- end }}
    {{- if and (not $c.adapter) $v.peer.enabled }}
    - name: peer-tls
      secret:
        secretName: {{ required "reconciler.peer.clientSecret is required with reconciler.peer.enabled" $v.peer.clientSecret }}
        defaultMode: 288
        items:
          - {key: tls.crt, path: tls.crt}
          - {key: tls.key, path: tls.key}
    - name: peer-ca
      secret:
        secretName: {{ required "reconciler.peer.caSecret is required with reconciler.peer.enabled" $v.peer.caSecret }}
        defaultMode: 288
        items:
          - {key: {{ $v.peer.caKey }}, path: ca.pem}
    {{- end }}
    {{- if and (not $c.adapter) $v.rulesConfigMap }}
    - name: rules
      configMap:
        name: {{ $v.rulesConfigMap }}
        items:
          - {key: {{ $v.rulesKey }}, path: {{ $v.rulesKey }}}
    {{- end }}
    {{- if $c.adapter }}
    - name: state
      emptyDir:
        sizeLimit: 64Mi
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
