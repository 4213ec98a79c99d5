"""A search whose output goes to a file (not a terminal) reads as a log: one plain line per finished
trial, and a final table whose lines fit 80 columns, one line per Pareto trial."""

from __future__ import annotations

import re
import subprocess
import sys

import optuna
import pytest

import vitshrink
from recipes import tiny_recipe

TRIAL_LINE = re.compile(r"^trial (\d+) (COMPLETE \[\d/3\] acc \d\.\d{4} latency [\d.]+ ms size [\d.]+ kB  \S.*"
                        r"|(FAIL|PRUNED) \[\d/3\] \S.*)$")


@pytest.mark.slow
def test_search_to_a_file_prints_a_line_per_trial_and_a_table_within_80_columns(tmp_path) -> None:
    # every sampled trial's label ("prune_heads=0.5 prune_mlp=0.25 kd_epochs=1") is longer than the table's
    # room for it, and the smallest model (a sampled one) is always on the front
    (tmp_path / "log.toml").write_text(tiny_recipe("log", 'techniques = ["prune", "finetune"]\n[space.prune]\n'
                                                   'mlp = [0.25, 0.5]\nheads = 0.5\n[space.finetune]\nepochs = 1',
                                                   trials=3, sampler="random"))
    url = f"sqlite:///{tmp_path}/log.db"
    res = subprocess.run([sys.executable, "-m", "vitshrink.cli", "search", "log.toml", "--storage", url],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "\x1b[" not in res.stdout + res.stderr  # no terminal control codes in a log

    lines = res.stdout.splitlines()
    finished = [t.number for t in optuna.load_study(study_name="log", storage=url).trials
                if t.state.name in ("COMPLETE", "FAIL", "PRUNED")]
    trial_lines = [m for m in map(TRIAL_LINE.match, lines) if m]
    assert sorted(int(m.group(1)) for m in trial_lines) == sorted(finished), res.stdout

    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["trial", "val_acc"])
    table = lines[header:]
    front = vitshrink.open_study("log", url).pareto()
    assert all(len(line) <= 80 for line in table), table
    rows = [line for line in table[1:] if re.match(r"^\s*\d+\s", line)]
    assert [int(r.split()[0]) for r in rows] == list(front.trial)  # one line each, nothing wrapped
    at = table[0].index("label")
    for row, label in zip(rows, front.label):  # each label whole, or cut short with "..."
        assert row[at:] == label or (row.endswith("...") and label.startswith(row[at:-3])), (row, label)
    assert any(r.endswith("...") for r in rows) and "--format csv" in table[-1]
