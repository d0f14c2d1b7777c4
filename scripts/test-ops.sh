#!/usr/bin/env bash
# Checks the operator's files under ops/: the alerting rules parse and their unit tests pass (promtool, from
# Debian's prometheus package, which `make test-deps` installs), and the Grafana dashboard is well-formed (every
# panel has a unique id, a place on the 24-column grid, a description and at least one Prometheus query). That
# every query names a metric the processes export is checked by the integration test `observability::`, which
# scrapes them.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v promtool >/dev/null || { echo "[test-ops] promtool not found: run make test-deps" >&2; exit 1; }
(cd ops/prometheus && promtool check rules gitfleet-rules.yml && promtool test rules gitfleet-rules.test.yml)
python3 - ops/grafana/gitfleet.json <<'PY'
import json, sys
path = sys.argv[1]
dashboard = json.load(open(path))
problems = []
ids = set()
for panel in dashboard.get("panels", []):
    title = panel.get("title") or f"panel {panel.get('id')}"
    if panel.get("id") in ids:
        problems.append(f"{title}: id {panel.get('id')} used twice")
    ids.add(panel.get("id"))
    grid = panel.get("gridPos", {})
    if not all(isinstance(grid.get(k), int) for k in "hwxy") or grid["x"] + grid["w"] > 24:
        problems.append(f"{title}: gridPos {grid} is not on the 24-column grid")
    if not panel.get("description"):
        problems.append(f"{title}: no description")
    targets = panel.get("targets") or []
    if not targets or not all(t.get("expr") for t in targets):
        problems.append(f"{title}: a panel needs at least one query, and every target an expr")
    if panel.get("datasource", {}).get("uid") != "${datasource}":
        problems.append(f"{title}: the datasource must be the dashboard's ${{datasource}} variable")
if len(ids) < 10:
    problems.append(f"only {len(ids)} panels")
if problems:
    sys.exit("[test-ops] " + path + ":\n  " + "\n  ".join(problems))
print(f"[test-ops] {path}: {len(ids)} panels")
PY
