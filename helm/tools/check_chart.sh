#!/usr/bin/env bash
# The chart's CI, no cluster needed (`make chart` runs it):
#   1. helm lint --strict with the default values and with every example values file;
#   2. helm template every example, then validate every rendered object against the
#      Kubernetes OpenAPI schemas of 1.30 (the oldest supported) and 1.37 (the newest bundled);
#   3. every helm/tests/bad-*.yaml must fail to render, with the message its "# expect:" names;
#   4. hadolint on the images' Dockerfiles (Docker cannot run here; this is their only check).
# Usage: check_chart.sh HELM KUBERNETES_VALIDATE HADOLINT OUT_DIR
set -euo pipefail

helm=$1 validate=$2 hadolint=$3 out=$4
chart=helm/quantgate
kube=1.30.0
base=$chart/examples/cpu-demo.yaml   # a valid release the broken files are layered on
rm -rf "$out" && mkdir -p "$out"

"$helm" lint --strict --quiet --kube-version "$kube" "$chart" >"$out/defaults.lint" \
    || { cat "$out/defaults.lint"; echo "FAIL lint: the default values"; exit 1; }
"$helm" template qg "$chart" --namespace quantgate --kube-version "$kube" >"$out/defaults.yaml"
echo "ok   default values: lint --strict, $(grep -c '^kind:' "$out/defaults.yaml") objects"

for example in "$chart"/examples/*.yaml; do
    name=$(basename "$example" .yaml)
    "$helm" lint --strict --quiet --kube-version "$kube" -f "$example" "$chart" >"$out/$name.lint" \
        || { cat "$out/$name.lint"; echo "FAIL lint: $example"; exit 1; }
    "$helm" template qg "$chart" --namespace quantgate --kube-version "$kube" -f "$example" \
        >"$out/$name.yaml"
    echo "ok   rendered $example: $(grep -c '^kind:' "$out/$name.yaml") objects"
done

for version in 1.30.0 1.37.0; do
    "$validate" --strict --quiet -k "$version" "$out"/*.yaml
    echo "ok   every rendered object validates against Kubernetes $version (--strict)"
done

for bad in helm/tests/bad-*.yaml; do
    expect=$(sed -n 's/^# expect: //p' "$bad")
    if "$helm" template qg "$chart" --kube-version "$kube" -f "$base" -f "$bad" \
        >/dev/null 2>"$out/error.txt"; then
        echo "FAIL $bad rendered, but must fail with: $expect"
        exit 1
    fi
    if ! grep -qF -- "$expect" "$out/error.txt"; then
        echo "FAIL $bad failed, but its message does not say: $expect"
        cat "$out/error.txt"
        exit 1
    fi
    echo "ok   $bad fails: $(grep -F -- "$expect" "$out/error.txt" | sed 's/^[- ]*//')"
done

"$hadolint" helm/images/*.Dockerfile
echo "ok   hadolint: helm/images/*.Dockerfile"
