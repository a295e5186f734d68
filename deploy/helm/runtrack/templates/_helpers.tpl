{{/*
Names, labels and the pieces every pod shares. Object names are fixed (the HPAs `tracking` and
`summary` are part of the contract, and Envoy finds the replicas at their Services' names), so one
release per namespace.
*/}}

{{- define "runtrack.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "runtrack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. Call with (dict "root" $ "component" "tracking"). */}}
{{- define "runtrack.labels" -}}
helm.sh/chart: {{ include "runtrack.chart" .root }}
{{ include "runtrack.selectorLabels" . }}
app.kubernetes.io/part-of: runtrack
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* What a component's Service, Deployment, HPA, PDB and NetworkPolicy select its pods by. */}}
{{- define "runtrack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "runtrack.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* The Secret holding PostgreSQL's URL, and its key. */}}
{{- define "runtrack.postgresSecretName" -}}
{{- default "runtrack-postgres" .Values.postgres.existingSecret -}}
{{- end -}}

{{- define "runtrack.postgresSecretKey" -}}
{{- if .Values.postgres.existingSecret -}}{{ .Values.postgres.existingSecretKey }}{{- else -}}uri{{- end -}}
{{- end -}}

{{/* Envoy's in-cluster address: where a replica calls the other service's API (with the caller's token). */}}
{{- define "runtrack.apiAddress" -}}
{{- printf "envoy-internal.%s.svc.%s:8080" .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/*
A replica pod's grace period: the preStop sleep, the drain delay (NOT_SERVING until Envoy notices),
the grace for unary calls, and a margin for flushing streams and closing the stores.
*/}}
{{- define "runtrack.replicaGracePeriod" -}}
{{- $s := .Values.shutdown -}}
{{- add (int $s.preStopSleepSeconds) (ceil $s.drainDelaySeconds | int) (ceil $s.shutdownGraceSeconds | int) (int $s.marginSeconds) -}}
{{- end -}}

{{/* An Envoy pod's grace period: its drain, then a margin for the admin calls and the exit. */}}
{{- define "runtrack.envoyGracePeriod" -}}
{{- add (int .Values.envoy.drain.seconds) (int .Values.shutdown.marginSeconds) -}}
{{- end -}}

{{- define "runtrack.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
fsGroup: {{ .Values.securityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "runtrack.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The JWKS Envoy reads when none is given: one public key whose private half was never kept, so
no token verifies (Envoy refuses a JWKS without keys). */}}
{{- define "runtrack.noSignerJwks" -}}
{"keys": [{"kty": "EC", "crv": "P-256", "x": "xOQhVVw08e_UBjKlfPZUj3MwXdEWMP6vZlZA9Ic8TkQ", "y": "hHb8Idp86SOUoVuTSc3WbLoG_G6MdnN0GgTAJySK5kg", "kid": "runtrack-no-signer", "alg": "ES256", "use": "sig"}]}
{{- end -}}

{{/* The kubernetes.io/tls Secret Envoy serves: tls.secretName, or the chart's own from tls.certificate. */}}
{{- define "runtrack.tlsSecretName" -}}
{{- if .Values.tls.secretName -}}
{{- .Values.tls.secretName -}}
{{- else if .Values.tls.certificate -}}
envoy-tls
{{- else -}}
{{- fail "TLS is required: set tls.secretName (a kubernetes.io/tls Secret) or tls.certificate and tls.key" -}}
{{- end -}}
{{- end -}}

{{/* Egress rules every component has: the cluster's DNS, UDP and TCP 53. */}}
{{- define "runtrack.egressDns" -}}
- to:
    {{- toYaml .Values.networkPolicy.egress.dns | nindent 4 }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* The public internet as NetworkPolicy peers: every IPv4 and IPv6 address but networkPolicy.egress.notPublic. */}}
{{- define "runtrack.publicPeers" -}}
{{- $not := .Values.networkPolicy.egress.notPublic -}}
- ipBlock:
    cidr: 0.0.0.0/0
    {{- with $not.ipv4 }}
    except:
      {{- toYaml . | nindent 6 }}
    {{- end }}
- ipBlock:
    cidr: ::/0
    {{- with $not.ipv6 }}
    except:
      {{- toYaml . | nindent 6 }}
    {{- end }}
{{- end -}}

{{/* Envoy's internal port, where a replica calls the other service (runtrack.apiAddress). */}}
{{- define "runtrack.egressEnvoyInternal" -}}
- to:
    - podSelector:
        matchLabels:
          {{- include "runtrack.selectorLabels" (dict "root" . "component" "envoy") | nindent 10 }}
  ports:
    - port: 8080
      protocol: TCP
{{- end -}}
