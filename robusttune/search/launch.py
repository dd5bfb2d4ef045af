"""``robusttune launch``: bring a Ray cluster up and submit a sweep to it as a Ray job.

The plan is a list of shell commands (``ray up``, a dashboard port-forward, ``ray job submit --working-dir .``);
``--dry-run`` prints them and touches nothing. The sweep runs on the head node with ``--address auto`` and writes
to shared storage that every node mounts (the experiment's records, journal and checkpoints are files).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from robusttune.errors import ConfigError, LaunchError

DASHBOARD = "http://127.0.0.1:8265"


@dataclass(frozen=True)
class LaunchPlan:
    up: list[str]
    dashboard: list[str]
    submit: list[str]
    env: dict[str, str]
    follow: str
    status: str
    fetch: list[str]
    resume: str
    down: str


def check_cluster_file(path: Path) -> dict:
    """Read the cluster-launcher YAML and validate it with Ray's own schema."""
    if not path.is_file():
        raise ConfigError(f"{path}: cluster config not found")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    from ray.autoscaler._private.util import validate_config

    try:
        validate_config(config)
    except Exception as error:  # jsonschema / ValueError messages
        raise ConfigError(f"{path}: not a valid Ray cluster config: {str(error).splitlines()[0][:200]}") from None
    return config


TOKEN_FILE = "~/.ray/auth_token"  # Ray's default token path, here and on the nodes (cluster.yaml mounts it)


def plan(space: str, cluster: Path, *, name: str, storage: str, token_auth: bool, max_failures: int) -> LaunchPlan:
    quote = shlex.quote
    experiment = f"{storage.rstrip('/')}/{name}"
    retries = ["--max-failures", str(max_failures)]  # spot nodes go away: a trial resumes from its checkpoint
    sweep = ["robusttune", "sweep", space, "--name", name, "--address", "auto", "--storage", storage, *retries]
    env = {"RAY_ADDRESS": DASHBOARD}
    if token_auth:
        env["RAY_AUTH_MODE"] = "token"
    # The job installs the uploaded checkout on the head (same version as here); workers import it from the
    # job's working directory, which Ray ships to every node.
    entrypoint = f"pip install --quiet --no-deps . && {shlex.join(sweep)}"
    submit = ["ray", "job", "submit", "--address", DASHBOARD, "--submission-id", name, "--working-dir", ".", "--no-wait",
              "--", "bash", "-c", entrypoint]
    resume = shlex.join(["robusttune", "resume", experiment, "--address", "auto", *retries])
    return LaunchPlan(
        up=["ray", "up", "-y", str(cluster)],
        dashboard=["ray", "dashboard", str(cluster)],
        submit=submit,
        env=env,
        follow=f"ray job logs {quote(name)} --address {DASHBOARD} --follow",
        status=f"ray exec {quote(str(cluster))} {quote(f'robusttune status {experiment}')}",
        fetch=[f"ray exec {quote(str(cluster))} {quote(f'robusttune report {experiment}')}",
               f"ray rsync-down {quote(str(cluster))} {quote(experiment + '/report/')} {quote('./report-' + name + '/')}"],
        resume=(f"ray job submit --address {DASHBOARD} --working-dir . -- bash -c "
                + quote(f"pip install --quiet --no-deps . && {resume}")),
        down=f"ray down -y {quote(str(cluster))}",
    )


def render(p: LaunchPlan, *, token_auth: bool) -> list[str]:
    env = " ".join(f"{k}={v}" for k, v in p.env.items())
    lines = []
    if token_auth:
        lines += ["# 0. the cluster's token (Ray token authentication): made here once, mounted on every node",
                  "ray get-auth-token --generate"]
    lines += ["# 1. start (or update) the cluster", shlex.join(p.up),
              "# 2. forward the dashboard (job API, bound to the head's loopback) to this machine; keep it running",
              shlex.join(p.dashboard) + " &"]
    lines += ["# 3. submit the sweep as a Ray job (the working directory travels with it)", f"{env} {shlex.join(p.submit)}",
              "# follow it", p.follow, "# trials table", p.status, "# fetch the report", *p.fetch,
              "# resume after an interruption", p.resume, "# tear the cluster down (results stay on the shared storage)", p.down]
    return lines


def execute(p: LaunchPlan, *, token_auth: bool, wait_s: float = 120) -> None:
    """Run the plan: ``ray up``, a background port-forward, then the job submission."""
    def run(command: list[str], env: dict[str, str] | None = None) -> None:
        result = subprocess.run(command, env={**os.environ, **(env or {})})
        if result.returncode != 0:
            raise LaunchError(f"'{shlex.join(command)}' failed with exit code {result.returncode}")

    if token_auth and not Path(TOKEN_FILE).expanduser().is_file():
        run(["ray", "get-auth-token", "--generate"])
    run(p.up)
    forward = subprocess.Popen(p.dashboard, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + wait_s
        while True:  # the port-forward takes a moment
            try:
                run(p.submit, p.env)
                return
            except LaunchError:
                if time.time() > deadline:
                    raise
                time.sleep(5)
    finally:
        forward.terminate()
