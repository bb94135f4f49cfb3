{{/*
Names are fixed: the CRDs and ClusterRoles are cluster-wide, so one operator runs per cluster
and deploy/ (kustomize) uses the same names.
*/}}
{{- define "vso.operator" -}}vllm-sleep-operator{{- end }}
{{- define "vso.gateway" -}}vllm-sleep-gateway{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "name-or-empty"). */}}
{{- define "vso.labels" -}}
app.kubernetes.io/part-of: vllm-sleep-operator
{{- with .component }}
app.kubernetes.io/name: {{ . }}
{{- end }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/* Labels of pods (and selectors' superset): stable across upgrades, no chart version. */}}
{{- define "vso.podLabels" -}}
app.kubernetes.io/part-of: vllm-sleep-operator
app.kubernetes.io/name: {{ . }}
{{- end }}

{{- define "vso.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end }}

{{/* The pod securityContext and the container securityContext both components use. */}}
{{- define "vso.podSecurity" -}}
runAsNonRoot: true
seccompProfile:
  type: RuntimeDefault
{{- end }}
{{- define "vso.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
  - ALL
{{- end }}

{{/* imagePullSecrets and scheduling of a pod; call with (dict "root" $ "scheduling" ...). */}}
{{- define "vso.podExtras" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .scheduling.nodeSelector }}
nodeSelector:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .scheduling.tolerations }}
tolerations:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- with .scheduling.affinity }}
affinity:
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A NetworkPolicy peer: pods of one component in the release namespace. */}}
{{- define "vso.peer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .root.Release.Namespace }}
  podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ .component }}
{{- end }}
