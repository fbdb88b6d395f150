"""Every cluster file passes Ray's own schema and our security/install rules; bad ones fail in one
line. Also the GPU check and the parts of the job commands that need no cluster."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner

from rsam_dist.cli import main
from rsam_dist.cluster_config import describe_cluster_file, validate_cluster_file
from rsam_dist.distributed import pick_device
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
        assert "pip install -q -r requirements.lock" in setup
        assert "pip install -q --no-deps --no-build-isolation -e ." in setup
        assert not re.search(r"\|\s*(sudo\s+)?(ba|da|z)?sh\b", setup)  # nothing piped into a shell
        assert "sha256sum -c" in setup and "uv-0.13.9" in setup  # uv: a pinned wheel, hash-checked
    assert "~/rsam-dist" in config["file_mounts"] and "~/.ray/auth_token" in config["file_mounts"]
    permissions = (config["provider"].get("security_group") or {}).get("IpPermissions") or []
    assert permissions == []  # Ray's default group: SSH plus intra-cluster traffic only


@pytest.mark.parametrize("name, head_resources", [
    ("aws-g2.yaml", {"CPU": 8, "GPU": 0, "train_driver": 8}),  # the g2 head trains on its CPUs too
    ("aws-gpu.yaml", {"GPU": 0, "train_driver": 4}),
    ("aws-multi-gpu.yaml", {"GPU": 0, "train_driver": 4}),
])
def test_aws_files_use_spot_workers_and_a_head_with_driver_slots(name, head_resources):
    config = validate_cluster_file(REPO_ROOT / "cluster" / name)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"] == head_resources
    assert "InstanceMarketOptions" not in head["node_config"]  # the head stays on-demand
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert workers and all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in workers)
    assert all(t["min_workers"] == 0 for t in workers)
    assert config["provider"]["cache_stopped_nodes"] is False


def test_local_file_gives_the_head_driver_slots():
    config = validate_cluster_file(REPO_ROOT / "cluster" / "local.yaml")
    assert "--resources='{\"train_driver\":4}'" in config["head_start_ray_commands"][-1]


def test_g2_file_trains_on_cpus_and_never_offers_ray_the_k520():
    config = validate_cluster_file(REPO_ROOT / "cluster" / "aws-g2.yaml")
    node_types = config["available_node_types"]
    assert {t["node_config"]["InstanceType"] for t in node_types.values()} == {"g2.2xlarge"}
    assert all(t["resources"]["GPU"] == 0 and t["resources"]["CPU"] == 8 for t in node_types.values())
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = config[key][-1]
        assert "--num-gpus=0" in start and "--num-cpus=8" in start and "CUDA_VISIBLE_DEVICES= " in start
    # The runs directory is shared, so runs placed on workers keep their files in the head's job dir.
    assert any("exportfs" in c for c in config["head_setup_commands"])
    assert any("mount -t nfs $RAY_HEAD_IP:$HOME/rsam-dist-runs ~/rsam-dist-runs" in c
               for c in config["worker_setup_commands"])


def test_g2_header_says_what_it_does_how_fast_and_what_replaces_g2(tmp_path):
    text = (REPO_ROOT / "cluster" / "aws-g2.yaml").read_text()
    header = text.split("cluster_name:")[0]
    assert "GRID K520" in header and "3.0" in header and "--num-gpus=0" in header
    assert "cluster/aws-gpu.yaml" in header  # for GPU speed
    assert "ESTIMATE" in header and "20-epoch" in header and " h " in header
    # The one-line replacement, applied as written, gives a valid file with no g2 left.
    (old, new), = re.findall(r"sed -i 's/([^/]+)/([^/]+)/' cluster/aws-g2.yaml", header)
    replaced = tmp_path / "aws-c6i.yaml"
    replaced.write_text(re.sub(old, new, text))
    config = validate_cluster_file(replaced)
    assert {t["node_config"]["InstanceType"] for t in config["available_node_types"].values()} == {"c6i.2xlarge"}


def test_g2_node_offering_its_k520_to_ray_fails_in_one_line(tmp_path):
    config = yaml.safe_load((REPO_ROOT / "cluster" / "aws-g2.yaml").read_text())
    config["available_node_types"]["g2_worker"]["resources"] = {}  # GPU count left to the instance type
    path = tmp_path / "g2.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError) as caught:
        validate_cluster_file(path)
    message = str(caught.value)
    assert "\n" not in message and "g2_worker (g2.2xlarge)" in message and "GRID K520" in message
    assert '"GPU": 0' in message and "cluster/aws-gpu.yaml" in message


def test_multi_gpu_file_asks_for_shared_storage():
    header = (REPO_ROOT / "cluster" / "aws-multi-gpu.yaml").read_text().split("cluster_name:")[0]
    assert "train.storage=s3://" in header


def test_describe_says_g2_nodes_train_on_cpus():
    text = describe_cluster_file(REPO_ROOT / "cluster" / "aws-g2.yaml")
    assert "g2.2xlarge" in text and "note: g2 nodes train on their CPUs" in text
    assert "cluster/aws-gpu.yaml" in text and "resources CPU=8 GPU=0" in text


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


def open_ranges(port: int, *cidrs: str) -> dict:
    """One rule per range, so the check must add rules up, not read them one at a time."""
    return {"IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
         **({"IpRanges": [{"CidrIp": c}]} if ":" not in c else {"Ipv6Ranges": [{"CidrIpv6": c}]})}
        for c in cidrs
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
    "world-in-two-halves": (
        lambda c: c["provider"].update(security_group=open_ranges(8265, "0.0.0.0/1", "128.0.0.0/1")),
        "opens tcp port 8265 to the world"),
    "ipv6-world-in-halves": (
        lambda c: c["provider"].update(security_group=open_ranges(8265, "::/1", "8000::/1")),
        "opens tcp port 8265 to the world"),
    "world-unnormalised": (
        lambda c: c["provider"].update(security_group=open_ranges(6379, "0.0.0.0/0 ")),
        "opens tcp port 6379 to the world"),
    "public-slash-8": (
        lambda c: c["provider"].update(security_group=open_ranges(6379, "100.0.0.0/8")),
        "opens tcp port 6379 to the world"),
    "many-small-ranges": (
        lambda c: c["provider"].update(security_group=open_ranges(
            8265, *[f"{octet}.0.0.0/16" for octet in (11, 12)])), "131,072 public addresses"),
    "not-a-range": (
        lambda c: c["provider"].update(security_group=open_ranges(8265, "my-office")), "not an address range"),
    "curl-pipe-sh": (
        lambda c: c["setup_commands"].insert(0, "curl -LsSf https://astral.sh/uv/install.sh | sh"),
        "pipe a download into a shell"),
    "wget-pipe-sudo-bash": (
        lambda c: c["setup_commands"].insert(0, "wget -qO- https://example.com/x.sh | sudo bash"),
        "pipe a download into a shell"),
    "unpinned-boto3": (
        lambda c: c.update(head_setup_commands=['pip install -q "boto3>=1.34"']), "'boto3>=1.34' without"),
    "dashboard-host": (dashboard_on_all_interfaces, "dashboard on all interfaces"),
    "dashboard-host-spaced": (
        lambda c: c.update(head_start_ray_commands=["RAY_AUTH_MODE=token ray start --head --dashboard-host 0.0.0.0"]),
        "dashboard on all interfaces"),
    "dashboard-on-a-private-ip": (
        lambda c: c.update(head_start_ray_commands=["RAY_AUTH_MODE=token ray start --head --dashboard-host=10.0.0.5"]),
        "dashboard on 10.0.0.5"),
    "token-only-echoed": (
        lambda c: c.update(worker_start_ray_commands=[
            "RAY_AUTH_MODE=disabled ray start --address=$RAY_HEAD_IP:6379; echo RAY_AUTH_MODE=token"]),
        "without token auth"),
    "token-overridden": (
        lambda c: c.update(worker_start_ray_commands=[
            "export RAY_AUTH_MODE=token; RAY_AUTH_MODE=disabled ray start --address=$RAY_HEAD_IP:6379"]),
        "without token auth"),
    "ray-start-out-of-sight": (
        lambda c: c.update(worker_start_ray_commands=["RAY_AUTH_MODE=token bash -c 'ray start --address=x:6379'"]),
        "cannot find the `ray start`"),
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


@pytest.mark.parametrize("cidrs", [("10.0.0.0/8",), ("172.31.0.0/16", "192.168.1.0/24"), ("203.0.113.0/24",),
                                   ("11.0.0.0/16",), ("2001:db8::/48",), ("fd00::/8",)],
                         ids=lambda c: "+".join(c))
def test_private_or_small_ranges_may_reach_other_ports(tmp_path, cidrs):
    config = good_config()
    config["provider"]["security_group"] = open_ranges(8265, *cidrs)
    path = tmp_path / "narrow.yaml"
    path.write_text(yaml.safe_dump(config))
    validate_cluster_file(path)


def test_token_auth_may_be_exported_before_ray_start(tmp_path):
    config = good_config()
    config["worker_start_ray_commands"] = [
        "ray stop", "ulimit -n 65536; export RAY_AUTH_MODE=token && ray start --address=$RAY_HEAD_IP:6379"]
    config["head_start_ray_commands"] = ["RAY_AUTH_MODE=token ray start --head --dashboard-host localhost"]
    path = tmp_path / "exported.yaml"
    path.write_text(yaml.safe_dump(config))
    validate_cluster_file(path)


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


@pytest.fixture
def k520_node(monkeypatch):
    """torch sees a GRID K520, as on a g2 node where CUDA works at all; every probe is recorded and
    warns the way a driver too old for this CUDA build makes torch warn."""
    import torch

    probes = []

    def probe(name, value):
        def call(*args, **kwargs):
            probes.append(name)
            warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old", stacklevel=2)
            return value
        return call

    for name, value in [("is_available", True), ("device_count", 1), ("get_device_capability", (3, 0)),
                        ("get_arch_list", CU13_ARCHS), ("get_device_name", "GRID K520"),
                        ("current_device", 0), ("init", None)]:
        monkeypatch.setattr(torch.cuda, name, probe(name, value))
    return probes


def test_worker_given_no_gpu_picks_the_cpu_without_touching_cuda(k520_node, caplog):
    """A worker on a node that advertises no GPU (scaling.gpus_per_worker=0): CPU, silently."""
    import torch

    from rsam_dist.config import Config
    from rsam_dist.distributed import World
    from rsam_dist.training import build_state

    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        device = pick_device("auto", gpu_assigned=False)
        state = build_state(Config.model_validate({"model": {"glimpses": 1}}), device, World())
        state.state_dict()  # each epoch's checkpoint must not probe CUDA either
    assert device == torch.device("cpu")
    assert k520_node == [] and [str(w.message) for w in caught] == [] and caplog.records == []


def test_without_the_assignment_the_same_node_would_probe_and_refuse(k520_node):
    """What a worker that asks CUDA instead of Ray does there: it finds the K520 and stops."""
    with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError, match="GRID K520"):
        warnings.simplefilter("always")
        pick_device("auto")
    assert "is_available" in k520_node and caught


@pytest.mark.filterwarnings("ignore:CUDA initialization")  # the fake driver's, on purpose
def test_worker_explicitly_given_the_k520_fails_fast_with_the_one_line_error(k520_node):
    with pytest.raises(UserError) as caught:
        pick_device("auto", gpu_assigned=True)
    with pytest.raises(UserError) as direct:
        check_gpu_supported(gpu_assigned=True)
    assert str(caught.value) == str(direct.value)  # today's error, word for word
    assert "GRID K520" in str(caught.value) and "cluster/aws-gpu.yaml" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_device_cuda_on_a_worker_given_no_gpu_is_one_line(k520_node):
    with pytest.raises(UserError, match="asks Ray for no GPU") as caught:
        pick_device("cuda", gpu_assigned=False)
    assert "\n" not in str(caught.value) and k520_node == []


def test_g2_start_environment_keeps_torch_away_from_the_gpu():
    """The env the g2 start commands give Ray's processes answers torch.cuda.is_available() with
    False without calling into CUDA (here a call would raise), so Ray's own probes are silent too."""
    import torch

    if not torch.backends.cuda.is_built():
        pytest.skip("a CPU-only torch never probes CUDA; requirements.lock pins the CUDA build")
    config = validate_cluster_file(REPO_ROOT / "cluster" / "aws-g2.yaml")
    code = ("import torch\n"
            "def probed(): raise SystemExit('CUDA was probed')\n"
            "torch._C._cuda_getDeviceCount = probed\n"
            "print(torch.cuda.is_available())")
    names = ("CUDA_VISIBLE_DEVICES", "PYTORCH_NVML_BASED_CUDA_CHECK")
    env = {k: v for k, v in os.environ.items() if k not in names}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assignments = re.findall(rf"\b({'|'.join(names)})=(\S*)", config[key][-1])
        assert len(assignments) == 2
        result = subprocess.run([sys.executable, "-c", code], env={**env, **dict(assignments)},
                                capture_output=True, text=True, timeout=120)
        assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr[-500:]
    # Control: without that env the same script does call into CUDA.
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "CUDA was probed" in result.stderr


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
    from rsam_dist.jobs import plan_job

    plan = plan_job("train", REPO_ROOT / "configs" / "digits.yaml", ["train.epochs=1"], "rsam-train-x")
    assert plan.file == "configs/digits.yaml"
    assert plan.remote_dir == "/tmp/rsam-test-runs/rsam-train-x"
    assert "cd /tmp/rsam-test-runs/rsam-train-x && " in plan.entrypoint
    assert 'python -m rsam_dist.cli train "$RSAM_PROJECT"/configs/digits.yaml --set train.epochs=1' in plan.entrypoint
    s3 = plan_job("train", REPO_ROOT / "configs" / "digits.yaml", ["train.storage=s3://b/runs"], "rsam-train-y")
    assert s3.remote_dir == "s3://b/runs/rsam-train-y" and "train.name=rsam-train-y" in s3.overrides


def test_job_plan_for_a_sweep_on_g2_places_cpu_trials(rsam_home):
    from rsam_dist.jobs import plan_job
    from rsam_dist.ray_train import build_trainer
    from rsam_dist.sweep_config import load_sweep

    g2 = str(REPO_ROOT / "cluster" / "aws-g2.yaml")
    plan = plan_job("sweep", REPO_ROOT / "sweeps" / "glimpses.yaml", [], "rsam-sweep-x", cluster=g2)
    assert "trial.gpus_per_worker=0" in plan.overrides  # `auto`, settled before any node is up
    assert "--set trial.gpus_per_worker=0" in plan.entrypoint
    sweep = load_sweep(REPO_ROOT / "sweeps" / "glimpses.yaml", plan.overrides).for_cluster(cluster_gpus=0)
    trial = sweep.trial_config({"model.glimpses": 4, "train.seed": 0})
    scaling = build_trainer(trial, "/tmp/rsam-test-runs/x/trials/t0").scaling_config
    assert scaling.use_gpu is False and scaling.resources_per_worker == {"CPU": 1.0}  # packed by CPUs


def test_job_plan_leaves_auto_to_a_cluster_that_may_have_gpus(rsam_home):
    from rsam_dist.jobs import plan_job

    gpu = str(REPO_ROOT / "cluster" / "aws-gpu.yaml")  # GPU count read from the instance type by Ray
    plan = plan_job("sweep", REPO_ROOT / "sweeps" / "glimpses.yaml", [], "rsam-sweep-y", cluster=gpu)
    assert not any(text.startswith("trial.gpus_per_worker") for text in plan.overrides)


@pytest.mark.parametrize("kind, file, override", [
    ("sweep", "sweeps/glimpses.yaml", "trial.gpus_per_worker=0.25"),
    ("train", "configs/cifar10.yaml", "scaling.gpus_per_worker=1"),
])
def test_job_asking_g2_for_a_gpu_fails_at_submit_in_one_line(rsam_home, kind, file, override):
    result = CliRunner().invoke(cluster_cli(), [
        "submit", kind, str(REPO_ROOT / file), "--set", override,
        "--cluster", str(REPO_ROOT / "cluster" / "aws-g2.yaml"),
    ])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "offers Ray no GPU" in result.stderr and "cluster/aws-gpu.yaml" in result.stderr


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
