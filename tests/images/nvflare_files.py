"""Print the site-packages files of an installed distribution and everything it requires (base
requirements, no extras), one relative path a line: what tests/images/build_nvflare.sh copies into
the NVFlare job image, instead of the whole test venv."""

from __future__ import annotations

import re
import sys
from importlib import metadata


def closure(name: str) -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    todo = [name]
    while todo:
        key = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if key in found:
            continue
        try:
            dist = metadata.distribution(key)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed
        found[key] = dist
        for req in dist.requires or ():
            if "extra ==" in req:
                continue
            todo.append(re.split(r"[ ;<>=!~\[(]", req.strip(), maxsplit=1)[0])
    return found


def main(name: str) -> None:
    for dist in closure(name).values():
        for path in dist.files or ():
            text = str(path)
            if text.startswith("..") or "__pycache__" in text or text.endswith(".pyc"):
                continue  # scripts installed outside site-packages; bytecode is rebuilt
            print(text)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "nvflare")
