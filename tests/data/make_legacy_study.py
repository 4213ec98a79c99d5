"""How tests/data/legacy_study.db and tests/data/legacy_study_artifacts were made: a tiny search run by
vitshrink before techniques were modules (commit 56acf51), its recipe written in the flat form
(tests/data/legacy_study.toml). Kept to show provenance; rerunning it with today's code would not
make a study *stored by the old code*, which is what tests/test_legacy.py needs.

    PYTHONPATH=. python tests/data/make_legacy_study.py
"""

from pathlib import Path

from vitshrink.search import run_search
from vitshrink.spaces import Recipe

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    recipe = Recipe.from_file(HERE / "legacy_study.toml")
    run_search(recipe, storage=f"sqlite:///{HERE / 'legacy_study.db'}",
               artifact_dir=HERE / "legacy_study_artifacts", evaluate_test=True)
