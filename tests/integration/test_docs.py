"""The manual under docs/ builds with `mkdocs build --strict`, and a broken link or anchor fails it.

mkdocs.yml turns every broken link, missing page and missing anchor into a warning, and
``--strict`` makes a warning an error; the second test shows the build does fail on each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bplab.testing.scratch import REPO

# A link the pages hold today, and what each breakage turns it into.
LINK = "](reliability.md#secrets-in-urls)"
BROKEN = {
    "anchor": ("](reliability.md#no-such-heading)", "no-such-heading"),
    "page": ("](no-such-page.md)", "no-such-page.md"),
}


def build(root: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of the site whose mkdocs.yml is in ``root``, into ``site``."""
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # no mkdocs-2 banner in the output


def test_the_docs_build_strictly(tmp_path: Path) -> None:
    result = build(REPO, tmp_path / "site")
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    pages = {path.relative_to(REPO / "docs").with_suffix("").as_posix() for path in (REPO / "docs").glob("*.md")}
    built = {path.parent.relative_to(tmp_path / "site").as_posix() for path in (tmp_path / "site").rglob("index.html")}
    assert {"." if page == "index" else page for page in pages} <= built
    assert (tmp_path / "site/ui/runs-table.png").is_file()  # the screenshots are published with the pages


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_internal_link_fails_the_build(tmp_path: Path, kind: str) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy2(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    shutil.copytree(REPO / "docs", copy / "docs")
    referrers = [page for page in (copy / "docs").glob("*.md") if LINK in page.read_text()]
    assert referrers, f"no page links {LINK!r} any more: pick another link to break"
    assert build(copy, tmp_path / "intact").returncode == 0  # the copy builds before it is broken

    replacement, named = BROKEN[kind]
    referrers[0].write_text(referrers[0].read_text().replace(LINK, replacement, 1))
    result = build(copy, tmp_path / "broken")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"a broken {kind} link did not fail the build:\n{output}"
    assert f"WARNING -  Doc file '{referrers[0].name}' contains a link" in output and named in output, output
    assert "Aborted with 1 warnings in strict mode" in output, output
