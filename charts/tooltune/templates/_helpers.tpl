{{/* Name of the chart, or nameOverride. */}}
{{- define "tooltune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<release>-<chart>", or just the release name when it already holds the chart name. */}}
{{- define "tooltune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels that select the operator pod; never change them on upgrade. */}}
{{- define "tooltune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tooltune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "tooltune.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tooltune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tooltune
{{- end }}

{{- define "tooltune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tooltune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tooltune.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) }}
{{- end }}

{{- define "tooltune.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/*
What the operator may do in the namespaces it watches. The same rules go into a ClusterRole (cluster-wide)
or a Role (namespaceScoped). It also creates a Role for trainer pods (tooltunejobs get, tooltunejobs/status
get+patch, events create): Kubernetes lets a role grant only what its creator holds, and these cover it.
*/}}
{{- define "tooltune.namespacedRules" -}}
# Its own resources: watch them, keep kopf's progress annotations, set finalizers and status.
- apiGroups: [tooltune.dev]
  resources: [tooltunejobs]
  verbs: [get, list, watch, patch, update]
- apiGroups: [tooltune.dev]
  resources: [tooltunejobs/status]
  verbs: [get, patch, update]
# Children carry ownerReferences with blockOwnerDeletion, which needs this.
- apiGroups: [tooltune.dev]
  resources: [tooltunejobs/finalizers]
  verbs: [update]
# The training Job and the contract ConfigMap of each attempt, and the Job that cancels a remote OpenAI
# job (its pod gets the key through secretKeyRef: the operator reads no Secret); pods are only read.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, delete, patch]
# A multi-node job's headless Service (pods' DNS names), created before its Job and handed over to it.
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch]
# Its own Events; and the kubelet's and scheduler's about a trainer pod that stays Pending (list).
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch, list]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# The trainer's ServiceAccount, Role and RoleBinding in each job's namespace.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, patch]
{{- if .Values.kueue.enabled }}
# Kueue's Workloads of the operator's Jobs: why a job waits; spec.active carries spec.suspend.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end }}

{{/* kopf notices CRDs and namespaces appearing and going; only meaningful cluster-wide. */}}
{{- define "tooltune.clusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [list, watch]
{{- end }}
