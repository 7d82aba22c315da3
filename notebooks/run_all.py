"""Execute the notebooks and store them with their outputs (figures visible when browsing the repository).

    python notebooks/run_all.py                 # every notebook of notebooks/, default settings
    python notebooks/run_all.py 02 05           # only those whose name starts with 02 or 05
    MASKFORMER_NOTEBOOK_FAST=1 python notebooks/run_all.py --no-write   # the tests' tiny budgets, nothing stored

Each notebook runs top to bottom in a fresh `python3` Jupyter kernel, in notebooks/ as its working
directory, with one torch thread unless OMP_NUM_THREADS is set (the notebooks' models are tiny; on a busy
2-core machine OpenMP threads waiting for each other made them several times slower). A failing cell
stops the run with its traceback; that notebook is not written. The wall time of each notebook is
printed at the end (docs/teaching.md lists them).
Needs the dev requirements (nbclient, nbformat, ipykernel, matplotlib) and a kernel named python3:
`python -m ipykernel install --user --name python3`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from unittest import mock

NOTEBOOKS = Path(__file__).resolve().parent


def execute(path: Path, env: dict[str, str] | None = None, timeout: int = 600):
    """Run the notebook at `path` in a fresh python3 kernel (cwd = its folder) and return it executed.

    `env` is added to this process's environment for the kernel. Raises nbclient's CellExecutionError
    at the first failing cell."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                    resources={"metadata": {"path": str(path.parent)}})
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(env or {})}
    with mock.patch.dict(os.environ, env):  # the kernel inherits this process's environment
        client.execute()
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prefixes", nargs="*", help="run only notebooks whose file name starts with one of these")
    parser.add_argument("--no-write", action="store_true", help="execute only; leave the stored notebooks as they are")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default 600)")
    args = parser.parse_args(argv)
    import nbformat

    paths = [path for path in sorted(NOTEBOOKS.glob("*.ipynb"))
             if not args.prefixes or path.name.startswith(tuple(args.prefixes))]
    if not paths:
        print(f"no notebook in {NOTEBOOKS} starts with {' or '.join(args.prefixes)}", file=sys.stderr)
        return 2
    times = {}
    for path in paths:
        start = time.perf_counter()
        nb = execute(path, timeout=args.timeout)
        times[path.name] = time.perf_counter() - start
        if not args.no_write:
            nbformat.write(nb, path)
        print(f"{path.name}: {times[path.name]:.0f} s", flush=True)
    fast = os.environ.get("MASKFORMER_NOTEBOOK_FAST") == "1"
    print(f"\n| notebook | wall time ({'fast' if fast else 'default'} settings) |\n|---|---|")
    for name, seconds in times.items():
        print(f"| `{name}` | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
