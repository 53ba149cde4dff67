#!/usr/bin/env bash
# Checks the deployment artefacts (on demand; not part of deploy/local/test.sh):
#   - the Helm chart deploy/helm/ponte: `helm lint --strict` with the default values and with
#     every optional part on (deploy/helm/test-values-all.yaml), then deploy/helm/test_manifests.py,
#     which renders it with `helm template` (three sets of values) and checks the manifests;
#   - the Prometheus rules deploy/monitoring/prometheus/*.rules.yaml: `promtool check rules`
#     and their unit tests, `promtool test rules deploy/monitoring/prometheus/tests/*.test.yaml`;
#   - the Grafana dashboards and the rules query only metrics the crates export, and every
#     dashboard query parses (deploy/monitoring/check_metrics.py).
#
#   deploy/check.sh            install what is missing, then run every check
#   deploy/check.sh tools      only install helm and promtool
#
# helm and promtool are installed as Go modules (`go install` through the Go module proxy; Go
# 1.24+) into <repo>/.cache/bin (git-ignored), once; PyYAML comes from PyPI (pip --user) when
# python3 (3.11+) lacks it. Versions: PONTE_HELM_VERSION (default v3.22.0),
# PONTE_PROMTOOL_VERSION (a Go module version of github.com/prometheus/prometheus, default
# v0.316.0, which is Prometheus 3.16.0).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${PONTE_CACHE_DIR:-$REPO/.cache}"
BIN="$CACHE/bin"
HELM_VERSION="${PONTE_HELM_VERSION:-v3.22.0}"
PROMTOOL_VERSION="${PONTE_PROMTOOL_VERSION:-v0.316.0}"
CHART="$REPO/deploy/helm/ponte"
MON="$REPO/deploy/monitoring"
# helm built by `go install` assumes Kubernetes 1.20 when no cluster is asked; the chart
# needs 1.25+.
KUBE_VERSION=1.30.0

say() { echo "[check] $*" >&2; }

need_go() {
  command -v go >/dev/null || { say "go not found: install Go 1.24+ to build helm and promtool"; exit 1; }
}

install_tools() {
  mkdir -p "$BIN"
  if [[ ! -x "$BIN/helm" ]]; then
    need_go
    say "installing helm $HELM_VERSION (go install helm.sh/helm/v3/cmd/helm) into $BIN"
    local t0=$SECONDS
    GOBIN="$BIN" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    say "helm installed in $((SECONDS - t0)) s"
  fi
  if [[ ! -x "$BIN/promtool" ]]; then
    need_go
    say "installing promtool $PROMTOOL_VERSION (go install github.com/prometheus/prometheus/cmd/promtool) into $BIN"
    local t0=$SECONDS
    GOBIN="$BIN" go install "github.com/prometheus/prometheus/cmd/promtool@$PROMTOOL_VERSION"
    say "promtool installed in $((SECONDS - t0)) s"
  fi
  if ! python3 -c 'import yaml' 2>/dev/null; then
    say "installing PyYAML (pip --user)"
    python3 -m pip install --user --quiet PyYAML
  fi
}

run_checks() {
  local helm="$BIN/helm" promtool="$BIN/promtool" t0=$SECONDS

  say "helm lint --strict $CHART (default values)"
  "$helm" lint --strict --kube-version "$KUBE_VERSION" "$CHART"
  say "helm lint --strict $CHART (every optional part on)"
  "$helm" lint --strict --kube-version "$KUBE_VERSION" "$CHART" -f "$REPO/deploy/helm/test-values-all.yaml"

  say "helm template + manifest invariants (deploy/helm/test_manifests.py)"
  python3 "$REPO/deploy/helm/test_manifests.py" --helm "$helm"

  say "promtool check rules"
  "$promtool" check rules "$MON"/prometheus/*.rules.yaml

  say "promtool test rules (every alert firing and not firing)"
  "$promtool" test rules "$MON"/prometheus/tests/*.test.yaml

  say "dashboards and rules use exported metrics; dashboard queries parse (deploy/monitoring/check_metrics.py)"
  python3 "$MON/check_metrics.py" --promtool "$promtool"

  say "all checks passed in $((SECONDS - t0)) s"
}

case "${1:-all}" in
  tools) install_tools ;;
  all) install_tools; run_checks ;;
  *) echo "usage: $0 [tools]" >&2; exit 2 ;;
esac
