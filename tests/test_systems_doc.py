"""docs/systems.md is checked against the policy packs it documents.

For each system section (a ``## `` heading followed by a ``Pack: `rules/....toml``` line)
the pack is loaded with tomllib, and in its clause table (header
``| clause | what the gateway does | proof |``):

- every backticked token in the middle column is a rule path of that pack: a field
  ``path``, a ``coarsen_location`` ``lat``/``lon``, a ``drop_when`` ``path`` or a
  ``route.capture`` name;
- every backticked token in the proof column is the exact ``name`` of a ``[[test]]``;
- the bold clause id, when there is one, is cited in the ``why`` of at least one of the
  rules in the middle column;
- every "quoted" clause text appears verbatim in docs/clauses.md (and in a seed file,
  when the seeds are present).

All five packs in rules/ must be covered.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "systems.md"
CLAUSES = ROOT / "docs" / "clauses.md"
SEEDS = Path("/work/shared/seeds")
EXPECTED_PACKS = {
    "rules/jimi-tracksolid.toml",
    "rules/jimi-wifikit.toml",
    "rules/mijack-power-inlock.toml",
    "rules/smartjac.toml",
    "rules/smartlocker-jenix.toml",
}

PACK_LINE = re.compile(r"^Pack: `(rules/[A-Za-z0-9_.-]+\.toml)`", re.MULTILINE)
TABLE_HEADER = "| clause | what the gateway does | proof |"
TICKED = re.compile(r"`([^`]+)`")
BOLD = re.compile(r"\*\*([^*]+)\*\*")
QUOTED = re.compile(r'"([^"]+)"')


def sections() -> list[tuple[str, str, str]]:
    """(heading, pack path, body) for every section that names a pack."""
    text = DOC.read_text(encoding="utf-8")
    out = []
    for chunk in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = chunk.partition("\n")
        m = PACK_LINE.search(body)
        if m:
            out.append((heading.strip(), m.group(1), body))
    return out


def split_row(line: str) -> list[str]:
    assert line.startswith("|") and line.rstrip().endswith("|"), line
    return [c.strip() for c in line.strip()[1:-1].split("|")]


def clause_rows(body: str) -> list[list[str]]:
    lines = body.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == TABLE_HEADER]
    assert len(starts) == 1, "each system section needs exactly one clause table"
    rows = []
    for line in lines[starts[0] + 2:]:  # skip the header and the |---| line
        if not line.startswith("|"):
            break
        cells = split_row(line)
        assert len(cells) == 3, f"a clause row needs 3 cells: {line}"
        rows.append(cells)
    assert rows, "empty clause table"
    return rows


def rule_whys(pack: dict) -> dict[str, list[str]]:
    """Every citable rule path of a pack -> the whys of the rules that use it."""
    whys: dict[str, list[str]] = {}
    for rule in pack.get("field", []):
        why = rule.get("why", "")
        for key in ("path", "lat", "lon"):
            if key in rule:
                whys.setdefault(rule[key], []).append(why)
    for rule in pack.get("drop_when", []):
        whys.setdefault(rule["path"], []).append(rule.get("why", ""))
    for name, rule in pack.get("route", {}).get("capture", {}).items():
        whys.setdefault(name, []).append(rule.get("why", ""))
    return whys


SECTIONS = sections()


def test_all_five_packs_are_covered():
    named = [pack for _, pack, _ in SECTIONS]
    assert len(named) == len(set(named)), "a pack is documented twice"
    assert set(named) == EXPECTED_PACKS
    on_disk = {f"rules/{p.name}" for p in (ROOT / "rules").glob("*.toml")}
    assert on_disk == EXPECTED_PACKS, "a pack was added or removed: document it here"


def test_doc_explains_how_to_rerun_the_proof():
    text = DOC.read_text(encoding="utf-8")
    assert ".venv/bin/gateway check rules/*.toml" in text
    assert "gateway explain --test-keys --policy" in text
    assert "--topic" in text
    flat = text.replace("\n", " ")
    assert "tests/test_systems_e2e.py" in flat and "through the live service" in flat
    assert (Path(__file__).parent / "test_systems_e2e.py").exists()


@pytest.mark.parametrize("heading,pack_path,body", SECTIONS, ids=[p for _, p, _ in SECTIONS])
def test_section_matches_its_pack(heading: str, pack_path: str, body: str):
    pack = tomllib.loads((ROOT / pack_path).read_text(encoding="utf-8"))
    test_names = {t["name"] for t in pack.get("test", [])}
    whys = rule_whys(pack)
    clauses_text = CLAUSES.read_text(encoding="utf-8")
    seed_lines = (
        [line for f in sorted(SEEDS.glob("*")) for line in f.read_text(encoding="utf-8").splitlines()]
        if SEEDS.is_dir() else []
    )

    proven: set[str] = set()
    for clause, action, proof in clause_rows(body):
        paths = TICKED.findall(action)
        assert paths, f"{heading}: no rule path in {action!r}"
        for path in paths:
            assert path in whys, f"{heading}: `{path}` is not a rule path of {pack_path}"

        proofs = TICKED.findall(proof)
        assert proofs, f"{heading}: no proof for {action!r}"
        for name in proofs:
            assert name in test_names, f"{heading}: no [[test]] named {name!r} in {pack_path}"
        proven.update(proofs)

        ids = BOLD.findall(clause)
        assert len(ids) <= 1, clause
        if ids:
            cited = [w for p in paths for w in whys[p]]
            assert any(ids[0] in w for w in cited), (
                f"{heading}: {ids[0]!r} is not cited in the why of {paths}"
            )
        else:
            assert clause.startswith("no clause cited"), clause
        for quote in QUOTED.findall(clause):
            assert quote in clauses_text, f"{heading}: quote not in docs/clauses.md: {quote!r}"
            if seed_lines:
                assert any(quote in line for line in seed_lines), f"quote not in a seed: {quote!r}"

    assert proven, f"{heading}: no proofs"
    # every test name cited in the intro text must also be exact
    for name in re.findall(r"\(proof `([^`]+)`\)", body.replace("\n", " ")):
        assert name in test_names, f"{heading}: no [[test]] named {name!r} in {pack_path}"
