"""The fault table in the code (core/llm_api/faults.py) is the one in the README, and every row's test exists."""
import ast
import re

from core.llm_api.faults import FAULTS, KINDS, classify_status
from tests.conftest import REPO_ROOT


def readme_rows() -> dict[str, list[str]]:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("### Faults and what the client does", 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| fault |")]
    return {cells[0]: cells for cells in ([c.strip() for c in row.strip("|").split("|")] for row in rows)}


def test_the_readme_table_is_the_codes_table():
    rows = readme_rows()
    assert list(rows) == [row.name for row in FAULTS]
    for row in FAULTS:
        assert rows[row.name][1] == row.kind and rows[row.name][-1] == f"`{row.test}`"


def test_every_row_names_a_test_that_exists_and_a_known_kind():
    for row in FAULTS:
        assert row.kind in KINDS
        path, name = row.test.split("::")
        tree = ast.parse((REPO_ROOT / path).read_text())
        assert name in {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}, row.test


def test_every_fault_the_code_names_is_a_row():
    names = {row.name for row in FAULTS}
    used = set()
    for path in (REPO_ROOT / "core" / "llm_api").glob("*.py"):
        used |= set(re.findall(r'(?:ServerFault|MalformedResponse|HTTPStatusError)\([^)]*?,\s*"([a-z][^"]+)"', path.read_text()))
        used |= set(re.findall(r'return "([a-z][a-z ,\'-]+)"', path.read_text())) & names
    assert used and used <= names, used - names


def test_the_message_decides_before_the_status():
    assert classify_status(500, "The decoder prompt (length 9000) is longer than the maximum model length of 8192.") == \
        "prompt longer than the context"
    assert classify_status(400, "The decoder prompt (length 9000) is longer than the maximum model length") != "list prompts refused"
    assert classify_status(400, "1 validation error: ('body', 'prompt'): Input should be a valid string, not a list") == \
        "list prompts refused"
    assert classify_status(400, "prompt is invalid, see the docs for a list of fields") == "request refused"
    assert classify_status(503, "overloaded") == "server error" and classify_status(429, "slow down") == "rate limited"
