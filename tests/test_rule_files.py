"""Rule files from disk: the fast parser keeps every position, and a reload recompiles only what changed."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from fedmsg_notify.config.model import Config, load_config
from fedmsg_notify.config.yaml_positions import ProblemsError, load_located
from fedmsg_notify.matching.rule_files import CompiledFiles
from fedmsg_notify.matching.rules import RuleSet


def config(tmp_path: Path) -> Config:
    (tmp_path / "rules").mkdir(exist_ok=True)
    return load_config(tmp_path / "config.yaml", "accounts: {out: {backend: console}}\nrules: [rules]\n")


def person(name: str, topic: str = "*.bodhi.update.*") -> str:
    return textwrap.dedent(
        f"""\
        me: {name}
        rules:
          - name: my updates
            match:
              topic: "{topic}"
              field: {{path: msg.update.user.name, equals: $me}}
            deliver: [{{via: out, to: {name}}}]

          - {{name: mentions, match: {{users: $me, not: {{agent: $me}}}}, deliver: [{{via: out, to: {name}}}]}}
        """
    )


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / "rules" / name
    path.write_text(text, encoding="utf-8")
    return path


def load(cfg: Config, cache: CompiledFiles) -> RuleSet:
    return RuleSet.load(cfg.rule_paths, cfg.accounts, cache=cache)


def test_positions_match_the_exact_loader(tmp_path: Path) -> None:
    """Rules parsed by the fast path carry the same file:line:col as the exact pure-Python loader gives."""
    cfg = config(tmp_path)
    path = write(tmp_path, "a.yaml", person("ralph"))
    ruleset = load(cfg, CompiledFiles())
    doc = load_located(path)
    expected = [(doc.where(("rules", n)).line, doc.where(("rules", n)).column) for n in range(2)]
    assert [(r.rule.line, r.rule.column) for r in ruleset.rules] == expected == [(3, 5), (9, 5)]


def test_reload_recompiles_only_the_changed_file(tmp_path: Path) -> None:
    """After one of many files changes, a reload compiles that file alone and sees its new rules."""
    cfg = config(tmp_path)
    for n in range(20):
        write(tmp_path, f"u{n:02d}.yaml", person(f"user{n}"))
    cache = CompiledFiles()
    first = load(cfg, cache)
    assert (len(first), first.recompiled) == (40, 20)
    again = load(cfg, cache)
    assert (len(again), again.recompiled) == (40, 0)
    write(tmp_path, "u07.yaml", person("user7", topic="*.copr.build.*"))
    changed = load(cfg, cache)
    assert changed.recompiled == 1
    first_of_u07 = next(r for r in changed.rules if r.rule.file.endswith("u07.yaml"))
    assert first_of_u07.condition.describe().startswith('(topic "*.copr.build.*"')
    # The unchanged files' compiled rules are reused as they are.
    assert changed.rules[0] is first.rules[0]


def test_same_size_rewrite_within_one_clock_tick_is_seen(tmp_path: Path) -> None:
    """A file rewritten with the same size and the same mtime (two writes in one tick) is still recompiled."""
    cfg = config(tmp_path)
    path = write(tmp_path, "a.yaml", person("alice"))
    stamp = path.stat()
    cache = CompiledFiles()
    assert load(cfg, cache).rules[0].routes[0].destination.to == "alice"
    write(tmp_path, "a.yaml", person("bobby"))
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert path.stat().st_size == stamp.st_size
    assert load(cfg, cache).rules[0].routes[0].destination.to == "bobby"


def test_broken_file_is_still_refused_and_fixed_file_loads(tmp_path: Path) -> None:
    """A file broken after a good load is refused with its position on every reload until it is fixed."""
    cfg = config(tmp_path)
    write(tmp_path, "a.yaml", person("alice"))
    path = write(tmp_path, "b.yaml", person("bobby"))
    cache = CompiledFiles()
    assert len(load(cfg, cache)) == 4
    write(tmp_path, "b.yaml", person("bobby").replace("users: $me", "usres: $me"))
    for _ in range(2):
        with pytest.raises(ProblemsError) as caught:
            load(cfg, cache)
        assert [str(p) for p in caught.value.problems] == [
            f"{path}:9:30: unknown key 'usres' in rules.1.match; did you mean 'users'?"
        ]
    write(tmp_path, "b.yaml", person("bobby"))
    fixed = load(cfg, cache)
    assert (len(fixed), fixed.recompiled) == (4, 1)


def test_changed_accounts_recompile_everything(tmp_path: Path) -> None:
    """Rules compiled against one set of accounts are not reused when the accounts change (a reload may remove one)."""
    cfg = config(tmp_path)
    write(tmp_path, "a.yaml", person("alice"))
    cache = CompiledFiles()
    load(cfg, cache)
    other = load_config(tmp_path / "config.yaml", "accounts: {mail: {backend: console}}\nrules: [rules]\n")
    with pytest.raises(ProblemsError) as caught:
        RuleSet.load(other.rule_paths, other.accounts, cache=cache)
    assert "undefined account 'out'" in str(caught.value)
