"""The docs site's home page is the README (run by mkdocs-gen-files while the site builds):
the same text, its links into ``docs/`` made relative to the site, so the two cannot drift."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def page() -> str:
    text = (ROOT / "README.md").read_text()
    text = text.replace("](BENCHMARKS.md)", "](benchmarks.md)")
    return re.sub(r"\]\(docs/", "](", text)


if __name__ == "<run_path>":
    import mkdocs_gen_files

    with mkdocs_gen_files.open("index.md", "w") as out:
        out.write(page())
    mkdocs_gen_files.set_edit_path("index.md", "../README.md")
elif __name__ == "__main__":
    print(page())
