"""Every cluster file passes Ray's own schema and our security/install rules; bad ones fail in one
line. Also the GPU check and the parts of the job commands that need no cluster."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from rsam_dist.cli import main
from rsam_dist.jobs.cluster_file import describe_cluster_file, validate_cluster_file
from rsam_dist.errors import UserError
from rsam_dist.gpu_check import check_gpu_supported, min_supported_capability

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((REPO_ROOT / "cluster").glob("*.yaml"))
EXPECTED = {"aws-g2.yaml", "aws-gpu.yaml", "aws-multi-gpu.yaml", "local.yaml"}
# torch 2.14's CUDA 13 wheels (what requirements.lock pins)
CU13_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


def cluster_cli() -> click.Group:
    """The real `rsam-dist` group, with its error handling (one line, exit 2)."""
    return main


# --- the shipped cluster files ---------------------------------------------------------------


def test_the_four_cluster_files_exist():
    assert EXPECTED <= {path.name for path in CLUSTER_FILES}


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_passes_ray_schema_and_our_rules(path):
    config = validate_cluster_file(path)  # raises UserError otherwise
    assert config["idle_timeout_minutes"] <= 10  # idle workers are scaled down
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in head_start
    assert "RAY_AUTH_MODE=token" in " ".join(config["worker_start_ray_commands"])
    for key in ("head_setup_commands", "worker_setup_commands"):
        setup = " ".join(config[key])
        assert "pip install -q -r requirements.lock" in setup and "pip install -q --no-deps -e ." in setup
    assert "~/rsam-dist" in config["file_mounts"] and "~/.ray/auth_token" in config["file_mounts"]
    permissions = (config["provider"].get("security_group") or {}).get("IpPermissions") or []
    assert permissions == []  # Ray's default group: SSH plus intra-cluster traffic only


@pytest.mark.parametrize("name", ["aws-g2.yaml", "aws-gpu.yaml", "aws-multi-gpu.yaml"])
def test_aws_files_use_spot_workers_and_a_cpu_head_with_driver_slots(name):
    config = validate_cluster_file(REPO_ROOT / "cluster" / name)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == {"GPU": 0, "train_driver": 4}
    assert "InstanceMarketOptions" not in head["node_config"]  # the head stays on-demand
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert workers and all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in workers)
    assert all(t["min_workers"] == 0 for t in workers)
    assert config["provider"]["cache_stopped_nodes"] is False


def test_local_file_gives_the_head_driver_slots():
    config = validate_cluster_file(REPO_ROOT / "cluster" / "local.yaml")
    assert "--resources='{\"train_driver\":4}'" in config["head_start_ray_commands"][-1]


def test_g2_file_says_honestly_that_it_cannot_train():
    text = (REPO_ROOT / "cluster" / "aws-g2.yaml").read_text()
    header = text.split("cluster_name:")[0]
    assert "g2.2xlarge" in text and "GRID K520" in header
    assert "compute" in header and "3.0" in header and "cluster/aws-gpu.yaml" in header


def test_multi_gpu_file_asks_for_shared_storage():
    header = (REPO_ROOT / "cluster" / "aws-multi-gpu.yaml").read_text().split("cluster_name:")[0]
    assert "train.storage=s3://" in header


def test_describe_warns_about_the_paper_gpu():
    text = describe_cluster_file(REPO_ROOT / "cluster" / "aws-g2.yaml")
    assert "g2.2xlarge" in text and "note: g2 nodes" in text and "cluster/aws-gpu.yaml" in text


def test_describe_summarises_nodes():
    text = describe_cluster_file(REPO_ROOT / "cluster" / "aws-gpu.yaml")
    assert "rsam-gpu" in text and "g5.xlarge" in text and "spot" in text and "0..4 workers" in text


def test_rsam_dist_validate_accepts_a_cluster_file():
    result = CliRunner().invoke(main, ["validate", str(REPO_ROOT / "cluster" / "local.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid Ray cluster config" in result.output


# --- deliberately bad files ------------------------------------------------------------------


def good_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "cluster" / "aws-gpu.yaml").read_text())


def open_port(port: int, cidr_key: str = "IpRanges", cidr: str = "0.0.0.0/0") -> dict:
    address_key = "CidrIp" if cidr_key == "IpRanges" else "CidrIpv6"
    return {"IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, cidr_key: [{address_key: cidr}]}
    ]}


def dashboard_on_all_interfaces(config: dict) -> None:
    config["head_start_ray_commands"] = [
        "ray stop",
        "RAY_AUTH_MODE=token ray start --head --port=6379 --dashboard-host=0.0.0.0",
    ]


BAD = {
    "unknown-key": (lambda c: c.update(max_worker=3), "'max_worker' was unexpected"),
    "unknown-node-key": (
        lambda c: c["available_node_types"]["gpu_worker"].update(gpus=1), "'gpus' was unexpected"),
    "dashboard-port-open": (
        lambda c: c["provider"].update(security_group=open_port(8265)), "opens tcp port 8265 to the world"),
    "ipv6-all-open": (
        lambda c: c["provider"].update(security_group={"IpPermissions": [
            {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}]}),
        "opens every port to the world"),
    "dashboard-host": (dashboard_on_all_interfaces, "dashboard on all interfaces"),
    "ray-default-start": (lambda c: c.pop("head_start_ray_commands"), "dashboard on all interfaces"),
    "no-token": (
        lambda c: c.update(worker_start_ray_commands=["ray start --address=$RAY_HEAD_IP:6379"]),
        "without token auth"),
    "no-lock": (lambda c: c.update(setup_commands=["pip install rsam-dist"]), "requirements.lock"),
    "bad-head-type": (lambda c: c.update(head_node_type="nope"), "head_node_type"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_cluster_file_fails_with_one_line(tmp_path, case):
    mutate, expected = BAD[case]
    config = good_config()
    mutate(config)
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError) as caught:
        validate_cluster_file(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)) and expected in message


def test_ssh_may_be_open_to_the_world(tmp_path):
    config = good_config()
    config["provider"]["security_group"] = open_port(22, "Ipv6Ranges", "::/0")
    path = tmp_path / "ssh.yaml"
    path.write_text(yaml.safe_dump(config))
    validate_cluster_file(path)


def test_local_provider_without_addresses_fails_with_one_line(tmp_path):
    config = yaml.safe_load((REPO_ROOT / "cluster" / "local.yaml").read_text())
    del config["provider"]["worker_ips"]
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match="head_ip and provider.worker_ips"):
        validate_cluster_file(path)


def test_validate_cli_prints_one_line_and_exits_2(tmp_path):
    config = good_config()
    config["provider"]["security_group"] = open_port(8265)
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "8265" in result.stderr


# --- the GPU check -----------------------------------------------------------------------------


def test_min_supported_capability_reads_sm_entries_only():
    assert min_supported_capability(CU13_ARCHS) == (7, 5)
    assert min_supported_capability(["sm_90a", "sm_100", "compute_50"]) == (9, 0)
    assert min_supported_capability([]) is None


def test_paper_gpu_is_refused_with_a_config_that_works():
    with pytest.raises(UserError) as caught:
        check_gpu_supported(capability=(3, 0), arch_list=CU13_ARCHS, name="GRID K520", cuda_available=True)
    message = str(caught.value)
    assert "GRID K520" in message and "3.0" in message and "7.5" in message
    assert "cluster/aws-gpu.yaml" in message and "\n" not in message


@pytest.mark.parametrize("name, capability", [("NVIDIA A10G", (8, 6)), ("Tesla T4", (7, 5)),
                                              ("NVIDIA H100", (9, 0)), ("NVIDIA L4", (8, 9))])
def test_current_gpus_pass(name, capability):
    check_gpu_supported(capability=capability, arch_list=CU13_ARCHS, name=name, cuda_available=True)


def test_no_cuda_is_fine_unless_a_gpu_was_assigned():
    check_gpu_supported(cuda_available=False)
    with pytest.raises(UserError, match="cluster/aws-gpu.yaml"):
        check_gpu_supported(cuda_available=False, gpu_assigned=True)


def test_gpu_check_on_this_machine_does_not_raise_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the injected cases above cover the logic")
    check_gpu_supported()


# --- job commands that need no cluster ---------------------------------------------------------


@pytest.fixture
def rsam_home(tmp_path, monkeypatch):
    monkeypatch.setenv("RSAM_DIST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RSAM_DIST_REMOTE_RUNS", "/tmp/rsam-test-runs")
    return tmp_path / "home"


def test_unreachable_address_is_one_line(rsam_home):
    result = CliRunner().invoke(cluster_cli(), [
        "submit", "train", str(REPO_ROOT / "configs" / "digits.yaml"), "--address", "http://127.0.0.1:9",
    ])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1
    assert "cannot reach the Ray dashboard at http://127.0.0.1:9" in result.stderr


def test_unknown_job_without_address_is_one_line(rsam_home):
    for command in (["status", "nope"], ["logs", "nope"], ["stop", "nope"]):
        result = CliRunner().invoke(cluster_cli(), command)
        assert result.exit_code == 2 and "unknown job 'nope'" in result.stderr


def test_cluster_that_is_not_up_is_one_line(rsam_home, tmp_path, monkeypatch):
    # `ray dashboard FILE` (the port-forward) finds no head and exits; we say so in one line.
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where `ray dashboard` keeps its cluster state files
    config = yaml.safe_load((REPO_ROOT / "cluster" / "local.yaml").read_text())
    config["cluster_name"] = "rsam-test-not-up"
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cluster_cli(), ["status", "some-job", "--cluster", str(path)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "cannot reach the Ray dashboard of" in result.stderr and "not found" in result.stderr
    assert f"ray up {path}" in result.stderr


def test_submit_checks_the_config_before_contacting_anything(rsam_home):
    result = CliRunner().invoke(cluster_cli(), [
        "submit", "train", str(REPO_ROOT / "configs" / "digits.yaml"), "--set", "model.glimps=3",
        "--address", "http://127.0.0.1:9",
    ])
    assert result.exit_code == 2 and "unknown key 'model.glimps'" in result.stderr


def test_submit_refuses_files_outside_the_project(rsam_home, tmp_path):
    outside = tmp_path / "c.yaml"
    outside.write_text("train: {epochs: 1}\n")
    result = CliRunner().invoke(cluster_cli(), ["submit", "train", str(outside), "--address", "http://x:1"])
    assert result.exit_code == 2 and "outside the project" in result.stderr


def test_job_plan_runs_from_the_job_directory(rsam_home):
    from rsam_dist.jobs.jobs import plan_job

    plan = plan_job("train", REPO_ROOT / "configs" / "digits.yaml", ["train.epochs=1"], "rsam-train-x")
    assert plan.file == "configs/digits.yaml"
    assert plan.remote_dir == "/tmp/rsam-test-runs/rsam-train-x"
    assert "cd /tmp/rsam-test-runs/rsam-train-x && " in plan.entrypoint
    assert 'python -m rsam_dist.cli train "$RSAM_PROJECT"/configs/digits.yaml --set train.epochs=1' in plan.entrypoint
    s3 = plan_job("train", REPO_ROOT / "configs" / "digits.yaml", ["train.storage=s3://b/runs"], "rsam-train-y")
    assert s3.remote_dir == "s3://b/runs/rsam-train-y" and "train.name=rsam-train-y" in s3.overrides


def test_tensorboard_collects_local_event_files(rsam_home, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    for trial in ("trial_a", "trial_b"):
        writer = SummaryWriter(str(tmp_path / "sweep" / trial / "tensorboard"))
        writer.add_scalar("test/top1", 0.5, 1)
        writer.close()
    (tmp_path / "sweep" / "trial_a" / "checkpoint.pt").write_bytes(b"not copied")
    out = tmp_path / "collected"
    result = CliRunner().invoke(cluster_cli(), ["tensorboard", str(tmp_path / "sweep"), "--out", str(out),
                                                "--no-launch"])
    assert result.exit_code == 0, result.output
    assert f"tensorboard --logdir {out} --host 127.0.0.1 --port 6006" in result.stdout
    files = sorted(out.rglob("events.out.tfevents.*"))
    assert [f.relative_to(out).parts[0] for f in files] == ["trial_a", "trial_b"]
    assert not (out / "trial_a" / "checkpoint.pt").exists()
    accumulator = EventAccumulator(str(files[0]))
    accumulator.Reload()
    assert "test/top1" in accumulator.Tags()["scalars"]


def test_tensorboard_reads_a_uri(rsam_home, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "run" / "tensorboard"))
    writer.add_scalar("train/loss", 1.0, 1)
    writer.close()
    result = CliRunner().invoke(cluster_cli(), ["tensorboard", f"file://{tmp_path / 'run'}",
                                                "--out", str(tmp_path / "got"), "--no-launch"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "got" / "tensorboard").glob("events.out.tfevents.*"))) == 1
