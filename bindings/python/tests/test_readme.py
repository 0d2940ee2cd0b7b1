"""The README's Python example runs as written."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def example(name: str = "example") -> str:
    text = README.read_text()
    block = re.search(rf"<!-- {name}: start -->\s*```python\n(.*?)```\s*<!-- {name}: end -->", text, re.S)
    assert block, f"README.md has no block between the `{name}` markers"
    return block.group(1)


def run(name: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example(name), str(README), "exec"), {"__name__": "readme_example"})
    return out.getvalue().splitlines()


def test_readme_example_runs() -> None:
    lines = run("example")
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


def test_readme_accounting_example_runs() -> None:
    assert run("accounting example") == [
        "event: budget_threshold_crossed 0.8",
        "event: budget_exceeded ",
        "budget: workspace ws-1 daily 0.1 1795478400000",
        "daily 0.12 of 0.1 reject",
        "event: rate_limited ",
        "rate limited: user:bob:rpm retry after 1000 ms",
        "3 0.12 900.0",
        "0.04 ['ann']",
        "[('gpt-4', 1, 0), ('gpt-4o-mini', 1, 0)]",
    ]
