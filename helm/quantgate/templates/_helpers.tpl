{{/* Names, labels and the few computed values every template shares. */}}

{{- define "quantgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quantgate.fullname" -}}
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
{{- define "quantgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "quantgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "quantgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quantgate.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "quantgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "quantgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "quantgate.authSecretName" -}}
{{- default (printf "%s-auth" (include "quantgate.fullname" .)) .Values.auth.existingSecret }}
{{- end }}

{{- define "quantgate.cacheClaimName" -}}
{{- default (printf "%s-cache" (include "quantgate.fullname" .)) .Values.cache.existingClaim }}
{{- end }}

{{- define "quantgate.manifestConfigMapName" -}}
{{- printf "%s-manifest" (include "quantgate.fullname" .) }}
{{- end }}

{{/* An image reference: call with (dict "image" .Values.gateway.image "ctx" $). */}}
{{- define "quantgate.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
A vLLM backend's object name: <fullname>-<model>-<variant>, made a DNS-1035 label (Service
names are): dots and underscores become dashes, and a name over 63 characters is cut and given
a hash of the full name so that two long names cannot collide.
*/}}
{{- define "quantgate.backendName" -}}
{{- $full := printf "%s-%s-%s" (include "quantgate.fullname" .ctx) .model .variant | lower | replace "." "-" | replace "_" "-" }}
{{- if le (len $full) 63 }}
{{- $full }}
{{- else }}
{{- printf "%s-%s" ($full | trunc 56 | trimSuffix "-") ($full | sha256sum | trunc 6) }}
{{- end }}
{{- end }}

{{/*
Checks that need more than the schema: paths on the cache volume, and static backends that
name a model and variant of the manifest and serve a checkpoint folder. Included once, from the
manifest ConfigMap.
*/}}
{{- define "quantgate.validate" -}}
{{- $g := .Values.gateway }}
{{- $shared := .Values.sharedState }}
{{- if and (or (gt (int $g.replicas) 1) $g.autoscaling.enabled) (not (and $shared.redis.existingSecret $shared.ledger.existingSecret)) }}
{{- fail "more than one gateway pod (gateway.replicas > 1 or gateway.autoscaling.enabled) needs shared state: sharedState.redis.existingSecret (rate limits and quotas in Redis) and sharedState.ledger.existingSecret (the usage ledger in PostgreSQL); without them each pod counts limits on its own and they share one SQLite file" }}
{{- end }}
{{- if and (eq .Values.mode "dynamic") (or (gt (int $g.replicas) 1) $g.autoscaling.enabled) }}
{{- fail "mode dynamic runs one gateway pod: it owns the Jobs and vLLM Deployments it starts, and a second one would start its own and stop the first one's on its way out. Keep gateway.replicas 1 and gateway.autoscaling.enabled false (static mode scales the gateway)" }}
{{- end }}
{{- $root := printf "%s/" (trimSuffix "/" .Values.cache.mountPath) }}
{{- if ne $root (printf "%s/" (trimSuffix "/" .Values.manifest.cache_dir)) }}
{{- fail (printf "manifest.cache_dir %q must be cache.mountPath (%s): every pod mounts the cache volume's root, and the gateway gives them paths by their place under cache_dir" .Values.manifest.cache_dir .Values.cache.mountPath) }}
{{- end }}
{{- range $name, $model := .Values.manifest.models }}
{{- if and $model.source (not (hasPrefix "hf://" $model.source)) (not (hasPrefix $root $model.source)) }}
{{- fail (printf "manifest.models.%s.source %q must be an absolute path under cache.mountPath (%s): quantization Jobs and vLLM pods mount only the cache volume" $name $model.source $.Values.cache.mountPath) }}
{{- end }}
{{- end }}
{{- if eq .Values.mode "static" }}
{{- if not .Values.static.backends }}
{{- fail "mode static needs at least one entry in static.backends" }}
{{- end }}
{{- range $i, $b := .Values.static.backends }}
{{- $model := get $.Values.manifest.models $b.model }}
{{- if not $model }}
{{- fail (printf "static.backends[%d].model %q is not a model of the manifest (%s)" $i $b.model (keys $.Values.manifest.models | sortAlpha | join ", ")) }}
{{- end }}
{{- $variant := get $model.variants $b.variant }}
{{- if not $variant }}
{{- fail (printf "static.backends[%d].variant %q is not a variant of model %q (%s)" $i $b.variant $b.model (keys $model.variants | sortAlpha | join ", ")) }}
{{- end }}
{{- if and $b.modelDir (not (hasPrefix $root $b.modelDir)) }}
{{- fail (printf "static.backends[%d].modelDir %q must be under cache.mountPath (%s)" $i $b.modelDir $.Values.cache.mountPath) }}
{{- end }}
{{- $source := toString ($model.source | default "") }}
{{- $fromSource := has (get $variant "method") (list "none" "fp8") }}
{{- if and $fromSource (not (hasKey $b "modelDir")) (or (hasPrefix "hf://" $source) (hasSuffix ".gguf" (lower $source))) }}
{{- fail (printf "static.backends[%d] (%s:%s) would serve the model's source %q, which is not a checkpoint folder: static mode prepares no source. Prepare it in dynamic mode first (a Job imports the GGUF file or downloads the repository into %s/.sources/), then set this backend's modelDir to that folder; or make the model's source a checkpoint folder on the volume" $i $b.model $b.variant $source (trimSuffix "/" $.Values.manifest.cache_dir)) }}
{{- end }}
{{- $s := include "quantgate.backend" (dict "ctx" $ "backend" $b) | fromJson }}
{{- if and (gt (int $s.gpus) 0) (lt (int $s.gpus) (int $s.tensorParallelSize)) }}
{{- fail (printf "static.backends[%d] (%s:%s): tensorParallelSize %d needs at least as many GPUs, not %d" $i $b.model $b.variant (int $s.tensorParallelSize) (int $s.gpus)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One static backend with every setting resolved, as JSON: the entry's own value where it has
one, else the vllm.* default, else the manifest's serve options. hasKey, not `default`, so that
an explicit 0 or empty list in an entry wins.
Call with (dict "ctx" $ "backend" <entry>).
*/}}
{{- define "quantgate.backend" -}}
{{- $b := .backend }}
{{- $v := .ctx.Values.vllm }}
{{- $model := get .ctx.Values.manifest.models $b.model }}
{{- $variant := get $model.variants $b.variant }}
{{- $serve := $model.serve | default dict }}
{{- $out := dict "model" $b.model "variant" $b.variant }}
{{- range $key := list "gpus" "tensorParallelSize" "gpuMemoryUtilization" "extraArgs" "env" "resources" "nodeSelector" "tolerations" "affinity" }}
{{- $_ := set $out $key (ternary (get $b $key) (get $v $key) (hasKey $b $key)) }}
{{- end }}
{{- $_ := set $out "replicas" (ternary $b.replicas 1 (hasKey $b "replicas")) }}
{{- $_ := set $out "maxModelLen" (ternary $b.maxModelLen ($serve.max_model_len | default 512) (hasKey $b "maxModelLen")) }}
{{- $_ := set $out "dtype" ($serve.dtype | default "bfloat16") }}
{{- $_ := set $out "enforceEager" ($serve.enforce_eager | default false) }}
{{- $_ := set $out "serveExtraArgs" ($serve.extra_args | default list) }}
{{- $_ := set $out "cpuKvCacheGib" ($serve.cpu_kv_cache_gib | default 1) }}
{{- $byName := printf "%s/%s/by-name/%s" (trimSuffix "/" .ctx.Values.manifest.cache_dir) $b.model $b.variant }}
{{- $default := ternary $model.source $byName (has (get ($variant | default dict) "method") (list "none" "fp8")) }}
{{- $_ := set $out "modelDir" (ternary $b.modelDir $default (hasKey $b "modelDir")) }}
{{- $_ := set $out "quantization" (ternary "fp8" "" (eq (get ($variant | default dict) "method") "fp8")) }}
{{- $served := list (printf "%s:%s" $b.model $b.variant) }}
{{- if eq $model.default_variant $b.variant }}
{{- $served = append $served $b.model }}
{{- end }}
{{- $_ := set $out "servedNames" $served }}
{{- $_ := set $out "name" (include "quantgate.backendName" (dict "ctx" .ctx "model" $b.model "variant" $b.variant)) }}
{{- toJson $out }}
{{- end }}

{{/* Labels that say which model and variant a vLLM backend serves. Call with a resolved backend. */}}
{{- define "quantgate.backendLabels" -}}
quantgate.io/model: {{ .model | quote }}
quantgate.io/variant: {{ .variant | quote }}
{{- end }}

{{/*
CPU/memory resources with the GPUs added as both request and limit (extended resources must
match). Call with (dict "resources" <map> "gpus" <int> "name" "nvidia.com/gpu").
*/}}
{{- define "quantgate.gpuResources" -}}
{{- $res := deepCopy (.resources | default dict) }}
{{- if gt (int .gpus) 0 }}
{{- $limits := deepCopy (get $res "limits" | default dict) }}
{{- $requests := deepCopy (get $res "requests" | default dict) }}
{{- $_ := set $limits .name (int .gpus) }}
{{- $_ := set $requests .name (int .gpus) }}
{{- $_ := set $res "limits" $limits }}
{{- $_ := set $res "requests" $requests }}
{{- end }}
{{- toYaml $res }}
{{- end }}

{{/*
The launcher.yaml of dynamic mode (the ConfigMap's key; QUANTGATE_LAUNCHER_CONFIG): the vllm
and quantizer values that shape the pods the gateway creates (image.pullPolicy as
imagePullPolicy), and imagePullSecrets. The gateway reads it at start
(serving/kube/pod_defaults.py) and refuses an unknown key.
*/}}
{{- define "quantgate.launcherConfig" -}}
{{- $vllm := pick .Values.vllm "gpus" "gpuResourceName" "gpuMemoryUtilization" "extraArgs" "env" "resources" "nodeSelector" "tolerations" "affinity" "runtimeClassName" "priorityClassName" "podSecurityContext" "securityContext" "shmSize" "terminationGracePeriodSeconds" "podAnnotations" "podLabels" }}
{{- $_ := set $vllm "imagePullPolicy" .Values.vllm.image.pullPolicy }}
{{- $quantizer := pick .Values.quantizer "gpus" "gpuResourceName" "env" "resources" "nodeSelector" "tolerations" "affinity" "priorityClassName" "podSecurityContext" "securityContext" "activeDeadlineSeconds" "ttlSecondsAfterFinished" "podAnnotations" "podLabels" }}
{{- $_ := set $quantizer "imagePullPolicy" .Values.quantizer.image.pullPolicy }}
{{- toYaml (dict "vllm" $vllm "quantizer" $quantizer "imagePullSecrets" .Values.imagePullSecrets) }}
{{- end }}
