"""The README and docs/ tell the truth about the code: targets, config keys, links, and the README's length."""
from __future__ import annotations

import dataclasses
import re

from conftest import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
# [text](path) and ![alt](path), with an optional "title" after the path
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")


def _make_targets() -> list[str]:
    """The targets `make help` lists: the Makefile's `name:` lines with a `## ` help text."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    return re.findall(r"^([a-z-]+):.*## ", makefile, flags=re.MULTILINE)


def test_the_readme_names_every_make_target() -> None:
    """A target added to the Makefile is documented in the README as `make <target>`."""
    readme = README.read_text(encoding="utf-8")
    targets = _make_targets()
    assert "train" in targets and "test" in targets
    missing = [t for t in targets if not re.search(rf"\bmake {re.escape(t)}(?![\w-])", readme)]
    assert not missing, f"README.md does not mention: {', '.join(f'make {t}' for t in missing)}"


def test_configuration_md_names_every_config_key() -> None:
    """A key added to the Config dataclass is documented in docs/configuration.md."""
    from digitrec import config

    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [f.name for f in dataclasses.fields(config.Config) if f"`{f.name}`" not in text]
    assert not missing, f"docs/configuration.md does not document: {', '.join(missing)}"


def test_every_relative_link_resolves() -> None:
    """No link in README.md or docs/**/*.md points at a file that is not there."""
    broken = []
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "#")):
                continue
            path = target.split("#", 1)[0]
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_stays_a_manual() -> None:
    """README.md stays short (at most 250 lines): measured diaries go to docs/."""
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= 250, f"README.md has {lines} lines; move detail into docs/"
