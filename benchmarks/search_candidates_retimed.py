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

With ``--table T [T ...]``, the policies are also predicted by other tables (say one built
from empty by `autocompress lut build`, or the run's own after `lut build --remeasure`),
each brought to the run's speed by the ratio of the most compressed model's timing at the
run's start to that table's prediction of it; their spreads around their own offsets are
compared with that of the search's predictions. Timings are taken as a search takes them
(`QuietTimer`: again after a pause where the machine was disturbed).
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
    parser.add_argument("--table", type=Path, nargs="+", default=[],
                        help="other tables of the same target to predict the policies with (copies are read)")
    args = parser.parse_args()

    import optuna

    from autocompress.latency_lut import Measurable, QuietTimer
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
            others = []
            for i, path in enumerate(args.table):
                other_path = Path(scratch) / f"other-{i}.json"
                shutil.copy(path, other_path)
                others.append(open_workbench(task, config.space, config.threads, other_path, shared_table=False))
                others[-1].table.freeze_reference()
            timer = QuietTimer(lambda items: bench.backend.measure_many(items, rounds=5),
                               beside=lambda timings: (timings[0].median_us, timings[1].median_us))
            tracker_start = manifest["baseline"]["tracker_latency_us"]
            scales = [tracker_start / o.table.predict_us(o.inventory, o.space.extreme()) for o in others]
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
                original, tracker, exported_t, fresh_t = timer([bench.original, bench.tracker, exported, fresh])
                at_start = tracker_start / tracker.median_us
                predicted = attrs["predicted_ms"] * 1000
                then = engine["latency_us"] * tracker_start / engine["tracker_latency_us"]
                other_errors = [o.table.predict_us(o.inventory, policy) * scale / (fresh_t.median_us * at_start) - 1
                                for o, scale in zip(others, scales)]
                rows.append((t.number, predicted / then - 1, predicted / (exported_t.median_us * at_start) - 1,
                             predicted / (fresh_t.median_us * at_start) - 1, exported_t.median_us / fresh_t.median_us - 1,
                             other_errors, len(attrs.get("widened") or ()), attrs["summary"]))
                print(f"  trial {t.number:>3}: prediction against the engine in the search {rows[-1][1]:+.1%}, "
                      f"the engine now {rows[-1][2]:+.1%}, a fresh build now {rows[-1][3]:+.1%} "
                      f"(engine over fresh {rows[-1][4]:+.1%}; other tables {', '.join(f'{e:+.1%}' for e in other_errors) or '-'}; "
                      f"{rows[-1][6]} widened; {rows[-1][7]})", flush=True)
        errors = np.array([[*r[1:5], *r[5]] for r in rows])
        print(f"{run_dir}: {len(rows)} engines, at the speed of the run's start")
        print(f"  the search's prediction against the engine's timing in the search: {figures(errors[:, 0])}")
        print(f"  ... against the same engine timed now: {figures(errors[:, 1])}")
        print(f"  ... against the same policy built afresh, timed now: {figures(errors[:, 2])}")
        print(f"  the engine now against the fresh build now: {figures(errors[:, 3])}; "
              f"the search's errors against now's, correlation {np.corrcoef(errors[:, 0], errors[:, 1])[0, 1]:.2f}")
        print(f"  timed again after a disturbance: {timer.retimed} of {len(rows)}, still disturbed {timer.disturbed}")
        for name, e in (("the search's prediction", errors[:, 2]), *((f"{path}'s", errors[:, 4 + i]) for i, path in enumerate(args.table))):
            print(f"  {name} against the fresh build now: offset (median) {np.median(e):+.1%}, spread (std) {np.std(e):.1%}")


if __name__ == "__main__":
    main()
