"""Faults: failing trials are recorded with their reason and the study goes on; too many failures
stop it with a message; Ctrl-C leaves a consistent storage and the next run resumes; artifacts are
read without unpickling and a truncated or tampered one is refused.
"""

from __future__ import annotations

import ast
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from safetensors.torch import save_file

import vitshrink
from recipes import tiny_recipe
from support import cli_env, run_cli
from vitshrink.models import TeacherSpec, create_model
from vitshrink.search import run_search
from vitshrink.search._artifacts import ArtifactError
from vitshrink.search._storage import ARTIFACT_DIR_ATTR
from vitshrink.search._trial import _reason
from vitshrink.spaces import Recipe

PACKAGE = Path(vitshrink.__file__).resolve().parent
TINY_KWARGS = {"img_size": 8, "patch_size": 2, "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 2,
               "mlp_ratio": 2.0, "num_classes": 10}


def _states(url: str, name: str) -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)]


# --- failing trials ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path, monkeypatch) -> None:
    """A custom one-block student cannot have its block 1 factorised: those samples end PRUNED with
    their reason before anything trains (they used to fail inside the SVD transform), the others
    complete, and the budget is reached. Real failures (FAIL with a reason) are covered by the NaN
    teacher test below."""
    space = ('techniques = ["student", "svd"]\nalways = ["lowrank"]\n[space.student]\nmodel = ["custom"]\ndepth = 1\n'
             'embed_dim = 16\nepochs = 1\nheads = 2\n[space.svd]\nblocks = [1]\nrank = 0.5')
    text = tiny_recipe("mix", space, sampler="random")
    url = f"sqlite:///{tmp_path}/mix.db"
    summary = run_search(Recipe.from_toml_text(text), storage=url, evaluate_test=False)
    assert summary.completed == 2 and summary.pruned >= 1 and summary.failed == 0 and summary.stopped_by == "trials"
    df = vitshrink.open_study("mix", url).trials()
    pruned = df[df.state == "PRUNED"]
    assert len(pruned) == summary.pruned
    assert all("svd.blocks names block(s) [1]" in r for r in pruned.fail_reason)
    assert set(pruned["config.student"]) == {"custom"}  # the config that was impossible is stored with it
    assert set(df.state) == {"COMPLETE", "PRUNED"}  # nothing left RUNNING


def _nan_checkpoint(path: Path) -> str:
    """A teacher whose weights are all NaN: every trial's logits are NaN (NonFiniteOutput)."""
    torch.manual_seed(0)
    model = create_model(TeacherSpec("vit_tiny_patch16_224", TINY_KWARGS))
    save_file({k: torch.full_like(v, float("nan")) for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.mark.slow
def test_every_trial_failing_stops_at_max_failures_with_a_message(tmp_path) -> None:
    ckpt = _nan_checkpoint(tmp_path / "nan.safetensors")
    text = tiny_recipe("nan", teacher_extra=f'checkpoint = "{ckpt}"', trials=3, epochs=None).replace("[data]", "max_failures = 2\n[data]")
    (tmp_path / "nan.toml").write_text(text)
    url = f"sqlite:///{tmp_path}/nan.db"
    res = run_cli(["search", "nan.toml", "--storage", url], tmp_path, cli_env(tmp_path))
    err = " ".join(res.stderr.split())
    assert res.returncode == 1, err[-2000:]
    assert "search stopped: 2 trials failed in this run (study.max_failures = 2)" in err
    assert "NonFiniteOutput" in err and "run the same command to resume" in err
    assert "Traceback" not in res.stderr
    df = vitshrink.open_study("nan", url).trials()
    assert list(df.state) == ["FAIL", "FAIL"]
    # the teacher trial's NaN logits are caught by the accuracy objective; a quantized trial may fail
    # earlier, inside quantization: either way the reason names the error
    assert df.fail_reason[0].startswith("NonFiniteOutput: model produced NaN/inf logits")
    assert all(r.split(":")[0].endswith(("Output", "Error")) for r in df.fail_reason)


def test_failure_reasons_name_the_kind_of_failure() -> None:
    assert _reason(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")).startswith(
        "out of memory: CUDA out of memory")
    assert _reason(MemoryError()).startswith("out of memory")
    assert _reason(KeyboardInterrupt()).startswith("interrupted by the user")
    assert _reason(ValueError("first line\nsecond line")) == "ValueError: first line"
    assert len(_reason(RuntimeError("x" * 5000))) <= 500


# --- Ctrl-C -----------------------------------------------------------------------------------------------------


def _running_trial(url: str, name: str, first: int = 0) -> int | None:
    try:
        study = optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if "worker" in t.user_attrs and t.number >= first:  # inside run_trial, not between trials
            return t.number
    return None


@pytest.mark.slow
def test_ctrl_c_fails_the_running_trial_and_the_next_run_resumes(tmp_path) -> None:
    # KD fine-tuning makes every trial after the teacher's last seconds even on a fast machine, so the
    # interrupt lands inside a trial (the teacher trial 0 reuses cached measurements and ends at once)
    text = tiny_recipe("ctrlc", 'techniques = ["finetune"]\n[space.finetune]\nepochs = [40, 60]',
                       trials=2)  # the teacher, then the interrupted one
    (tmp_path / "ctrlc.toml").write_text(text)
    url = f"sqlite:///{tmp_path}/ctrlc.db"
    env = cli_env(tmp_path)
    cmd = [sys.executable, "-m", "vitshrink.cli", "search", "ctrlc.toml", "--storage", url]
    # SIGINT at its default, as in a terminal: a suite started as a background job (`pytest &` in a
    # script) passes SIGINT ignored to its children, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    number = None
    while number is None and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        number = _running_trial(url, "ctrlc", first=1)
    assert number is not None, "no fine-tuning trial started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    flat = " ".join(err.split())
    assert proc.returncode == 130, flat[-2000:]
    assert "interrupted" in flat and "run the same command to resume" in flat
    assert "Traceback" not in err

    study = optuna.load_study(study_name="ctrlc", storage=url)
    trials = study.get_trials(deepcopy=False)
    assert not [t for t in trials if t.state.name == "RUNNING"]
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert [t.number for t in interrupted] == [number]
    assert interrupted[0].user_attrs["fail_reason"].startswith("interrupted by the user")
    retry = [t for t in trials if t.state.name == "WAITING"]
    # queued to run first on resume, with the same parameters (and warm-start config, for the teacher trial)
    assert len(retry) == 1 and retry[0].system_attrs["fixed_params"] == interrupted[0].params
    assert retry[0].user_attrs["retry_of"] == number
    assert retry[0].user_attrs.get("config_override") == interrupted[0].user_attrs.get("config_override")

    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    states = _states(url, "ctrlc")
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states and "WAITING" not in states


# --- artifacts --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A one-trial study (the teacher) with its saved artifact."""
    root = tmp_path_factory.mktemp("artifacts")
    url = f"sqlite:///{root}/a.db"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VITSHRINK_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        summary = run_search(Recipe.from_toml_text(tiny_recipe("art")).with_overrides(trials=1), storage=url,
                             evaluate_test=False)
    assert summary.completed == 1
    trial = summary.study.trials[0]
    path = Path(summary.study.user_attrs[ARTIFACT_DIR_ATTR]) / trial.user_attrs["artifact"]
    assert path.is_file()
    return url, path, path.read_bytes()


@pytest.fixture()
def artifact(finished_study):
    url, path, original = finished_study
    yield url, path, original
    path.write_bytes(original)  # every test starts from the intact file


def _tensor_span(raw: bytes, name: str) -> tuple[int, int]:
    """Byte range of tensor `name` inside a safetensors file (8-byte header length, JSON header, data)."""
    (n,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8:8 + n])[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def test_intact_artifact_reloads(artifact) -> None:
    url, _, _ = artifact
    assert isinstance(vitshrink.load_model("art", 0, storage=url), torch.nn.Module)


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda raw: raw[: len(raw) // 2], "not a readable safetensors file"),
        (lambda raw: raw[:5], "not a readable safetensors file"),
        (lambda raw: b"\x80\x04\x95" + raw[3:], "not a readable safetensors file"),  # a pickle's opcodes
    ],
    ids=["truncated", "header cut", "pickle bytes"],
)
def test_truncated_artifact_is_refused(artifact, damage, words) -> None:
    url, path, original = artifact
    path.write_bytes(damage(original))
    with pytest.raises(ArtifactError, match=f"artifact of trial 0 .*{words}.*re-run"):
        vitshrink.load_model("art", 0, storage=url)


@pytest.mark.parametrize("tensor, words", [("_vitshrink.val_logits", "the stored logits were modified"),
                                           ("blocks.0.attn.qkv.weight", "its weights or config were modified")])
def test_tampered_artifact_fails_its_checksum(artifact, tensor, words) -> None:
    url, path, original = artifact
    begin, end = _tensor_span(original, tensor)
    raw = bytearray(original)
    raw[begin:begin + 4] = struct.pack("<f", 123.0)  # one value changed, the file still decodes
    path.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match=f"artifact of trial 0 .*fails its checksum: {words}"):
        vitshrink.load_model("art", 0, storage=url)


def test_artifact_without_vitshrink_metadata_is_refused(artifact, tmp_path) -> None:
    url, path, _ = artifact
    save_file({"w": torch.zeros(2)}, str(path))  # a valid safetensors file, but not a trial's
    with pytest.raises(ArtifactError, match="lacks vitshrink's metadata"):
        vitshrink.load_model("art", 0, storage=url)


def test_missing_artifact_is_explained(artifact) -> None:
    url, path, _ = artifact
    path.unlink()
    with pytest.raises(ArtifactError, match="artifact of trial 0 cannot be read from"):
        vitshrink.load_model("art", 0, storage=url)


def test_tampered_artifact_through_the_cli(artifact, tmp_path) -> None:
    url, path, original = artifact
    path.write_bytes(original[: len(original) // 3])
    res = run_cli(["export", "art", "--trial", "0", "--format", "safetensors", "--out", str(tmp_path / "m.safetensors"),
                   "--storage", url], tmp_path, cli_env(tmp_path))
    err = " ".join(res.stderr.split())
    assert res.returncode == 2 and "not a readable safetensors file" in err and "Traceback" not in err


# --- nothing unpickles ------------------------------------------------------------------------------------------


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_the_package_never_unpickles() -> None:
    """torch.load only with weights_only=True; no pickle / dill / joblib / cloudpickle loading anywhere."""
    loads = []
    for py in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(py.read_text(), str(py))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not any(n and n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle", "shelve")
                               for n in names), f"{py}: imports an unpickler"
        for call, func in _calls(tree):
            if func.endswith("torch.load"):
                loads.append(py.name)
                kw = {k.arg: ast.unparse(k.value) for k in call.keywords}
                assert kw.get("weights_only") == "True", f"{py}:{call.lineno}: torch.load without weights_only=True"
            assert not func.endswith(("pickle.load", "pickle.loads", "numpy.load", "np.load")) or any(
                k.arg == "allow_pickle" and ast.unparse(k.value) == "False" for k in call.keywords), \
                f"{py}:{call.lineno}: {func} may unpickle"
    assert loads, "the grep found no torch.load at all: the test is looking in the wrong place"
