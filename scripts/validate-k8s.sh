#!/usr/bin/env bash
# Validates deploy/kubernetes/ without a cluster (none runs here): every manifest against the
# Kubernetes API schemas (kubernetes-validate from PyPI, strict: unknown fields fail), the
# kustomization lists every manifest, and every flag a container passes to `oxflow` is one
# that subcommand takes (checked against this build's --help). Usage: validate-k8s.sh
# [OXFLOW_BINARY] (default: the release build in $CARGO_TARGET_DIR).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$HOME/.cache/oxflow-target}
oxflow=${1:-$target/release/oxflow}
venv=$HOME/.cache/oxflow-k8s-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'kubernetes-validate==1.37.0'
fi
dir=$root/deploy/kubernetes
manifests=$(ls "$dir"/*.yaml | grep -v kustomization.yaml)
# The schemas of the oldest Kubernetes still supported and of the newest.
for version in 1.32 1.37; do
  # shellcheck disable=SC2086
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" $manifests
done
# The checker itself must be able to fail: a wrong field type is refused.
bad=$(mktemp --suffix=.yaml)
trap 'rm -f "$bad"' EXIT
printf 'apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\nspec: {replicas: "three"}\n' > "$bad"
if "$venv/bin/kubernetes-validate" --strict --quiet "$bad" >/dev/null 2>&1; then
  echo "kubernetes-validate accepted a broken manifest: the check is not working"; exit 1
fi
"$venv/bin/python" - "$dir" "$oxflow" <<'PY'
import os, subprocess, sys, yaml
d, oxflow = sys.argv[1], sys.argv[2]
listed = set(yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))["resources"])
files = {f for f in os.listdir(d) if f.endswith(".yaml") and f != "kustomization.yaml"}
if listed != files:
    sys.exit(f"kustomization.yaml lists {sorted(listed)}, the directory has {sorted(files)}")
helps = {}
checked = 0
for f in sorted(files):
    for doc in yaml.safe_load_all(open(os.path.join(d, f))):
        spec = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("containers", []):
            args = c.get("args", [])
            command, flags = args[0], [a.split("=")[0] for a in args[1:] if a.startswith("--")]
            if command not in helps:
                helps[command] = subprocess.run([oxflow, command, "--help"], capture_output=True, text=True, check=True).stdout
            for flag in flags:
                if flag not in helps[command]:
                    sys.exit(f"{f}: container {c['name']} passes {flag}, which `oxflow {command}` does not take")
                checked += 1
print(f"deploy/kubernetes: {len(files)} manifests valid against Kubernetes 1.32 and 1.37; {checked} oxflow flags checked")
PY
