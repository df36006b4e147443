"""Deployment files: the KubeRay manifests and the runtime env parse, name what they must, and run
commands the CLI accepts."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib
import yaml

from cli.main import build_parser
from cluster.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PINNED_RAY = re.search(r'"ray\[default\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
IMAGE = re.search(r"-t (\S+) \.", (ROOT / "deploy" / "Dockerfile").read_text()).group(1)


def containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def check_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == PINNED_RAY
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert "metrics-export-port" in head["rayStartParams"]
    workers = spec["workerGroupSpecs"]
    gpus = sum(
        int(c["resources"]["limits"]["nvidia.com/gpu"]) * g["replicas"]
        for g in workers
        for c in containers(g["template"])
    )
    config = load_config("r1-aqa")
    assert (
        gpus
        >= config.rollout.num_workers * config.rollout.gpus_per_worker
        + config.learner.num_ranks * config.learner.gpus_per_rank
    )
    for template in [head["template"], *(g["template"] for g in workers)]:
        for container in containers(template):
            assert container["image"] == IMAGE and container["name"] and container["resources"]["limits"]


def test_raycluster_manifest():
    manifest = yaml.safe_load((ROOT / "deploy/kuberay/raycluster.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"]
    check_cluster_spec(manifest["spec"])


def test_rayjob_manifest_runs_a_command_the_cli_accepts():
    manifest = yaml.safe_load((ROOT / "deploy/kuberay/rayjob.yaml").read_text())
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    spec = manifest["spec"]
    check_cluster_spec(spec["rayClusterSpec"])
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "cli"]
    args = build_parser().parse_args(argv[3:])
    assert args.command == "train"
    config = load_config(args.config, args.set)  # the preset exists and every --set key is known
    assert config.model.path.startswith("/shared/") and config.data.train.startswith("/shared/")
    yaml.safe_load(spec["runtimeEnvYAML"])


def test_runtime_env_keeps_the_venv_and_checkpoints_out_of_the_upload():
    env = yaml.safe_load((ROOT / "deploy/runtime-env.yaml").read_text())
    assert {".venv/", ".git/", "runs/"} <= set(env["excludes"])
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"


def test_dockerfile_installs_the_gpu_profile_on_the_pinned_ray():
    text = (ROOT / "deploy/Dockerfile").read_text()
    assert f"rayproject/ray:{PINNED_RAY}" in text and "'.[gpu]'" in text
    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert any(d.startswith("vllm==") for d in gpu) and any(d.startswith("deepspeed==") for d in gpu)


def test_runbook_commands_use_real_subcommands_and_flags():
    text = (ROOT / "deploy/README.md").read_text().replace("\\\n", " ")  # join continued lines
    parser = build_parser()
    commands = re.findall(r"^audio-grpo (.+?)(?:\s+#.*)?$", text, re.MULTILINE)
    assert len(commands) >= 4
    for line in commands:
        argv = shlex.split(line)
        parser.parse_args([a.replace("$TOKEN", "t").replace('"', "") for a in argv])
