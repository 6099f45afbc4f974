"""YAML syntax errors point at where the quote or block began and say what is wrong in words."""

from __future__ import annotations

from pathlib import Path

import pytest
from fedmsg_notify.config.yaml_positions import ProblemsError, load_located


def error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "f.yaml"
    path.write_text(text)
    with pytest.raises(ProblemsError) as caught:
        load_located(path)
    [problem] = caught.value.problems
    return str(problem).removeprefix(f"{path}:")


def test_unterminated_quote_is_reported_where_it_opens(tmp_path: Path) -> None:
    """Line 4 of a 6-line file, not 7:1 'found unexpected end of stream'."""
    text = 'a: 1\nb: 2\nc: 3\nd: "oops\ne: 5\nf: 6\n'
    assert error(tmp_path, text) == (
        '4:4: invalid YAML: unterminated string: the " here is never closed '
        '(YAML read on to the end of the file looking for the closing ")'
    )


def test_bad_indentation_names_the_block_and_its_column(tmp_path: Path) -> None:
    text = "rules:\n  - name: x\n    match: {}\n      deliver: []\n"
    message = error(tmp_path, text)
    assert message.startswith("4:7: invalid YAML: bad indentation: this line starts in column 7, but the block")
    assert "begun at line 2, has its entries in column 5" in message
    assert "<block" not in message


def test_list_and_keys_in_one_block(tmp_path: Path) -> None:
    assert error(tmp_path, "- a\nb: 1\n").startswith(
        "2:1: invalid YAML: bad indentation: a mapping key in the same column as the list begun at line 1"
    )


def test_unclosed_bracket_points_at_the_bracket(tmp_path: Path) -> None:
    assert error(tmp_path, "a: [1, 2\nb: 3\n").startswith("1:4: invalid YAML: the [ here is not closed: at line 2")
    assert error(tmp_path, "a: {b: 1\n") == "1:4: invalid YAML: the { here is never closed (the file ends before its })"


def test_tab_indentation(tmp_path: Path) -> None:
    assert error(tmp_path, "a:\n\tb: 1\n") == "2:1: invalid YAML: a tab character: YAML indents with spaces only"
