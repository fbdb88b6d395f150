"""Fault rows for secrets and the cluster edge: where the Ray auth token may go, what a cluster
file really runs, files named by mistake, what a job uploads, what a bucket or a head may name.

All run in this process and need no Ray: an unsafe address is refused before any connection (a
setup refuses and records every socket connect, and the row checks none was tried), and the
submit row stands a recorder in for Ray's job client to see the working_dir it would upload.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import yaml

from faults import Case, Env

DIGITS = "{repo}/configs/digits.yaml"
TEST_NET = "http://192.0.2.1:8265"
"""TEST-NET-1 (RFC 5737): reserved for documentation, nothing answers there."""
SECRET_LINE = "root:$6$s3cr3tSALT$HASHHASHHASH:19000:0:99999:7:::"
"""A line of /etc/shadow: the kind of content an error must never echo."""


def _patched(env: Env, home: bool = True) -> pytest.MonkeyPatch:
    """A MonkeyPatch for this row (its undo is the row's cleanup); a private job registry."""
    patch = pytest.MonkeyPatch()
    if home:
        patch.setenv("RSAM_DIST_HOME", str(env.tmp / "home"))
    return patch


_connections: list = []


def no_connections(env: Env):
    """Every socket connect from this process is refused and recorded."""
    patch = _patched(env)
    _connections.clear()

    def refuse(self, address, *args):
        _connections.append(address)
        raise ConnectionRefusedError(f"fault row: no connection allowed to {address}")

    patch.setattr(socket.socket, "connect", refuse)
    patch.setattr(socket.socket, "connect_ex", refuse)
    return patch.undo


def nothing_connected(env: Env, stdout: str, stderr: str) -> None:
    assert _connections == [], f"connections were attempted: {_connections}"


def recorded_plain_http_job(env: Env):
    undo = no_connections(env)
    (env.tmp / "home").mkdir()
    record = {"job_id": "rsam-train-old", "kind": "train", "file": "configs/digits.yaml",
              "remote_dir": "~/rsam-dist-runs/rsam-train-old", "address": TEST_NET}
    (env.tmp / "home" / "jobs.json").write_text(json.dumps({"jobs": {"rsam-train-old": record}}))
    return undo


def one_line_only(env: Env, stdout: str, stderr: str) -> None:
    assert stderr.count("\n") == 1, f"more than the one error line: {stderr!r}"
    assert "note:" not in stderr


# --- cluster files ------------------------------------------------------------------------------


def cluster_file(name: str, **changes):
    def setup(env: Env) -> None:
        config = yaml.safe_load((env.repo / "cluster" / "aws-gpu.yaml").read_text())
        config.update(changes)
        (env.tmp / name).write_text(yaml.safe_dump(config))

    return setup


# --- files named by mistake ---------------------------------------------------------------------


def secret_base(env: Env) -> None:
    (env.tmp / "shadow").write_text(SECRET_LINE + "\ndaemon:*:19000:0:99999:7:::\n")
    sweep = yaml.safe_load((env.repo / "sweeps" / "demo.yaml").read_text())
    sweep["base"] = str(env.tmp / "shadow")
    (env.tmp / "sweep.yaml").write_text(yaml.safe_dump(sweep))


def secret_config(env: Env) -> None:
    (env.tmp / "shadow").write_text(SECRET_LINE + "\n")


def no_content_echoed(env: Env, stdout: str, stderr: str) -> None:
    output = (stdout + stderr).replace(str(env.tmp), "TMP")
    for piece in ("s3cr3t", "HASH", "root", "daemon", "19000", "99999"):
        assert piece not in output, f"{piece!r} of the file was echoed: {stderr!r}"


def passwd_not_echoed(env: Env, stdout: str, stderr: str) -> None:
    first_line = Path("/etc/passwd").read_text().splitlines()[0]
    assert first_line.split(":")[0] not in stderr.replace("/etc/passwd", ""), stderr


# --- what a job uploads -------------------------------------------------------------------------

_uploaded: dict = {}
SECRETS = (".env", "id_rsa", "deploy.pem", "configs/aws-credentials.yaml", "configs/.env", "rsam_dist/api.key",
           "notes.txt")


def checkout_with_secrets(env: Env):
    """A checkout holding what a job needs and the secrets checkouts collect; Ray's client recorded."""
    import rsam_dist.jobs.jobs as jobs

    root = env.tmp / "checkout"
    for relative in ("rsam_dist/__init__.py", "sweeps/demo.yaml", "pyproject.toml", "requirements.lock", *SECRETS):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("secret\n" if relative in SECRETS else f"{relative}\n")
    (root / "configs" / "digits.yaml").write_text((env.repo / "configs" / "digits.yaml").read_text())
    _uploaded.clear()

    class RecordingClient:
        def submit_job(self, *, entrypoint, submission_id, runtime_env, metadata):
            directory = Path(runtime_env["working_dir"])
            _uploaded["files"] = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
            return submission_id

    patch = _patched(env)
    patch.setenv("RSAM_DIST_REMOTE_RUNS", "/tmp/rsam-fault-runs")
    patch.setattr(jobs, "project_root", lambda: root)
    patch.setattr(jobs, "job_client", lambda url: RecordingClient())
    return patch.undo


def only_the_project_uploaded(env: Env, stdout: str, stderr: str) -> None:
    assert _uploaded["files"] == ["configs/digits.yaml", "pyproject.toml", "requirements.lock",
                                  "rsam_dist/__init__.py", "sweeps/demo.yaml"], _uploaded


# --- what a bucket or a head may name -------------------------------------------------------------


def hostile_bucket(env: Env):
    """A bucket listing one good event file and one whose key climbs out of --out with ../."""
    import pyarrow.fs

    import rsam_dist.jobs.tensorboard as tensorboard

    objects = {"bucket/run/tb/events.out.tfevents.1.good": b"good",
               "bucket/run/../../escaped/events.out.tfevents.2.bad": b"bad"}

    def unused(name: str):
        def method(self, *args):  # the rest of the handler interface is never called here
            raise NotImplementedError(name)

        return method

    methods = {name: unused(name) for name in pyarrow.fs.FileSystemHandler.__abstractmethods__}
    methods.update(
        get_type_name=lambda self: "hostile",
        normalize_path=lambda self, path: path,
        get_file_info_selector=lambda self, selector: [
            pyarrow.fs.FileInfo(key, pyarrow.fs.FileType.File, size=len(data)) for key, data in objects.items()],
        open_input_stream=lambda self, path: pyarrow.BufferReader(objects[path]),
    )
    Bucket = type("Bucket", (pyarrow.fs.FileSystemHandler,), methods)
    bucket = pyarrow.fs.PyFileSystem(Bucket())
    patch = _patched(env)
    patch.setattr(tensorboard, "open_uri", lambda uri: (bucket, "bucket/run"))
    return patch.undo


def nothing_escaped(env: Env, stdout: str, stderr: str) -> None:
    assert not list(env.tmp.rglob("events.out.tfevents.2.bad")), "a hostile key was written"


def cluster_file_copy(env: Env) -> None:
    (env.tmp / "local.yaml").write_text((env.repo / "cluster" / "local.yaml").read_text())


CASES = [
    Case("address-plain-http-remote-refused", ("submit", "train", DIGITS, "--address", TEST_NET), 2,
         ("plain http to another machine", "--cluster FILE", "https://"), setup=no_connections,
         check=nothing_connected, timeout=10),
    Case("address-plain-http-status-refused", ("logs", "some-job", "--address", "192.0.2.1:8265"), 2,
         ("plain http", "unencrypted"), setup=no_connections, check=nothing_connected, timeout=10),
    Case("address-registry-replay-refused", ("status", "rsam-train-old"), 2,
         ("recorded address", "plain http"), setup=recorded_plain_http_job, check=nothing_connected, timeout=10),
    Case("address-not-a-dashboard-url", ("stop", "some-job", "--address", "ray://127.0.0.1:10001"), 2,
         ("not a dashboard url",), setup=no_connections, check=nothing_connected),
    Case("address-with-cluster-conflict", ("submit", "train", DIGITS, "--address", "http://127.0.0.1:9",
                                           "--cluster", "{repo}/cluster/aws-multi-gpu.yaml"), 2,
         ("not both",), setup=no_connections, check=one_line_only),
    Case("cluster-token-auth-off-in-effect", ("validate", "echoed.yaml"), 2, ("without token auth", "'disabled'"),
         setup=cluster_file("echoed.yaml", worker_start_ray_commands=[
             "RAY_AUTH_MODE=disabled ray start --address=$RAY_HEAD_IP:6379; echo RAY_AUTH_MODE=token"])),
    Case("cluster-token-exported-in-another-shell", ("validate", "split.yaml"), 2, ("without token auth", "unset"),
         setup=cluster_file("split.yaml", head_start_ray_commands=[
             "export RAY_AUTH_MODE=token", "ray start --head --dashboard-host=127.0.0.1"])),
    Case("cluster-ray-start-hidden-in-bash-c", ("validate", "hidden.yaml"), 2, ("cannot tell", "RAY_AUTH_MODE=token"),
         setup=cluster_file("hidden.yaml", worker_start_ray_commands=[
             "bash -c 'ray start --address=$RAY_HEAD_IP:6379'"])),
    Case("sweep-base-is-a-secret-file", ("validate", "sweep.yaml"), 2, ("not a config key name", "not shown"),
         setup=secret_base, check=no_content_echoed),
    Case("config-is-a-secret-file", ("train", "shadow", "--local"), 2, ("not a config key name",),
         setup=secret_config, check=no_content_echoed),
    Case("config-is-etc-passwd", ("validate", "/etc/passwd"), 2, ("expected a mapping",), check=passwd_not_echoed),
    Case("submit-never-uploads-secrets", ("submit", "train", "checkout/configs/digits.yaml", "--address",
                                          "http://127.0.0.1:8265"), 0, ("rsam-dist logs",),
         setup=checkout_with_secrets, check=only_the_project_uploaded, changes=("home",)),
    Case("submit-secret-named-file-refused", ("submit", "train", "checkout/configs/aws-credentials.yaml",
                                              "--address", "http://127.0.0.1:8265"), 2, ("would not receive", "secret"),
         setup=checkout_with_secrets),
    Case("tensorboard-hostile-object-key", ("tensorboard", "s3://bucket/run", "--out", "out/a/b", "--no-launch"), 2,
         ("outside", "refused"), setup=hostile_bucket, check=nothing_escaped, changes=("out",)),
    Case("tensorboard-port-zero", ("tensorboard", ".", "--port", "0", "--no-launch"), 2, ("--port",)),
    Case("tensorboard-port-too-big", ("tensorboard", ".", "--port", "99999", "--no-launch"), 2, ("99999",)),
    Case("tensorboard-head-path-with-shell-characters", ("tensorboard", "~/runs;touch pwned", "--cluster",
                                                         "local.yaml", "--no-launch"), 2,
         ("letters, digits",), setup=cluster_file_copy),
    Case("remote-runs-with-shell-characters", ("submit", "train", DIGITS, "--address", "http://127.0.0.1:9"), 2,
         ("RSAM_DIST_REMOTE_RUNS",), env={"RSAM_DIST_REMOTE_RUNS": "/tmp/a>b"}, setup=no_connections,
         check=nothing_connected),
]
