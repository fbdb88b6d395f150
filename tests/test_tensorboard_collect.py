"""`rsam-dist tensorboard` gathers event files (and nothing else) from a directory, a URI or a
recorded job, read back with TensorBoard's own reader. No Ray: jobs here are registry entries."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from rsam_dist.cli import main
from rsam_dist.errors import UserError
from rsam_dist.jobs.jobs import JobRecord, save_record

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def rsam_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("RSAM_DIST_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def write_events(directory: Path, tag: str = "test/top1") -> None:
    writer = SummaryWriter(str(directory))
    writer.add_scalar(tag, 0.5, 1)
    writer.close()


def test_tensorboard_collects_local_event_files(rsam_home, tmp_path):
    for trial in ("trial_a", "trial_b"):
        write_events(tmp_path / "sweep" / trial / "tensorboard")
    (tmp_path / "sweep" / "trial_a" / "checkpoint.pt").write_bytes(b"not copied")
    out = tmp_path / "collected"
    result = CliRunner().invoke(main, ["tensorboard", str(tmp_path / "sweep"), "--out", str(out), "--no-launch"])
    assert result.exit_code == 0, result.output
    assert f"tensorboard --logdir {out} --host 127.0.0.1 --port 6006" in result.stdout
    files = sorted(out.rglob("events.out.tfevents.*"))
    assert [f.relative_to(out).parts[0] for f in files] == ["trial_a", "trial_b"]
    assert not (out / "trial_a" / "checkpoint.pt").exists()
    accumulator = EventAccumulator(str(files[0]))
    accumulator.Reload()
    assert "test/top1" in accumulator.Tags()["scalars"]


def test_tensorboard_reads_a_uri(rsam_home, tmp_path):
    write_events(tmp_path / "run" / "tensorboard", "train/loss")
    result = CliRunner().invoke(main, ["tensorboard", f"file://{tmp_path / 'run'}",
                                       "--out", str(tmp_path / "got"), "--no-launch"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "got" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def record_job(job_id: str, address: str, remote_dir: Path) -> None:
    save_record(JobRecord(job_id=job_id, kind="train", file="configs/digits.yaml",
                          remote_dir=str(remote_dir), address=address))


@pytest.mark.parametrize("address", ["http://127.0.0.1:8265", "http://LOCALHOST:8265", "http://[::1]:8265"])
def test_a_job_on_this_machine_is_collected_from_its_disk(rsam_home, tmp_path, address):
    write_events(tmp_path / "job" / "runs" / "r1" / "tensorboard")
    record_job("rsam-train-local", address, tmp_path / "job")
    out = tmp_path / "got"
    result = CliRunner().invoke(main, ["tensorboard", "--job", "rsam-train-local", "--out", str(out), "--no-launch"])
    assert result.exit_code == 0, result.output
    assert len(list((out / "runs" / "r1" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_job_on_another_machine_needs_its_cluster_file(rsam_home, tmp_path):
    write_events(tmp_path / "job" / "tensorboard")
    record_job("rsam-train-far", "http://10.0.0.7:8265", tmp_path / "job")
    result = CliRunner().invoke(main, ["tensorboard", "--job", "rsam-train-far", "--no-launch"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "whose disk this machine cannot read" in result.stderr and "--cluster FILE" in result.stderr


# --- what a source names is not trusted to pick local paths -------------------------------------


@pytest.mark.parametrize("key", ["bucket/run/../x/events.out.tfevents.1", "bucket/run/a/../../events.out.tfevents.1",
                                 "elsewhere/events.out.tfevents.1", "bucket/run"])
def test_an_object_key_that_leaves_the_target_is_refused(tmp_path, key):
    from rsam_dist.jobs.tensorboard import _inside

    with pytest.raises(UserError, match="outside"):
        _inside(tmp_path / "out", key, "bucket/run")


def test_an_object_key_lands_under_the_target(tmp_path):
    from rsam_dist.jobs.tensorboard import _inside

    target = tmp_path / "out"
    landed = _inside(target, "bucket/run/t1/tb/events.out.tfevents.1", "bucket/run")
    assert landed == target / "t1" / "tb" / "events.out.tfevents.1"


def test_a_symlinked_event_file_is_not_followed(rsam_home, tmp_path):
    write_events(tmp_path / "run" / "tensorboard")
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY\n")
    (tmp_path / "run" / "tensorboard" / "events.out.tfevents.0.link").symlink_to(secret)
    out = tmp_path / "got"
    result = CliRunner().invoke(main, ["tensorboard", str(tmp_path / "run"), "--out", str(out), "--no-launch"])
    assert result.exit_code == 0, result.output
    copied = list(out.rglob("events.out.tfevents.*"))
    assert len(copied) == 1 and "PRIVATE KEY" not in copied[0].read_bytes().decode(errors="replace")


@pytest.mark.parametrize("remote", ["~/runs; touch pwned", "~/a b", "$(id)", "-e ssh", "~/x`y`", "~/x\ny"])
def test_a_head_path_with_shell_characters_is_refused_before_rsync(rsam_home, remote):
    result = CliRunner().invoke(main, ["tensorboard", "--cluster", str(REPO_ROOT / "cluster" / "local.yaml"),
                                       "--no-launch", "--", remote])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "letters, digits and . _ - /" in result.stderr


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1"])
def test_the_port_is_range_checked(rsam_home, tmp_path, port):
    result = CliRunner().invoke(main, ["tensorboard", str(tmp_path), "--port", port, "--no-launch"])
    assert result.exit_code == 2 and "1<=x<=65535" in result.stderr
