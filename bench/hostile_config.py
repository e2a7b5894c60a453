"""How long the config loader takes to refuse hostile YAML, next to an ordinary config.

Prints, for each input, its size, the time to get the answer (median of N runs)
and the answer's first words. Before the limits, the alias bomb took ~24 s and
the deep file raised RecursionError.

    .venv/bin/python bench/hostile_config.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.config import parse_job_config
from supervisor.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BASE = "name: j\nmodel: {class_path: a.B}\ndata: {class_path: a.C}\n"
BOMB = BASE + "ui:\n" + "\n".join(
    ["  a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    + [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"
INPUTS = {
    "configs/digits.yaml (ordinary)": (REPO / "configs" / "digits.yaml").read_text(),
    "alias bomb (9 x 9 aliases)": BOMB,
    "deep flow nesting (100k '[')": BASE + "ui: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "deep interpolation (3k '${')": BASE + "ui: {x: '" + "${" * 3000 + "name" + "}" * 3000 + "'}\n",
    "1 MiB of text": BASE + "ui: {pad: '" + "x" * (1024 * 1024) + "'}\n",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    print(f"{'input':34} {'bytes':>9} {'median ms':>10} {'max ms':>8}  answer")
    for name, text in INPUTS.items():
        times, answer = [], ""
        for _ in range(args.runs):
            started = time.perf_counter()
            try:
                parse_job_config(text, source="bench.yaml")
                answer = "loaded"
            except ConfigError as exc:
                answer = exc.message.removeprefix("bench.yaml: ")[:60]
            times.append((time.perf_counter() - started) * 1000)
        print(f"{name:34} {len(text):>9} {statistics.median(times):>10.1f} {max(times):>8.1f}  {answer}")


if __name__ == "__main__":
    main()
