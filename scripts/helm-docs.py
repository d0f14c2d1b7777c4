#!/usr/bin/env python3
"""`make helm-docs`: writes the values table of helm/gitfleet/README.md from the `# --` comments of values.yaml, and
copies the operator files the chart ships (alerting rules, dashboard) from ops/ into the chart. `--check` changes
nothing and exits 1 when either is stale (what `make helm-test` runs).

A `# --` comment (continued by the `#` lines after it) documents the key below it; that key is one row of the
table, with its default. A key without one must be a map whose keys are documented: a leaf without a description
is an error, so every value is in the README.
"""
import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "gitfleet"
BEGIN, END = "<!-- values: begin (make helm-docs) -->", "<!-- values: end -->"
CONN_BEGIN, CONN_END = "<!-- connections: begin (make helm-docs) -->", "<!-- connections: end -->"
COPIES = {
    ROOT / "ops" / "prometheus" / "gitfleet-rules.yml": CHART / "files" / "gitfleet-rules.yml",
    ROOT / "ops" / "grafana" / "gitfleet.json": CHART / "files" / "gitfleet-dashboard.json",
}


def documented_keys(text):
    """(dotted key, description) for every documented key, in file order; raises on an undocumented leaf."""
    rows, stack, pending = [], [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        if not stripped:
            continue
        match = re.match(r"^( *)([A-Za-z0-9_.-]+):(.*)$", line)
        if not match:
            continue  # a list item or a continuation of a flow value
        indent, key, rest = len(match.group(1)), match.group(2), match.group(3).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if any(documented for _, _, documented in stack):
            pending = None
            continue  # inside a documented map: its keys belong to its row
        path = ".".join([k for _, k, _ in stack] + [key])
        if pending is not None:
            rows.append((path, " ".join(p for p in pending if p)))
        elif rest and not rest.startswith("#"):
            raise SystemExit(f"values.yaml:{number}: `{path}` has no `# --` description")
        stack.append((indent, key, pending is not None))
        pending = None
    return rows


def default_of(values, path):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def table():
    text = (CHART / "values.yaml").read_text()
    values = yaml.safe_load(text)
    lines = ["| key | default | description |", "|---|---|---|"]
    for path, description in documented_keys(text):
        default = json.dumps(default_of(values, path), separators=(", ", ": "))
        default = default.replace("|", "\\|")
        lines.append(f"| `{path}` | `{default}` | {description.replace('|', chr(92) + '|')} |")
    return "\n".join(lines)


def connections():
    """The PostgreSQL connections of the default values at their most replicas, as NOTES.txt computes them."""
    v = yaml.safe_load((CHART / "values.yaml").read_text())
    serve, relay, worker = v["serve"], v["relay"], v["worker"]
    serve_max = serve["hpa"]["maxReplicas"] if serve["hpa"]["enabled"] else serve["replicas"]
    rows = [
        ("serve", f"{serve_max} (HPA maximum)", f"{serve['databasePoolSize']}", serve_max * serve["databasePoolSize"]),
        ("relay", f"{relay['replicas']}", f"{relay['databasePoolSize']} + 1 (LISTEN)",
         relay["replicas"] * (relay["databasePoolSize"] + 1)),
        ("workers, fixed", f"{worker['replicas']}", f"{worker['databasePoolSize']}",
         worker["replicas"] * worker["databasePoolSize"]),
        ("workers, KEDA", f"{worker['keda']['maxReplicas']} (maxReplicas)", f"{worker['databasePoolSize']}",
         worker["keda"]["maxReplicas"] * worker["databasePoolSize"]),
        ("hook Job", "1 at a time", "2", 2),
    ]
    lines = ["| pods | replicas at most | connections each | connections |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    fixed = rows[0][3] + rows[1][3] + rows[2][3] + 2
    scaled = rows[0][3] + rows[1][3] + rows[3][3] + 2
    lines.append("")
    lines.append(f"With the defaults the fleet opens at most **{fixed}** connections ({scaled} with KEDA at its "
                 f"maximum): keep PostgreSQL's `max_connections` above that plus what else uses the server.")
    return "\n".join(lines)


def splice(text, begin, end, body, path):
    if begin not in text or end not in text:
        raise SystemExit(f"{path}: the markers {begin} and {end} are missing")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    readme = CHART / "README.md"
    current = readme.read_text()
    wanted = splice(current, BEGIN, END, table(), readme)
    wanted = splice(wanted, CONN_BEGIN, CONN_END, connections(), readme)
    if wanted != current:
        stale.append(readme)
        if not check:
            readme.write_text(wanted)
    for source, copy in COPIES.items():
        if not copy.exists() or copy.read_bytes() != source.read_bytes():
            stale.append(copy)
            if not check:
                copy.write_bytes(source.read_bytes())
    if check and stale:
        for path in stale:
            print(f"[helm-docs] stale: {path.relative_to(ROOT)} (run make helm-docs)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
