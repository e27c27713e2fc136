"""The README's five-minute walk-through, executed: its shell blocks run in a throwaway copy of the
repository, in order, and what the README shows them printing must appear in what they print.

The fence's info string says what a block is (the README explains it in an HTML comment):
``bash`` runs, ``text`` right after it is that block's output, ``bash setup`` (make, the venv) and
``bash server`` (a server that runs until stopped) are shown and not run. Anything else in the
section is an error, and so is a section with nothing to run, so the test cannot pass by finding
nothing.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bplab.testing.scratch import REPO, copy_repository, stage_env

SECTION = "## Five-minute walk-through"
RUN, OUTPUT, NOT_RUN = "bash", "text", ("bash setup", "bash server")
_FENCE = re.compile(r"^```([^`\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


@dataclass
class Step:
    """A block the test runs, and the lines the README shows it printing."""

    script: str
    shown: list[str] = field(default_factory=list)


def quick_start(readme: str) -> tuple[list[Step], list[str]]:
    """The runnable steps of the walk-through section of ``readme``, and the blocks left unrun.

    Raises ``ValueError`` for a missing section, an unknown fence, output with no block before it,
    or a section with nothing to run.
    """
    start = readme.find(f"\n{SECTION}\n")
    if start < 0:
        raise ValueError(f"README.md has no section {SECTION!r}")
    following = re.search(r"^## ", readme[start + len(SECTION) + 2:], re.MULTILINE)
    section = readme[start:start + len(SECTION) + 2 + (following.start() if following else len(readme))]
    steps: list[Step] = []
    not_run: list[str] = []
    previous = None
    for match in _FENCE.finditer(_COMMENT.sub("", section)):
        info, body = match.group(1).strip(), match.group(2)
        if info == RUN:
            steps.append(Step(body))
        elif info == OUTPUT and previous == RUN:
            steps[-1].shown = [line for line in body.splitlines() if line.strip() and line.strip() != "..."]
        elif info in NOT_RUN:
            not_run.append(body)
        else:
            what = "with no ```bash block just before it" if info == OUTPUT else "is neither run nor marked"
            raise ValueError(f"{SECTION}: a ```{info} block {what}; use ```{RUN} (run), ```{OUTPUT} (its output) "
                             f"or one of {', '.join(NOT_RUN)}")
        previous = info
    if not steps:
        raise ValueError(f"{SECTION}: no ```{RUN} block to run")
    return steps, not_run


def appears(shown: str, output: str) -> bool:
    """Whether the README's line ``shown`` is in ``output``: runs of whitespace count as one space,
    and ``...`` stands for anything."""
    def squeeze(text: str) -> str:
        return re.sub(r"\s+", " ", text.strip())

    pattern = ".*?".join(re.escape(part) for part in squeeze(shown).split("..."))
    return any(re.search(pattern, squeeze(line)) for line in re.split(r"[\r\n]", output))


def test_the_quick_start_is_parsed_as_the_readme_means() -> None:
    steps, not_run = quick_start((REPO / "README.md").read_text())
    assert [step.script.split()[:2] for step in steps] == [["dvc", "repro"], ["bplab", "compare"],
                                                           ["dvc", "exp"], ["dvc", "metrics"],
                                                           ["bplab", "diff"]]
    assert all(step.shown for step in steps)
    assert any("make setup" in block for block in not_run) and any("bplab ui" in block for block in not_run)


@pytest.mark.parametrize("section, problem", [
    ("Set up:\n\n```bash setup\nmake setup\n```\n", "no ```bash block to run"),
    ("```sh\ndvc repro\n```\n", "```sh block is neither run nor marked"),
    ("```text\nhello\n```\n", "```text block with no ```bash block just before it"),
    ("", "no ```bash block to run"),
])
def test_a_walk_through_without_a_block_to_run_or_with_an_unknown_fence_is_refused(section: str,
                                                                                    problem: str) -> None:
    hidden = "<!--\n```bash\nhidden in a comment\n```\n-->"
    readme = f"# x\n\n{SECTION}\n\n{hidden}\n\n{section}\n## Next\n\n```bash\nls\n```\n"
    with pytest.raises(ValueError, match=re.escape(problem)):
        quick_start(readme)


def test_shown_output_matches_with_squeezed_spaces_and_ellipses() -> None:
    printed = "Path                          Metric     HEAD     workspace    Change\nval 0.925 (loss 0.28, acc 0.9)\n"
    assert appears("Path Metric HEAD workspace Change", printed)
    assert appears("val 0.925 (loss ..., acc 0.9)", printed)
    assert not appears("val 0.925 (loss ..., acc 0.8)", printed)


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    steps, _ = quick_start((REPO / "README.md").read_text())
    # A committed copy, HEAD holding the committed metrics/; no data mirror: the flower is generated.
    repo = copy_repository(tmp_path / "repo")
    env = stage_env(repo)
    for number, step in enumerate(steps, start=1):
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", step.script], cwd=repo, env=env,
                                capture_output=True, text=True, timeout=600)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"step {number} ({step.script.strip()}) exited {result.returncode}:\n{output}"
        missing = [line for line in step.shown if not appears(line, output)]
        assert not missing, f"step {number} ({step.script.strip()}) did not print {missing}:\n{output}"
