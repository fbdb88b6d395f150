"""`rsam-dist validate FILE`: recognise what kind of file it is and check it fully."""

from __future__ import annotations

from pathlib import Path

from rsam_dist.config import Config, apply_overrides, read_yaml, validate_dict

SWEEP_KEYS = {"base", "search", "tune"}
CLUSTER_KEYS = {"provider", "cluster_name", "available_node_types"}


def file_kind(raw: dict) -> str:
    if CLUSTER_KEYS & raw.keys():
        return "cluster"
    if SWEEP_KEYS & raw.keys():
        return "sweep"
    return "train"


def describe_train_config(config: Config) -> str:
    from rsam_dist.model import RSAM, count_trainable_parameters  # torch: only once the file is valid

    parameters = count_trainable_parameters(RSAM(config.model))
    return f"{config.to_yaml()}# trainable parameters: {parameters:,}"


def validate_file(path: str | Path, overrides: tuple[str, ...] = ()) -> str:
    raw = read_yaml(path)
    kind = file_kind(raw)
    if kind == "cluster":
        from rsam_dist.jobs.cluster_file import describe_cluster_file

        return describe_cluster_file(path)
    if kind == "sweep":
        from rsam_dist.sweep.config import describe_sweep, load_sweep

        return describe_sweep(load_sweep(path, overrides))
    config = validate_dict(Config, apply_overrides(raw, list(overrides)), str(path))
    return describe_train_config(config)
