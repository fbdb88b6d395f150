"""`make bench`: rsam-dist against the author-style loop, in-process and through Ray, in one table.

Every figure is measured in this one run on this machine, arms in alternation (so load from
elsewhere hits them alike), and reported as medians with ratios:
  * train step and epoch: the author-style loop (benchmarks/author_loop.py, fp32) = 1.0, then
    rsam-dist's engine with the default precision (`auto`) and with each precision asked for;
  * the FLOP rate the rsam-dist step reaches (FLOPs counted by torch's FlopCounterMode) as a
    fraction of a plain fp32 matmul's rate with the same threads;
  * `rsam-dist train` on a synthetic set: in-process (--local), Ray Train with 1 worker and with
    2 workers: epoch time (epoch end to epoch end: train, evaluation, checkpoint, report), time
    from Enter to the first training step with its phases, and the tail after the last epoch;
  * Ray Train's floor (benchmarks/ray_floor.py): from Enter to a training function that does
    nothing, through a fresh local Ray started as rsam-dist starts it, and `fit()` to that function
    on the same Ray once warm. Ray's start-up, its controller and worker actors cost this much
    before any rsam-dist code runs, so the Enter-to-first-step rows give their ratio to it.
The table goes to runs/bench/bench.md and bench.json (and a timestamped copy of each).

    python benchmarks/bench.py                     # everything (starts a local Ray 4 times)
    python benchmarks/bench.py --skip-ray          # in-process arms only
    python benchmarks/bench.py --repeats 3 --epoch-images 1280 --ray-lock /tmp/rsam-ray.lock
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from author_loop import AuthorStyleTrainer

from rsam_dist import timeline
from rsam_dist.batchnorm_stats import recompute_batchnorm_statistics
from rsam_dist.config import Config, DataConfig, ModelConfig, TrainConfig
from rsam_dist.data import make_synthetic, train_batches
from rsam_dist.distributed import World
from rsam_dist.engine import train_one_epoch
from rsam_dist.model import RSAM, rsam_loss
from rsam_dist.precision import Precision, native_bf16
from rsam_dist.training import build_state

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TRAIN_IMAGES = 50_000


# --- timing -------------------------------------------------------------------------------------


def alternate(arms: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each arm, `repeats` rounds, the arms in turn within each round (after one
    untimed warm-up round)."""
    for arm in arms.values():
        arm()
    samples: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm in arms.items():
            started = time.perf_counter()
            arm()
            samples[name].append(time.perf_counter() - started)
    return samples


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --- in-process: steps, epochs, FLOP rate -------------------------------------------------------


class RsamEngine:
    """rsam-dist's model and optimizer as `fit` builds them, its engine on tensors held whole."""

    def __init__(self, config: ModelConfig, split, batch_size: int, precision: Precision):
        self.config, self.split, self.batch_size, self.precision = config, split, batch_size, precision
        self.world = World()
        full = Config(model=config, train=TrainConfig(precision=precision.name))
        self.state = build_state(full, torch.device("cpu"), self.world)

    def train(self, batches) -> int:
        _, images = train_one_epoch(self.state.model, self.state.optimizer, self.split, batches, self.config,
                                    self.world, self.precision, self.state.scaler)
        return images

    def step(self) -> int:
        return self.train([torch.arange(self.batch_size)])

    def epoch(self) -> int:
        return self.train(train_batches(len(self.split), self.batch_size, epoch=0, seed=0))

    def precise_bn_stats(self, batches: int) -> int:
        """`train.bn_stats: precise`'s recompute before an evaluation, over `batches` batches."""
        order = itertools.islice(train_batches(len(self.split), self.batch_size, epoch=0, seed=0), batches)
        return recompute_batchnorm_statistics(self.state.model, (self.split.batch(i)[0] for i in order), self.world)


def flops_per_trained_image(config: ModelConfig, batch: int = 8) -> float:
    """Forward + backward FLOPs of one image (convolutions and matmuls, as torch counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = RSAM(config)
    images, labels = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    with FlopCounterMode(display=False) as counter:
        rsam_loss(model(images), labels, config).backward()
    return counter.get_total_flops() / batch


def matmul_flop_rate(repeats: int, size: int = 1024) -> float:
    """FLOP/s of a plain fp32 matmul with this process's threads: what the kernels reach here."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    seconds = median(alternate({"mm": lambda: torch.mm(a, b)}, max(5, repeats))["mm"])
    return 2 * size**3 / seconds


def bench_in_process(args) -> dict:
    config = ModelConfig(glimpses=args.glimpses)
    split = make_synthetic(DataConfig(name="synthetic", synthetic_train_size=args.epoch_images)).train
    device = torch.device("cpu")
    default = Precision.resolve("auto", device)
    precisions = [default] + [Precision(name, "cpu", name) for name in args.precisions if name != default.name]
    author = AuthorStyleTrainer(config, split, args.batch, device, loader_workers=args.loader_workers)
    engines = {p.name: RsamEngine(config, split, args.batch, p) for p in precisions}
    images, labels = split.batch(torch.arange(args.batch))

    print(f"steps: batch {args.batch}, {args.glimpses} glimpses, {torch.get_num_threads()} threads, "
          f"{args.repeats} rounds ...", flush=True)
    step_arms: dict[str, Callable[[], object]] = {"author": lambda: author.step(images, labels).item()}
    step_arms.update({f"rsam {name}": engine.step for name, engine in engines.items()})
    steps = alternate(step_arms, args.repeats)
    best = min(engines, key=lambda name: median(steps[f"rsam {name}"]))

    print(f"epochs: {args.epoch_images} images, default {default.name}, best {best}, "
          f"{args.epoch_repeats} rounds ...", flush=True)
    epoch_arms: dict[str, Callable[[], object]] = {"author": author.epoch}
    epoch_arms[f"rsam {default.name}"] = engines[default.name].epoch
    if best != default.name:
        epoch_arms[f"rsam {best}"] = engines[best].epoch
    bn_batches = TrainConfig().bn_stats_batches
    epoch_arms["bn_stats precise"] = lambda: engines[default.name].precise_bn_stats(bn_batches)
    epochs = alternate(epoch_arms, args.epoch_repeats)

    print("FLOP rate ...", flush=True)
    flops = flops_per_trained_image(config)
    matmul = matmul_flop_rate(args.repeats)
    return {
        "threads": torch.get_num_threads(),
        "default_precision": default.name,
        "best_precision": best,
        "step_seconds": steps,
        "epoch_seconds": epochs,
        "epoch_images": len(split) // args.batch * args.batch,
        "flops_per_trained_image": flops,
        "matmul_flops_per_second": matmul,
    }


# --- rsam-dist train: --local and Ray Train, from Enter to the end -------------------------------


RUN_ARMS = {  # name -> extra arguments of `rsam-dist train`
    "in-process (--local)": ["--local"],
    "Ray Train, 1 worker": [],
    "Ray Train, 2 workers": ["--set", "scaling.num_workers=2"],
}


def run_cli(name: str, extra: list[str], args, workdir: Path, index: int) -> dict:
    """One `rsam-dist train` from a fresh process; its phases from the timeline marks."""
    marks_file = workdir / f"timeline-{index}.jsonl"
    config_file = workdir / f"run-{index}.yaml"
    config_file.write_text(json.dumps({  # JSON is YAML
        "data": {"name": "synthetic", "synthetic_train_size": args.epoch_images,
                 "synthetic_test_size": args.test_images},
        "model": {"glimpses": args.glimpses},
        "optim": {"batch_size": args.batch},
        "train": {"epochs": args.run_epochs, "storage": str(workdir), "name": f"run-{index}"},
    }))
    command = [sys.executable, "-m", "rsam_dist.cli", "train", str(config_file), *extra]
    env = {**os.environ, timeline.ENV: str(marks_file), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    log = workdir / f"run-{index}.log"
    started = time.time()
    with log.open("w") as output:
        code = subprocess.call(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=workdir)
    ended = time.time()
    if code:
        raise RuntimeError(f"{name}: rsam-dist train exited {code}; see {log}:\n{log.read_text()[-2000:]}")
    marks = timeline.read(marks_file)
    return {"name": name, **phases(marks, started, ended), "log": str(log)}


def phases(marks: list[dict], started: float, ended: float) -> dict:
    """Seconds since Enter of each phase, epoch periods, and the tail, from one run's marks."""

    def first(event: str, rank: int | None = 0) -> float | None:
        for record in marks:
            if record["event"] == event and (rank is None or record.get("rank", 0) == rank):
                return record["time"] - started
        return None

    epochs = [record["time"] - started for record in marks if record["event"] == "epoch_done"
              and record.get("rank", 0) == 0]
    return {
        "config_ready": first("config_ready", None),
        "ray_ready": first("ray_ready", None),
        "worker_start": first("worker_start", None),
        "model_ready": first("model_ready"),
        "data_ready": first("data_ready"),
        "first_step": first("loop_start"),
        "epoch_ends": epochs,
        "epoch_periods": [later - earlier for earlier, later in zip(epochs, epochs[1:], strict=False)],
        "tail": (ended - started) - epochs[-1] if epochs else None,
        "total": ended - started,
    }


@contextlib.contextmanager
def file_lock(path: str | None):
    """Hold an exclusive flock on `path` (the same lock as `flock PATH command`), if given."""
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as handle:
        print(f"waiting for {path} ...", flush=True)
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def bench_runs(args, workdir: Path) -> tuple[dict, list[dict]]:
    """The `rsam-dist train` arms and, in the same rounds, Ray Train's floor (benchmarks/ray_floor.py)."""
    results: dict[str, list[dict]] = {name: [] for name in RUN_ARMS}
    floors: list[dict] = []
    index = 0
    with file_lock(args.ray_lock):
        for round_ in range(args.ray_repeats):
            for name, extra in RUN_ARMS.items():
                print(f"rsam-dist train: {name} (round {round_ + 1}/{args.ray_repeats}) ...", flush=True)
                results[name].append(run_cli(name, extra, args, workdir, index))
                index += 1
            print(f"Ray Train's floor: {args.floor_fits} no-op fits (round {round_ + 1}/{args.ray_repeats}) ...",
                  flush=True)
            floors.append(run_floor(args, workdir, round_))
    return results, floors


def run_floor(args, workdir: Path, index: int) -> dict:
    """benchmarks/ray_floor.py in a fresh process: its JSON line."""
    log = workdir / f"floor-{index}.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as output:
        code = subprocess.call([sys.executable, str(REPO / "benchmarks" / "ray_floor.py"), "--fits",
                                str(args.floor_fits)], env=env, stdout=output, stderr=subprocess.STDOUT, cwd=workdir)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    if code or not lines:
        raise RuntimeError(f"ray_floor.py exited {code}; see {log}:\n{log.read_text()[-2000:]}")
    return json.loads(lines[-1])


# --- the table ----------------------------------------------------------------------------------


def build_rows(inproc: dict | None, runs: dict | None, args, floors: list[dict] | None = None) -> list[dict]:
    rows: list[dict] = []

    def row(what, seconds, images, ratio=None, versus="", note=""):
        rows.append({"what": what, "seconds": seconds, "images_per_second": images / seconds if seconds else None,
                     "ratio": ratio, "versus": versus, "note": note})

    if inproc:
        steps, epochs = inproc["step_seconds"], inproc["epoch_seconds"]
        default, best = inproc["default_precision"], inproc["best_precision"]
        author_step = median(steps["author"])
        row("author-style step (fp32)", author_step, args.batch, 1.0, "author step")
        for arm, samples in steps.items():
            if arm == "author":
                continue
            name = arm.split()[1]
            label = "default" if name == default else ("best" if name == best else "")
            label = "default, best" if name == default == best else label
            what = f"rsam-dist step, {name}" + (f" ({label})" if label else "")
            row(what, median(samples), args.batch, author_step / median(samples), "author step")
        author_epoch = median(epochs["author"])
        images = inproc["epoch_images"]
        row("author-style epoch (DataLoader, fp32)", author_epoch, images, 1.0, "author epoch")
        for arm, samples in epochs.items():
            if arm.startswith("rsam "):
                name = arm.split()[1]
                label = "default, best" if name == default == best else ("default" if name == default else "best")
                row(f"rsam-dist epoch in-process, {name} ({label})", median(samples), images,
                    author_epoch / median(samples), "author epoch")
        recompute, train_epoch = median(epochs["bn_stats precise"]), median(epochs[f"rsam {default}"])
        cifar_epoch = train_epoch * CIFAR10_TRAIN_IMAGES / images
        bn_batches = TrainConfig().bn_stats_batches
        rows.append({"what": f"train.bn_stats precise: recompute before an evaluation ({bn_batches} batches)",
                     "seconds": recompute, "images_per_second": None,
                     "ratio": recompute / cifar_epoch, "versus": "CIFAR-10 train epoch",
                     "note": f"{recompute / train_epoch:.3f} of this {images}-image epoch"})
        step_rate = inproc["flops_per_trained_image"] * args.batch / median(steps[f"rsam {default}"])
        rows.append({"what": f"FLOP rate of the rsam-dist step ({default})", "seconds": None,
                     "images_per_second": None, "ratio": step_rate / inproc["matmul_flops_per_second"],
                     "versus": "fp32 matmul 1024^3",
                     "note": f"{step_rate / 1e9:.1f} of {inproc['matmul_flops_per_second'] / 1e9:.1f} GFLOP/s "
                             f"({inproc['flops_per_trained_image'] / 1e6:.1f} MFLOP per trained image)"})
    if runs:
        images = args.epoch_images // args.batch * args.batch

        def epoch_median(name):
            return median([p for run in runs[name] for p in run["epoch_periods"]])

        local, one, two = (epoch_median(name) for name in RUN_ARMS)
        row("rsam-dist train --local: epoch", local, images, 1.0, "--local epoch", "train + eval + checkpoint")
        row("Ray Train, 1 worker: epoch", one, images, one / local, "--local epoch", "ratio = Ray's overhead")
        row("Ray Train, 2 workers: epoch", two, images, one / two, "1-worker epoch",
            "ratio = 2-worker throughput / 1-worker")
        floors = floors or []
        fresh_floor = median([floor["ray_ready"] + floor["fits"][0]["to_function"] for floor in floors])
        for name in RUN_ARMS:
            first_steps = [run["first_step"] for run in runs[name] if run["first_step"] is not None]
            tails = [run["tail"] for run in runs[name] if run["tail"] is not None]
            to_floor = bool(floors) and name != "in-process (--local)"
            rows.append({"what": f"{name}: Enter to first step", "seconds": median(first_steps),
                         "images_per_second": None, "ratio": median(first_steps) / fresh_floor if to_floor else None,
                         "versus": "Ray Train floor, fresh Ray" if to_floor else "", "note": phase_note(runs[name])})
            rows.append({"what": f"{name}: tail after the last epoch", "seconds": median(tails),
                         "images_per_second": None, "ratio": None, "versus": "", "note": "last epoch end to exit"})
        if floors:
            fresh_fits = [floor["fits"][0] for floor in floors]
            rows.append({"what": "Ray Train floor: Enter to a no-op train function, fresh local Ray",
                         "seconds": fresh_floor, "images_per_second": None, "ratio": None, "versus": "",
                         "note": "reached at: python {:.1f}, ray.init {:.1f} (benchmarks/ray_floor.py){}".format(
                             median([floor["python_start"] for floor in floors]),
                             median([floor["ray_ready"] for floor in floors]), cpu_note(fresh_fits, "from fit() on"))})
            warm_fits = [fit for floor in floors for fit in floor["fits"][1:]]
            rows.append({"what": "Ray Train floor: fit() to a no-op train function, warm Ray",
                         "seconds": median([fit["to_function"] for fit in warm_fits]), "images_per_second": None,
                         "ratio": None, "versus": "", "note": "the least a run on a running Ray, or a sweep trial, "
                         "waits for its function" + cpu_note(warm_fits, "meanwhile")})
    return rows


def cpu_note(fits: list[dict], when: str) -> str:
    """How busy the CPUs were until the function ran (ray_floor.py's counters; empty without them):
    near 100%, Ray Train's start is work the cores do, not waiting."""
    measured = [fit for fit in fits if fit.get("cpu_busy") is not None]
    if not measured:
        return ""
    return "; CPUs {:.0f}% busy {} ({:.1f} CPU-seconds)".format(
        100 * median([fit["cpu_busy"] for fit in measured]), when,
        median([fit["cpu_seconds"] for fit in measured]))


def phase_note(runs: list[dict]) -> str:
    """Median seconds since Enter at which each phase was reached."""
    parts = []
    for key, label in (("config_ready", "cli+config"), ("ray_ready", "ray.init"), ("worker_start", "worker fn"),
                       ("model_ready", "model"), ("data_ready", "data")):
        values = [run[key] for run in runs if run.get(key) is not None]
        if values:
            parts.append(f"{label} {median(values):.1f}")
    return "reached at: " + ", ".join(parts) if parts else ""


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "native_bf16": native_bf16(torch.device("cpu")), "torch": torch.__version__,
            "python": platform.python_version()}
    with contextlib.suppress(ImportError):
        import importlib.metadata

        info["ray"] = importlib.metadata.version("ray")
    return info


def markdown(rows: list[dict], info: dict, args) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {info['cpu']}, {info['cores']} cores "
        f"({info['cpu_capability']}, native bf16: {'yes' if info['native_bf16'] else 'no'}), "
        f"torch {info['torch']}, ray {info.get('ray', '-')}; batch {args.batch}, {args.glimpses} glimpses, "
        f"{args.epoch_images}-image synthetic epochs; medians of {args.repeats} steps / {args.epoch_repeats} epochs "
        f"in-process, {args.ray_repeats} run(s) x {args.run_epochs} epochs per `rsam-dist train` arm.",
        "",
        "| what | median | images/s | ratio | vs | note |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        seconds = row["seconds"]
        shown = "" if seconds is None else (f"{1000 * seconds:.0f} ms" if seconds < 1 else f"{seconds:.2f} s")
        rate = "" if row["images_per_second"] is None else f"{row['images_per_second']:.0f}"
        ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        lines.append(f"| {row['what']} | {shown} | {rate} | {ratio} | {row['versus']} | {row['note']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds of the step arms")
    parser.add_argument("--epoch-repeats", type=int, default=3, help="timed rounds of the in-process epoch arms")
    parser.add_argument("--ray-repeats", type=int, default=1, help="rounds of the rsam-dist train arms")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--glimpses", type=int, default=4)
    parser.add_argument("--epoch-images", type=int, default=2560)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--run-epochs", type=int, default=3, help="epochs of each rsam-dist train run")
    parser.add_argument("--precisions", nargs="*", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers of the author loop")
    parser.add_argument("--skip-ray", action="store_true", help="no rsam-dist train arms (no Ray)")
    parser.add_argument("--skip-in-process", action="store_true", help="only the rsam-dist train arms")
    parser.add_argument("--floor-fits", type=int, default=3,
                        help="no-op TorchTrainer fits of Ray Train's floor (the first on a fresh Ray)")
    parser.add_argument("--ray-lock", help="flock this file while the rsam-dist train arms run")
    parser.add_argument("--out", default=str(REPO / "runs" / "bench"))
    args = parser.parse_args(argv)
    if args.run_epochs < 2:
        parser.error("--run-epochs must be at least 2 (an epoch time is end to end of two epochs)")
    if args.floor_fits < 2:
        parser.error("--floor-fits must be at least 2 (the first fit is on a fresh Ray, the others on a warm one)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inproc = None if args.skip_in_process else bench_in_process(args)
    runs, floors = None, None
    if not args.skip_ray:
        workdir = out / "last-runs"  # the runs' logs, timelines and run directories, for a look
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir()
        runs, floors = bench_runs(args, workdir)
    info = machine()
    rows = build_rows(inproc, runs, args, floors)
    table = markdown(rows, info, args)
    report = {"machine": info, "arguments": vars(args), "rows": rows, "in_process": inproc, "runs": runs,
              "ray_floor": floors}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("bench", f"bench-{stamp}"):
        (out / f"{name}.md").write_text(table)
        (out / f"{name}.json").write_text(json.dumps(report, indent=1, default=str))
    print(table)
    print(f"written: {out / 'bench.md'}, {out / 'bench.json'}")


if __name__ == "__main__":
    main()
