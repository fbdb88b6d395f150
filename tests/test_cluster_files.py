"""Every cluster file passes Ray's own schema and our security/install rules; bad ones fail in one
line. Token auth and the dashboard host are read from each command as the shell would run it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from rsam_dist.cli import main
from rsam_dist.errors import UserError
from rsam_dist.jobs.cluster_file import describe_cluster_file, has_worker_nodes, validate_cluster_file
from rsam_dist.jobs.start_commands import UNKNOWN, UnclearCommand, ray_starts

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((REPO_ROOT / "cluster").glob("*.yaml"))
EXPECTED = {"aws-g2.yaml", "aws-gpu.yaml", "aws-multi-gpu.yaml", "local.yaml"}

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


def test_worker_nodes_are_found_in_the_prepared_config(tmp_path):
    # Worker nodes mean outputs scattered over several disks: `submit` then advises shared storage.
    for name in ("aws-gpu.yaml", "local.yaml"):
        assert has_worker_nodes(validate_cluster_file(REPO_ROOT / "cluster" / name)), name
    head_only = good_config()
    head_only["max_workers"] = 0
    head_only["available_node_types"] = {"head": head_only["available_node_types"]["head"]}
    path = tmp_path / "head-only.yaml"
    path.write_text(yaml.safe_dump(head_only))
    assert not has_worker_nodes(validate_cluster_file(path))


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
        "cannot tell whether `ray start` runs with token auth"),
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


# --- token auth and the dashboard, read from the command as the shell runs it --------------------


def worker_start(*commands: str):
    return lambda c: c.update(worker_start_ray_commands=list(commands))


def head_start(*commands: str):
    return lambda c: c.update(head_start_ray_commands=list(commands))


BAD_START = {
    # T29: the string holds RAY_AUTH_MODE=token, but not where `ray start` runs.
    "token-only-echoed": (worker_start("RAY_AUTH_MODE=disabled ray start --address=$RAY_HEAD_IP:6379; "
                                       "echo RAY_AUTH_MODE=token"), "RAY_AUTH_MODE is 'disabled'"),
    # Each entry runs in its own shell: an export in one never reaches the next.
    "token-exported-in-another-command": (
        worker_start("export RAY_AUTH_MODE=token", "ray start --address=$RAY_HEAD_IP:6379"), "is unset"),
    "token-set-but-not-exported": (
        worker_start("RAY_AUTH_MODE=token; ray start --address=$RAY_HEAD_IP:6379"), "is unset"),
    "token-export-may-be-skipped": (
        worker_start("test -f /nope && export RAY_AUTH_MODE=token; ray start --address=$RAY_HEAD_IP:6379"),
        "not known for sure"),
    "token-unset-again": (worker_start("export RAY_AUTH_MODE=token; unset RAY_AUTH_MODE; ray start "
                                       "--address=$RAY_HEAD_IP:6379"), "is unset"),
    "token-in-a-subshell-only": (worker_start("(export RAY_AUTH_MODE=token); ray start --address=$RAY_HEAD_IP:6379"),
                                 "is unset"),
    "token-env-unset": (worker_start("RAY_AUTH_MODE=token env -u RAY_AUTH_MODE ray start --address=x:6379"),
                        "is unset"),
    "ray-start-inside-bash-c": (worker_start("bash -c 'RAY_AUTH_MODE=token ray start --address=x:6379'"),
                                "cannot tell whether `ray start` runs with token auth"),
    "ray-start-in-setup-commands": (lambda c: c.update(setup_commands=[*c["setup_commands"], "ray start --head"]),
                                    "without token auth"),
    "dashboard-host-quoted": (head_start("ray stop", 'RAY_AUTH_MODE=token ray start --head --dashboard-host "0.0.0.0"'),
                              "dashboard on all interfaces"),
    "dashboard-host-public-address": (
        head_start("RAY_AUTH_MODE=token ray start --head --dashboard-host=203.0.113.7"), "dashboard on 203.0.113.7"),
}


@pytest.mark.parametrize("case", sorted(BAD_START))
def test_ray_start_without_token_auth_in_force_fails(tmp_path, case):
    mutate, expected = BAD_START[case]
    config = good_config()
    mutate(config)
    path = tmp_path / f"{case}.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UserError) as caught:
        validate_cluster_file(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(path)) and expected in message, message


@pytest.mark.parametrize("command", [
    "export RAY_AUTH_MODE=token && ray start --address=$RAY_HEAD_IP:6379",
    "export RAY_AUTH_MODE=token\nulimit -n 65536; ray start --address=$RAY_HEAD_IP:6379",
    "ulimit -n 65536; env RAY_AUTH_MODE=token ~/rsam-venv/bin/ray start --address=$RAY_HEAD_IP:6379 2>&1 | tee log",
    "RAY_AUTH_MODE=disabled; export RAY_AUTH_MODE=token; ray start --address=$RAY_HEAD_IP:6379  # ray start",
])
def test_token_auth_written_other_ways_passes(tmp_path, command):
    config = good_config()
    config["worker_start_ray_commands"] = ["ray stop", command]
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(config))
    validate_cluster_file(path)


@pytest.mark.parametrize(("command", "modes"), [
    ("RAY_AUTH_MODE=token ray start --head", ["token"]),
    ("ray stop", []),
    ("export RAY_AUTH_MODE=token | cat; ray start", [None]),             # a pipeline stage is a subshell
    ("export RAY_AUTH_MODE=token & ray start", [None]),                  # so is a background job
    ("if true; then export RAY_AUTH_MODE=token; fi; ray start", [UNKNOWN]),
    ("source ~/.bashrc; ray start", [UNKNOWN]),
    ("x=$(RAY_AUTH_MODE=token ray start); RAY_AUTH_MODE=disabled nohup ray start &", ["token", "disabled"]),
    ("env -i ray start", [None]),
])
def test_ray_starts_follow_the_shell(command, modes):
    assert [start.auth_mode for start in ray_starts(command)] == modes


@pytest.mark.parametrize("command", ["sudo ray start", "`ray start`", "eval 'ray start'", "echo 'open", "ray stop)"])
def test_commands_that_hide_ray_start_are_unclear(command):
    with pytest.raises(UnclearCommand):
        ray_starts(command)
