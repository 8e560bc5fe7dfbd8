"""The labextension's sources, hashed: the build records the hash, CI refuses a committed build made
from other sources.

A rebuild is byte-identical only at the same absolute path (webpack's module ids follow it), so
freshness is "built from these sources", not "the same bytes". `python stamp.py write` (the build's
last step) records the hash next to the build output; `python stamp.py check` exits 1 when the
sources changed since, with the command that rebuilds.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: What the build reads, relative to this folder: a change in any of them needs a rebuild.
SOURCES = ("package.json", "tsconfig.json", "yarn.lock", "src", "style", "schema")
#: Where the build output goes (package.json's jupyterlab.outputDir) and the hash it was built from.
OUTPUT = HERE.parent / "clacky_ipy" / "labextension"
STAMP = OUTPUT / "sources.sha256"


def sources_hash(root: Path = HERE) -> str:
    """SHA-256 over the sources' relative paths and contents, line endings normalised (a checkout
    with CRLF endings is the same source)."""
    digest = hashlib.sha256()
    files = []
    for name in SOURCES:
        path = root / name
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()


def main(argv: list[str]) -> int:
    action = argv[0] if argv else "check"
    if action == "write":
        STAMP.write_text(sources_hash() + "\n", encoding="utf-8")
        return 0
    recorded = STAMP.read_text(encoding="utf-8").strip() if STAMP.exists() else None
    if recorded != sources_hash():
        print(
            f"the committed build in {OUTPUT} is stale (or missing): its sources changed since it was built; "
            "rebuild with: cd labextension && jlpm install && jlpm build, and commit clacky_ipy/labextension",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
