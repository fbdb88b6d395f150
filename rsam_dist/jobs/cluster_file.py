"""Checks for Ray cluster-launcher files (`cluster/*.yaml`), offline and without credentials.

Two layers, both run by `rsam-dist validate cluster/X.yaml`:

1. Ray's own: `prepare_config` merges the provider's defaults.yaml (as `ray up` does) and
   `validate_config` checks the result against ray/autoscaler/ray-schema.json (unknown keys,
   a bad head_node_type, min_workers over max_workers, an unknown provider). Private API, but
   it is exactly what `ray up` runs first; it needs no boto3 and no cloud account.
2. Ours, on the *prepared* config (so a default that Ray fills in is checked too):
   - no security-group rule opens a port other than 22 to public addresses wider than a /16
     (IPv4) or /48 (IPv6), reasoned as address ranges (0.0.0.0/1 + 128.0.0.0/1 is the world);
   - the head's dashboard listens on loopback only (Ray's AWS default is 0.0.0.0; reach it
     through `ray dashboard FILE`, an SSH port-forward);
   - every `ray start` runs with RAY_AUTH_MODE=token in force: each command is parsed and the
     variable followed through the shell (rsam_dist.jobs.start_commands), not searched for;
   - every node installs rsam-dist pinned: `pip install -r requirements.lock`, then
     `pip install --no-deps -e .`; every other pip install names exact versions (==), and no
     setup command pipes a download into a shell (curl ... | sh);
   - a node type whose GPU this PyTorch cannot run (g2: GRID K520) declares GPU 0 (gpu_check).

Every failure is a one-line UserError naming the file and the fix.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from pathlib import Path
from typing import Any

from rsam_dist.config import read_yaml
from rsam_dist.errors import UserError
from rsam_dist.gpu_check import check_unsupported_gpus_hidden, unsupported_gpu
from rsam_dist.jobs.dashboard import one_line, quiet_ray_logs
from rsam_dist.jobs.start_commands import UNKNOWN, RayStart, UnclearCommand, ray_starts

SSH_PORT = 22
# Non-SSH ports may be opened to private ranges, or to at most this many public addresses (all
# rules together): an office's /24 is fine, 0.0.0.0/1 + 128.0.0.0/1 (the whole internet) is not.
MAX_PUBLIC_ADDRESSES = {4: 2**16, 6: 2**80}  # a /16, a /48
PRIVATE_RANGES = [ipaddress.ip_network(net) for net in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "fc00::/7", "fe80::/10", "::1/128")]
_PIPE_TO_SHELL = re.compile(r"\b(curl|wget)\b[^;&|]*\|\s*(sudo\s+)?(\S*/)?(ba|da|z)?sh\b")
_PIP_INSTALL = re.compile(r"\bpip3?\s+install\s+([^;&|]*)")
_PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "--python", "-i",
                      "--index-url", "--extra-index-url", "-f", "--find-links", "-t", "--target"}
_LOCK_INSTALL = re.compile(r"pip3? install\b[^;&|]*\s-r\s+\S*requirements\.lock\b")
_EDITABLE_INSTALL = re.compile(r"pip3? install\b[^;&|]*--no-deps\b[^;&|]*\s-e\s+\S+")
COMMAND_KEYS = ("head_start_ray_commands", "worker_start_ray_commands", "initialization_commands",
                "setup_commands", "head_setup_commands", "worker_setup_commands")
"""Every command list of a cluster file, the start commands first (a `ray start` may hide in any)."""


def validate_cluster_file(path: str | Path) -> dict[str, Any]:
    """The prepared config (Ray's defaults merged in) if `path` passes Ray's schema and our rules."""
    raw = read_yaml(path)
    prepared = _ray_prepare_and_validate(path, raw)
    check_security_rules(path, prepared)
    check_pinned_install(path, prepared)
    check_unsupported_gpus_hidden(path, prepared)
    return prepared


def describe_cluster_file(path: str | Path) -> str:
    """A short human summary of a valid cluster file (raises UserError if it is not valid)."""
    config = validate_cluster_file(path)
    provider = config["provider"]
    where = provider.get("region") or provider.get("head_ip") or provider.get("coordinator_address") or ""
    lines = [
        f"{path}: valid Ray cluster config (Ray's schema and rsam-dist's security and install rules)",
        f"cluster '{config.get('cluster_name')}' on {provider['type']}{f' ({where})' if where else ''}: "
        f"at most {config.get('max_workers')} workers, idle workers removed after "
        f"{config.get('idle_timeout_minutes')} min",
    ]
    if provider["type"] == "local":
        workers = ", ".join(provider.get("worker_ips") or []) or "none"
        node_type = next(iter(config["available_node_types"].values()))
        low, high = node_type.get("min_workers", 0), node_type.get("max_workers")
        lines.append(f"  head {where}; workers {workers} (Ray runs on {low}..{high} of them)")
    else:
        lines.extend(_describe_node_types(config))
    instance_types = {str((t.get("node_config") or {}).get("InstanceType", "")) for t in
                      config["available_node_types"].values()}
    if any(unsupported_gpu(name) for name in instance_types):
        lines.append("note: g2 nodes train on their CPUs; their GRID K520 (compute capability 3.0) is not "
                     "offered to Ray, as current PyTorch cannot run it; for GPU speed use cluster/aws-gpu.yaml")
    lines.append(f"start: ray up {path}    dashboard: ray dashboard {path}    stop: ray down {path}")
    return "\n".join(lines)


def has_worker_nodes(config: dict[str, Any]) -> bool:
    """Whether a prepared cluster config can add nodes besides the head."""
    head = config.get("head_node_type")
    return any(name != head and node.get("max_workers", 0) > 0
               for name, node in config.get("available_node_types", {}).items()) or (
        config["provider"]["type"] == "local" and config.get("max_workers", 0) > 0)


def _describe_node_types(config: dict[str, Any]) -> list[str]:
    lines = []
    for name, node_type in config["available_node_types"].items():
        node_config = node_type.get("node_config") or {}
        instance = node_config.get("InstanceType") or node_config.get("machineType") or "-"
        market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType")
        pricing = "spot" if market == "spot" else "on-demand"
        if name == config["head_node_type"]:
            role = "head"
        else:
            role = f"{node_type.get('min_workers', 0)}..{node_type.get('max_workers')} workers"
        line = f"  {name:<14} {instance:<13} {pricing:<10} {role}"
        resources = " ".join(f"{k}={v}" for k, v in (node_type.get("resources") or {}).items())
        if resources:
            line += f"  resources {resources}"
        if str(node_config.get("ImageId", "")).upper().startswith("AMI-REPLACE"):
            line += "  (set ImageId before `ray up`)"
        lines.append(line)
    return lines


# --- Ray's own validation ----------------------------------------------------------------------


def _ray_prepare_and_validate(path: str | Path, raw: dict[str, Any]) -> dict[str, Any]:
    import click
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    provider = raw.get("provider")
    if not isinstance(provider, dict) or "type" not in provider:
        raise UserError(f"{path}: no provider.type; set provider: {{type: aws|local|gcp|...}}")
    if provider["type"] == "local":
        _check_local_provider(path, raw)
    try:
        # prepare_config prints Ray's own notes (cli_logger, logging); a UserError below says it in one line.
        with quiet_ray_logs(swallow_output=True):
            prepared = prepare_config(raw)
            validate_config(prepared)
    except jsonschema.ValidationError as err:
        where = ".".join(str(part) for part in err.absolute_path) or "top level"
        raise UserError(f"{path}: Ray's cluster schema: {one_line(err.message)} (at {where}); "
                        "fix or remove that key") from None
    except NotImplementedError as err:
        raise UserError(f"{path}: unsupported provider.type {provider['type']!r}: {one_line(err)}") from None
    except click.ClickException as err:
        raise UserError(f"{path}: {one_line(err.message)}") from None
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise UserError(f"{path}: Ray's cluster checks: {one_line(err)}") from None
    return prepared


def _check_local_provider(path: str | Path, raw: dict[str, Any]) -> None:
    """What Ray's prepare_local would abort on, said in one line instead of a PANIC block."""
    provider = raw["provider"]
    for field in ("head_node", "worker_nodes", "available_node_types"):
        if raw.get(field):
            raise UserError(f"{path}: provider type local does not take `{field}`; list the machines in "
                            "provider.head_ip/worker_ips and give resources as ray start flags")
    if "coordinator_address" not in provider and not ("head_ip" in provider and "worker_ips" in provider):
        raise UserError(f"{path}: provider type local needs provider.head_ip and provider.worker_ips "
                        "(or provider.coordinator_address)")


# --- our rules ---------------------------------------------------------------------------------


def check_security_rules(path: str | Path, config: dict[str, Any]) -> None:
    """No port but SSH open to the internet; dashboard on loopback; token auth on every ray start."""
    permissions = (config["provider"].get("security_group") or {}).get("IpPermissions") or []
    public: dict[int, list] = {4: [], 6: []}  # public ranges opened for ports other than SSH, so far
    for permission in permissions:
        if _ssh_only(permission):
            continue
        for network in _networks(path, permission):
            if any(network.version == private.version and network.subnet_of(private) for private in PRIVATE_RANGES):
                continue
            public[network.version].append(network)
            exposed = sum(n.num_addresses for n in ipaddress.collapse_addresses(public[network.version]))
            if exposed > MAX_PUBLIC_ADDRESSES[network.version]:
                raise UserError(
                    f"{path}: provider.security_group.IpPermissions opens {_port_text(permission)} to the world "
                    f"({network}; {exposed:,} public addresses with the rules before it); only SSH (22) may "
                    "be: remove the rule and reach the dashboard with `ray dashboard FILE`"
                )
    check_ray_starts(path, config)


def check_ray_starts(path: str | Path, config: dict[str, Any]) -> None:
    """Every `ray start` in any command list runs with RAY_AUTH_MODE=token in force, and a head's
    dashboard listens on loopback only."""
    for key, command in _commands(config):
        try:
            starts = ray_starts(command)
        except UnclearCommand as err:
            raise UserError(f"{path}: {key}: cannot tell whether `ray start` runs with token auth ({err}); "
                            "write it as a plain `RAY_AUTH_MODE=token ray start ...`") from None
        for start in starts:
            _check_dashboard_host(path, key, start)
            if start.auth_mode != "token":
                raise UserError(f"{path}: {key} run `ray start` without token auth (RAY_AUTH_MODE is "
                                f"{_auth_text(start)} there); write it as `RAY_AUTH_MODE=token ray start ...`")


def _commands(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, command) for every shell command of the cluster file, node types' own lists included."""
    found = [(key, command) for key in COMMAND_KEYS for command in config.get(key) or []]
    for name, node_type in (config.get("available_node_types") or {}).items():
        for key in COMMAND_KEYS:
            found += [(f"available_node_types.{name}.{key}", c) for c in (node_type or {}).get(key) or []]
    return [(key, str(command)) for key, command in found]


def _check_dashboard_host(path: str | Path, key: str, start: RayStart) -> None:
    if "--head" not in start.args:
        return
    host = start.option("--dashboard-host")
    if host is None or _is_loopback(host):  # Ray's default is localhost
        return
    where = "on all interfaces" if host in ("0.0.0.0", "::", "[::]", "0") else f"on {host}"
    raise UserError(f"{path}: {key} start the dashboard {where}; use --dashboard-host=127.0.0.1 and "
                    "`ray dashboard FILE` (an SSH port-forward)")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _auth_text(start: RayStart) -> str:
    if start.auth_mode is None:
        return "unset"
    if start.auth_mode is UNKNOWN:
        return "not known for sure"
    return repr(start.auth_mode[:20])


def check_pinned_install(path: str | Path, config: dict[str, Any]) -> None:
    """Head and workers both install the lock file and then rsam-dist itself without deps; nothing
    else they install floats (unpinned pip requirements, an installer piped into a shell)."""
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged into both
        commands = list(config.get(key) or [])
        if not any(_LOCK_INSTALL.search(c) for c in commands):
            raise UserError(f"{path}: {key} (with setup_commands) never run `pip install -r "
                            "requirements.lock`; add it to setup_commands so every node has the tested stack")
        if not any(_EDITABLE_INSTALL.search(c) for c in commands):
            raise UserError(f"{path}: {key} (with setup_commands) never run `pip install --no-deps -e .` "
                            "in the copied project; add it after the requirements.lock install")
        for command in commands:
            if piped := _PIPE_TO_SHELL.search(command):
                raise UserError(f"{path}: {key} pipe a download into a shell ({piped.group(0)}); download a "
                                "pinned file, check its sha256 (sha256sum -c), then run it")
            for requirement in _unpinned_requirements(command):
                name = re.split(r"[<>=~!\[;\s]", requirement)[0]
                raise UserError(f"{path}: {key} install {requirement!r} without an exact version; "
                                f"pin it: pip install '{name}==X.Y.Z'")


def _unpinned_requirements(command: str) -> list[str]:
    """Requirements a `pip install` (or `uv pip install`) in `command` names without `==`."""
    found = []
    for match in _PIP_INSTALL.finditer(command):
        try:
            tokens = shlex.split(match.group(1), comments=True)
        except ValueError:
            tokens = match.group(1).split()
        takes_value = False
        for token in tokens:
            if takes_value:
                takes_value = False
            elif token.startswith("-"):
                takes_value = token in _PIP_VALUE_OPTIONS
            elif "==" not in token and not token.startswith((".", "/", "~")) and not token.endswith(".whl"):
                found.append(token)
    return found


def _networks(path: str | Path, permission: dict[str, Any]) -> list:
    ranges = [r.get("CidrIp") for r in permission.get("IpRanges") or []]
    ranges += [r.get("CidrIpv6") for r in permission.get("Ipv6Ranges") or []]
    networks = []
    for text in ranges:
        try:
            networks.append(ipaddress.ip_network(str(text).strip(), strict=False))
        except ValueError:
            raise UserError(f"{path}: provider.security_group.IpPermissions: {text!r} is not an address "
                            "range (use CIDR notation, e.g. 203.0.113.7/32)") from None
    return networks


def _ssh_only(permission: dict[str, Any]) -> bool:
    protocol = str(permission.get("IpProtocol", "")).lower()
    return protocol in {"tcp", "6"} and permission.get("FromPort") == SSH_PORT == permission.get("ToPort")


def _port_text(permission: dict[str, Any]) -> str:
    protocol = str(permission.get("IpProtocol", ""))
    if protocol == "-1":
        return "every port"
    low, high = permission.get("FromPort"), permission.get("ToPort")
    return f"{protocol} port {low}" if low == high else f"{protocol} ports {low}-{high}"
