"""K searches killed with SIGKILL at seeded random moments, each resumed: does anything get lost?

    python benchmarks/reliability.py --kills 6 --seed 0

A small search (the MLP of tests/fixtures/mlp_task.py, 3 trials) first runs to the end
once, which gives the span the kill moments are drawn from (uniformly, seeded). Each of the
K searches then starts in a fresh folder with its own cache, is killed at its moment, and
is resumed: by re-running the same command, or (every second one, when run.json exists)
by ``search --resume RUN``. The phase hit is the last phase the search had entered
(``AUTOCOMPRESS_PHASE_LOG``). Per kill it reports the trials completed before and after,
duplicates among the completed (a policy fine-tuned twice), whether a latency table saved
before the kill was measured again, and whether the interrupted trial was marked.

These are correctness figures, not timings: load on the machine moves where the kills
land, not what the checks find. Prints a Markdown table and writes the rows to
``benchmarks/results/reliability.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

from autocompress._io import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
TASK = f"{ROOT / 'tests' / 'fixtures' / 'mlp_task.py'}:build"


def _command(run_dir: Path, trials: int) -> list[str]:
    return [sys.executable, "-m", "autocompress", "search", "--task", TASK, "--latency-budget", "10ms", "--trials", str(trials),
            "--distill-steps", "20", "--seed", "3", "--run-dir", str(run_dir)]


def _env(folder: Path) -> dict:
    return {**os.environ, "AUTOCOMPRESS_CACHE": str(folder / "cache"), "AUTOCOMPRESS_PHASE_LOG": str(folder / "phases.log")}


def _completed(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    if not (run_dir / "study.db").is_file():
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()
    return [t for t in trials if t.user_attrs.get("status") == "completed" and "duplicate_of" not in t.user_attrs]


def _interrupted(run_dir: Path) -> list[int]:
    if not (run_dir / "study.db").is_file():
        return []
    trials = optuna.load_study(study_name="autocompress", storage=f"sqlite:///{run_dir / 'study.db'}").get_trials()
    return [t.number for t in trials if t.user_attrs.get("reason") == "interrupted"]


def one_kill(folder: Path, moment_s: float, trials: int, resume_flag: bool) -> dict:
    run_dir = folder / "run"
    with open(folder / "first.err", "wb") as err:
        proc = subprocess.Popen(_command(run_dir, trials), env=_env(folder), cwd=folder, stdout=subprocess.DEVNULL, stderr=err)
        time.sleep(moment_s)
        finished_first = proc.poll() is not None
        if not finished_first:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    first_error = (folder / "first.err").read_text(errors="replace").strip().splitlines()[-1:] if finished_first and proc.returncode else []
    log = folder / "phases.log"
    phases = log.read_text().splitlines() if log.is_file() else []
    phase = phases[-1] if phases else "start-up"
    before = {t.number for t in _completed(run_dir)}
    table = run_dir / "latency_table.json"
    entries_before = json.loads(table.read_text())["entries"] if table.is_file() else None
    how = "--resume" if resume_flag and (run_dir / "run.json").is_file() else "same command"
    command = [sys.executable, "-m", "autocompress", "search", "--resume", str(run_dir)] if how == "--resume" else _command(run_dir, trials)
    rerun = subprocess.run(command, env=_env(folder), cwd=folder, capture_output=True, text=True, timeout=900)
    after = _completed(run_dir)
    digests = [t.user_attrs["digest"] for t in after]
    killed_trial = int(phase.split()[-1]) if phase.startswith(("finetune", "export")) else None
    return {
        "kill_s": round(moment_s, 2),
        "phase_hit": f"(ended by itself, exit {proc.returncode})" if finished_first else phase,
        "first_error": first_error[0] if first_error else None,
        "resumed_with": how,
        "rerun_exit": rerun.returncode,
        "trials_before": len(before),
        "trials_after": len(after),
        "kept": before <= {t.number for t in after},
        "duplicates": len(digests) - len(set(digests)),
        "table_saved_before": entries_before is not None,
        # an entry saved before the kill and measured again by the rerun (new ones may be measured)
        "table_remeasured": (any(json.loads(table.read_text())["entries"].get(k) != v for k, v in entries_before.items())
                             if entries_before is not None else None),
        "interrupted_marked": (killed_trial in _interrupted(run_dir)) if killed_trial is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6, help="how many killed searches (K)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "reliability.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        reference = Path(tmp) / "reference"
        reference.mkdir()
        t0 = time.monotonic()
        subprocess.run(_command(reference / "run", args.trials), env=_env(reference), cwd=reference, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        span = time.monotonic() - t0
        rows = []
        for k in range(args.kills):
            folder = Path(tmp) / f"kill-{k}"
            folder.mkdir()
            rows.append(one_kill(folder, rng.uniform(0.0, span), args.trials, resume_flag=k % 2 == 1))
            print(f"kill {k + 1}/{args.kills}: {rows[-1]}", file=sys.stderr, flush=True)
    columns = ["kill_s", "phase_hit", "resumed_with", "rerun_exit", "trials_before", "trials_after", "kept", "duplicates",
               "table_remeasured", "interrupted_marked"]
    print(f"{args.kills} kills, seed {args.seed}, {args.trials} trials requested; uninterrupted search {span:.0f} s\n")
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join("-" if row[c] is None else str(row[c]) for c in columns) + " |")
    ok = all(r["rerun_exit"] == 0 and r["trials_after"] == args.trials and r["kept"] and not r["duplicates"]
             and not r["table_remeasured"] and r["interrupted_marked"] is not False for r in rows)
    print(f"\nall kills resumed with nothing lost or repeated: {ok}")
    atomic_write_json(args.out, {"schema": 1, "kills": args.kills, "seed": args.seed, "trials": args.trials,
                                 "uninterrupted_s": span, "command": sys.argv, "rows": rows, "all_ok": ok})


if __name__ == "__main__":
    main()
