"""Why does a search's table error on its own engines exceed `lut validate`'s on random
candidates? Times a finished search's candidates again, now, on a quiet machine.

    .venv/bin/python benchmarks/search_candidates_retimed.py runs/headline/demo-b1-0.25x [more run dirs]

For each fine-tuned trial, three models are timed in the same rounds as the original and the
space's most compressed model (5 rounds): the engine the search exported (fine-tuned
weights), and the same policy built afresh from the original's weights (what `lut validate`
times). Each timing is brought to the speed of the run's start by the most compressed model
(start over same round), as the search does, and the search's own prediction is judged
against: the engine's timing in the search, the engine's timing now, the fresh build's now.

If the errors stay with the policies whatever the timing, the table mispredicts these
policies (the ones a search picks, widening among them); if they leave with a new timing,
the search's timings were taken in other conditions than a validation's.

With ``--table T``, the policies are also predicted by another table (say one built from
empty by `autocompress lut build`), brought to the run's speed by the ratio of the most
compressed model's timing at the run's start to that table's prediction of it; its spread
around its own offset is compared with that of the search's predictions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np


def figures(errors: np.ndarray) -> str:
    errors = np.abs(errors)
    return f"median {np.median(errors):.1%}, within ±10% {np.mean(errors <= 0.10):.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--table", type=Path, help="another table of the same target to predict the policies with (a copy is read)")
    args = parser.parse_args()

    import optuna

    from autocompress.latency_lut import Measurable
    from autocompress.spaces import Policy
    from autocompress.study import SearchConfig, open_workbench
    from autocompress.task import load_task

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for run_dir in args.runs:
        manifest = json.loads((run_dir / "run.json").read_text())
        config = SearchConfig.from_dict(manifest["config"])
        task = load_task(manifest["task_spec"], 0)
        with tempfile.TemporaryDirectory() as scratch:
            table_path = Path(scratch) / "table.json"
            shutil.copy(run_dir / "latency_table.json", table_path)
            bench = open_workbench(task, config.space, config.threads, table_path, shared_table=False)
            other = None
            if args.table is not None:
                other_path = Path(scratch) / "other.json"
                shutil.copy(args.table, other_path)
                other = open_workbench(task, config.space, config.threads, other_path, shared_table=False)
                other.table.freeze_reference()
            tracker_start = manifest["baseline"]["tracker_latency_us"]
            if other is not None:
                other_scale = tracker_start / other.table.predict_us(other.inventory, other.space.extreme())
            study = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}")
            rows = []
            for t in study.get_trials():
                attrs = t.user_attrs
                if attrs.get("status") != "completed" or "duplicate_of" in attrs:
                    continue
                engine = attrs["engine"]
                policy = Policy.from_dict(attrs["policy"])
                exported = Measurable(tuple(task.example_inputs), onnx=Path(engine["path"]).read_bytes(), dynamic_batch=True)
                fresh = Measurable.from_module(bench.candidate(policy), task.example_inputs, dynamic_batch=True)
                original, tracker, exported_t, fresh_t = bench.backend.measure_many([bench.original, bench.tracker, exported, fresh], rounds=5)
                at_start = tracker_start / tracker.median_us
                predicted = attrs["predicted_ms"] * 1000
                then = engine["latency_us"] * tracker_start / engine["tracker_latency_us"]
                other_error = (other.table.predict_us(other.inventory, policy) * other_scale / (fresh_t.median_us * at_start) - 1
                               if other is not None else float("nan"))
                rows.append((t.number, predicted / then - 1, predicted / (exported_t.median_us * at_start) - 1,
                             predicted / (fresh_t.median_us * at_start) - 1, exported_t.median_us / fresh_t.median_us - 1,
                             other_error, len(attrs.get("widened") or ()), attrs["summary"]))
                print(f"  trial {t.number:>3}: prediction against the engine in the search {rows[-1][1]:+.1%}, "
                      f"the engine now {rows[-1][2]:+.1%}, a fresh build now {rows[-1][3]:+.1%} "
                      f"(engine over fresh {rows[-1][4]:+.1%}; the other table {rows[-1][5]:+.1%}; {rows[-1][6]} widened; "
                      f"{rows[-1][7]})", flush=True)
        errors = np.array([r[1:6] for r in rows])
        print(f"{run_dir}: {len(rows)} engines, at the speed of the run's start")
        print(f"  the search's prediction against the engine's timing in the search: {figures(errors[:, 0])}")
        print(f"  ... against the same engine timed now: {figures(errors[:, 1])}")
        print(f"  ... against the same policy built afresh, timed now: {figures(errors[:, 2])}")
        print(f"  the engine now against the fresh build now: {figures(errors[:, 3])}; "
              f"the search's errors against now's, correlation {np.corrcoef(errors[:, 0], errors[:, 1])[0, 1]:.2f}")
        if args.table is not None:
            for name, e in (("the search's prediction", errors[:, 2]), (f"{args.table}'s", errors[:, 4])):
                print(f"  {name} against the fresh build now: offset (median) {np.median(e):+.1%}, spread (std) {np.std(e):.1%}")


if __name__ == "__main__":
    main()
