"""The text-quality checks and the benchmark that reports them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
from fedmsg_notify.meta.engine import MetaEngine
from fedmsg_notify.meta.quality import sentence_problem, valid_link

BENCH = Path(__file__).resolve().parent.parent / "bench" / "text_quality.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("text_quality", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("sentence", "problem"),
    [
        ("ralph commented on bodhi update FEDORA-2019-1", None),
        ('ralph asked "How?"', None),
        ("new FAS account: {'username': 'ralph'}", 'template residue "{\'"'),
        ("openQA job  (, ) for  created", "doubled space"),
        ("pingou set the flag on", "dangling 'on'"),
        ("bodhi pushed x for None", "template residue 'None'"),
        (" padded", "leading or trailing space"),
        ("", "empty"),
    ],
)
def test_sentence_problems_are_named(sentence: str, problem: str | None) -> None:
    assert sentence_problem(sentence) == problem


@pytest.mark.parametrize(
    ("link", "ok"),
    [
        ("https://bodhi.fedoraproject.org/updates/FEDORA-2019-1", True),
        ("http://koji.fedoraproject.org:80/koji/buildinfo?buildID=9", True),
        ("/w/uploads/d/d1/Cat.jpg", False),
        ("https://bodhi.fedoraproject.org/updates/a-1-1 b-1-1", False),
        ("https://apps.fedoraproject.org/tagger/{'name': 'nethack'}", False),
        ("ftp://example.org/x", False),
        ("https:///no-host", False),
        (None, False),
    ],
)
def test_links_are_valid_only_when_they_can_be_clicked(link: str | None, ok: bool) -> None:
    assert valid_link(link) is ok


def test_the_benchmark_scores_links_people_packages_and_counts_broken_text(tmp_path: Path) -> None:
    """bench/text_quality.py reports accuracy, F1 and fallbacks over a JSON-lines file."""
    samples = tmp_path / "samples.jsonl"
    lines = [
        {
            "message": {"topic": "org.fedoraproject.prod.fas.user.create", "msg": {"agent": "ralph", "user": "ralph"}},
            "expect": {"link": "https://admin.fedoraproject.org/accounts/user/view/ralph", "usernames": ["ralph"]},
        },
        {
            "message": {"topic": "org.fedoraproject.prod.mystery.repo.update", "msg": {"packages": ["a", "b"]}},
            "expect": {"link": None, "packages": ["a", "c"]},
        },
    ]
    samples.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    bench = load_bench()
    result = bench.measure(samples, MetaEngine(), show=5)
    assert result["messages"] == 2
    assert result["link_accuracy"] == 1.0
    assert result["usernames_f1"] == 1.0
    assert result["packages_f1"] == pytest.approx(0.5)  # one right, one wrong, one missed
    assert result["broken_sentences"] == 0 and result["broken_links"] == 0
    assert result["fallbacks"] == {"mystery": {"service": 1}}
    shaped = bench.measure_variants(samples, MetaEngine(), show=5)
    assert shaped["variants"] > 0 and shaped["broken_sentences"] == 0 and shaped["broken_links"] == 0
