"""The docs cannot drift: generated pages equal what the records say, links resolve, code parses."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from optim_registry import docgen

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```python\n(.*?)```", re.S)


def pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def test_generated_docs_match_the_registry_records():
    problems = docgen.stale(DOCS)
    assert not problems, (
        "docs/ differ from the registry records: " + ", ".join(problems)
        + ". Run `python -m optim_registry.docgen` and commit the result."
    )


def test_generation_is_deterministic_and_covers_every_builtin_name():
    first, second = docgen.generate(DOCS), docgen.generate(DOCS)
    assert first == second
    text = "\n".join(first.values())
    for spec in docgen.builtin_specs():
        assert f"`{spec.name}`" in text, spec.name


def test_every_local_link_resolves():
    broken = []
    for page in pages():
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
            elif anchor and resolved.suffix == ".md":
                headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", resolved.read_text(encoding="utf-8"), re.M)}
                if anchor.lower() not in headings:
                    broken.append(f"{page.relative_to(ROOT)} -> {target} (no heading {anchor!r})")
    assert not broken, broken


def test_every_page_is_reachable_from_the_index():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = {(DOCS / t.partition("#")[0]).resolve() for t in LINK.findall(index)}
    top = {p.resolve() for p in DOCS.glob("*.md") if p.name != "index.md"} | {(DOCS / "optimizers" / "index.md").resolve()}
    assert top <= linked, sorted(str(p) for p in top - linked)


def test_python_examples_in_the_docs_parse():
    bad = []
    for page in pages():
        for i, block in enumerate(CODE.findall(page.read_text(encoding="utf-8"))):
            try:
                ast.parse(block.replace("\n    ...\n", "\n    pass\n"))
            except SyntaxError as exc:
                bad.append(f"{page.relative_to(ROOT)} block {i}: {exc}")
    assert not bad, bad


def test_hand_written_pages_name_only_registered_commands_and_names():
    from optim_registry.registry import optimizers

    text = "\n".join(p.read_text(encoding="utf-8") for p in DOCS.glob("*.md"))
    for command in re.findall(r"optim-registry (\w+)", text):
        assert command in {"list", "show", "compare", "memory", "groups"}, command
    for name in set(re.findall(r'optim="([a-z0-9_]+)"', text)):
        assert name in optimizers, f"docs use optim={name!r}, which is not registered"
