#!/usr/bin/env python3
"""Invariants of the Ponte Helm chart's rendered manifests.

Renders deploy/helm/ponte with `helm template` three times — the default values, every optional
part on (deploy/helm/test-values-all.yaml), and another topic prefix and reconciler group — and
checks, against the sources of truth in the repository rather than a copy of them:

- each adapter is a Deployment whose container has a readiness probe on /health/ready and a
  liveness probe on /health/live at the admin port its ponte.toml listens on
  (crates/ponte-runtime/src/admin.rs), CPU and memory requests and a memory limit, and an
  HPA when autoscaling is on (and then no fixed replica count);
- the reconciler is a StatefulSet with a volumeClaimTemplate mounted where its state_dir is,
  its instance_id from metadata.name through the downward API (PONTE__RECONCILER__INSTANCE_ID,
  the env convention of crates/ponte-runtime/src/config.rs), and a PodDisruptionBudget that
  selects its pods and no other, and its state_compaction is the values' stateCompaction
  (a value of neither kind is refused at render); with reconciler.peer on, each pod advertises
  its own name under the governing Service, mounts the peer certificate and CA it names, and
  its NetworkPolicy lets the instances reach each other's gRPC port (and only then);
- every ponte.toml parses and names only keys of crates/ponte/config/default.toml (the services
  reject unknown keys), and every file it names (TLS, access policy, JWKS, Kafka client
  certificates, audit keys, rule set) is in a mounted volume, from the right secret;
- every pod runs as non-root with a read-only root file system and no privilege escalation;
- every workload has one NetworkPolicy: ingress only on its API port and on its admin port
  (from the monitoring namespace), egress only to the Kafka brokers' port and DNS (plus the
  values' extraEgress);
- the ServiceMonitor selects the four admin Services, with the job names the alert rules use;
- the KafkaTopics are exactly the catalogue of crates/ponte-bus/src/topics.rs (parsed from the
  source: names, partitions, replication, cleanup.policy and retention configs), and survive
  `helm uninstall`;
- the KafkaUsers' ACLs are exactly those `acl_rules` in deploy/local/kafka.sh grants each
  principal (the function is run for the same prefix and group), with tls authentication, and
  each pod mounts its own user's secret.

  python3 deploy/helm/test_manifests.py [--helm PATH]

Exits 1 naming every broken invariant.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy/helm/ponte"
TOPICS_RS = REPO / "crates/ponte-bus/src/topics.rs"
DEFAULT_TOML = REPO / "crates/ponte/config/default.toml"
KAFKA_SH = REPO / "deploy/local/kafka.sh"

ADAPTERS = ["education-adapter", "health-adapter", "assistance-adapter"]
COMPONENTS = ADAPTERS + ["reconciler"]
SECTION = {
    "education-adapter": "education_adapter",
    "health-adapter": "health_adapter",
    "assistance-adapter": "assistance_adapter",
    "reconciler": "reconciler",
}
AUDIT_KEY = {
    "education-adapter": "education",
    "health-adapter": "health",
    "assistance-adapter": "assistance",
    "reconciler": "reconciler",
}
JOBS = {f"ponte-{c}" for c in COMPONENTS}
# Keys that default.toml documents only in comments, and maps with free keys.
COMMENTED_KEYS = {
    "kafka.properties",
    "topics.overrides",
    "access.tokens",
    "tls.cert_file",
    "tls.key_file",
    "tls.client_ca_file",
    "access.tokens.jwks_file",
    "access.tokens.issuer",
    "access.tokens.audience",
    "access.tokens.principal_claim",
    "access.tokens.leeway_secs",
    # audit.enabled=false: AuditConfig::disabled (crates/ponte-audit), the log being required.
    "audit.disabled",
}
FREE_MAPS = ("kafka.properties.", "topics.overrides.", "audit.keys.")
# helm built with `go install` assumes Kubernetes 1.20 without a cluster; the chart needs 1.25+.
KUBE_VERSION = "1.30.0"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.checked = 0

    def check(self, ok: bool, what: str) -> bool:
        self.checked += 1
        if not ok:
            self.items.append(what)
        return ok


# --------------------------------------------------------------------------------------------
# Sources of truth


def catalogue_from_topics_rs() -> tuple[dict, dict]:
    """(shared, reconciler): base name -> configs, parsed from topics.rs."""
    src = TOPICS_RS.read_text()
    no_comments = re.sub(r"//[^\n]*", "", src)

    def array(name: str) -> list[str]:
        m = re.search(rf"pub const {name}: \[Topic; (\d+)\] = \[(.*?)\];", no_comments, re.S)
        if not m:
            raise SystemExit(f"topics.rs: Topic::{name} not found; update test_manifests.py")
        items = re.findall(r"Topic::(\w+)", m.group(2))
        if len(items) != int(m.group(1)):
            raise SystemExit(f"topics.rs: Topic::{name} has {len(items)} items, declared {m.group(1)}")
        return items

    def fn_body(name: str) -> str:
        m = re.search(rf"pub fn {name}\(self\)[^{{]*\{{(.*?)\n    \}}\n", no_comments, re.S)
        if not m:
            raise SystemExit(f"topics.rs: fn {name} not found; update test_manifests.py")
        return m.group(1)

    base = dict(re.findall(r"Topic::(\w+)\s*=>\s*\"([^\"]+)\"", fn_body("base_name")))
    cleanup_body = fn_body("cleanup")
    compact = set()
    for pats, policy in re.findall(r"((?:\|?\s*Topic::\w+\s*)+)=>\s*Cleanup::(\w+)", cleanup_body):
        if policy == "Compact":
            compact |= set(re.findall(r"Topic::(\w+)", pats))
    if not re.search(r"_\s*=>\s*Cleanup::Delete", cleanup_body):
        raise SystemExit("topics.rs: cleanup() no longer defaults to Delete; update test_manifests.py")
    retention: dict[str, dict[str, str]] = {}
    for pats, pairs in re.findall(
        r"((?:\|?\s*Topic::\w+\s*)+)=>\s*&\[(.*?)\]", fn_body("retention"), re.S
    ):
        configs = dict(re.findall(r"\(\s*\"([^\"]+)\"\s*,\s*\"([^\"]+)\"\s*\)", pairs))
        for t in re.findall(r"Topic::(\w+)", pats):
            retention[t] = configs

    def spec(t: str) -> dict[str, str]:
        if t not in retention or t not in base:
            raise SystemExit(f"topics.rs: no base name or retention for Topic::{t}")
        return {**retention[t], "cleanup.policy": "compact" if t in compact else "delete"}

    shared = {base[t]: spec(t) for t in array("ALL")}
    reconciler = {base[t]: spec(t) for t in array("RECONCILER")}
    return shared, reconciler


def acl_rules(prefix: str, group: str) -> set[tuple[str, str, str, str, str]]:
    """The bindings deploy/local/kafka.sh's acl_rules writes for a prefix and group."""
    script = (
        'set -euo pipefail\n'
        f'source <(sed -n "/^acl_rules() {{/,/^}}/p" {KAFKA_SH})\n'
        'TOPIC_PREFIX="$1" RECONCILER_GROUP="$2"\n'
        'acl_rules\n'
    )
    out = subprocess.run(
        ["bash", "-c", script, "acl_rules", prefix, group],
        check=True, capture_output=True, text=True,
    ).stdout
    rules = set()
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        principal, rtype, pattern, name, op = line.split()
        rules.add((principal, rtype, pattern, name, op))
    if not rules:
        raise SystemExit("deploy/local/kafka.sh: acl_rules printed nothing")
    return rules


def known_config_keys() -> set[str]:
    keys = set()

    def walk(prefix: str, table: dict) -> None:
        for k, v in table.items():
            path = f"{prefix}{k}"
            keys.add(path)
            if isinstance(v, dict):
                walk(path + ".", v)

    try:
        defaults = tomllib.loads(DEFAULT_TOML.read_text())
    except tomllib.TOMLDecodeError as e:
        # Someone is editing it: check against the committed one.
        print(f"  note: {DEFAULT_TOML.relative_to(REPO)} does not parse ({e}); using HEAD's")
        defaults = tomllib.loads(subprocess.run(
            ["git", "-C", str(REPO), "show", f"HEAD:{DEFAULT_TOML.relative_to(REPO)}"],
            check=True, capture_output=True, text=True).stdout)
    walk("", defaults)
    return keys | COMMENTED_KEYS


def toml_keys(table: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in table.items():
        path = f"{prefix}{k}"
        if any(path.startswith(f) for f in FREE_MAPS):
            continue
        out.append(path)
        if isinstance(v, dict):
            out.extend(toml_keys(v, path + "."))
    return out


# --------------------------------------------------------------------------------------------
# Rendering


def render(helm: str, args: list[str]) -> list[dict]:
    cmd = [helm, "template", "ponte", str(CHART), "--namespace", "ponte", "--kube-version", KUBE_VERSION, *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr}")
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def component(doc: dict) -> str:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


# --------------------------------------------------------------------------------------------
# Checks


def pod_specs(docs: list[dict]) -> dict[str, tuple[dict, dict]]:
    """component -> (pod template, workload) for Deployments, StatefulSets and CronJobs."""
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            out[component(d)] = (d["spec"]["template"], d)
        elif d["kind"] == "CronJob":
            out[component(d)] = (d["spec"]["jobTemplate"]["spec"]["template"], d)
    return out


def config_of(docs: list[dict], pod: dict, f: Failures, name: str) -> dict | None:
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in c.get("env", [])}
    path = env.get("PONTE_CONFIG", {}).get("value")
    if not f.check(path is not None, f"{name}: no PONTE_CONFIG"):
        return None
    vol, key = resolve(pod, path)
    if not f.check(vol is not None and "configMap" in vol, f"{name}: PONTE_CONFIG {path} is not in a mounted ConfigMap"):
        return None
    cms = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    cm = cms.get(vol["configMap"]["name"])
    if not f.check(cm is not None and key in cm.get("data", {}), f"{name}: ConfigMap {vol['configMap']['name']} with {key} not rendered"):
        return None
    try:
        return tomllib.loads(cm["data"][key])
    except tomllib.TOMLDecodeError as e:
        f.check(False, f"{name}: ponte.toml does not parse: {e}")
        return None


def resolve(pod: dict, path: str) -> tuple[dict | None, str | None]:
    """The volume holding `path` and the key of its source (secret/configMap item)."""
    c = pod["spec"]["containers"][0]
    vols = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for m in c.get("volumeMounts", []):
        mp = m["mountPath"].rstrip("/") + "/"
        if not path.startswith(mp):
            continue
        rel = path[len(mp):]
        vol = vols.get(m["name"])
        if vol is None:
            return {"volumeClaimTemplate": m["name"]}, rel
        src = vol.get("secret") or vol.get("configMap")
        if src is not None and "items" in src:
            for it in src["items"]:
                if it["path"] == rel:
                    return vol, it["key"]
            return None, None
        return vol, rel
    return None, None


def check_security(name: str, pod: dict, f: Failures) -> None:
    psc = pod["spec"].get("securityContext", {})
    for c in pod["spec"]["containers"]:
        sc = c.get("securityContext", {})
        f.check(sc.get("readOnlyRootFilesystem") is True, f"{name}: container {c['name']} has a writable root file system")
        f.check(sc.get("allowPrivilegeEscalation") is False, f"{name}: container {c['name']} allows privilege escalation")
        f.check(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{name}: container {c['name']} may run as root")
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        f.check(uid is not None and uid != 0, f"{name}: container {c['name']} runs as uid {uid}")
        f.check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{name}: container {c['name']} keeps capabilities")
        tmp, _ = resolve(pod, "/tmp/x")
        f.check(tmp is not None and "emptyDir" in tmp, f"{name}: no writable /tmp")
    f.check(pod["spec"].get("automountServiceAccountToken") is False, f"{name}: mounts a service account token")


def check_probes_and_resources(name: str, pod: dict, cfg: dict, section: str, f: Failures) -> None:
    c = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    admin_port = int(cfg[section]["admin_listen"].rsplit(":", 1)[1])
    f.check(cfg[section]["admin_listen"].startswith("0.0.0.0:"), f"{name}: admin_listen is not on all interfaces (probes and Prometheus could not reach it)")
    for probe, path in (("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")):
        http = c.get(probe, {}).get("httpGet")
        if not f.check(http is not None, f"{name}: no {probe}"):
            continue
        f.check(http.get("path") == path, f"{name}: {probe} path {http.get('path')} is not {path}")
        port = http.get("port")
        port = ports.get(port) if isinstance(port, str) else port
        f.check(port == admin_port, f"{name}: {probe} port {port} is not the admin port {admin_port}")
    api_key = "grpc_listen" if section == "reconciler" else "listen"
    api_port = int(cfg[section][api_key].rsplit(":", 1)[1])
    f.check(api_port in ports.values(), f"{name}: {section}.{api_key} port {api_port} is not a container port")
    res = c.get("resources", {})
    for kind, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
        for k in keys:
            f.check(k in res.get(kind, {}), f"{name}: no {kind}.{k}")


def check_config(name: str, comp: str, pod: dict, cfg: dict, values: dict, docs: list[dict], known: set[str], f: Failures) -> None:
    for key in toml_keys(cfg):
        f.check(key in known, f"{name}: ponte.toml key {key} is not in crates/ponte/config/default.toml")
    secrets_expected = {}
    kp = cfg["kafka"]["properties"]
    f.check(kp.get("security.protocol") == "SSL", f"{name}: Kafka security.protocol is not SSL")
    files = {
        "kafka ca": kp.get("ssl.ca.location"),
        "kafka cert": kp.get("ssl.certificate.location"),
        "kafka key": kp.get("ssl.key.location"),
    }
    users = {component(u): u["metadata"]["name"] for u in by_kind(docs, "KafkaUser")}
    secrets_expected["kafka ca"] = ("secret", values["clusterCaSecret"], "ca.crt")
    if comp in users:
        secrets_expected["kafka cert"] = ("secret", users[comp], "user.crt")
        secrets_expected["kafka key"] = ("secret", users[comp], "user.key")
    if comp != "audit-verify":
        tls = cfg["tls"]
        files["server cert"] = tls.get("cert_file")
        files["server key"] = tls.get("key_file")
        secrets_expected["server cert"] = ("secret", values["serverSecret"], "tls.crt")
        secrets_expected["server key"] = ("secret", values["serverSecret"], "tls.key")
        if tls.get("client_auth") != "none":
            files["client ca"] = tls.get("client_ca_file")
            secrets_expected["client ca"] = ("secret", values["clientCaSecret"], "ca.crt")
        files["policy"] = cfg["access"]["policy_file"]
        secrets_expected["policy"] = ("configMap", None, "policy.toml")
        if "tokens" in cfg["access"]:
            files["jwks"] = cfg["access"]["tokens"]["jwks_file"]
            secrets_expected["jwks"] = ("configMap", None, "jwks.json")
        if cfg["audit"].get("key_dir"):
            svc = AUDIT_KEY[comp]
            files["audit key"] = f"{cfg['audit']['key_dir']}/{svc}.pk8"
            files["subject key"] = cfg["audit"]["subject_key_file"]
            secrets_expected["audit key"] = ("secret", values["auditSecret"], f"{svc}.pk8")
            secrets_expected["subject key"] = ("secret", values["auditSecret"], "subject-key")
            # Only its own signing key.
            vol, _ = resolve(pod, files["audit key"])
            if vol and "secret" in vol:
                others = [i["key"] for i in vol["secret"]["items"] if i["key"].endswith(".pk8") and i["key"] != f"{svc}.pk8"]
                f.check(not others, f"{name}: mounts other services' audit keys {others}")
        else:
            f.check(cfg["audit"].get("disabled") is True and not cfg["audit"].get("subject_key_file"),
                    f"{name}: no audit key_dir, and the log is not explicitly disabled")
        if comp == "reconciler" and cfg["reconciler"].get("rules_file"):
            files["rules"] = cfg["reconciler"]["rules_file"]
            secrets_expected["rules"] = ("configMap", None, None)
        if comp == "reconciler":
            peer = cfg["reconciler"].get("peer")
            f.check(bool(peer) == bool(values["peer"]),
                    f"{name}: [reconciler.peer] {'written' if peer else 'missing'} with peer reads {'on' if values['peer'] else 'off'}")
            if peer and values["peer"]:
                files["peer ca"] = peer.get("ca_file")
                files["peer cert"] = peer.get("cert_file")
                files["peer key"] = peer.get("key_file")
                secrets_expected["peer ca"] = ("secret", values["peer"]["caSecret"], "ca.crt")
                secrets_expected["peer cert"] = ("secret", values["peer"]["clientSecret"], "tls.crt")
                secrets_expected["peer key"] = ("secret", values["peer"]["clientSecret"], "tls.key")
                f.check(not peer.get("advertise"), f"{name}: a fixed peer.advertise in ponte.toml would be shared by every pod")
    for what, path in files.items():
        if not f.check(bool(path), f"{name}: {what} file not configured"):
            continue
        vol, key = resolve(pod, path)
        if not f.check(vol is not None, f"{name}: {what} file {path} is not in a mounted volume"):
            continue
        kind, src_name, want_key = secrets_expected[what]
        src = vol.get(kind)
        if not f.check(src is not None, f"{name}: {what} file {path} is not from a {kind}"):
            continue
        if src_name is not None:
            got = src.get("secretName") if kind == "secret" else src.get("name")
            f.check(got == src_name, f"{name}: {what} comes from {kind} {got}, expected {src_name}")
        if want_key is not None:
            f.check(key == want_key, f"{name}: {what} is key {key} of its {kind}, expected {want_key}")
        if kind == "secret":
            f.check(src.get("defaultMode", 0o644) & 0o007 == 0, f"{name}: {what} secret is world-readable")


def check_workloads(docs: list[dict], exp: dict, known: set[str], f: Failures) -> None:
    pods = pod_specs(docs)
    deployments = {component(d): d for d in by_kind(docs, "Deployment")}
    statefulsets = {component(d): d for d in by_kind(docs, "StatefulSet")}
    f.check(set(deployments) == set(ADAPTERS), f"Deployments are {sorted(deployments)}, expected the three adapters")
    f.check(set(statefulsets) == {"reconciler"}, f"StatefulSets are {sorted(statefulsets)}, expected the reconciler")
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in by_kind(docs, "HorizontalPodAutoscaler")}
    for comp in ADAPTERS:
        d = deployments.get(comp)
        if d is None:
            continue
        name = d["metadata"]["name"]
        if comp in exp["autoscaled"]:
            h = hpas.get(name)
            if f.check(h is not None, f"{name}: no HorizontalPodAutoscaler"):
                f.check(h["spec"]["scaleTargetRef"]["kind"] == "Deployment", f"{name}: HPA targets a {h['spec']['scaleTargetRef']['kind']}")
                f.check(h["spec"]["minReplicas"] <= h["spec"]["maxReplicas"], f"{name}: HPA min > max")
                f.check(any(m.get("resource", {}).get("name") == "cpu" for m in h["spec"]["metrics"]), f"{name}: HPA without a CPU metric")
            f.check("replicas" not in d["spec"], f"{name}: fixed replicas beside its HPA")
        else:
            f.check(name not in hpas, f"{name}: HPA although autoscaling is off")
    for comp, (pod, wl) in pods.items():
        name = wl["metadata"]["name"]
        check_security(name, pod, f)
        cfg = config_of(docs, pod, f, name)
        if cfg is None:
            continue
        check_config(name, comp, pod, cfg, exp, docs, known, f)
        if comp in SECTION:
            check_probes_and_resources(name, pod, cfg, SECTION[comp], f)
            f.check(cfg["topics"]["prefix"] == exp["prefix"], f"{name}: topics.prefix {cfg['topics']['prefix']}")
    sts = statefulsets.get("reconciler")
    if sts is not None:
        name = sts["metadata"]["name"]
        pod = sts["spec"]["template"]
        vcts = sts["spec"].get("volumeClaimTemplates", [])
        f.check(len(vcts) >= 1, f"{name}: no volumeClaimTemplate")
        cfg = config_of(docs, pod, f, name) or {"reconciler": {}}
        state_dir = cfg["reconciler"].get("state_dir", "")
        vol, _ = resolve(pod, state_dir + "/x")
        f.check(vol is not None and vol.get("volumeClaimTemplate") in {v["metadata"]["name"] for v in vcts},
                f"{name}: state_dir {state_dir} is not on a volumeClaimTemplate")
        f.check(cfg["reconciler"].get("group_id") == exp["group"], f"{name}: group_id {cfg['reconciler'].get('group_id')}")
        f.check(cfg["reconciler"].get("state_compaction") == exp["stateCompaction"],
                f"{name}: state_compaction {cfg['reconciler'].get('state_compaction')}")
        env = {e["name"]: e for e in pod["spec"]["containers"][0].get("env", [])}
        iid = env.get("PONTE__RECONCILER__INSTANCE_ID", {})
        f.check(iid.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
                f"{name}: PONTE__RECONCILER__INSTANCE_ID is not the pod's metadata.name")
        f.check(not cfg["reconciler"].get("instance_id"), f"{name}: a fixed instance_id in ponte.toml would be shared by every pod")
        # Peer reads: each pod advertises its own name under the governing Service, built from
        # variables defined before it (Kubernetes expands only those).
        names = [e["name"] for e in pod["spec"]["containers"][0].get("env", [])]
        adv = env.get("PONTE__RECONCILER__PEER__ADVERTISE")
        if exp["peer"]:
            want = f"$(PONTE_POD_NAME).{sts['spec'].get('serviceName')}.$(PONTE_POD_NAMESPACE).svc:{exp['grpcPort']}"
            f.check(adv is not None and adv.get("value") == want, f"{name}: peer advertise {adv}, expected {want}")
            for var, field in (("PONTE_POD_NAME", "metadata.name"), ("PONTE_POD_NAMESPACE", "metadata.namespace")):
                e = env.get(var, {})
                f.check(e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == field, f"{name}: {var} is not the pod's {field}")
                f.check(var in names and adv is not None and names.index(var) < names.index("PONTE__RECONCILER__PEER__ADVERTISE"),
                        f"{name}: {var} is not defined before the advertised address that uses it")
        else:
            f.check(adv is None, f"{name}: advertises a peer address with peer reads off")
        svcs = {s["metadata"]["name"]: s for s in by_kind(docs, "Service")}
        gov = svcs.get(sts["spec"].get("serviceName"))
        f.check(gov is not None and gov["spec"].get("clusterIP") == "None", f"{name}: serviceName is not a rendered headless Service")
        f.check(sts["spec"]["replicas"] <= exp["partitions"], f"{name}: more replicas than partitions")
        # PDBs: the reconciler's selects its pods and no other workload's.
        labels = pod["metadata"]["labels"]
        pdbs = [p for p in by_kind(docs, "PodDisruptionBudget") if selects(p["spec"]["selector"]["matchLabels"], labels)]
        f.check(len(pdbs) == 1, f"{name}: {len(pdbs)} PodDisruptionBudgets select the reconciler pods")
        for p in pdbs:
            for comp, (other, _) in pods.items():
                if comp != "reconciler":
                    f.check(not selects(p["spec"]["selector"]["matchLabels"], other["metadata"]["labels"]),
                            f"PodDisruptionBudget {p['metadata']['name']} also selects {comp}")


def check_network_policies(docs: list[dict], exp: dict, f: Failures) -> None:
    pods = pod_specs(docs)
    nps = by_kind(docs, "NetworkPolicy")
    for comp, (pod, wl) in pods.items():
        name = wl["metadata"]["name"]
        mine = [n for n in nps if selects(n["spec"]["podSelector"].get("matchLabels"), pod["metadata"]["labels"])]
        if not f.check(len(mine) == 1, f"{name}: {len(mine)} NetworkPolicies select its pods, expected 1"):
            continue
        np = mine[0]["spec"]
        f.check(set(np.get("policyTypes", [])) == {"Ingress", "Egress"}, f"{name}: NetworkPolicy policyTypes {np.get('policyTypes')}")
        c = pod["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        allowed = set()
        for rule in np.get("ingress", []):
            rports = [p["port"] for p in rule.get("ports", [])]
            f.check(bool(rports), f"{name}: an ingress rule without ports opens every port")
            allowed |= set(rports)
            if ports.get("admin") in rports:
                froms = rule.get("from", [])
                f.check(bool(froms) and all(fr.get("namespaceSelector") == exp["monitoringNs"] for fr in froms),
                        f"{name}: admin port open to {froms or 'everyone'}, not only the monitoring namespace")
        f.check(allowed == set(ports.values()), f"{name}: ingress allows ports {sorted(allowed)}, expected {sorted(ports.values())}")
        peering = comp == "reconciler" and bool(exp["peer"])
        if peering:
            own = pod["metadata"]["labels"]
            for rule in np.get("ingress", []):
                if ports.get("grpc") in [p["port"] for p in rule.get("ports", [])]:
                    froms = rule.get("from", [])
                    f.check(not froms or any(selects((fr.get("podSelector") or {}).get("matchLabels"), own)
                                             and "namespaceSelector" not in fr for fr in froms),
                            f"{name}: the gRPC port is closed to the other instances' peer reads")
        kafka = dns = peers = False
        for rule in np.get("egress", []):
            f.check(bool(rule.get("to")) and bool(rule.get("ports")), f"{name}: an egress rule without destinations or ports: {rule}")
            rports = {(p.get("protocol", "TCP"), p["port"]) for p in rule.get("ports", [])}
            for to in rule.get("to", []):
                ps = (to.get("podSelector") or {}).get("matchLabels", {})
                if ps.get("strimzi.io/cluster") == exp["kafkaCluster"]:
                    kafka = True
                    f.check(rports == {("TCP", exp["kafkaPort"])}, f"{name}: Kafka egress ports {rports}")
                    f.check(to.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == exp["kafkaNs"],
                            f"{name}: Kafka egress not to namespace {exp['kafkaNs']}")
                elif ps.get("k8s-app") == "kube-dns":
                    dns = True
                    f.check(rports == {("UDP", 53), ("TCP", 53)}, f"{name}: DNS egress ports {rports}")
                elif peering and "namespaceSelector" not in to and selects(ps, pod["metadata"]["labels"]):
                    peers = True
                    f.check(rports == {("TCP", ports.get("grpc"))}, f"{name}: peer egress ports {rports}")
                elif "ipBlock" in to:
                    f.check(comp in exp["extraEgress"], f"{name}: egress to {to} it was not given")
                else:
                    f.check(False, f"{name}: egress to {to}")
        f.check(kafka, f"{name}: no egress to the Kafka brokers")
        f.check(peers == peering, f"{name}: egress to the other reconciler instances {'missing' if peering else 'without peer reads'}")
        f.check(dns, f"{name}: no egress to DNS")


def check_service_monitor(docs: list[dict], f: Failures) -> None:
    sms = by_kind(docs, "ServiceMonitor")
    if not f.check(len(sms) == 1, f"{len(sms)} ServiceMonitors, expected 1"):
        return
    sm = sms[0]["spec"]
    f.check(sms[0]["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
    selected = [s for s in by_kind(docs, "Service") if selects(sm["selector"]["matchLabels"], s["metadata"]["labels"])]
    f.check({component(s) for s in selected} == set(COMPONENTS), f"ServiceMonitor selects {[s['metadata']['name'] for s in selected]}")
    jobs = {s["metadata"]["labels"].get(sm.get("jobLabel", ""), "") for s in selected}
    f.check(jobs == JOBS, f"metrics job names {sorted(jobs)}, the rules expect {sorted(JOBS)}")
    ep = sm["endpoints"]
    f.check(len(ep) == 1 and ep[0].get("path") == "/metrics", f"ServiceMonitor endpoints {ep}")
    for s in selected:
        f.check(ep[0]["port"] in {p["name"] for p in s["spec"]["ports"]}, f"{s['metadata']['name']}: no port {ep[0]['port']}")
        f.check(s["spec"].get("publishNotReadyAddresses") is True, f"{s['metadata']['name']}: not-ready pods would not be scraped")
        sel = s["spec"]["selector"]
        pods = pod_specs(docs)
        f.check(selects(sel, pods[component(s)][0]["metadata"]["labels"]), f"{s['metadata']['name']}: selects no pod of {component(s)}")


def check_topics(docs: list[dict], exp: dict, f: Failures) -> None:
    shared, reconciler = exp["catalogue"]
    want = {}
    for base, cfg in shared.items():
        o = exp["overrides"].get(base, {})
        want[exp["prefix"] + base] = (o.get("partitions", exp["partitions"]), {**cfg, **o.get("config", {}), "cleanup.policy": cfg["cleanup.policy"]})
    for base, cfg in reconciler.items():
        want[f"{exp['prefix']}reconciler.{exp['group']}.{base}"] = (exp["partitions"], cfg)
    f.check(len(want) == 13, f"the catalogue has {len(want)} topics, the issue says 13")
    f.check(f"{exp['prefix']}audit.v1" in want, "no audit topic in the catalogue")
    topics = by_kind(docs, "KafkaTopic")
    got = {t["spec"]["topicName"]: t for t in topics}
    f.check(len(got) == len(topics), "two KafkaTopics with one topicName")
    f.check(set(got) == set(want), f"KafkaTopics {sorted(set(got) ^ set(want))} differ from the catalogue")
    for name, (parts, cfg) in want.items():
        t = got.get(name)
        if t is None:
            continue
        spec = t["spec"]
        f.check(t["apiVersion"] == "kafka.strimzi.io/v1beta2", f"{name}: apiVersion {t['apiVersion']}")
        f.check(t["metadata"]["labels"].get("strimzi.io/cluster") == exp["kafkaCluster"], f"{name}: strimzi.io/cluster label")
        f.check(bool(DNS_LABEL.match(t["metadata"]["name"])) and len(t["metadata"]["name"]) <= 253, f"{name}: metadata.name {t['metadata']['name']} is not a valid Kubernetes name")
        f.check(t["metadata"].get("annotations", {}).get("helm.sh/resource-policy") == "keep",
                f"{name}: `helm uninstall` would delete the KafkaTopic, and the Topic Operator the topic")
        f.check(spec["partitions"] == parts, f"{name}: {spec['partitions']} partitions, expected {parts}")
        f.check(spec["replicas"] == exp["replicas"], f"{name}: replicas {spec['replicas']}")
        for k, v in cfg.items():
            f.check(str(spec.get("config", {}).get(k)) == v, f"{name}: {k} = {spec.get('config', {}).get(k)}, the catalogue says {v}")
        for k, v in exp["topicConfig"].items():
            if k not in cfg:
                f.check(str(spec.get("config", {}).get(k)) == v, f"{name}: {k} = {spec.get('config', {}).get(k)}, topics.config says {v}")


STRIMZI_TYPE = {"topic": "TOPIC", "group": "GROUP", "transactionalId": "TRANSACTIONAL_ID", "cluster": "CLUSTER"}
STRIMZI_PATTERN = {"prefix": "PREFIXED", "literal": "LITERAL"}


def op_name(op: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", op).upper()


def check_users(docs: list[dict], exp: dict, f: Failures) -> None:
    want = acl_rules(exp["prefix"], exp["group"])
    got = set()
    users = by_kind(docs, "KafkaUser")
    comps = {component(u) for u in users}
    f.check(set(COMPONENTS) <= comps, f"KafkaUsers for {sorted(comps)}, expected {COMPONENTS}")
    for u in users:
        comp = component(u)
        name = u["metadata"]["name"]
        f.check(u["apiVersion"] == "kafka.strimzi.io/v1beta2", f"{name}: apiVersion")
        f.check(u["metadata"]["labels"].get("strimzi.io/cluster") == exp["kafkaCluster"], f"{name}: strimzi.io/cluster label")
        f.check(u["spec"]["authentication"]["type"] == "tls", f"{name}: authentication {u['spec']['authentication']}")
        f.check(u["spec"]["authorization"]["type"] == "simple", f"{name}: authorization {u['spec']['authorization']['type']}")
        bindings = set()
        for acl in u["spec"]["authorization"]["acls"]:
            r = acl["resource"]
            f.check(acl.get("type", "allow") == "allow" and acl.get("host", "*") == "*", f"{name}: ACL {acl} is not ALLOW from any host")
            for op in acl["operations"]:
                bindings.add((f"User:{comp}", STRIMZI_TYPE[r["type"]], STRIMZI_PATTERN[r.get("patternType", "literal")], r.get("name", "kafka-cluster"), op_name(op)))
        if comp == "audit-verify":
            f.check(bindings == {(f"User:{comp}", "TOPIC", "PREFIXED", f"{exp['prefix']}audit.", op) for op in ("READ", "DESCRIBE")},
                    f"{name}: ACLs {sorted(bindings)}, expected Read and Describe on the audit topics only")
        else:
            got |= bindings
    for b in sorted(want - got):
        f.check(False, f"KafkaUsers lack the binding {' '.join(b)} of deploy/local/kafka.sh")
    for b in sorted(got - want):
        f.check(False, f"KafkaUsers grant {' '.join(b)}, which deploy/local/kafka.sh does not")


def run_case(helm: str, label: str, args: list[str], exp: dict, known: set[str]) -> Failures:
    f = Failures()
    docs = render(helm, args)
    for d in docs:
        f.check("kind" in d and "metadata" in d and d["metadata"].get("name"), f"a document without kind or name: {str(d)[:80]}")
    check_workloads(docs, exp, known, f)
    check_network_policies(docs, exp, f)
    check_service_monitor(docs, f)
    check_topics(docs, exp, f)
    check_users(docs, exp, f)
    status = "ok" if not f.items else f"{len(f.items)} FAILED"
    print(f"  {label}: {len(docs)} manifests, {f.checked} checks, {status}")
    for item in f.items:
        print(f"    FAIL {item}")
    return f


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--helm", default=os.environ.get("HELM", str(REPO / ".cache/bin/helm")))
    args = ap.parse_args()
    catalogue = catalogue_from_topics_rs()
    known = known_config_keys()
    base = {
        "prefix": "ponte.", "group": "ponte-reconciler", "partitions": 6, "replicas": 3,
        "stateCompaction": "tiers",
        "overrides": {}, "topicConfig": {"min.insync.replicas": "2"},
        "kafkaCluster": "ponte", "kafkaPort": 9093, "kafkaNs": "ponte",
        "clusterCaSecret": "ponte-cluster-ca-cert", "serverSecret": "ponte-server-tls",
        "clientCaSecret": "ponte-client-ca", "auditSecret": "ponte-audit-keys",
        "monitoringNs": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "autoscaled": set(ADAPTERS), "extraEgress": set(), "catalogue": catalogue,
        "peer": None, "grpcPort": 50051,
    }
    all_values = yaml.safe_load((REPO / "deploy/helm/test-values-all.yaml").read_text())
    cases = [
        ("default values", [], base),
        ("every optional part on (test-values-all.yaml)",
         ["-f", str(REPO / "deploy/helm/test-values-all.yaml")],
         {**base, "kafkaNs": "kafka", "overrides": all_values["topics"]["overrides"],
          "autoscaled": {"education-adapter", "assistance-adapter"}, "extraEgress": {"health-adapter"},
          "peer": all_values["reconciler"]["peer"]}),
        ("another prefix and group, TLS client certificates optional, no audit log, state compacted level by level",
         ["--set", "topics.prefix=staging.ponte_b.", "--set", "reconciler.groupId=blue",
          "--set", "topics.partitions=3", "--set", "reconciler.replicas=1", "--set", "tls.clientAuth=optional",
          "--set", "audit.enabled=false", "--set", "reconciler.stateCompaction=levels"],
         {**base, "prefix": "staging.ponte_b.", "group": "blue", "partitions": 3, "stateCompaction": "levels"}),
    ]
    print(f"manifest invariants of {CHART.relative_to(REPO)} (topics from {TOPICS_RS.relative_to(REPO)}, "
          f"ACLs from {KAFKA_SH.relative_to(REPO)} acl_rules)")
    failed = 0
    for label, extra, exp in cases:
        failed += len(run_case(args.helm, label, extra, exp, known).items)
    # A chart that cannot be rendered wrongly: these must be refused.
    for label, extra, why in (
        ("more reconciler replicas than partitions", ["--set", "reconciler.replicas=7"], "reconciler.replicas (7) > topics.partitions"),
        ("several reconciler instances without peer reads", ["--set", "reconciler.replicas=2"], "needs reconciler.peer.enabled"),
        ("an override of an unknown topic", ["--set", "topics.overrides.nosuch\\.v1.partitions=2"], "no such shared topic"),
        ("audit verification without the public keys", ["--set", "auditVerify.enabled=true"], "audit.publicKeys must list"),
        ("a state compaction of neither kind", ["--set", "reconciler.stateCompaction=leveled"], "neither tiers nor levels"),
        ("peer reads without a client certificate", ["--set", "reconciler.peer.enabled=true", "--set", "reconciler.peer.caSecret=ca"],
         "reconciler.peer.clientSecret is required"),
    ):
        res = subprocess.run([args.helm, "template", "ponte", str(CHART), "--kube-version", KUBE_VERSION, *extra],
                             capture_output=True, text=True)
        ok = res.returncode != 0 and why in res.stderr
        print(f"  refused: {label}: {'ok' if ok else 'FAILED (rendered)'}")
        failed += 0 if ok else 1
    if failed:
        print(f"{failed} invariants broken")
        return 1
    print("all invariants hold")
    return 0


if __name__ == "__main__":
    sys.exit(main())
