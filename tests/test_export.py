"""Exports of stored trials: ONNX runs in ONNX Runtime and matches torch, TorchScript reloads and
matches, safetensors reloads into the rebuilt architecture, every export has its model card.

The trials come from the session's shared study (conftest.py: shared_study): the teacher, pruning +
torch dynamic int8, Nystrom + ToMe token merging, and ONNX Runtime int8.
"""

from __future__ import annotations

import json

import pytest
import torch
from support import cli

from vitshrink.exporting import ExportError, card_path, run_onnx

torch.set_num_threads(2)

CARD_KEYS = {"study", "trial", "format", "config", "objectives", "latency", "test_accuracy", "teacher_accuracy",
             "target", "input", "output", "exported_model", "check", "versions"}


@pytest.fixture(scope="module")
def shared(shared_study):
    return shared_study


@pytest.fixture(scope="module")
def handle(shared):
    from vitshrink.studies import open_study

    return open_study(shared.name, shared.storage)


@pytest.fixture(scope="module")
def x(handle) -> torch.Tensor:
    return handle.data.test.x[:32]  # images the export check (val) did not use


def _logits(model, x):
    with torch.no_grad():
        return model(x).float()


@pytest.mark.parametrize("key", ["teacher", "prune_dyn", "nys_tokens", "ort_int8"])
def test_onnx_export_runs_in_onnxruntime_and_matches(handle, shared, x, key, tmp_path) -> None:
    n = shared.numbers[key]
    path = handle.export(n, "onnx", tmp_path / f"{key}.onnx")
    got = run_onnx(path, x)
    model = handle.load_model(n)
    want = _logits(model, x)
    assert got.shape == want.shape == (32, 10)
    if key in ("teacher", "nys_tokens", "ort_int8"):  # float graphs, or the very graph the trial measured
        assert torch.allclose(got, want, atol=1e-4 * max(1.0, float(want.abs().max())), rtol=1e-4)
    else:  # ORT's int8 of the same weights vs torch's int8: close, not equal
        cos = torch.nn.functional.cosine_similarity(got, want, dim=1)
        assert float(cos.mean()) > 0.99
        assert float((got.argmax(1) == want.argmax(1)).float().mean()) >= 0.9
    # any batch size runs (dynamic batch axis), not only the traced one
    assert run_onnx(path, x[:3]).shape == (3, 10)
    card = json.loads(card_path(path).read_text())
    assert CARD_KEYS <= set(card)
    assert card["trial"] == n and card["format"] == "onnx"
    assert card["config"] == handle.study.trials[n].user_attrs["config"]
    assert card["objectives"]["accuracy"] == handle.study.trials[n].values[0]
    assert card["latency"]["iqr_ms"] >= 0 and card["target"]["target"] == "cpu:2"
    assert card["versions"]["onnxruntime"] and card["versions"]["torch"] and card["versions"]["vitshrink"]


@pytest.mark.parametrize("key", ["teacher", "prune_dyn", "nys_tokens"])
def test_torchscript_export_reloads_and_matches(handle, shared, x, key, tmp_path) -> None:
    n = shared.numbers[key]
    path = handle.export(n, "torchscript", tmp_path / f"{key}.pt")
    loaded = torch.jit.load(str(path))
    want = _logits(handle.load_model(n), x)
    assert torch.allclose(_logits(loaded, x), want, atol=1e-5, rtol=1e-5)
    assert json.loads(card_path(path).read_text())["format"] == "torchscript"


def test_torchscript_refuses_an_onnxruntime_int8_trial(handle, shared, tmp_path) -> None:
    path = tmp_path / "m.pt"
    with pytest.raises(ExportError, match="no TorchScript form; export it with --format onnx"):
        handle.export(shared.numbers["ort_int8"], "torchscript", path)
    assert not path.exists() and not card_path(path).exists()


def test_safetensors_export_reloads(handle, shared, x, tmp_path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file

    from vitshrink.spaces import CompressionConfig

    n = shared.numbers["prune_dyn"]
    path = handle.export(n, "safetensors", tmp_path / "m.safetensors")
    state, config = handle.float_weights(n)
    loaded = load_file(str(path))
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    with safe_open(str(path), framework="pt") as f:
        assert CompressionConfig.from_json(f.metadata()["config"]) == config
    doc = json.loads((tmp_path / "m.config.json").read_text())
    assert CompressionConfig.from_dict(doc["config"]) == config and doc["input_shape"] == [1, 8, 8]
    model = handle.load_float_model(n)  # the pruned architecture the config builds ...
    model.load_state_dict(loaded)  # ... takes the exported weights as they are
    assert _logits(model, x).shape == (32, 10)
    assert json.loads(card_path(path).read_text())["check"]["max_abs_diff"] == 0.0


def test_unknown_format_is_refused(handle, shared, tmp_path) -> None:
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        handle.export(shared.numbers["teacher"], "tflite", tmp_path / "m.tflite")


@pytest.mark.slow
def test_cli_export(shared, tmp_path) -> None:
    out = tmp_path / "deep" / "m.onnx"
    res = cli("export", "q", "--trial", str(shared.numbers["nys_tokens"]), "--format", "onnx", "--out", str(out),
              "--storage", shared.storage)
    assert res.exit_code == 0, res.output
    assert out.stat().st_size > 1000 and card_path(out).exists()
    res = cli("export", "q", "--trial", str(shared.numbers["teacher"]), "--format", "tflite", "--out",
              str(tmp_path / "m.tflite"), "--storage", shared.storage)
    assert res.exit_code == 2 and "unknown export format" in res.output
    res = cli("export", "nope", "--trial", "0", "--out", str(tmp_path / "m.onnx"), "--storage", shared.storage)
    assert res.exit_code == 2 and "no study 'nope'" in res.output


# --- an export is deployable on its own: preprocessing and class names travel with it --------------------------

# Runs in a fresh interpreter that has only PIL, numpy and onnxruntime: everything it knows about the
# model comes from the ONNX file's metadata_props.
DEPLOY_SCRIPT = r'''
import json, sys
import numpy as np
import onnxruntime as ort
from PIL import Image

model_path, files = sys.argv[1], sys.argv[2:]
sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
meta = sess.get_modelmeta().custom_metadata_map
pre, classes = json.loads(meta["vitshrink.preprocessing"]), json.loads(meta["vitshrink.classes"])

def load(path):
    img = Image.open(path).convert("RGB" if pre["channels"] == ["R", "G", "B"] else "L")
    if pre["resize"]:
        h, w = pre["resize"]["size"]
        img = img.resize((w, h), Image.BICUBIC)
    v = np.asarray(img, dtype=np.float32)
    v = v[None] if v.ndim == 2 else v.transpose(2, 0, 1)
    v = v / np.float32(pre["value_scale"]["divide_by"])
    mean = np.asarray(pre["mean"], np.float32)[:, None, None]
    std = np.asarray(pre["std"], np.float32)[:, None, None]
    return (v - mean) / std

logits = sess.run(None, {sess.get_inputs()[0].name: np.stack([load(f) for f in files])})[0]
assert not {"vitshrink", "torch"} & set(sys.modules), "the deployment must not need vitshrink or torch"
print(json.dumps({"logits": logits.tolist(), "classes": [classes[i] for i in logits.argmax(1)]}))
'''


def _png_folder(root, per_class: int = 12, size: int = 20):
    """Three classes of PNG files (reddish, greenish, striped grey), some saved as grayscale, at 20x20."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("red", "green", "stripes")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3))
            if name == "stripes":
                img[::3] += 150
            else:
                img[..., c] += 150
            pil = Image.fromarray(img.clip(0, 255).astype("uint8"))
            (pil.convert("L") if name == "stripes" and i % 2 else pil).save(root / name / f"{i}.png")


def test_onnx_export_deploys_from_png_files_with_its_metadata_alone(tmp_path) -> None:
    """PNG files, through the card's preprocessing alone (PIL, numpy, ONNX Runtime in a bare
    interpreter), give the logits the trial measured on those images."""
    import subprocess
    import sys

    import numpy as np
    from torchvision.datasets import ImageFolder

    from vitshrink.data import _split_arrays
    from vitshrink.search import run_search
    from vitshrink.spaces import Recipe
    from vitshrink.studies import open_study

    folder = tmp_path / "shapes"
    _png_folder(folder)
    recipe = Recipe.from_toml_text(f"""
[study]
name = "png"
trials = 1
[data]
dataset = "image-folder"
data_dir = "{folder}"
img_size = 12
[teacher]
model = "vit_tiny_patch16_224"
[teacher.kwargs]
img_size = 12
patch_size = 4
in_chans = 3
embed_dim = 32
depth = 2
num_heads = 2
mlp_ratio = 2.0
[teacher.train]
epochs = 8
[target]
runs = 5
warmup = 1
[space]
quant = ["none", "dynamic_int8"]
""")
    storage = f"sqlite:///{tmp_path}/png.db"
    run_search(recipe, storage=storage, evaluate_test=False)
    handle = open_study("png", storage)
    path = handle.export(0, "onnx", tmp_path / "png.onnx")
    card = json.loads(card_path(path).read_text())
    assert card["classes"] == ["green", "red", "stripes"]
    pre = card["preprocessing"]
    assert pre["resize"]["size"] == [12, 12] and pre["resize"]["interpolation"] == "bicubic"
    assert pre["channels"] == ["R", "G", "B"] and pre["value_scale"]["divide_by"] == 255.0
    assert pre["mean"] == list(handle.data.mean) and len(pre["std"]) == 3

    # the val split's files, in the order the trial evaluated them
    ds = ImageFolder(str(folder))
    labels = np.asarray([label for _, label in ds.samples])
    val_index = _split_arrays(np.arange(len(labels)), labels, 0, 0.2, 0.2)[1][0]
    files = [ds.samples[i][0] for i in val_index]
    script = tmp_path / "deploy.py"
    script.write_text(DEPLOY_SCRIPT)
    res = subprocess.run([sys.executable, "-I", str(script), str(path), *files], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    got = torch.tensor(out["logits"])
    measured = handle.load_trial(0).val_logits  # what the trial measured on these images
    assert got.shape == measured.shape
    assert torch.allclose(got, measured, atol=1e-4 * max(1.0, float(measured.abs().max())))
    assert out["classes"] == [card["classes"][i] for i in measured.argmax(1).tolist()]


def test_card_preprocessing_maps_raw_digits_to_the_model_input(handle, shared, tmp_path) -> None:
    """Digits have no image files: the card says how sklearn's raw 8x8 arrays (0..16) become inputs."""
    import numpy as np
    import onnx
    from sklearn.datasets import load_digits

    from vitshrink.data import _split_arrays

    path = handle.export(shared.numbers["teacher"], "onnx", tmp_path / "digits.onnx")
    card = json.loads(card_path(path).read_text())
    pre = card["preprocessing"]
    assert pre["value_scale"] == {"divide_by": 16.0, "raw_range": [0, 16]} and pre["channels"] == ["L"]
    assert pre["resize"] is None and pre["crop"] is None
    assert card["classes"] == [str(i) for i in range(10)]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["vitshrink.preprocessing"]) == pre and json.loads(props["vitshrink.classes"]) == card["classes"]

    d = load_digits()
    raw_val = _split_arrays(d.images[:, None], d.target, handle.recipe.data_seed, 0.2, 0.2)[1][0]
    mean = np.asarray(pre["mean"], np.float32)[:, None, None]
    std = np.asarray(pre["std"], np.float32)[:, None, None]
    x = (raw_val.astype(np.float32) / np.float32(pre["value_scale"]["divide_by"]) - mean) / std
    assert torch.allclose(torch.from_numpy(x), handle.data.val.x, atol=1e-6)
    assert torch.equal(run_onnx(path, torch.from_numpy(x)).argmax(1),
                       handle.load_trial(shared.numbers["teacher"]).val_logits.argmax(1))
