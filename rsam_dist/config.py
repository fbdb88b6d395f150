"""Typed training configuration: every default lives here, once.

Precedence, lowest to highest: these defaults < the YAML file < `--set section.key=value` overrides.
Unknown keys, wrong types and out-of-range values are `UserError`s that name the file, the key and
what is allowed.

    cfg = load_config("configs/digits.yaml", ["model.glimpses=6"])
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rsam_dist.errors import UserError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._=-]*$"
"""Run and sweep names: one path component, never `.`/`..`, nothing a shell or URI treats specially."""
AUTOSCALING_WAIT_S = 600.0
"""scaling.wait_for_nodes_s when unset, on a cluster whose autoscaler may still add nodes."""
SHOWN_VALUE_CHARS = 100
"""Error messages quote at most this much of a value (a YAML alias bomb expands to megabytes)."""
KEY_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}(\.[A-Za-z_][A-Za-z0-9_-]{0,63}){0,7}$|^[0-9]{1,6}$")
"""What a config key (a dotted one too, as a sweep's `search:` and `set:` keys are) or a list index
looks like. A key that does not is never quoted back: a file named by mistake (/etc/shadow as
`base:`) parses as a mapping whose first key is its first line."""


DEBUG_MODEL = ("model.hidden_size=64", "model.glimpses=2")
"""The debug-size model: the paper's architecture at a quarter of the width, two glimpses."""
SMOKE_TEST = (*DEBUG_MODEL, "data.limit_train=256", "data.limit_test=128", "train.epochs=1",
              "train.mask_images=2")
"""`--smoke-test`: the debug model on a few hundred images for one epoch (seconds on a laptop)."""


def shown(value: Any) -> str:
    """`repr(value)`, cut to SHOWN_VALUE_CHARS characters."""
    text = repr(value)
    return text if len(text) <= SHOWN_VALUE_CHARS else text[: SHOWN_VALUE_CHARS - 3] + "..."


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, field docstrings are the docs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(Section):
    glimpses: int = Field(4, ge=1, le=64)
    """Number of glimpses N (the paper's headline uses 4)."""
    feedback: bool = True
    """Feed C1's hidden state back into C0 after each glimpse (the paper's feedback)."""
    attention_input: Literal["downsample", "fc"] = "downsample"
    """What feeds C0: the down-sample CNN, or a fully-connected layer on the flat image (ablation)."""
    loss: Literal["all_glimpses", "last_glimpse"] = "all_glimpses"
    """Sum of every glimpse's cross-entropy (paper), or the last glimpse's only (code option)."""
    combine: Literal["mean_softmax", "sum_log_softmax"] = "mean_softmax"
    """How glimpses vote: mean of softmaxes (paper) or sum of log-softmaxes (author's code)."""
    relu_logits: bool = False
    """The author's code applies ReLU to the logits; a quirk, off by default."""
    hidden_size: int = Field(256, ge=64, le=4096, multiple_of=64)
    """LSTM width. The down-sample output is hidden_size/64 maps of 8x8 so C0 reads features and
    feedback through the same weights, as in the author's code (256 -> 4 maps)."""
    batchnorm_init: Literal["ones", "uniform"] = "ones"
    """BatchNorm scale init: current PyTorch (ones) or PyTorch-2017's U(0,1), the author's."""
    batchnorm_per_glimpse: bool = False
    """Beyond the paper: the BatchNorms that run once per glimpse (the mask decoder's and the glimpse
    network's) keep separate running statistics per glimpse, with one shared scale and shift, so
    evaluation normalises each glimpse as training did (recurrent BatchNorm, Cooijmans et al. 2016).
    false is the author's model: one set of statistics pooled over all glimpses. The parameter
    count is the same either way."""


class DataConfig(Section):
    name: Literal["cifar10", "digits", "synthetic"] = "cifar10"
    """cifar10 (torchvision), digits (scikit-learn, offline) or synthetic (random, for tests)."""
    root: str = "data"
    """Directory holding (or receiving) the CIFAR-10 files."""
    download: bool = True
    """Download CIFAR-10 into `root` when it is not there."""
    synthetic_train_size: int = Field(1024, ge=1)
    synthetic_test_size: int = Field(256, ge=1)
    limit_train: int | None = Field(None, ge=1)
    """Use only the first N training images (smoke runs)."""
    limit_test: int | None = Field(None, ge=1)
    """Use only the first N test images (smoke runs)."""
    split_seed: int = 0
    """Seed of the fixed digits train/test split and of the synthetic data."""


class OptimConfig(Section):
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    """Applied to every parameter, BatchNorm and biases included, as the author's code does."""
    lr_decay: float = Field(0.95, gt=0, le=1)
    """lr is multiplied by this after every epoch."""
    batch_size: int = Field(128, ge=1)
    """Global batch size: each of the scaling.num_workers workers takes batch_size/num_workers."""


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto picks the GPU that Ray (or CUDA) gives the worker, else the CPU."""
    storage: str = "runs"
    """Where run directories go: a local directory or a URI Ray's storage understands (s3://...)."""
    name: str | None = Field(None, pattern=NAME_PATTERN, max_length=128)
    """Run directory name under `storage` (letters, digits, . _ = -; no path); timestamped when unset."""
    keep_checkpoints: int = Field(2, ge=1)
    """Keep the last K epoch checkpoints (and, separately, the best one)."""
    max_failures: int = Field(2, ge=-1)
    """Worker-group restarts Ray Train may make from the last checkpoint (-1: unlimited)."""
    mask_images: int = Field(8, ge=0, le=64)
    """Fixed test images whose glimpse masks are logged to TensorBoard every epoch (0: none)."""
    bn_stats: Literal["running", "precise"] = "precise"
    """BatchNorm statistics that evaluation uses. running: PyTorch's moving averages (momentum 0.1),
    which lag the weights by ~10 steps and start from mean 0 / variance 1, so runs with few steps
    per epoch are scored with warm-up statistics (1 glimpse on digits: 10% for epochs in which the
    model classifies 70%+). precise: before each evaluation, every BatchNorm's statistics are
    recomputed as the plain average over `bn_stats_batches` training batches with the current
    weights (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"), averaged over workers. Training
    itself is identical either way; see the README's "BatchNorm statistics in evaluation"."""
    bn_stats_batches: int = Field(20, ge=1)
    """Training batches (of optim.batch_size) averaged by bn_stats=precise; fewer if an epoch has fewer."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Arithmetic of the train step and evaluation (torch.autocast; weights, optimizer state and
    checkpoints stay fp32). auto: bf16 where the device runs it natively (CUDA GPUs with bf16, CPUs
    with AVX-512 BF16 or AMX), else fp32. fp16 trains with loss scaling. See rsam_dist/precision.py."""
    compile: bool = False
    """torch.compile the model: pays off on GPUs, where an RSAM step is hundreds of small kernels;
    the first steps then take a while to compile."""


class ScalingConfig(Section):
    num_workers: int = Field(1, ge=1)
    gpus_per_worker: float = Field(0.0, ge=0)
    """0 trains on CPUs with gloo; >0 uses nccl. Fractions only for single-worker runs."""
    cpus_per_worker: Annotated[float, Field(gt=0)] | Literal["auto"] = "auto"
    """CPUs Ray reserves per worker; its torch threads match them. auto: the run's workers share the
    CPUs of the nodes they land on (1 worker on a 2-core laptop: 2). Settled on the driver when the
    run starts (rsam_dist/worker_cpus.py); config.yaml keeps `auto`."""
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    batchnorm: Literal["plain", "sync"] = "plain"
    """plain: each worker normalises with its own share of the batch (the paper's per-batch
    statistics at batch/num_workers); sync: SyncBatchNorm over the global batch (GPUs only)."""
    wait_for_nodes_s: float | None = Field(None, ge=0)
    """Seconds to wait for nodes when the cluster lacks the resources asked for. Unset: AUTOSCALING_WAIT_S
    on an autoscaling cluster, 0 elsewhere (a cluster that cannot give them is an error at once)."""


class Config(Section):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    scaling: ScalingConfig = ScalingConfig()

    @model_validator(mode="after")
    def _check_cross_fields(self) -> Config:
        workers = self.scaling.num_workers
        if self.optim.batch_size % workers:
            raise ValueError(
                f"optim.batch_size {self.optim.batch_size} is the global batch and must divide by "
                f"scaling.num_workers {workers}"
            )
        if self.scaling.batchnorm == "sync" and self.scaling.gpus_per_worker == 0:
            raise ValueError("scaling.batchnorm=sync needs GPUs (gpus_per_worker > 0); use plain on CPUs")
        if workers > 1 and 0 < self.scaling.gpus_per_worker < 1:
            raise ValueError(
                "scaling.gpus_per_worker must be a whole number when num_workers > 1 "
                "(nccl refuses two ranks on one GPU); fractions are for single-worker trials"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Loading: YAML + overrides -> Config, with errors a user can act on


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file, or a UserError naming the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file (not UTF-8): give a YAML file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror or type(err).__name__})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections (model:, data:, ...), got {type(raw).__name__}")
    return raw


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """`section.key=value` -> (('section', 'key'), value), the value read as a YAML scalar."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {shown(text)}: expected section.key=value, e.g. --set model.glimpses=6")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return tuple(key.strip().split(".")), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings to a copy of `raw`."""
    return apply_values(raw, dict(parse_override(text) for text in overrides), "--set")


def apply_values(raw: dict[str, Any], values: dict, origin: str = "--set") -> dict[str, Any]:
    """Set each dotted key (a str, or a list of its parts) to its value in a copy of `raw`.

    Unknown keys are left for validation to report, with the list of allowed ones.
    """
    merged = copy.deepcopy(raw)
    for dotted, value in values.items():
        keys = dotted.split(".") if isinstance(dotted, str) else list(dotted)
        node = merged
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise UserError(f"{origin} {'.'.join(keys)}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return merged


def validate_dict(model: type[BaseModel], raw: dict[str, Any], source: str) -> Any:
    """Validate `raw` against `model`; the first error becomes a one-line UserError."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise UserError(f"{source}: {describe_validation_error(model, err)}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "--set"
    return validate_dict(Config, apply_overrides(raw, list(overrides)), source)


def describe_validation_error(model: type[BaseModel], err: ValidationError) -> str:
    """One line for the first error: the dotted key, what was wrong, what is allowed."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if not all(KEY_NAME.match(part) for part in loc):
        where = ".".join(part for part in loc[:-1] if KEY_NAME.match(part)) or "the top level"
        allowed = ", ".join(_allowed_keys(model, loc[:-1])) or "none"
        return (f"a key that is not a config key name at {where} (not shown; is this a config file?); "
                f"allowed there: {allowed}")
    key = (".".join(loc) or "(top level)")[:SHOWN_VALUE_CHARS]
    if first["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        return f"unknown key '{key}' (allowed here: {', '.join(allowed)})"
    message = first["msg"]
    if first["type"] == "value_error":
        message = message.removeprefix("Value error, ")
        return message if not loc else f"{key}: {message}"
    got = first.get("input")
    quoted = "" if isinstance(got, dict) else f" (got {shown(got)})"
    return f"{key}: {message}{quoted}"


def _allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)

