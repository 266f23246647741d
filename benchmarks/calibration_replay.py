"""How well the table's calibration predicts a search's own candidates, replayed offline.

    .venv/bin/python benchmarks/calibration_replay.py runs/headline/demo-b1-0.5x runs/headline/demo-b1-0.33x

For each finished run directory, the calibration points its table kept (the build's
whole-model measurements, then every candidate the search exported, in order) are replayed:
each exported candidate is predicted from the points measured before it, as the search
would have predicted it, and compared with its measured latency. Three calibrations are
compared on the same points: one line with a local correction that weighs the points by
their entry sums only, or also by the share of the sum in integer layers, and the table's
default, scales per part (layers per precision, element-wise ops, junctions) with that
local correction. Nothing is measured again; the
entries' sums are recomputed from the run's own table with the code of this checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import optuna

ROOT = Path(__file__).resolve().parents[1]


def replay(run_dir: Path) -> dict[str, list[float]]:
    from autocompress.latency_lut import Calibration
    from autocompress.latency_lut._table import CALIBRATION_MAX_RANDOM, calibration_policies
    from autocompress.spaces import Policy
    from autocompress.study import SearchConfig, open_workbench
    from autocompress.task import load_task

    manifest = json.loads((run_dir / "run.json").read_text())
    config = SearchConfig.from_dict(manifest["config"])
    task = load_task(manifest["task_spec"], config.batch_size)
    bench = open_workbench(task, config.space, config.threads, run_dir / "latency_table.json", shared_table=False,
                           backend=config.backend)
    table, inventory, space = bench.table, bench.inventory, bench.space
    table.freeze_reference()
    saved = json.loads((run_dir / "latency_table.json").read_text()).get("calibrations", {}).get(inventory.fingerprint)
    if not saved:
        raise SystemExit(f"{run_dir}: its table has no calibration points for this model.")
    policies = {p.digest: p for p in calibration_policies(space, n_random=CALIBRATION_MAX_RANDOM, seed=config.seed)}
    study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
    for trial in study.get_trials(deepcopy=False):
        if "policy" in trial.user_attrs:
            p = Policy.from_dict(trial.user_attrs["policy"])
            policies[p.digest] = p
    build = {p.digest for p in policies.values()} - {Policy.from_dict(t.user_attrs["policy"]).digest
                                                        for t in study.get_trials(deepcopy=False) if "policy" in t.user_attrs}
    points, first = [], None
    for i, q in enumerate(saved["points"]):
        if q["policy"] not in policies:
            raise SystemExit(f"{run_dir}: calibration point {q['policy']} is no policy of this run or of this code's calibration draws.")
        if first is None and q["policy"] not in build:
            first = i  # the build's calibration models come first; the rest are the search's exported candidates
        raw, share, parts = table.sums(inventory, policies[q["policy"]])
        points.append({"raw_us": raw, "int_share": share, "parts": parts, "measured_us": q["measured_us"]})
    first = len(points) if first is None else first
    errors: dict[str, list[float]] = {"sum only": [], "sum and integer share": [], "scales per part": []}
    for i in range(first, len(points)):
        before = Calibration(points=[dict(p) for p in points[:i]])
        before.fit()
        raw, share, parts, measured = (points[i][k] for k in ("raw_us", "int_share", "parts", "measured_us"))
        errors["sum only"].append(before.apply(raw) / measured - 1)
        errors["sum and integer share"].append(before.apply(raw, share) / measured - 1)
        errors["scales per part"].append(before.apply(raw, share, parts) / measured - 1)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    total: dict[str, list[float]] = {}
    print("| run | correction | candidates | median abs error | within ±10% |")
    print("| --- | --- | ---: | ---: | ---: |")
    for run in args.runs:
        for name, errors in replay(Path(run)).items():
            total.setdefault(name, []).extend(errors)
            e = np.abs(errors)
            print(f"| {Path(run).name} | {name} | {len(e)} | {np.median(e):.1%} | {np.mean(e <= 0.10):.0%} |")
    for name, errors in total.items():
        e = np.abs(errors)
        print(f"| all | {name} | {len(e)} | {np.median(e):.1%} | {np.mean(e <= 0.10):.0%} |")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
