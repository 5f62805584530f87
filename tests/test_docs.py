"""The documentation stays true: README.md is a front page, every relative link and anchor in
README.md, CONTRIBUTING.md and docs/*.md resolves, docs/cli.md lists every option of every
command, and docs/findings.md has one row per rule of the registry. Fast: no torch import
(``reludoctor.cli`` and ``reludoctor.core.rules`` import neither torch nor onnx)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted(DOCS.glob("*.md"))]
README_MAX_LINES = 220
COMMANDS = ("scan", "report", "diff", "merge", "trajectory", "fix")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a ``#`` there is a shell comment, not a heading)."""
    lines, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if marker:
            if fence is None:
                fence = marker.group(1)[0] * len(marker.group(1))
            elif stripped.startswith(fence):
                fence = None
            continue
        if fence is None:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower case, punctuation removed
    (letters, digits, ``_``, ``-`` and spaces stay), spaces become ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFC", text.strip().lower())
    text = "".join(ch for ch in text if ch.isalnum() or ch in "_- ")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for line in prose(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(path: Path) -> list[str]:
    text = "\n".join(re.sub(r"`[^`]*`", "", line) for line in prose(path.read_text(encoding="utf-8")))
    return LINK.findall(text)


def section(text: str, title: str) -> str:
    """The body of the ``## title`` section (up to the next ``##`` heading)."""
    lines = prose(text)
    start = next(i for i, line in enumerate(lines) if re.match(rf"##\s+{re.escape(title)}\s*$", line))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"##?\s", lines[i])), len(lines))
    return "\n".join(lines[start + 1:end])


def mentions(text: str, option: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text) is not None


def test_the_pages_exist():
    names = {path.name for path in DOCS.glob("*.md")}
    expected = {"README.md", "concepts.md", "cli.md", "data.md", "report-format.md", "findings.md",
                "ci-gates.md", "distributed.md", "gradients.md", "fix.md", "performance.md",
                "architecture.md", "security.md", "fuzzing.md"}
    assert expected <= names, sorted(expected - names)
    assert (ROOT / "CONTRIBUTING.md").is_file()


def test_the_docs_index_lists_every_page():
    listed = {target for target in links(DOCS / "README.md") if "/" not in target}
    assert {path.name for path in DOCS.glob("*.md")} - {"README.md"} <= listed


def test_the_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    # CI (.ci/run) installs and tests exactly as the front page says.
    assert 'python -m pip install -e ".[dev]"' in readme
    assert "python -m pytest" in readme
    assert "reludoctor scan fixtures/models/digits_mlp_dead.pt2 --data fixtures/data/digits_calib_flat.npy" in readme
    for heading in ("quick-start", "real-models"):
        assert heading in anchors(ROOT / "README.md")
    assert "docs/concepts.md#definitions" in links(ROOT / "README.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_slug_rules():
    assert slug("Subsets: `--limit`, `--sample`, `--seed`") == "subsets---limit---sample---seed"
    assert slug("The JSON report (schema_version 1)") == "the-json-report-schema_version-1"
    assert slug("Repairing a model: `reludoctor fix`") == "repairing-a-model-reludoctor-fix"
    assert slug("Binding data to a model's inputs") == "binding-data-to-a-models-inputs"


def commands():
    import typer

    from reludoctor.cli import app

    return typer.main.get_command(app).commands


@pytest.mark.parametrize("name", COMMANDS)
def test_cli_md_lists_every_option(name: str):
    """Every option ``reludoctor NAME --help`` shows is in docs/cli.md's section for NAME, and
    every option in that section's table is one the command has."""
    command = commands()[name]
    text = section((DOCS / "cli.md").read_text(encoding="utf-8"), f"`reludoctor {name}`")
    shown = [opt for param in command.params if param.param_type_name == "option" and not param.hidden
             for opt in (*param.opts, *param.secondary_opts)]
    missing = [opt for opt in shown if not mentions(text, opt)]
    assert not missing, f"docs/cli.md, `reludoctor {name}`: no row for {missing}"
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    rows = [line.split("|")[1] for line in text.splitlines() if line.startswith("| `-")]
    listed = {opt for cell in rows for opt in re.findall(r"(?<![\w-])--?[a-z][\w-]*", cell)}
    assert listed <= known, f"docs/cli.md, `reludoctor {name}`: options it does not have: {sorted(listed - known)}"


def test_cli_md_covers_every_command():
    assert set(commands()) == set(COMMANDS)


def test_findings_md_matches_the_rule_registry():
    from reludoctor.core.rules import RULES

    table = section((DOCS / "findings.md").read_text(encoding="utf-8"), "Rules")
    rows = {}
    for line in table.splitlines():
        match = re.match(r"\|\s*`([a-z0-9-]+)`\s*\|\s*(\w+)\s*\|", line)
        if match:
            assert match.group(1) not in rows, f"two rows for {match.group(1)}"
            rows[match.group(1)] = match.group(2)
    registry = {rule.id: rule.severity for rule in RULES}
    assert set(rows) == set(registry), (
        f"in RULES, not in docs/findings.md: {sorted(set(registry) - set(rows))}; "
        f"in docs/findings.md, not in RULES: {sorted(set(rows) - set(registry))}")
    assert rows == registry


def test_the_settings_examples_load(tmp_path):
    """Every TOML example in the docs is a settings file reludoctor accepts."""
    from reludoctor.report.config import load_config

    for page in (ROOT / "README.md", DOCS / "ci-gates.md"):
        blocks = re.findall(r"```toml\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
        assert blocks, page
        for block in blocks:
            path = tmp_path / "pyproject.toml"
            path.write_text(block)
            assert load_config(path).has_gates
