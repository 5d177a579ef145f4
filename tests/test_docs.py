"""docs/policy.md is tested: every complete policy in it passes `gateway check`.

Each ```toml block that contains a ``[policy]`` table is written to a file and
checked, so its inline ``[[test]]`` cases (the exact outputs shown in the
reference) are run against the code. Every field operation must have at least
one such example.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.ops import FIELD_RULES
from gateway.pipeline import REASONS

DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"
FENCE = re.compile(r"^```toml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
POLICY_TABLE = re.compile(r"^\[policy\][ \t]*(#.*)?$", re.MULTILINE)


def policy_blocks() -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    return [b for b in FENCE.findall(text) if POLICY_TABLE.search(b)]


BLOCKS = policy_blocks()


def _id(block: str) -> str:
    try:
        return tomllib.loads(block)["policy"]["name"]
    except Exception:  # an invalid block still gets a test, which will fail
        return "unparsable"


def test_doc_has_policy_examples():
    assert len(BLOCKS) >= len(FIELD_RULES)


@pytest.mark.parametrize("block", BLOCKS, ids=[_id(b) for b in BLOCKS])
def test_example_passes_gateway_check(block: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = tomllib.loads(block)
    assert data.get("test"), "every example policy needs at least one [[test]]"
    path = tmp_path / f"{_id(block)}.toml"
    path.write_text(block, encoding="utf-8")
    status = main(["check", str(path)])
    out, err = capsys.readouterr()
    assert status == 0, err or out
    ran = len(data["test"])
    assert f"{ran}/{ran} inline tests passed" in out


def _ops(block: str) -> set[str]:
    data = tomllib.loads(block)
    rules = list(data.get("field", [])) + list(data.get("route", {}).get("capture", {}).values())
    return {rule.get("op") for rule in rules}


def test_every_operation_has_an_example():
    used: set[str] = set()
    for block in BLOCKS:
        used |= _ops(block)
    missing = [cls.op_name() for cls in FIELD_RULES if cls.op_name() not in used]
    assert not missing, f"no example policy in docs/policy.md uses op = {missing}"


def test_every_operation_and_reason_is_documented():
    text = DOC.read_text(encoding="utf-8")
    for cls in FIELD_RULES:
        assert f"### {cls.op_name()}\n" in text, f"no section for {cls.op_name()}"
    for reason in REASONS:
        assert f"| `{reason}` |" in text, f"rejection reason {reason} is not in the reasons table"
