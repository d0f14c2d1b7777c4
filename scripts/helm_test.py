#!/usr/bin/env python3
"""The chart's offline checks (`make helm-test`; scripts/helm-test.sh installs what they need).

For the default values and each file of helm/tests/values/: lint the chart (strict) for the three newest
Kubernetes minor versions kubernetes-validate bundles, render it (helm-python-sdk: Helm's own engine, no cluster),
validate every built-in object with kubernetes-validate in strict mode for those versions, validate the KEDA and
Prometheus Operator objects against the checked-in CRDs of helm/tests/crds/ (unknown fields refused), run yamllint
over the output, and check what the chart promises: non-root restricted pods, probes on /healthz and /readyz, the
workers' grace period above their drain, no secret in a ConfigMap or a plain env value, a value path for every
setting the binaries read, image tags that are versions, selectors that select, and the KEDA trigger counting
unacknowledged and waiting events. Then values the schema must refuse are refused.
"""
import copy
import pathlib
import re
import subprocess
import sys

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "gitfleet"
TESTS = ROOT / "helm" / "tests"
NAMESPACE = "netops"
RELEASE = "gitfleet"

problems = []


def problem(where, message):
    problems.append(f"{where}: {message}")


def kube_versions():
    versions = kubernetes_validate.utils.all_versions()
    minors = sorted({kubernetes_validate.utils.major_minor(v) for v in versions},
                    key=lambda v: tuple(int(x) for x in v.split(".")))
    return minors[-3:]


def render(values):
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for template, text in sorted(out.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append((template, doc))
    return out, docs


def crd_schemas():
    """{(apiVersion, kind): schema} from the checked-in CRDs, with unknown fields refused."""
    schemas = {}
    for path in sorted((TESTS / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
            close(schema)
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def close(schema):
    """What the API server prunes silently, we refuse: a misspelt field would otherwise vanish."""
    if not isinstance(schema, dict):
        return
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema.setdefault("additionalProperties", False)
    for key in ("properties", "patternProperties"):
        for sub in schema.get(key, {}).values():
            close(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            close(schema[key])
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in schema.get(key, []):
            close(sub)


def pod_specs(docs):
    """(where, kind, object, pod spec) of every workload."""
    for template, doc in docs:
        kind = doc["kind"]
        if kind in ("Deployment", "Job"):
            yield f"{template} {kind}/{doc['metadata']['name']}", kind, doc, doc["spec"]["template"]["spec"]


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def check_render(label, values, out, docs, versions, crds, env_names):
    # Built-in objects: kubernetes-validate, strict, each version.
    for template, doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        where = f"{label} {template} {doc['kind']}/{doc['metadata']['name']}"
        if key in crds:
            try:
                jsonschema.Draft7Validator(crds[key]).validate(doc)
            except jsonschema.ValidationError as err:
                problem(where, f"against its CRD: {err.message} at {list(err.absolute_path)}")
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.utils.SchemaNotFoundError:
                problem(where, f"no schema for {key} in Kubernetes {version} and no CRD checked in")
            except kubernetes_validate.utils.ValidationError as err:
                problem(where, f"Kubernetes {version}: {err.caused_by.message} at {list(err.caused_by.path)}")

    # yamllint over what Helm wrote.
    text = "\n".join(f"---\n{t.strip()}\n" for name, t in sorted(out.items()) if not name.endswith("NOTES.txt"))
    lint = subprocess.run([sys.executable, "-m", "yamllint", "-c", str(TESTS / "yamllint.yml"), "-"],
                          input=text, capture_output=True, text=True)
    if lint.returncode != 0:
        problem(label, "yamllint:\n" + lint.stdout + lint.stderr)

    services = [d for _, d in docs if d["kind"] == "Service"]
    workloads = list(pod_specs(docs))
    for where, kind, obj, spec in workloads:
        where = f"{label} {where}"
        pod_sc = spec.get("securityContext", {})
        if pod_sc.get("runAsNonRoot") is not True or not isinstance(pod_sc.get("runAsUser"), int) \
                or pod_sc["runAsUser"] == 0:
            problem(where, "the pod must run as a numeric non-root user")
        if pod_sc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problem(where, "seccomp profile must be RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            problem(where, "the service account token must not be mounted")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("readOnlyRootFilesystem") is not True or sc.get("allowPrivilegeEscalation") is not False \
                    or sc.get("capabilities", {}).get("drop") != ["ALL"]:
                problem(where, f"container {c['name']}: read-only root, no privilege escalation, all capabilities dropped")
            image = c["image"]
            tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
            if not tag or tag == "latest":
                problem(where, f"image {image} must carry a version tag")
            if "resources" not in c or "requests" not in c["resources"]:
                problem(where, f"container {c['name']}: no resource requests")
            for name, var in env_of(c).items():
                env_names.add(name)
                secret_like = re.search(r"(DATABASE_URL|AMQP_URL|SECRET|PASSWORD|TOKEN|_KEY_ID)$", name)
                if secret_like and "value" in var:
                    problem(where, f"{name} is a secret: it must come from a Secret, not a plain value")
            if kind == "Deployment":
                probes = {p: c.get(p, {}).get("httpGet", {}).get("path") for p in ("livenessProbe", "readinessProbe")}
                if probes != {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}:
                    problem(where, f"container {c['name']}: probes must be /healthz (liveness) and /readyz, not {probes}")
                ports = {p["name"] for p in c.get("ports", [])}
                for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                    port = c.get(probe, {}).get("httpGet", {}).get("port")
                    if port is not None and port not in ports:
                        problem(where, f"{probe} names port {port}, which the container does not expose")
        if kind == "Deployment":
            labels = spec and obj["spec"]["template"]["metadata"]["labels"]
            selector = obj["spec"]["selector"]["matchLabels"]
            if any(labels.get(k) != v for k, v in selector.items()):
                problem(where, "the selector does not select the pod template")
        if kind == "Deployment" and obj["metadata"]["name"].endswith("-worker"):
            drain = int(env_of(spec["containers"][0])["GITFLEET_SHUTDOWN_GRACE_SECS"]["value"])
            if spec["terminationGracePeriodSeconds"] < drain + 5:
                problem(where, f"grace period {spec['terminationGracePeriodSeconds']} s is not above the drain of {drain} s")
        if kind == "Job":
            hook = obj["metadata"].get("annotations", {}).get("helm.sh/hook", "")
            if not hook:
                problem(where, "a Job of this chart must be a hook")

    for svc in services:
        selector = svc["spec"].get("selector", {})
        if not any(all(o["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())
                   for _, kind, o, _ in workloads if kind == "Deployment"):
            problem(f"{label} Service/{svc['metadata']['name']}", "selects no Deployment's pods")

    for _, doc in docs:
        name = f"{label} {doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] == "ConfigMap":
            blob = yaml.safe_dump(doc.get("data", {}))
            for pattern in (r"postgres(ql)?://[^\s\"]*:[^\s\"]*@", r"amqps?://[^\s\"]*:[^\s\"]*@", r"gft_[0-9a-f]{64}",
                            r"AKIA[0-9A-Z]{16}", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"):
                if re.search(pattern, blob):
                    problem(name, f"holds what looks like a secret ({pattern})")
        if doc["kind"] == "PodDisruptionBudget":
            sel = doc["spec"]["selector"]["matchLabels"]
            if not any(all(o["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items())
                       for _, kind, o, _ in workloads if kind == "Deployment"):
                problem(name, "selects no Deployment's pods")
        if doc["kind"] == "ServiceMonitor":
            sel = doc["spec"]["selector"]["matchLabels"]
            picked = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            ports = {p["name"] for s in picked for p in s["spec"]["ports"]}
            if len(picked) != 3 or not {"http", "metrics"} <= ports:
                problem(name, f"must select the serve, relay and worker Services ({len(picked)} selected, ports {ports})")
        if doc["kind"] == "ScaledObject":
            check_scaled_object(name, doc, values)

    # The connection budget printed by NOTES.txt adds up to what the pools allow.
    notes = next(t for n, t in out.items() if n.endswith("NOTES.txt"))
    merged = helm.Chart.load(str(CHART)).merge_values(values)
    serve_max = merged["serve"]["hpa"]["maxReplicas"] if merged["serve"]["hpa"]["enabled"] else merged["serve"]["replicas"]
    worker_max = merged["worker"]["keda"]["maxReplicas"] if merged["worker"]["keda"]["enabled"] else merged["worker"]["replicas"]
    total = (serve_max * merged["serve"]["databasePoolSize"]
             + merged["relay"]["replicas"] * (merged["relay"]["databasePoolSize"] + 1)
             + worker_max * merged["worker"]["databasePoolSize"])
    if f"total   {total} " not in notes:
        problem(f"{label} NOTES.txt", f"the connection total should be {total}:\n{notes}")


def check_scaled_object(name, doc, values):
    trigger = doc["spec"]["triggers"][0]
    meta = trigger["metadata"]
    if trigger["type"] != "rabbitmq" or meta.get("protocol") != "http" or meta.get("excludeUnacknowledged") != "false":
        problem(name, "the trigger must read the management API (HTTP) and count unacknowledged messages")
    if meta.get("mode") != "QueueLength" or meta.get("useRegex") != "true" or meta.get("operation") != "sum":
        problem(name, "the trigger must sum the queue lengths of the work, deferred and retry queues")
    pattern = re.compile(meta["queueName"])
    for queue, counted in [("gitfleet.work", True), ("gitfleet.deferred", True), ("gitfleet.retry.30s", True),
                           ("gitfleet.dead", False), ("gitfleet.events", False), ("other.work", False)]:
        if bool(pattern.search(queue)) != counted:
            problem(name, f"queue {queue} {'must' if counted else 'must not'} be counted")
    behavior = doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    if behavior["stabilizationWindowSeconds"] < 60:
        problem(name, "the scale-down stabilization window must be at least a minute")


def source_env_names():
    """Every environment variable the binaries read, from their sources."""
    names = set()
    for path in list((ROOT / "infra" / "src").rglob("*.rs")) + list((ROOT / "worker" / "src").rglob("*.rs")) \
            + list((ROOT / "producer" / "src").rglob("*.rs")):
        text = path.read_text()
        text = text.split("#[cfg(test)]", 1)[0]
        names.update(re.findall(r'env = "([A-Z][A-Z0-9_]+)"', text))
        if path.name == "settings.rs" and "storage" in path.parts:
            names.update(re.findall(r'(?:get|number)\("([A-Z][A-Z0-9_]+)"', text))
            names.update(re.findall(r'"(AWS_[A-Z0-9_]+)"', text))
    # Read under these names but set per group or per provider: the chart mounts groups as files and sets the
    # provider groups by name.
    names = {n for n in names if n.startswith(("GITFLEET_", "AWS_", "GIT_", "OTEL_"))}
    return {n for n in names if not n.startswith("GITFLEET_SECRETS_") or n == "GITFLEET_SECRETS_DIR"}


# Values that exclude each other, so no one render can hold both: present in the templates is enough.
EXCLUSIVE = {"AWS_S3_SESSION_PROFILE": "a named profile cannot be combined with keys"}
# Older names of settings the chart sets under their current name.
ALIASES = {"AWS_SECURITY_TOKEN": "AWS_SESSION_TOKEN"}


def main():
    versions = kube_versions()
    crds = crd_schemas()
    files = [("default", {})] + [(p.stem, yaml.safe_load(p.read_text()) or {})
                                 for p in sorted((TESTS / "values").glob("*.yaml"))]
    rendered_env = set()
    for label, values in files:
        for version in versions:
            report = helm.lint(str(CHART), values, strict=True, kube_version=f"v{version}.0", namespace=NAMESPACE)
            for message in report.get("messages", []):
                if message["severity"] >= 2:
                    problem(f"{label} lint {version}", f"{message['path']}: {message['error']}")
            for error in report.get("errors", []):
                problem(f"{label} lint {version}", error)
        out, docs = render(values)
        check_render(label, values, out, docs, versions, crds, rendered_env)
        print(f"[helm-test] {label}: {len(docs)} objects checked for Kubernetes {', '.join(versions)}")

    templates = "".join(p.read_text() for p in (CHART / "templates").iterdir())
    for name in sorted(source_env_names()):
        if name in rendered_env:
            continue
        if name in EXCLUSIVE and name in templates:
            continue
        if ALIASES.get(name) in rendered_env:
            continue
        problem("env", f"{name} is read by the binaries but no values file renders it")

    refused = {
        "image tag latest": {"image": {"tag": "latest"}},
        "prefetch 0": {"worker": {"prefetch": 0}},
        "an unknown key": {"workers": {"replicas": 3}},
        "a secrets group without a Secret": {"secretsGroups": [{"name": "github"}]},
        "an unknown scope": {"apiTokens": {"scopes": {"ci": "root"}}},
        "a pool smaller than 2 x prefetch + 4": {"worker": {"prefetch": 4, "databasePoolSize": 11}},
        "KEDA without its management Secret": {"worker": {"keda": {"enabled": True}}},
    }
    for what, values in refused.items():
        try:
            render(values)
        except helm.HelmError:
            continue
        problem("schema", f"{what} was accepted")

    if problems:
        for p in problems:
            print(f"[helm-test] FAIL {p}", file=sys.stderr)
        sys.exit(1)
    print(f"[helm-test] ok: {len(files)} values files, {len(refused)} refusals")


if __name__ == "__main__":
    main()
