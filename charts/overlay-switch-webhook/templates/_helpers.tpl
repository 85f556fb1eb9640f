{{- define "osw.labels" -}}
app.kubernetes.io/name: overlay-switch-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "osw.selector" -}}
app.kubernetes.io/name: overlay-switch-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Where the shoots' kube-apiservers reach this server (in the seed). */}}
{{- define "osw.baseURL" -}}
https://{{ .Values.service.name }}.{{ .Release.Namespace }}:{{ .Values.service.port }}
{{- end -}}
