"""The README's Python example runs as written."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def example() -> str:
    text = README.read_text()
    block = re.search(r"<!-- example: start -->\s*```python\n(.*?)```\s*<!-- example: end -->", text, re.S)
    assert block, "README.md has no example between the markers"
    return block.group(1)


def test_readme_example_runs() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example(), str(README), "exec"), {"__name__": "readme_example"})
    lines = out.getvalue().splitlines()
    rule, model, endpoint, url, strategy = lines[0].split()
    assert (rule, strategy) == ("creative-to-claude", "power_of_two") and model in ("claude-3-sonnet", "gpt-4")
    assert lines[1].startswith(f"rule `creative-to-claude` matched; model `{model}` chosen among its targets")
    assert lines[2] == "gpt4-west eu-west"
    assert "gpt4-east False status draining" in lines
    assert any(line.startswith("retry on gpt4-") for line in lines)
    assert "event: head_registered claude-west" in lines
    assert lines[-1] == (
        "no_candidate_model no active model of type `chat` passes the request's, agent's and workspace's filters"
    )
