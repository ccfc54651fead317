"""The whole default ``epikit run`` on a study-sized input: time, memory and profile per stage.

Simulates ``--fields`` fields per condition with ``epikit simulate --preset sora`` (2048 x
2048, 16-bit, 3 channels, ~17 nuclei 250-400 px across; the study imaged 400 such fields:
``--fields 200``), then runs every stage of the default ``epikit run`` on them, each stage in
a fresh child process (``run_pipeline(..., stop_after=stage)``: earlier stages are finished
and skipped by their fingerprints). Per stage it reports the stage's own seconds (as
``manifest.json`` records them), the child's peak resident memory (``ru_maxrss``, imports
included; "RSS after imports" is the same child before any work), its CPU seconds, cells per
second, and the child's overhead (imports, input discovery and hashing). With ``--profile``
(the default) each child runs under ``cProfile``; the slowest stage's profile is printed
(top functions by cumulative and by own time) and every stage's is kept as
``WORKDIR/profiles/<stage>.prof`` (``python -m pstats`` reads it).

Usage::

    python bench/bench_study.py --fields 200 --workdir /data/study    # the study: 400 fields
    nice python bench/bench_study.py --fields 10 --workdir /tmp/study10 --json study10.json

The input is simulated once per ``--workdir`` (kept between runs, seed 20261208, one process
per core); the run folder ``WORKDIR/run`` is made afresh each time (``--keep-run`` reuses
it, so only unfinished stages run). ``-p stage.key=value`` changes an option as in ``epikit run``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SEED = 20_261_208


def _rss_mb() -> float:
    """Current resident memory of this process in MiB (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def run_one_stage(input_dir: Path, run_dir: Path, stage: str, params: list[str], profile: Path | None) -> dict:
    """In a child: run the pipeline up to ``stage`` (earlier stages already done); return timings."""
    import torch

    import epikit.pipeline as pipeline
    from epikit.cli import parse_params
    from epikit.config import default_config, merge_config

    after_imports = _rss_mb()
    config = merge_config(default_config(), {"input": str(input_dir)})
    for key, value in parse_params(params).items():
        section, _, name = key.partition(".")
        config = merge_config(config, {section: {name: value}})
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    manifest = pipeline.run_pipeline(config, run_dir, progress=False, stop_after=stage)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    return {"stage": stage, "wall_s": round(time.perf_counter() - started, 2),
            "stage_s": manifest["stage_seconds"][stage], "summary": manifest["stages"][stage],
            "rss_after_imports_mb": round(after_imports, 1), "torch_threads": torch.get_num_threads()}


def child(stage: str, args: argparse.Namespace, profile: Path | None) -> dict:
    """Run one stage in a fresh process; add its peak RSS and CPU seconds (``wait4``)."""
    command = [sys.executable, __file__, "--stage", stage, "--workdir", str(args.workdir),
               *(["--profile-to", str(profile)] if profile else []),
               *[item for p in args.param for item in ("-p", p)]]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read() if process.stdout else ""  # to EOF: the child is ending
    _, status, usage = os.wait4(process.pid, 0)  # reaps it, with its own resource usage
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise SystemExit(f"stage {stage} failed (exit {process.returncode})")
    result = json.loads(output.strip().splitlines()[-1])
    result.update({"process_s": round(time.perf_counter() - started, 2),
                   "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                   "cpu_s": round(usage.ru_utime + usage.ru_stime, 1)})
    return result


def simulate_input(workdir: Path, fields: int) -> tuple[Path, float]:
    """The sora-preset input under ``workdir`` (simulated once); returns its images folder and seconds."""
    from epikit.simulate import simulate_dataset

    data = workdir / "input"
    started = time.perf_counter()
    if not (data / "simulation.json").is_file():
        simulate_dataset(data, n_fields=fields, preset="sora", seed=SEED, overwrite=True,
                         workers=os.cpu_count() or 1)
    info = json.loads((data / "simulation.json").read_text())
    if info["n_fields"] != fields or info.get("preset") != "sora":
        raise SystemExit(f"{data} holds {info['n_fields']} {info.get('preset')} fields per condition, "
                         f"not {fields} sora fields: use another --workdir")
    return data / "images", time.perf_counter() - started


def top_functions(profile: Path, sort: str, limit: int) -> str:
    """The ``limit`` top lines of a cProfile dump sorted by ``sort``."""
    stream = io.StringIO()
    stats = pstats.Stats(str(profile), stream=stream)
    stats.strip_dirs().sort_stats(sort).print_stats(limit)
    text = stream.getvalue()
    return text[text.find("   ncalls"):].rstrip()


def cells_of(result: dict, n_cells: int) -> int | None:
    """How many cells a stage processed (None for stages whose work is not per cell)."""
    summary = result["summary"] or {}
    if result["stage"] in ("extract", "train"):
        return n_cells
    if result["stage"] == "explain":
        return summary.get("n_cells") or summary.get("cells")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fields", type=int, default=200, help="fields per condition (the study: 200)")
    parser.add_argument("--workdir", type=Path, required=True, help="input and run folder live here")
    parser.add_argument("--param", "-p", action="append", default=[], help="stage.key=value, as in epikit run")
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="time without cProfile")
    parser.add_argument("--keep-run", action="store_true", help="reuse WORKDIR/run (finished stages skipped)")
    parser.add_argument("--top", type=int, default=25, help="profile lines shown")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    images, run_dir = args.workdir / "input" / "images", args.workdir / "run"
    if args.stage:
        print(json.dumps(run_one_stage(images, run_dir, args.stage, args.param, args.profile_to)))
        return

    from epikit.config import STAGES

    args.workdir.mkdir(parents=True, exist_ok=True)
    images, simulate_s = simulate_input(args.workdir, args.fields)
    if not args.keep_run:
        shutil.rmtree(run_dir, ignore_errors=True)
    profiles = args.workdir / "profiles"
    profiles.mkdir(exist_ok=True)
    load = os.getloadavg()[0]
    results = []
    for stage in STAGES:
        result = child(stage, args, profiles / f"{stage}.prof" if args.profile else None)
        print(json.dumps({k: v for k, v in result.items() if k != "summary"}), flush=True)
        results.append(result)
    n_cells = int(results[1]["summary"].get("n_cells", 0))
    total = sum(r["stage_s"] for r in results)
    report: dict[str, Any] = {
        "fields": 2 * args.fields, "cells": n_cells, "simulate_s": round(simulate_s, 1),
        "stage_total_s": round(total, 1), "process_total_s": round(sum(r["process_s"] for r in results), 1),
        "cells_per_s": round(n_cells / total, 2) if total else None,
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results), "profiled": args.profile,
        "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2),
        "torch_threads": results[0]["torch_threads"], "params": args.param, "stages": results,
    }
    print(f"\n{report['fields']} fields, {n_cells} cells; simulate {simulate_s:.0f} s (reused if 0); "
          f"load {report['load_before']:.1f} -> {report['load_after']:.1f}; torch threads "
          f"{report['torch_threads']}; cProfile {'on' if args.profile else 'off'}")
    print(f"{'stage':<11} {'stage s':>8} {'share':>6} {'process s':>9} {'CPU s':>7} {'RSS imports MiB':>15} "
          f"{'peak RSS MiB':>12} {'cells/s':>8}")
    for r in results:
        cells = cells_of(r, n_cells)
        rate = f"{cells / r['stage_s']:.1f}" if cells and r["stage_s"] else "-"
        print(f"{r['stage']:<11} {r['stage_s']:>8.1f} {100 * r['stage_s'] / total:>5.1f}% {r['process_s']:>9.1f} "
              f"{r['cpu_s']:>7.1f} {r['rss_after_imports_mb']:>15.0f} {r['peak_rss_mb']:>12.0f} {rate:>8}")
    print(f"{'total':<11} {total:>8.1f} {'':>6} {report['process_total_s']:>9.1f}   end to end "
          f"{report['cells_per_s']} cells/s, peak RSS {report['peak_rss_mb']:.0f} MiB")
    if args.profile:
        slowest = max(results, key=lambda r: r["stage_s"])["stage"]
        for sort in ("cumulative", "tottime"):
            print(f"\nprofile of the slowest stage, {slowest}, by {sort}:")
            print(top_functions(profiles / f"{slowest}.prof", sort, args.top))
        report["slowest_stage"] = slowest
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
