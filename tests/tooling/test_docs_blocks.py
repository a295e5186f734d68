"""Every fenced block in README.md and docs/*.md says whether it runs (`<!-- runs: ... -->`, run by
tests/e2e/test_docs_blocks.py) or why not (`<!-- not run: ... -->`), so that a new block cannot go
untested unnoticed."""

from __future__ import annotations

from typing import Any

from devstack.paths import ROOT
from tests.docs_blocks import NOT_RUN, RUNS, blocks_in, doc_blocks, doc_files, stray_markers
from tracking_service import webhooks


def test_every_block_in_the_docs_says_whether_it_runs() -> None:
    blocks = doc_blocks(ROOT)
    assert blocks, "no fenced block found in README.md and docs/*.md"
    unmarked = [b.where for b in blocks if b.marker is None]
    assert not unmarked, (
        "a fenced block without `<!-- runs: why -->` or `<!-- not run: why -->` on the line before: "
        + ", ".join(unmarked)
    )
    assert not [b.where for b in blocks if not b.reason], "a marker without its reason"


def test_the_blocks_that_run_are_bash() -> None:
    # tests/e2e/test_docs_blocks.py runs them with bash.
    assert [b.where for b in doc_blocks(ROOT) if b.marker == RUNS and b.language != "bash"] == []


def test_no_marker_stands_away_from_a_block() -> None:
    # A marker one line too high would leave its block unmarked and say nothing.
    strays = {path.name: stray_markers(path.read_text()) for path in doc_files(ROOT)}
    assert {name: lines for name, lines in strays.items() if lines} == {}


def test_the_receivers_check_in_the_docs_accepts_what_the_service_signs() -> None:
    block = next(b for b in doc_blocks(ROOT) if b.language == "python" and "def verified(" in b.code)
    names: dict[str, Any] = {}
    exec(block.code, names)
    body, secret = b'{"id": "1", "type": "run.state_changed"}', "whsec_abc"
    assert names["verified"](secret, body, webhooks.signature(secret, body))
    assert not names["verified"](secret, body + b" ", webhooks.signature(secret, body))
    assert f"`{webhooks.SIGNATURE_HEADER}: sha256=" in (ROOT / block.file).read_text()


DOC = """\
# Title

<!-- runs: first -->
```bash
echo one
```

- a list item:

  <!-- not run: an excerpt -->
  ~~~yaml
  key: value
    nested: 1
  ~~~

Inline ```code``` is no block.

```
unmarked
````

<!-- runs: nothing follows -->

```python
left open
"""


def test_the_parser_finds_each_block_its_marker_language_and_line() -> None:
    blocks = blocks_in(DOC, "doc.md")
    assert [(b.where, b.language, b.marker, b.reason) for b in blocks] == [
        ("doc.md:4", "bash", RUNS, "first"),
        ("doc.md:11", "yaml", NOT_RUN, "an excerpt"),
        ("doc.md:18", "", None, ""),
        ("doc.md:24", "python", None, ""),
    ]
    assert blocks[0].code == "echo one\n"
    assert blocks[1].code == "key: value\n  nested: 1\n", "the fence's indentation is taken off"
    assert blocks[2].code == "unmarked\n", "a longer closing fence closes"
    assert blocks[3].code == "left open\n"
    assert stray_markers(DOC) == [22]
