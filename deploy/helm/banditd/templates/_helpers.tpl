{{- define "banditd.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-scoped name; the release name alone when it already contains the chart name. */}}
{{- define "banditd.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "banditd.baseLabels" -}}
app.kubernetes.io/name: {{ include "banditd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "banditd.metaLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Server pods only: the migration Job's pods carry component=migrate and match none of these. */}}
{{- define "banditd.selectorLabels" -}}
{{ include "banditd.baseLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "banditd.labels" -}}
{{ include "banditd.selectorLabels" . }}
{{ include "banditd.metaLabels" . }}
{{- end }}

{{- define "banditd.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "banditd.databaseUrlEnv" -}}
- name: BANDITD_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.databaseUrl.name }}
      key: {{ .Values.secrets.databaseUrl.key }}
{{- end }}

{{/* Pod-level settings shared by the server and the migration Job. */}}
{{- define "banditd.podCommon" -}}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Gateway pods (`banditd gateway`): component=gateway, matched by none of the server's selectors. */}}
{{- define "banditd.gatewaySelectorLabels" -}}
{{ include "banditd.baseLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "banditd.gatewayLabels" -}}
{{ include "banditd.gatewaySelectorLabels" . }}
{{ include "banditd.metaLabels" . }}
{{- end }}
