"""Export one commit's ``src/`` to a directory, so a benchmark runs code that cannot change under it.

    python bench/snapshot.py /tmp/dbqueue-snap            # HEAD
    python bench/snapshot.py --rev 0dc08a5 /tmp/dbqueue-snap
    PYTHONPATH=/tmp/dbqueue-snap/src .venv-pgo/bin/python bench/compare.py ...

A working tree that others edit while a benchmark runs (half-written changes
under ``src/``) can crash a server mid-run or, worse, measure a mix of
versions. The export is ``git archive`` of the commit, so it holds committed
code only; ``REVISION`` beside ``src/`` names the commit, and the benchmarks
print it (`machine.dbqueue_origin`). PYTHONPATH puts the snapshot ahead of an
editable install; the dbqueue servers the benchmarks start inherit it.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="where to put src/ and REVISION (replaced if it exists)")
    parser.add_argument("--rev", default="HEAD", help="the commit to export")
    args = parser.parse_args(argv)

    def git(*command: str) -> bytes:
        return subprocess.run(["git", *command], cwd=REPO, check=True, capture_output=True).stdout

    revision = git("log", "-1", "--format=%h %cI %s", args.rev).decode().strip()
    archive = git("archive", "--format=tar", args.rev, "src")
    if args.directory.exists():
        shutil.rmtree(args.directory)
    args.directory.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(args.directory, filter="data")
        else:
            tar.extractall(args.directory)  # our own repository's archive: trusted
    (args.directory / "REVISION").write_text(revision + "\n")
    print(f"{args.directory / 'src'}: {revision}")
    print(f"use it with: PYTHONPATH={args.directory / 'src'} {Path(sys.executable).name} bench/...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
