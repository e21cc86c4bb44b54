"""The docs: docs/configs.md's key reference generated from the options, and links and config
paths that exist.

Covers README.md and docs/*.md. Config paths whose file name starts with `my` (e.g.
`configs/my_dataset.yaml`) are the reader's own files in examples and are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

from gfldet.config import DEFAULTS
from gfldet.config_schema import BEGIN_MARK, END_MARK, replace_reference
from tests.helpers import ABLATION_ROWS, REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CONFIGS_MD = REPO / "docs" / "configs.md"

FENCE = re.compile(r"^ *(```|~~~).*?^ *\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
CONFIG_PATH = re.compile(r"(?<![\w./-])configs/[\w./*-]*\.ya?ml\b")


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def prose(text: str) -> str:
    """The page without its fenced code blocks (whose `# comments` are not headings)."""
    return FENCE.sub("", text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -N for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(prose(page.read_text())):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_configs_md_reference_is_generated_from_the_options():
    """The key tables of docs/configs.md are reference_table()'s output: every option with its
    type, default, allowed values and help, as declared."""
    text = CONFIGS_MD.read_text()
    assert BEGIN_MARK in text and END_MARK in text
    assert replace_reference(text) == text, (
        f"{rel(CONFIGS_MD)} differs from the options; regenerate its reference with the command "
        "given in its 'Reference: every key' section"
    )


def test_configs_md_names_every_key():
    text = CONFIGS_MD.read_text()
    missing = [k for k in dotted_keys(DEFAULTS) if f"`{k}`" not in text]
    assert not missing, f"{rel(CONFIGS_MD)} does not mention these config keys: {missing}"


def dotted_keys(d: dict, prefix: str = "") -> list[str]:
    """Every key of the schema as a dotted path, sections included (`model`, `model.head`)."""
    keys = []
    for k, v in d.items():
        keys.append(prefix + k)
        if isinstance(v, dict) and v:
            keys += dotted_keys(v, f"{prefix}{k}.")
    return keys


def test_relative_links_point_to_existing_files():
    broken = []
    for page in PAGES:
        for target in LINK.findall(prose(page.read_text())):
            if SCHEME.match(target):
                continue  # http(s), mailto
            path_part, _, fragment = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{rel(page)}: {target} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{rel(page)}: {target} (no heading #{fragment})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_config_paths_exist():
    missing = []
    for page in PAGES:
        for path in sorted(set(CONFIG_PATH.findall(page.read_text()))):
            if Path(path).name.startswith("my"):
                continue  # the reader's own config in an example
            found = list(REPO.glob(path)) if "*" in path else (REPO / path).is_file()
            if not found:
                missing.append(f"{rel(page)}: {path}")
    assert not missing, "config files named in the docs do not exist:\n" + "\n".join(missing)


def test_the_ablations_page_maps_every_row_to_its_config_and_ap():
    doc = (REPO / "docs" / "ablations.md").read_text()
    table = {
        m[1]: float(m[2])
        for m in re.finditer(r"`configs/ablations/([\w.]+)\.yaml` \| ([\d.]+) \|", doc)
    }
    assert table == {name: ap for name, (ap, _) in ABLATION_ROWS.items()}
    assert "gfldet train --config configs/ablations/" in doc
    assert "python -m benchmarks.ablate" in doc
