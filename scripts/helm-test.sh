#!/usr/bin/env bash
# `make helm-test`: the chart's offline checks. Installs (when missing) helm-python-sdk (Helm's engine as a
# library: no helm binary, no cluster), kubernetes-validate and yamllint from PyPI, checks that the chart README
# and the ops files it ships are current (scripts/helm-docs.py --check), lints the values files, then runs
# scripts/helm_test.py (render, lint, validate, assert).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[helm-test] %s\n' "$*" >&2; }

PACKAGES=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0)
if ! python3 - "${PACKAGES[@]}" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    if m.version(name) != version:
        sys.exit(1)
PY
then
    log "installing ${PACKAGES[*]} from PyPI"
    python3 -m pip install -q --disable-pip-version-check "${PACKAGES[@]}" >/dev/null 2>&1 \
        || python3 -m pip install -q --disable-pip-version-check --break-system-packages "${PACKAGES[@]}" >/dev/null
fi

python3 scripts/helm-docs.py --check
python3 -m yamllint -c helm/tests/yamllint.yml helm/gitfleet/values.yaml helm/gitfleet/Chart.yaml helm/tests/values
python3 scripts/helm_test.py
