#!/usr/bin/env python3
"""Every metric the dashboards and the alert rules query is one Ponte exports.

Reads the metric names the services register (`counter!`, `gauge!`, `histogram!` calls in
crates/*/src, with `_bucket`, `_sum` and `_count` for histograms) and every `ponte_*` name in
deploy/monitoring/grafana/*.json and deploy/monitoring/prometheus/*.rules.yaml, and fails on a
name the code does not export, or on a kube-state-metrics series other than
kube_job_status_failed. Also checks that each dashboard is provisionable (valid JSON, a uid,
unique panel ids, every query on the `${datasource}` variable) and, with --promtool, that every
dashboard query parses as PromQL (Grafana's $namespace and $__rate_interval replaced).

  python3 deploy/monitoring/check_metrics.py [--promtool PATH]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
MON = REPO / "deploy/monitoring"
MACRO = re.compile(r"\b(counter|gauge|histogram)!\(\s*\"(ponte_[a-z0-9_]+)\"")
USED = re.compile(r"\bponte_[a-z0-9_]+\b")
KUBE = re.compile(r"\bkube_[a-z0-9_]+\b")
# Series that are not Ponte's: Prometheus' `up` and the one of kube-state-metrics the rules may
# read (the audit verification CronJob's Jobs). Readiness and restores come from Ponte's own
# gauges, so no other kube-state-metrics series is allowed.
FOREIGN = {"up", "kube_job_status_failed"}


def exported() -> dict[str, str]:
    names: dict[str, str] = {}
    for path in sorted(REPO.glob("crates/*/src/**/*.rs")):
        for kind, name in MACRO.findall(path.read_text()):
            names[name] = kind
    if not names:
        raise SystemExit("no metrics found in crates/*/src: has the registration changed?")
    return names


def series_names(names: dict[str, str]) -> set[str]:
    out = set()
    for name, kind in names.items():
        if kind == "histogram":
            out |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            out.add(name)
    return out


def dashboard_exprs(path: Path, problems: list[str]) -> list[str]:
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        problems.append(f"{path.name}: not JSON: {e}")
        return []
    if not d.get("uid"):
        problems.append(f"{path.name}: no uid (provisioned dashboards need a stable one)")
    ids = []
    exprs = []

    def walk(panels):
        for p in panels:
            ids.append(p.get("id"))
            for t in p.get("targets", []):
                ds = (t.get("datasource") or p.get("datasource") or {}).get("uid")
                if ds != "${datasource}":
                    problems.append(f"{path.name}: panel {p.get('title')!r} queries data source {ds!r}, not ${{datasource}}")
                exprs.append(t["expr"])
            walk(p.get("panels", []))

    walk(d.get("panels", []))
    if len(ids) != len(set(ids)):
        problems.append(f"{path.name}: duplicate panel ids")
    return exprs


def rule_exprs(path: Path) -> list[str]:
    doc = yaml.safe_load(path.read_text())
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--promtool", help="check that every dashboard query parses")
    args = ap.parse_args()
    names = exported()
    valid = series_names(names)
    problems: list[str] = []
    used: dict[str, set[str]] = {}
    dash_exprs: list[str] = []
    for path in sorted((MON / "grafana").glob("*.json")):
        exprs = dashboard_exprs(path, problems)
        dash_exprs += exprs
        for e in exprs:
            for n in USED.findall(e):
                used.setdefault(n, set()).add(path.name)
    for path in sorted((MON / "prometheus").glob("*.rules.yaml")):
        for e in rule_exprs(path):
            for n in USED.findall(e):
                used.setdefault(n, set()).add(path.name)
    rules = [e for p in sorted((MON / "prometheus").glob("*.rules.yaml")) for e in rule_exprs(p)]
    for e in dash_exprs + rules:
        for n in sorted(set(KUBE.findall(e)) - FOREIGN):
            problems.append(f"{n} (kube-state-metrics) is queried; Ponte's own metrics should say it: "
                            f"{e.strip()[:80]}")
    for n in sorted(used):
        if n not in valid:
            problems.append(f"{', '.join(sorted(used[n]))}: {n} is not exported by any crate")
    print(f"  {len(names)} metrics exported by crates/*/src; {len(used)} series names queried "
          f"by {len(dash_exprs)} dashboard queries and the rules")
    unused = sorted(n for n in names if not any(u == n or u.startswith(n + "_") for u in used))
    if unused:
        print(f"  exported but on no dashboard or rule: {', '.join(unused)}")
    if args.promtool and dash_exprs:
        rules = {"groups": [{"name": "dashboard", "rules": [
            {"record": f"dashboard:query_{i}", "expr": e.replace("$__rate_interval", "5m").replace("$namespace", ".*")}
            for i, e in enumerate(dash_exprs)]}]}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump(rules, f)
        res = subprocess.run([args.promtool, "check", "rules", f.name], capture_output=True, text=True)
        Path(f.name).unlink()
        if res.returncode != 0:
            problems.append(f"dashboard queries do not parse:\n{res.stdout}{res.stderr}")
        else:
            print(f"  every dashboard query parses (promtool)")
    for p in problems:
        print(f"  FAIL {p}")
    if problems:
        return 1
    print("  dashboards and rules use only exported metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
