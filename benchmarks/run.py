"""Every benchmark behind one command.

    python -m benchmarks.run all                      # the tables of docs/PERFORMANCE.md (long: ~1 h on 2 cores)
    python -m benchmarks.run train --models crestereo_base --crops 256x320
    python -m benchmarks.run inference | cascade | data | precision | fast-paths [options of that benchmark]

Each sub-command is one module of this package (``python -m benchmarks.<module> --help`` lists its options); ``all``
runs them one after another with their defaults plus the common options given (``--device``, ``--threads``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from benchmarks import cascade_eval, data_pipeline, fast_paths, inference, precision, train_step

COMMANDS: dict[str, Callable[[list[str] | None], None]] = {
    "train": train_step.main,
    "inference": inference.main,
    "cascade": cascade_eval.main,
    "data": data_pipeline.main,
    "precision": precision.main,
    "fast-paths": fast_paths.main,
}
COMMON_FLAGS = ("--device", "--threads")  # passed on to every benchmark by ``all``


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    if not argv or argv[0] not in (*COMMANDS, "all"):
        print(__doc__)
        raise SystemExit(f"usage: python -m benchmarks.run {{{'|'.join(COMMANDS)}|all}} [options]")
    command, rest = argv[0], argv[1:]
    if command != "all":
        COMMANDS[command](rest)
        return
    common: list[str] = []
    for i, arg in enumerate(rest):
        if arg in COMMON_FLAGS and i + 1 < len(rest):
            common += [arg, rest[i + 1]]
        elif arg.startswith(tuple(f"{flag}=" for flag in COMMON_FLAGS)):
            common.append(arg)
    for name, run in COMMANDS.items():
        print(f"\n===== {name} =====", flush=True)
        run(common)


if __name__ == "__main__":
    main()
