#!/usr/bin/env bash
# Installs robusttune's pinned stack and robusttune itself from a checkout into the Python that runs it, then checks
# the result. The Dockerfile's only install step, and the CI check of it in a fresh virtual environment:
#
#   bash docker/install.sh [deps|project|all] [CHECKOUT]       (default: all, the checkout this script lives in)
#
#   deps      the [project].dependencies of CHECKOUT/pyproject.toml (torch 2.14.1 with its CUDA 13 libraries, ...),
#             in a layer of their own: a code change does not download them again
#   project   robusttune from CHECKOUT (no dependencies), then the checks below
#   all       both
#
# Checks (a failure exits non-zero with one line): robusttune imports and its command runs, torch is the pinned
# CUDA 13 build, Ray is the version the cluster files name (RAY_VERSION, default 2.60.0; an installed Ray of another
# version is refused rather than replaced, because the image's Ray must match the head's and the laptop's).
# Environment: PYTHON (default python3), RAY_VERSION, PIP_ARGS (extra pip options, e.g. --no-cache-dir).
set -euo pipefail

step=${1:-all}
checkout=${2:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
python=${PYTHON:-python3}
ray_version=${RAY_VERSION:-2.60.0}
read -r -a pip_args <<< "${PIP_ARGS:-}"

fail() { echo "docker/install.sh: $*" >&2; exit 2; }

case "$step" in deps|project|all) ;; *) fail "unknown step '$step' (deps, project or all)";; esac
[ -f "$checkout/pyproject.toml" ] || fail "$checkout: no pyproject.toml (not a robusttune checkout)"
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || fail "$python is not Python 3.11 (the Ray image's and the pinned wheels' version)"

install_deps() {
  # the dependencies exactly as pyproject.toml states them, with Ray held at the cluster's version
  local requirements
  requirements=$(mktemp)
  "$python" - "$checkout/pyproject.toml" "$ray_version" > "$requirements" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print("\n".join(deps))
print(f"ray[tune]=={sys.argv[2]}")
PY
  "$python" -m pip install "${pip_args[@]}" -r "$requirements"
  rm -f "$requirements"
}

install_project() {
  "$python" -m pip install "${pip_args[@]}" --no-deps "$checkout"
}

check() {
  "$python" - "$ray_version" <<'PY' || fail "the installed stack is not the pinned one (see the line above)"
import sys
import ray, torch, open_clip, optuna, robusttune
problems = []
if ray.__version__ != sys.argv[1]:
    problems.append(f"ray {ray.__version__}, expected {sys.argv[1]}")
if not torch.__version__.startswith("2.14.1"):
    problems.append(f"torch {torch.__version__}, expected 2.14.1")
if torch.version.cuda is not None and not torch.version.cuda.startswith("13."):
    problems.append(f"torch built for CUDA {torch.version.cuda}, expected 13.x (driver >= 580)")
if problems:
    print("; ".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"robusttune {robusttune.__version__}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"ray {ray.__version__}, open_clip {open_clip.__version__}, optuna {optuna.__version__}")
PY
  local cli
  cli="$(dirname "$("$python" -c 'import sys; print(sys.executable)')")/robusttune"
  [ -x "$cli" ] || cli=robusttune
  "$cli" --version >/dev/null || fail "the robusttune command does not run"
}

if [ "$step" != project ]; then install_deps; fi
if [ "$step" != deps ]; then install_project; check; fi
