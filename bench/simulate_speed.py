"""Time ``simulate_field``: study-like fields at 256 and 512 px, and diverse training fields.

Run: ``python bench/simulate_speed.py [--fields 40]``. Prints milliseconds per field, as
wall-clock time and as this process's CPU time (the machine is shared, so wall time is noisy;
CPU time is the better guide). Numbers go into ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from epikit.simulate import CHANNEL_NAMES, sample_diverse_field_params, simulate_field


def time_fields(make_params, fields: int, seed: int = 0) -> tuple[float, float, float]:
    """Mean wall ms, mean CPU ms and mean nuclei per field over ``fields`` fields."""
    rng = np.random.default_rng(seed)
    wall = cpu = nuclei = 0.0
    for _ in range(fields):
        params = make_params(rng)
        w, c = time.perf_counter(), time.process_time()
        field = simulate_field(rng, **params)
        wall += time.perf_counter() - w
        cpu += time.process_time() - c
        nuclei += field.n_nuclei
    return 1000 * wall / fields, 1000 * cpu / fields, nuclei / fields


def main() -> None:
    """Run every case and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fields", type=int, default=40, help="fields per case")
    args = parser.parse_args()
    cases = {
        "study defaults, 512 x 512, 3 channels": lambda rng: {"size": 512, "condition": "vpa"},
        "study defaults, 256 x 256 (3-7 nuclei), 3 channels": lambda rng: {
            "size": 256, "n_nuclei": (3, 7), "condition": "vpa"},
        "diverse, 256 x 256, Hoechst only (training default)": lambda rng: sample_diverse_field_params(rng, 256),
        "diverse, 256 x 256, 3 channels": lambda rng: sample_diverse_field_params(rng, 256, CHANNEL_NAMES),
    }
    print(f"{'case':55s} {'wall ms':>8s} {'CPU ms':>8s} {'nuclei':>7s}")
    for name, make in cases.items():
        wall, cpu, nuclei = time_fields(make, args.fields)
        print(f"{name:55s} {wall:8.1f} {cpu:8.1f} {nuclei:7.1f}")


if __name__ == "__main__":
    main()
