"""Checks the shipped deployment files say what operators rely on.

Parses conf/k8s/*.yaml, docker-compose.yml, conf/sentinel/*.conf,
conf/prometheus/alerts.yml, conf/grafana/keyway.json and the Dockerfile,
and asserts their key structure: the keyway sidecar with /healthz and
/readyz probes, a preStop hook and a non-root, read-only security context;
three Redis, three sentinels and keyway in compose; the alert names and
the reference deployment's thresholds; that every keyway_* metric the alerts and the
dashboard query is one src/metrics.rs registers. Needs PyYAML:

    bash tests/deploy/install.sh          # prints the python to use
    tests/deploy/.venv/bin/python tests/deploy/check_manifests.py [REPO_ROOT]

Prints one line per failure and `N passed, M failed`; exits 1 on any
failure. Nothing is deployed: no container engine or cluster is needed.
"""

import json
import pathlib
import re
import sys

try:
    import yaml
except ImportError:
    sys.exit("check_manifests: PyYAML is missing; run tests/deploy/install.sh")

try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        tomllib = None

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2])
passed = failed = skipped = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print(f"FAIL: {what}")
    return cond


def load_yaml_docs(path):
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as e:
        check(False, f"{path.relative_to(ROOT)} parses as YAML ({e})")
        return []


# Metric families keyway registers: the string literals of src/metrics.rs.
metrics_src = (ROOT / "src/metrics.rs").read_text() if (ROOT / "src/metrics.rs").exists() else ""
KNOWN_METRICS = set(re.findall(r'"(keyway_[a-z_]+)"', metrics_src))
check(len(KNOWN_METRICS) >= 10, "src/metrics.rs names the keyway_* metric families")


def unknown_metrics(exprs):
    """keyway_* names in PromQL that are no registered family (a histogram's
    _bucket, _sum and _count series belong to their family)."""
    unknown = set()
    for e in exprs:
        for name in re.findall(r"\bkeyway_[a-z_]+", e):
            family = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in KNOWN_METRICS and family not in KNOWN_METRICS:
                unknown.add(name)
    return sorted(unknown)


dockerfile = (ROOT / "Dockerfile").read_text() if (ROOT / "Dockerfile").exists() else ""
# ENV of the runtime stage (after the last FROM), continuation lines joined.
runtime_stage = dockerfile.replace("\\\n", " ").split("\nFROM ")[-1]
IMAGE_ENV = dict(re.findall(r"\b(KEYWAY_[A-Z]+)=(\S+)", " ".join(
    line for line in runtime_stage.splitlines() if line.startswith("ENV "))))

# --- Kubernetes --------------------------------------------------------------
k8s_docs = []
for path in sorted((ROOT / "conf/k8s").glob("*.yaml")) + sorted((ROOT / "conf/k8s").glob("*.yml")):
    k8s_docs += load_yaml_docs(path)
check(k8s_docs, "conf/k8s/*.yaml holds Kubernetes documents")
check(all("apiVersion" in d and "kind" in d and "name" in d.get("metadata", {}) for d in k8s_docs),
      "every Kubernetes document has apiVersion, kind and metadata.name")
def check_sidecar(path, docs):
  """One manifest file: keyway as a native sidecar (an init container with
  restartPolicy Always, Kubernetes 1.29+) or as a regular container with a
  preStop pause (older clusters)."""
  global skipped
  by_kind = {}
  for d in docs:
      by_kind.setdefault(d["kind"], []).append(d)
  configmaps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
  secrets = {d["metadata"]["name"]: d for d in by_kind.get("Secret", [])}
  pods = [(d, d["spec"]["template"]["spec"]) for d in by_kind.get("Deployment", [])]
  named = lambda cs: [c for c in cs if c.get("name") == "keyway"]
  sidecar_pods = [(d, p) for d, p in pods if named(p.get("containers", []) + p.get("initContainers", []))]
  if check(sidecar_pods, f"{path.name}: a Deployment runs keyway"):
    deploy, pod = sidecar_pods[0]
    containers = pod["containers"]
    native = named(pod.get("initContainers", []))
    kw = (native or named(containers))[0]
    if native:
        check(kw.get("restartPolicy") == "Always",
              f"{path.name}: keyway is a native sidecar (init container, restartPolicy Always)")
        check(len(containers) >= 1, f"{path.name}: keyway runs beside an application container")
        check("startupProbe" in kw, f"{path.name}: the native sidecar has a startupProbe (the app starts after it)")
    else:
        check(len(containers) >= 2, f"{path.name}: keyway runs beside an application container")
    ports = {p.get("name"): p["containerPort"] for p in kw.get("ports", [])}

    def probe_ok(kind, path):
        probe = kw.get(kind, {}).get("httpGet", {})
        port = probe.get("port")
        port = ports.get(port, port)
        return probe.get("path") == path and port == 9390

    check(probe_ok("livenessProbe", "/healthz"), "livenessProbe GET /healthz on 9390")
    check(probe_ok("readinessProbe", "/readyz"), "readinessProbe GET /readyz on 9390")
    pre_stop = kw.get("lifecycle", {}).get("preStop", {})
    if not native:
        check("exec" in pre_stop or "sleep" in pre_stop or "httpGet" in pre_stop,
              f"{path.name}: a regular-container sidecar has a preStop hook")
    sleep_s = 0
    cmd = " ".join(pre_stop.get("exec", {}).get("command", []))
    m = re.search(r"sleep (\d+)", cmd)
    if m:
        sleep_s = int(m.group(1))
    elif "sleep" in pre_stop:
        sleep_s = int(pre_stop["sleep"].get("seconds", 0))

    sc = kw.get("securityContext", {})
    check(sc.get("runAsNonRoot") is True, "securityContext.runAsNonRoot")
    check(isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] != 0, "securityContext.runAsUser is not root")
    check(sc.get("runAsUser") == 10001, "securityContext.runAsUser 10001 (the image's user)")
    check(sc.get("readOnlyRootFilesystem") is True, "securityContext.readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, "securityContext.allowPrivilegeEscalation false")
    check(sc.get("capabilities", {}).get("drop") == ["ALL"], "securityContext drops ALL capabilities")
    res = kw.get("resources", {})
    check({"cpu", "memory"} <= set(res.get("requests", {})) and {"cpu", "memory"} <= set(res.get("limits", {})),
          "keyway has cpu/memory requests and limits")

    check("--config" not in kw.get("args", []),
          "args do not repeat --config (the image's entrypoint passes it; keyway refuses it twice)")
    env = {e["name"]: e.get("value") for e in kw.get("env", [])}

    secret_names = [s["secretRef"]["name"] for s in kw.get("envFrom", []) if "secretRef" in s]
    secret_names += [e["valueFrom"]["secretKeyRef"]["name"] for e in kw.get("env", [])
                     if "secretKeyRef" in e.get("valueFrom", {})]
    secret_keys = set()
    for name in secret_names:
        s = secrets.get(name, {})
        secret_keys |= set(s.get("stringData", {})) | set(s.get("data", {}))
    check(secret_names and all(n in secrets for n in secret_names), "keyway's env comes from a Secret in the file")
    for key in ["REDIS_SESSION_URL", "REDIS_CACHE_URL", "REDIS_REALTIME_URL", "KEYWAY_REQUIREPASS"]:
        check(key in secret_keys, f"the Secret provides {key}")

    mounts = {m["name"]: m for m in kw.get("volumeMounts", [])}
    cm_volumes = {v["name"]: v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
    mounted = [(m, cm_volumes[n]) for n, m in mounts.items() if n in cm_volumes]
    check(any(m["mountPath"] == "/etc/keyway" and "subPath" not in m for m, _ in mounted),
          "the ConfigMap is mounted at /etc/keyway as a directory (no subPath: updates arrive)")

    drain_ms = 10_000
    cm = configmaps.get(mounted[0][1]) if mounted else None
    if check(cm is not None and "keyway.toml" in cm.get("data", {}), "the mounted ConfigMap holds keyway.toml"):
        if tomllib is None:
            skipped += 1
            print("SKIP: keyway.toml in the ConfigMap not parsed (no tomllib / tomli)")
        else:
            try:
                conf = tomllib.loads(cm["data"]["keyway.toml"])
            except tomllib.TOMLDecodeError as e:
                check(False, f"keyway.toml in the ConfigMap parses as TOML ({e})")
                conf = {}
            server = conf.get("server", {})
            check(server.get("listen") == "127.0.0.1:6390", "ConfigMap keyway.toml listens on 127.0.0.1:6390")
            check(server.get("admin") == "0.0.0.0:9390", "ConfigMap keyway.toml admin on 0.0.0.0:9390")
            # What keyway binds: the container's env, else the image's ENV,
            # else the file (env overrides the file).
            listen = env.get("KEYWAY_LISTEN") or IMAGE_ENV.get("KEYWAY_LISTEN") or server.get("listen", "")
            admin = env.get("KEYWAY_ADMIN") or IMAGE_ENV.get("KEYWAY_ADMIN") or server.get("admin", "")
            check(listen.startswith("127.0.0.1:"),
                  f"the sidecar's clients port stays on loopback (effective listen {listen}; "
                  "the image's KEYWAY_LISTEN overrides the file unless the container sets it)")
            check(admin == "0.0.0.0:9390", f"the admin port is reachable by probes (effective admin {admin})")
            check({"session", "cache", "realtime"} <= set(conf.get("pools", {})),
                  "ConfigMap keyway.toml has the session, cache and realtime pools")
            check(conf.get("routes", {}).get("default") in conf.get("pools", {}), "ConfigMap routes.default is a pool")
            drain_ms = server.get("drain_timeout_ms", drain_ms)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    check(grace > sleep_s + drain_ms / 1000,
          f"terminationGracePeriodSeconds ({grace}) > preStop ({sleep_s} s) + drain ({drain_ms / 1000:g} s)")


for path in sorted((ROOT / "conf/k8s").glob("*.yaml")):
    check_sidecar(path, load_yaml_docs(path))

# --- docker compose and sentinels --------------------------------------------
compose = (load_yaml_docs(ROOT / "docker-compose.yml") or [{}])[0]
services = compose.get("services", {})
redis = {n: s for n, s in services.items() if n.startswith("redis-")}
sentinels = {n: s for n, s in services.items() if "sentinel" in n}
check(sorted(redis) == ["redis-cache", "redis-realtime", "redis-session"],
      "compose has redis-session, redis-cache and redis-realtime")
for name, port in [("redis-session", "6379"), ("redis-cache", "6380"), ("redis-realtime", "6381")]:
    s = redis.get(name, {})
    check(str(s.get("image", "")).startswith("redis:7") and port in [str(a) for a in s.get("command", [])],
          f"{name} runs redis:7 on port {port}")
check(len(sentinels) == 3, "compose has three sentinels")
sentinel_ports = set()
for name, s in sentinels.items():
    cmd = " ".join(s.get("command", [])) if isinstance(s.get("command"), list) else str(s.get("command", ""))
    m = re.search(r"conf/sentinel/(sentinel-\d+\.conf)|/conf/(sentinel-\d+\.conf)", cmd)
    conf_name = m and (m.group(1) or m.group(2))
    conf_path = ROOT / "conf/sentinel" / (conf_name or "missing")
    if check(conf_path.exists(), f"{name} starts from a config file in conf/sentinel/"):
        text = conf_path.read_text()
        monitors = re.findall(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)", text, re.M)
        check(sorted(m[0] for m in monitors) == ["cache", "realtime", "session"]
              and all(m[3] == "2" for m in monitors), f"{conf_name} monitors session, cache, realtime with quorum 2")
        check(all(m[1] in services for m in monitors), f"{conf_name} monitors the compose service names")
        check("sentinel resolve-hostnames yes" in text and "sentinel announce-hostnames yes" in text,
              f"{conf_name} resolves and announces hostnames")
        sentinel_ports |= set(re.findall(r"^port (\d+)", text, re.M))
check(sentinel_ports == {"26379", "26380", "26381"}, "sentinels listen on 26379-26381")
kws = services.get("keyway", {})
check("build" in kws, "compose builds keyway from the Dockerfile")
kenv = kws.get("environment", {})
if isinstance(kenv, list):
    kenv = dict(e.split("=", 1) for e in kenv)
for pool in ["SESSION", "CACHE", "REALTIME"]:
    url = str(kenv.get(f"REDIS_{pool}_URL", ""))
    hosts = re.findall(r"[@/,]([a-z0-9-]+):\d+", url)
    check(url.startswith(("redis://", "redis+sentinel://")) and hosts and all(h in services for h in hosts),
          f"compose keyway REDIS_{pool}_URL points at compose services")
check(sorted(str(p) for p in kws.get("ports", [])) == ["127.0.0.1:6390:6390", "127.0.0.1:9390:9390"],
      "compose publishes keyway's 6390 and 9390 on 127.0.0.1 only")
check(not any(s.get("ports") for n, s in services.items() if n != "keyway"), "only keyway publishes ports")

# --- Prometheus alerts ---------------------------------------------------------
rules_doc = (load_yaml_docs(ROOT / "conf/prometheus/alerts.yml") or [{}])[0]
groups = rules_doc.get("groups", [])
check(groups and all("name" in g and g.get("rules") for g in groups), "alerts.yml has named groups with rules")
alerts = {r["alert"]: r for g in groups for r in g.get("rules", []) if "alert" in r}
expected = {
    "KeywayCacheHitRatioLow": "warning",
    "KeywayBackendMemoryHigh": "warning",
    "KeywayBackendMemoryCritical": "critical",
    "KeywayTooManyClients": "warning",
    "KeywayBackendTooManyClients": "warning",
    "KeywayErrorRateHigh": "warning",
    "KeywaySlowCommands": "warning",
    "KeywayBackendDown": "critical",
    "KeywayFailover": "info",
    "KeywayConfigReloadFailed": "warning",
}
for name, severity in expected.items():
    r = alerts.get(name, {})
    check(str(r.get("expr", "")).strip() and r.get("labels", {}).get("severity") == severity
          and r.get("annotations", {}).get("summary"), f"alert {name} (severity {severity}, summary)")


def expr(name):
    return re.sub(r"\s+", " ", str(alerts.get(name, {}).get("expr", "")))


check("< 0.90" in expr("KeywayCacheHitRatioLow"), "hit ratio alert below 90%")
check("> 0.80" in expr("KeywayBackendMemoryHigh") and "> 0.90" in expr("KeywayBackendMemoryCritical"),
      "memory alerts at 80% and 90%")
check("memory_max_bytes" in expr("KeywayBackendMemoryHigh") and "> 0)" in expr("KeywayBackendMemoryHigh"),
      "memory alerts skip backends without maxmemory")
check("> 100" in expr("KeywayTooManyClients") and "> 100" in expr("KeywayBackendTooManyClients"),
      "client alerts above 100")
check("> 0.01" in expr("KeywayErrorRateHigh"), "error rate alert above 1%")
check(alerts.get("KeywayBackendDown", {}).get("for") == "30s" and "== 0" in expr("KeywayBackendDown"),
      "backend down for 30s")
bad = unknown_metrics(str(r.get("expr", "")) for r in alerts.values())
check(not bad, f"alerts query only metrics keyway exports (unknown: {bad})")

# --- Grafana dashboard ---------------------------------------------------------
try:
    dash = json.loads((ROOT / "conf/grafana/keyway.json").read_text())
except (OSError, ValueError) as e:
    check(False, f"conf/grafana/keyway.json parses as JSON ({e})")
    dash = {}
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
check(variables.get("DS_PROMETHEUS", {}).get("type") == "datasource", "dashboard has the DS_PROMETHEUS datasource variable")
panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
check(len(panels) >= 8 and all(p.get("targets") for p in panels), "dashboard has at least 8 panels, each with queries")
check(all(p.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}" for p in panels), "every panel uses ${DS_PROMETHEUS}")
dash_exprs = [t.get("expr", "") for p in panels for t in p["targets"]]
joined = " ".join(dash_exprs)
for what, needle in [("ops/s", "keyway_commands_total"), ("latency quantiles", "histogram_quantile(0.99"),
                     ("hit ratio", "keyway_cache_hits_total"), ("errors", "keyway_errors_total"),
                     ("denials", "keyway_denials_total"), ("clients", "keyway_clients_connected"),
                     ("backend up", "keyway_backend_up"), ("memory", "keyway_backend_memory_max_bytes"),
                     ("failovers", "keyway_failovers_total")]:
    check(needle in joined, f"dashboard shows {what}")
bad = unknown_metrics(dash_exprs)
check(not bad, f"dashboard queries only metrics keyway exports (unknown: {bad})")

# --- Dockerfile ----------------------------------------------------------------
# That the image builds is tested by running its build stage (tests/deploy.rs).
# The build stage runs scripts/build-pgo.sh: its cargo builds count too.
build_pgo = (ROOT / "scripts/build-pgo.sh").read_text() if (ROOT / "scripts/build-pgo.sh").exists() else ""
cargo_builds = [l for l in (dockerfile + "\n" + build_pgo).splitlines()
                if "cargo build" in l and not l.lstrip().startswith("#")]
check("scripts/build-pgo.sh" in dockerfile and cargo_builds and all("--locked" in l for l in cargo_builds),
      "Dockerfile builds with the locked dependency versions (its cargo builds and build-pgo.sh's)")
users = re.findall(r"^USER (\S+)", dockerfile, re.M)
check(users and not users[-1].startswith(("0", "root")), "Dockerfile runs as a non-root user")
check(re.search(r"^HEALTHCHECK .*\n?.*/healthz", dockerfile, re.M) is not None, "Dockerfile HEALTHCHECK on /healthz")
check('ENTRYPOINT ["/usr/local/bin/keyway", "--config", "/etc/keyway/keyway.toml"]' in dockerfile,
      "Dockerfile entrypoint runs keyway with /etc/keyway/keyway.toml")
check(re.search(r"^EXPOSE 6390 9390", dockerfile, re.M) is not None, "Dockerfile exposes 6390 and 9390")

summary = f"{passed} passed, {failed} failed"
print(summary + (f", {skipped} skipped" if skipped else ""))
sys.exit(1 if failed else 0)
