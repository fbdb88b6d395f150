"""The plan in words: the full text `rsam-dist plan` prints, and the one line `rsam-dist sweep` prints first."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rsam_dist.plan.catalog import THROUGHPUT_FILE

if TYPE_CHECKING:
    from rsam_dist.plan.planner import Plan


def format_value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def money(value: float | None) -> str:
    return "unknown" if value is None else f"${value:,.2f}"


def hours(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def _trial_rows(plan: Plan) -> tuple[list[str], list[str]]:
    keys = [key for key in plan.trials[0].fixed if key != "train.seed"]
    bases: dict[str, int] = {}
    rows = []
    for estimate in plan.estimates:
        trial = estimate.trial
        note = bases.setdefault(estimate.basis, len(bases) + 1)
        share = str(trial.shape.share_a_gpu) if trial.shape.share_a_gpu else "-"
        expected = ""
        if plan.asha and estimate.expected_seconds is not None:
            expected = f" (ASHA: ~{duration(estimate.expected_seconds)})"
        time = duration(estimate.seconds) if estimate.seconds is not None else f"unknown: {estimate.unknown}"
        rows.append([str(trial.number), *(format_value(trial.fixed[key]) for key in keys), str(trial.seed),
                     str(trial.epochs), trial.shape.describe(), share, f"{time}{expected} [{note}]"])
    header = ["#", *(key.rsplit(".", 1)[-1] for key in keys), "seed", "epochs", "resources", "share a GPU",
              "est. time"]
    notes = [f"  [{number}] {basis}" for basis, number in bases.items()]
    return _table(header, rows), notes


def plan_text(plan: Plan) -> str:
    lines = [f"Plan for {plan.source} ({plan.kind}) on {plan.target.label}", ""]
    lines += _section_trials(plan)
    lines += _section_data(plan)
    lines += _section_nodes(plan)
    lines += _section_time(plan)
    lines += _section_hours_and_cost(plan)
    lines += ["", "Pre-flight:"]
    lines += [f"  {'ok' if check.checked else '--'}  {check.name}: {check.detail}" for check in plan.checks]
    if plan.warnings:
        lines += ["", "Warnings:"] + [f"  - {warning}" for warning in plan.warnings]
    lines += ["", summary_line(plan)]
    return "\n".join(lines)


def _section_trials(plan: Plan) -> list[str]:
    trials = len(plan.trials)
    if plan.sweep is not None:
        spec = plan.sweep.spec
        points = len(spec.grid_points())
        head = (f"Trials: {trials} = {points} grid point(s) x {spec.num_samples} sample(s) (seeds "
                f"{', '.join(map(str, spec.seeds))}); {spec.algorithm}, scheduler {spec.scheduler.type}")
    else:
        head = "Trials: 1 (a training config)"
    lines = [head]
    drawn = plan.trials[0].drawn
    if drawn:
        lines.append("  drawn per trial: " + ", ".join(
            f"{key} {dist.kind} {list(getattr(dist, dist.kind))}" for key, dist in drawn.items()))
    table, notes = _trial_rows(plan)
    return lines + table + ["  est. time, from:"] + notes


def _section_data(plan: Plan) -> list[str]:
    config = plan.trials[0].config
    size = plan.dataset
    steps = size.train // config.optim.batch_size
    return ["", f"Data: {config.data.name}, {size.train:,} train / {size.test:,} test images ({size.source}); "
                f"{steps:,} steps of {config.optim.batch_size} per epoch"]


def _section_nodes(plan: Plan) -> list[str]:
    lines = ["", "Nodes:"] + [f"  {node.describe()}" for node in plan.target.nodes]
    room = plan.capacity
    if room is None:
        lines.append("At once: unknown (the nodes' CPU and GPU counts are not known from here)")
    else:
        used = ", ".join(f"{count} x {name}" for name, count in room.nodes_used.items())
        lines.append(f"At once: {room.at_once} trial(s), limited by {room.limit} (the nodes could hold "
                     f"{room.room}); nodes up meanwhile: {used}")
    return lines


def _section_time(plan: Plan) -> list[str]:
    lines = [""]
    known = [e for e in plan.estimates if e.seconds is not None]
    if plan.wall_seconds is None:
        why = next((e.basis for e in plan.estimates if e.seconds is None), "the nodes' sizes are not known here")
        lines.append(f"Time: unknown ({why})")
        if any(e.seconds is None and "figure" in (e.unknown or "") for e in plan.estimates):
            lines.append(f"  To fill it in: run `python benchmarks/bench_step.py --table-row` on that GPU and add "
                         f"the row to {THROUGHPUT_FILE.name}.")
        elif plan.capacity is None:
            lines.append("  Plan on the running cluster instead: rsam-dist plan FILE --address DASHBOARD_URL")
        return lines
    slots = plan.capacity.at_once if plan.capacity else 1
    start = f", plus {duration(plan.sweep_start_s)} to start Ray and the sweep" if plan.sweep_start_s else ""
    text = f"Time: about {duration(plan.wall_seconds)} ({len(known)} trial(s) over {slots} slot(s){start})"
    if plan.asha:
        text += (f"; every trial running all epochs. If ASHA stops trials at each rung as designed: about "
                 f"{duration(plan.expected_wall_seconds)}")
    lines.append(text)
    if plan.measure_seconds:
        lines.append(f"  The step was timed here just now ({plan.measure_seconds:.1f} s of timing); this machine's "
                     "load at that moment is in the figure.")
    timer = plan.timer
    if timer is not None and timer.overheads is not None:
        measured, now = timer.table.local_overheads, timer.overheads
        lines.append(f"  Fixed costs: Ray and sweep start {duration(now.sweep_start_s)}, trial start-up "
                     f"{duration(now.trial_start_s)}, {now.epoch_extra_s:.1f} s per epoch beyond the steps; measured "
                     f"on {measured.machine} ({measured.source}, {measured.as_of}) and scaled "
                     f"x{timer.overhead_scale:.2f} by how fast the reference step runs here now")
    elif plan.target.is_local:
        lines.append("  No fixed costs (Ray start, trial start-up) are measured for this machine in throughput.yaml: "
                     "the time counts the model steps only")
    return lines


def _section_hours_and_cost(plan: Plan) -> list[str]:
    lines = []
    cpu_hours = _cpu_hours(plan)
    gpu = "0 (CPU trials)" if not plan.shape.gpus else hours(plan.gpu_hours)
    lines.append(f"GPU-hours: {gpu}; CPU-hours of the trials' workers: {hours(cpu_hours)}")
    if plan.target.is_local:
        node_hours = None if plan.expected_wall_seconds is None else plan.expected_wall_seconds / 3600
        lines.append(f"Node-hours: {hours(node_hours)} of this machine; cost: none charged (this machine)")
        return lines
    cost = plan.cost
    if cost is None:
        lines.append("Node-hours and cost: unknown (the nodes' sizes are not known from here)")
        return lines
    for item in cost.nodes:
        rate = "no price in the table" if item.rate is None else f"${item.rate:.3f}/h {item.node.market}"
        lines.append(f"  {item.count} x {item.node.instance or item.node.name} ({item.node.name}): "
                     f"{hours(item.hours)} node-hours at {rate}")
    lines.append(f"Node-hours: {hours(cost.node_hours)}; cost: {money(cost.total)} at the file's markets "
                 f"({money(cost.total_on_demand)} all on-demand)")
    lines.append(f"While these nodes run: {money(cost.rate_per_hour)} per hour"
                 + (f"; no price for {', '.join(cost.unpriced)}" if cost.unpriced else ""))
    lines.append("  Node start-up and setup (minutes per node) are not included.")
    for source in cost.provenance:
        flag = " NEEDS A REFRESH" if source.needs_refresh else ""
        lines.append(f"  prices: {source.source} (as of {source.as_of}){flag}")
    return lines


def _cpu_hours(plan: Plan) -> float | None:
    seconds = [e.expected_seconds for e in plan.estimates]
    return None if any(s is None for s in seconds) else sum(seconds) * plan.shape.cpus / 3600


def summary_line(plan: Plan) -> str:
    """One line: trials, how many at once where, how long, GPU-hours, cost, pre-flight."""
    room = plan.capacity
    where = "this machine" if plan.target.is_local else plan.target.label.split(" (")[0]
    at_once = f"{room.at_once} at a time" if room is not None else "? at a time"
    parts = [f"plan: {len(plan.trials)} trial(s), {at_once} on {where}"]
    if plan.wall_seconds is None:
        why = next((e.unknown for e in plan.estimates if e.seconds is None), "node sizes unknown")
        parts.append(f"time unknown ({why})")
    else:
        asha = f" (ASHA ~{duration(plan.expected_wall_seconds)})" if plan.asha else ""
        parts.append(f"about {duration(plan.wall_seconds)}{asha}")
    if plan.shape.gpus:
        parts.append(f"{hours(plan.gpu_hours)} GPU-hours")
    if plan.cost is not None:
        total = plan.cost.total
        parts.append(f"{money(total)}" if total is not None else f"{money(plan.cost.rate_per_hour)}/h while it runs")
    unchecked = sum(not check.checked for check in plan.checks)
    parts.append("pre-flight ok" + (f" ({unchecked} not checkable from here)" if unchecked else ""))
    return ", ".join(parts)
