"""Every cluster file passes Ray's own schema and our security/install rules; bad ones fail in one
line. Token auth and the dashboard host are read from each command as the shell would run it."""

from __future__ import annotations

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
