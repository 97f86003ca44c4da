"""Parses the shipped deployment files and checks what operators rely on:
the sidecar's probes, drain hook and non-root security context; the
compose topology; the alert rules and their thresholds; the dashboard."""
import json
import sys

import yaml

root = sys.argv[1]
passed = 0


def check(cond, what):
    global passed
    if not cond:
        print(f"manifest check failed: {what}", file=sys.stderr)
        sys.exit(1)
    passed += 1


docs = list(yaml.safe_load_all(open(f"{root}/conf/k8s/keyway-sidecar.yaml")))
kinds = {d["kind"]: d for d in docs}
check({"ConfigMap", "Secret", "Deployment"} <= set(kinds), "ConfigMap, Secret and Deployment present")
check("keyway.toml" in kinds["ConfigMap"]["data"], "keyway.toml in the ConfigMap")
pod = kinds["Deployment"]["spec"]["template"]["spec"]
sidecar = next(c for c in pod["containers"] if c["name"] == "keyway")
check(sidecar["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe on /healthz")
check(sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe on /readyz")
check("preStop" in sidecar["lifecycle"], "preStop hook")
sc = sidecar["securityContext"]
check(sc["runAsNonRoot"] and sc["runAsUser"] != 0 and sc["readOnlyRootFilesystem"], "non-root, read-only root")
check(sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], "no privileges")
check("limits" in sidecar["resources"] and "requests" in sidecar["resources"], "resource requests and limits")
check(sidecar["envFrom"][0]["secretRef"]["name"] == kinds["Secret"]["metadata"]["name"], "backends from the Secret")
check(pod["terminationGracePeriodSeconds"] > 15, "grace period longer than the drain")

compose = yaml.safe_load(open(f"{root}/docker-compose.yml"))
services = compose["services"]
check(sum(1 for s in services if s.startswith("redis-")) == 3, "three Redis services")
check(sum(1 for s in services if s.startswith("sentinel-")) == 3, "three sentinels")
check("keyway" in services and "REDIS_SESSION_URL" in services["keyway"]["environment"], "keyway service with pool URLs")

rules = yaml.safe_load(open(f"{root}/conf/prometheus/alerts.yml"))
alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
for name in ["KeywayCacheHitRatioLow", "KeywayBackendMemoryHigh", "KeywayBackendMemoryCritical", "KeywayTooManyClients",
             "KeywayErrorRateHigh", "KeywaySlowCommands", "KeywayBackendDown", "KeywayFailover"]:
    check(name in alerts and alerts[name]["expr"].strip(), f"alert {name}")
check("0.90" in alerts["KeywayCacheHitRatioLow"]["expr"], "hit ratio threshold 90%")
check("0.80" in alerts["KeywayBackendMemoryHigh"]["expr"] and "0.90" in alerts["KeywayBackendMemoryCritical"]["expr"], "memory 80% / 90%")
check("> 100" in alerts["KeywayTooManyClients"]["expr"], "clients > 100")

dashboard = json.load(open(f"{root}/conf/grafana/keyway.json"))
check(len(dashboard["panels"]) >= 8 and all(p["targets"] for p in dashboard["panels"]), "dashboard panels with queries")

print(f"{passed} passed, 0 failed")
