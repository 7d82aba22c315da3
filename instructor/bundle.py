"""Build the student bundle: the repository without the instructor's material.

    python instructor/bundle.py maskformer-students.zip     # a zip file
    python instructor/bundle.py ../maskformer-students      # a new folder

A student needs the project's code (the checkers compare against it), the exercise notebooks and
exercises/check.py. Left out:
- instructor/: the reference solutions (solutions.py), the answers and common mistakes
  (GUIDE.md) and this script;
- tests/test_exercises.py: its wrong answers are one edit away from the solutions, and it
  imports the reference solutions.

The files are those git lists (tracked, plus new files that are not ignored); outside a git
checkout, every file except version-control folders and caches. In the bundle,
`python exercises/check.py --all` says that the reference solutions are not there, and the
checker cell of every notebook works as in the full repository.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEFT_OUT = ("instructor/", "tests/test_exercises.py")
SKIPPED_FOLDERS = {".git", "__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".ruff_cache"}


def repository_files(repo: Path = REPO) -> list[str]:
    """Relative paths (with /) of the repository's files: git's list, or a walk without git."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=repo,
                                capture_output=True, check=True).stdout.decode().split("\0")
    except (FileNotFoundError, subprocess.CalledProcessError):
        listed = [path.relative_to(repo).as_posix() for path in repo.rglob("*")
                  if path.is_file() and not SKIPPED_FOLDERS & set(path.relative_to(repo).parts)]
    return sorted(path for path in listed if path and (repo / path).is_file())


def student_files(repo: Path = REPO) -> list[str]:
    """The files of the student bundle: the repository's files minus LEFT_OUT."""
    return [path for path in repository_files(repo) if not path.startswith(LEFT_OUT)]


def write_bundle(out: Path, repo: Path = REPO) -> int:
    """Write the bundle to out (a .zip file, or a new folder); returns the number of files."""
    files = student_files(repo)
    if out.suffix == ".zip":
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in files:  # inside one top folder, named after the zip file
                archive.write(repo / path, f"{out.stem}/{path}")
    else:
        for path in files:
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / path, out / path)
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the student bundle: the repository without instructor/ "
                                                 "(reference solutions, guide) and tests/test_exercises.py.")
    parser.add_argument("out", type=Path, help="a .zip file to write, or a folder to create")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        parser.error(f"{args.out} already exists; give a new .zip file or folder name")
    if out == REPO or REPO in out.parents:
        parser.error(f"{args.out} is inside the repository; write the bundle elsewhere")
    count = write_bundle(out)
    print(f"wrote {count} files to {args.out} (without {', '.join(LEFT_OUT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
