"""Hostile model files: no file can run code, every front end refuses it in one line.

Each hostile archive is built here: a finaliser that deletes a folder (numpy's DataSource), a
scikit-learn Pipeline of FunctionTransformers that executes a string, function and type
references (``builtins.eval``, ``os.system``, ``numpy.load``), types hrdv2 never writes, valid
archives with a wrong schema, and damaged files. ``Segmenter.load``, ``hrdv2 apply`` and the web
app's predict must each refuse it, and the payload must not have run: the victim folder still
exists and no marker file appeared. A control test proves the payloads are live (they do run
when skops is told to trust what the file declares, the policy hrdv2 had before).
"""

from __future__ import annotations

import copy
import gc
import io
import json
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import skops.io as sio
from click.testing import CliRunner
from PIL import Image
from threadpoolctl import threadpool_limits

from hrdv2.errors import ModelFileError
from hrdv2.segmentation import CLASSIFIERS, Segmenter
from hrdv2.segmentation import model_file

SIDE = 24


def _image() -> np.ndarray:
    yy, xx = np.mgrid[:SIDE, :SIDE]
    return np.where((yy - 12) ** 2 + (xx - 12) ** 2 < 36, 40, 210).astype(np.uint8)


def _scribble(n_classes: int = 2) -> np.ndarray:
    s = np.zeros((SIDE, SIDE), np.uint8)
    s[10:14, 10:14] = 1  # inside the dark disc
    s[:3, :] = 2
    if n_classes == 3:
        s[-3:, :] = 3
    return s


@pytest.fixture(scope="module")
def base_state() -> dict:
    """The state of a real (classical, logistic) model, to be tampered with."""
    with threadpool_limits(1):
        seg = Segmenter("classical", "logistic", max_samples=200).fit([_image()], [_scribble()])
    return seg._state()


@pytest.fixture(scope="module")
def tree_states() -> tuple[dict, dict]:
    """States of a small random forest and a small gradient-boosting model."""
    with threadpool_limits(1):
        forest = Segmenter("classical", "random_forest", max_samples=200,
                           classifier_params={"n_estimators": 2, "n_jobs": 1}).fit([_image()], [_scribble()])
        boost = Segmenter("classical", "gradient_boosting", max_samples=200,
                          classifier_params={"max_iter": 3, "min_samples_leaf": 5}).fit([_image()], [_scribble()])
    return forest._state(), boost._state()


# --------------------------------------------------------------------------- archive crafting

def _json(value) -> dict:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(value), "is_json": True}


def _dict_node(items: dict, key_type: tuple[str, str] = ("builtins", "str")) -> dict:
    keys = {"__class__": "list", "__module__": "builtins", "__loader__": "ListNode",
            "content": [{"__class__": key_type[1], "__module__": key_type[0], "__loader__": "TypeNode"}
                        for _ in items]}
    return {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
            "content": items, "key_types": keys}


def _patched(data: bytes, change: Callable[[dict], None]) -> bytes:
    """The archive ``data`` with its schema.json edited by ``change`` (other members kept)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(src.read("schema.json"))
    change(schema)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, json.dumps(schema) if name == "schema.json" else src.read(name))
    return out.getvalue()


def _set_field(name: str, node: dict) -> Callable[[dict], None]:
    def change(schema: dict) -> None:
        schema["content"][name] = node
    return change


def _finaliser(victim: Path) -> dict:
    """numpy's DataSource deletes ``_destpath`` in ``__del__`` when ``_istmpdest`` is set."""
    return {"__class__": "DataSource", "__module__": "numpy.lib._datasource", "__loader__": "ObjectNode",
            "content": _dict_node({"_istmpdest": _json(True), "_destpath": _json(str(victim))})}


def _function(module: str, name: str) -> dict:
    return {"__class__": name, "__module__": module, "__loader__": "FunctionNode"}


def _exec_pipeline(base: dict, marker: Path):
    """Pipeline(full_like -> sum -> numpy.testing's runstring): predict_proba executes a string."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer
    from numpy.testing._private.utils import runstring

    code = f"__import__('pathlib').Path({str(marker)!r}).touch();"
    return Pipeline([
        ("text", FunctionTransformer(np.full_like, kw_args={"fill_value": code, "dtype": "O"})),
        ("join", FunctionTransformer(np.sum)),
        ("run", FunctionTransformer(runstring, kw_args={"dict": {}})),
        ("clf", base["model"].steps[-1][1]),
    ])


def _state_with(base: dict, **changes) -> dict:
    state = dict(base)
    state.update(changes)
    return state


def _cases(base: dict, trees: tuple[dict, dict], victim: Path, marker: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, text the refusal must contain)."""
    from scipy import sparse
    from sklearn.svm import SVC

    valid = sio.dumps(base)
    eval_key = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    svc = SVC().fit(np.random.default_rng(0).random((20, base["n_features_in"])), np.arange(20) % 2 + 1)
    no_n_channels = {k: v for k, v in base.items() if k != "n_channels"}
    looped = copy.deepcopy(trees[0])
    looped["model"].estimators_[0].tree_.children_left[0] = 0  # node 0 is its own child: predict would loop
    overrun = copy.deepcopy(trees[1])
    nodes = overrun["model"]._predictors[0][0].nodes
    assert nodes["is_leaf"][0] == 0
    nodes["right"][0] = 10**6  # predict would read far past the node array
    looped_blend, hard_blend = _blend_state(looped), _blend_state(trees[0])
    hard_blend["model"].voting = "hard"  # not the blend hrdv2 writes: its kind check names the type
    return {
        # code: finalisers, function transformers, function and type references
        "finaliser deletes a folder": (_patched(valid, _set_field("pca", _finaliser(victim))),
                                       "type numpy.lib._datasource.DataSource"),
        "FunctionTransformer pipeline": (sio.dumps(_state_with(base, model=_exec_pipeline(base, marker))),
                                         "type sklearn.preprocessing._function_transformer.FunctionTransformer"),
        "eval as a dict-key type": (_patched(valid, _set_field("classifier_params", _dict_node(
            {eval_key: _json(1)}, ("builtins", "eval")))), "type builtins.eval (a type reference)"),
        "os.system reference": (_patched(valid, _set_field("crf_params",
                                                           _dict_node({"n_iter": _function("os", "system")}))),
                                "type os.system (a function reference)"),
        "numpy.load reference": (_patched(valid, _set_field("pca", _function("numpy", "load"))),
                                 "type numpy.load (a function reference)"),
        "random generator calling numpy.random.seed": (_patched(valid, _set_field("pca", {
            "__class__": "Generator", "__module__": "numpy.random._generator", "__loader__": "RandomGeneratorNode",
            "content": {"bit_generator": _dict_node({"bit_generator": _json("seed")}), "seed_seq": _dict_node({})}})),
            "numpy.random.seed (as a random generator's bit generator)"),
        # types hrdv2 never writes (some trusted by skops by default)
        "another sklearn estimator": (sio.dumps(_state_with(base, model=svc)), "type sklearn.svm._classes.SVC"),
        "scipy sparse matrix": (sio.dumps(_state_with(base, pca=sparse.csr_matrix(np.eye(2)))), "type scipy.sparse"),
        "numpy masked array": (sio.dumps(_state_with(base, classes=np.ma.masked_array([1, 2]))),
                               "type numpy.ma.MaskedArray"),
        "a set": (sio.dumps(_state_with(base, class_names={"a", "b"})), "type builtins.set"),
        # valid archives of allowed types, wrong schema
        "class list longer than the classifier's": (
            sio.dumps(_state_with(base, classes=np.array([1, 2, 3]), class_names=["a", "b", "c"])),
            "classifier predicts [1, 2]"),
        "wrong feature count": (sio.dumps(_state_with(base, n_features_in=base["n_features_in"] + 5)), "features"),
        "class names not a list": (sio.dumps(_state_with(base, class_names="particle")), "field 'class_names' is str"),
        "missing field": (sio.dumps(no_n_channels), "fields missing ['n_channels']"),
        "classifier name does not match": (sio.dumps(_state_with(base, classifier="random_forest")),
                                           "classifier 'random_forest' but the file holds Pipeline"),
        "format version as text": (sio.dumps(_state_with(base, format_version="1")), "field 'format_version' is str"),
        "decision tree with a loop": (sio.dumps(looped), "node array is inconsistent"),
        "boosted tree pointing past its end": (sio.dumps(overrun), "a boosted tree's node array is inconsistent"),
        "auto blend with a looped tree": (sio.dumps(looped_blend), "node array is inconsistent"),
        "hard-voting blend": (sio.dumps(hard_blend), "classifier 'random_forest' but the file holds VotingClassifier"),
        "not a segmenter": (sio.dumps({"format": "something else"}), "not an hrdv2 segmenter model"),
        # damaged files
        "empty file": (b"", "not a readable hrdv2 model file"),
        "garbage": (np.random.default_rng(1).bytes(4000), "not a readable hrdv2 model file"),
        "truncated": (valid[: len(valid) // 2], "not a readable hrdv2 model file"),
        "no schema": (_zip({"data.npy": b"\x93NUMPY"}), "not a readable hrdv2 model file"),
        "schema not json": (_zip({"schema.json": b"{not json"}), "not a readable hrdv2 model file"),
        "schema nested too deep": (_zip({"schema.json": (b"[" * 200 + b"]" * 200)}), "nested more than"),
        "schema nested past the parser": (_zip({"schema.json": (b"[" * 100_000 + b"]" * 100_000)}), "RecursionError"),
    }


def _blend_state(forest_state: dict, n_classes: int = 2) -> dict:
    """``auto``'s blend (hrdv2.features.auto.blend) of the state's forest with a logistic regression."""
    from hrdv2.features.auto import blend
    from hrdv2.segmentation.segmenter import make_classifier

    forest = copy.deepcopy(forest_state["model"])
    x = np.random.default_rng(0).random((60, forest.n_features_in_))
    linear = make_classifier("logistic").fit(x, np.arange(60) % n_classes + 1)
    return _state_with(forest_state, model=blend(forest, linear, 0.25))


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


CASE_NAMES = [
    "finaliser deletes a folder", "FunctionTransformer pipeline", "eval as a dict-key type", "os.system reference",
    "numpy.load reference", "random generator calling numpy.random.seed", "another sklearn estimator",
    "scipy sparse matrix", "numpy masked array", "a set", "class list longer than the classifier's",
    "wrong feature count", "class names not a list", "missing field", "classifier name does not match",
    "format version as text", "decision tree with a loop", "boosted tree pointing past its end",
    "auto blend with a looped tree", "hard-voting blend", "not a segmenter",
    "empty file", "garbage", "truncated",
    "no schema", "schema not json", "schema nested too deep", "schema nested past the parser",
]


@pytest.fixture(scope="module")
def hostile(base_state, tree_states, tmp_path_factory) -> tuple[Path, Path, dict[str, tuple[bytes, str]]]:
    root = tmp_path_factory.mktemp("targets")
    victim, marker = root / "victim", root / "marker"
    cases = _cases(base_state, tree_states, victim, marker)
    assert sorted(cases) == sorted(CASE_NAMES)
    return victim, marker, cases


def _untouched(victim: Path, marker: Path) -> None:
    assert (victim / "keep.txt").read_text() == "precious", "a model file deleted a folder"
    assert not marker.exists(), "a model file ran code"


@pytest.fixture(scope="module")
def untouched_at_the_end(hostile):
    """After all refusals, a full collection: a finaliser that survived a test would run now."""
    yield
    gc.collect()
    _untouched(*hostile[:2])


@pytest.fixture
def targets(hostile, untouched_at_the_end):
    """A fresh victim folder before each test; after it, the payloads must not have run."""
    victim, marker, cases = hostile
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("precious")
    marker.unlink(missing_ok=True)
    yield cases
    gc.collect(1)  # finalisers of objects built in this test (a full collection takes ~1 s here)
    _untouched(victim, marker)


def _one_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# --------------------------------------------------------------------------- the three front ends

@pytest.mark.parametrize("case", CASE_NAMES)
def test_segmenter_load_refuses(case, targets, tmp_path):
    data, expected = targets[case]
    path = tmp_path / "model.skops"
    path.write_bytes(data)
    with pytest.raises(ModelFileError) as info:
        Segmenter.load(path)
    message = _one_line(str(info.value))
    assert message.startswith(str(path)) and expected in message, message
    if "type " in expected:  # refused by type: before anything was built
        assert "refusing to load: it holds type" in message and "which hrdv2 never writes" in message


@pytest.mark.parametrize("case", CASE_NAMES)
def test_cli_apply_refuses(case, targets, tmp_path):
    from hrdv2.cli.main import cli

    data, expected = targets[case]
    model, out = tmp_path / "model.skops", tmp_path / "out"
    model.write_bytes(data)
    Image.fromarray(_image()).save(tmp_path / "img.png")
    res = CliRunner().invoke(cli, ["apply", str(model), str(tmp_path / "img.png"), "--out", str(out)])
    assert res.exit_code == 2, res.output
    assert expected in _one_line(res.output)
    assert not (out / "img_labels.png").exists()


@pytest.fixture(scope="module")
def app_project(tmp_path_factory):
    """The web app with one project holding one image (no training: the model file is planted)."""
    from fastapi.testclient import TestClient

    from hrdv2.app.server import create_app

    buf = io.BytesIO()
    Image.fromarray(_image()).save(buf, format="PNG")
    with TestClient(create_app(tmp_path_factory.mktemp("projects"))) as client:
        pid = client.post("/api/projects", json={"name": "p"}).json()["id"]
        r = client.post(f"/api/projects/{pid}/images", files={"file": ("img.png", buf.getvalue(), "image/png")})
        assert r.status_code == 201, r.text
        yield client, pid, r.json()[0]["id"]


def _plant(client, pid: int, data: bytes) -> None:
    """Put ``data`` where the app keeps the project's model, as if a training had written it."""
    store = client.app.state.hrdv2.store
    version = store.bump_model_version(pid, True)
    path = client.app.state.hrdv2.engine.model_path(pid)
    path.write_bytes(data)
    path.with_suffix(".json").write_text(json.dumps({"version": version}))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_app_predict_refuses(case, targets, app_project):
    client, pid, iid = app_project
    data, expected = targets[case]
    _plant(client, pid, data)
    r = client.post(f"/api/images/{iid}/predict")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and expected in _one_line(detail) and "model.skops" in detail


def test_app_predicts_with_a_planted_valid_model(base_state, app_project):
    """Control for the app tests: the same planting with a genuine model is accepted."""
    client, pid, iid = app_project
    _plant(client, pid, sio.dumps(base_state))
    r = client.post(f"/api/images/{iid}/predict")
    assert r.status_code == 202, r.text


# --------------------------------------------------------------------------- the payloads are live

def test_payloads_run_when_skops_trusts_what_the_file_declares(base_state, tree_states, tmp_path):
    """Without hrdv2's check (skops loading everything the file lists, the old policy), the
    finaliser deletes the folder and the pipeline and eval payloads create the marker."""
    victim, marker = tmp_path / "victim", tmp_path / "marker"
    victim.mkdir()
    cases = _cases(base_state, tree_states, victim, marker)

    def old_load(data: bytes):
        return sio.loads(data, trusted=sio.get_untrusted_types(data=data))

    obj = old_load(cases["finaliser deletes a folder"][0])
    del obj
    gc.collect()
    assert not victim.exists()

    old_load(cases["eval as a dict-key type"][0])
    assert marker.exists()
    marker.unlink()

    state = old_load(cases["FunctionTransformer pipeline"][0])
    with pytest.raises(Exception):
        state["model"].predict_proba(np.zeros((2, state["n_features_in"]), np.float32))
    assert marker.exists()


# --------------------------------------------------------------------------- every hrdv2 model loads

@pytest.fixture(scope="module")
def feature_maps() -> dict[str, np.ndarray]:
    """Features of the test image as each kind has them: real classical features; deep ones of
    DINOv2 ViT-S/14's width (384) built without the ViT (the saved state depends on the widths,
    not on the values; a ViT with random weights takes ~20 s to build on a busy CPU)."""
    from hrdv2.features.sets import standardise

    classical = Segmenter("classical").featurise(_image())
    yy, xx = np.mgrid[:SIDE, :SIDE]
    dark = ((yy - 12) ** 2 + (xx - 12) ** 2 < 36).astype(np.float32)
    rng = np.random.default_rng(0)
    deep = (dark[..., None] * rng.normal(1, 0.1, 384) + rng.normal(0, 0.3, (SIDE, SIDE, 384))).astype(np.float32)
    return {"classical": classical, "deep": deep,
            "hybrid": np.concatenate([standardise(classical)[0], standardise(deep)[0]], axis=-1)}


# fewer trees / iterations than the defaults: the same estimator types, a tenth of the time
FAST = {"random_forest": {"n_estimators": 4, "n_jobs": 1}, "gradient_boosting": {"max_iter": 5}, "logistic": {}}


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_every_model_hrdv2_trains_still_loads(classifier, feature_maps, tmp_path):
    """Each classifier x each feature kind x with/without PCA x 2 or 3 classes: save, load, same
    predictions (the allow-list is derived, so a new estimator type would show up here)."""
    from hrdv2.features.sets import FeatureConfig

    image = _image()
    for kind in ("classical", "deep", "hybrid"):
        for pca in ((None,) if kind == "classical" else (None, 8)):
            n_classes = 3 if pca else 2
            config = FeatureConfig(kind, pca_components=pca)
            seg = Segmenter(config, classifier, max_samples=300, classifier_params=FAST[classifier])
            with threadpool_limits(1):
                seg.fit([image], [_scribble(n_classes)], [feature_maps[kind]])
            assert (seg.pca_ is not None) == bool(pca)
            path = seg.save(tmp_path / f"{kind}-{pca}.skops")
            loaded = Segmenter.load(path)
            assert loaded.classes_.tolist() == list(range(1, n_classes + 1))
            with threadpool_limits(1):
                feats = feature_maps[kind]
                np.testing.assert_array_equal(loaded.predict(image, feats), seg.predict(image, feats))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_auto_blend_saves_loads_and_predicts_the_same(n_classes, tmp_path):
    """auto's blend of a forest and a logistic regression is a file hrdv2 writes: it loads (its
    VotingClassifier is on the derived allow-list) and predicts as before, through the compiled
    forest path too (its linear part folded into one float32 product: equal within rounding)."""
    from hrdv2.segmentation.forest import fast_forest

    with threadpool_limits(1):
        forest = Segmenter("classical", "random_forest", max_samples=200, classifier_params={
            "n_estimators": 3, "n_jobs": 1}).fit([_image()], [_scribble(n_classes)])
    state = _blend_state(forest._state(), n_classes)
    path = model_file.write_model(tmp_path / "blend.skops", state)
    loaded = Segmenter.load(path)
    assert type(loaded.model_).__name__ == "VotingClassifier" and loaded.classifier == "random_forest"
    rows = (np.random.default_rng(1).random((500, state["n_features_in"])) * 2).astype(np.float32)
    with threadpool_limits(1):
        expected = state["model"].predict_proba(rows)
        assert expected.shape == (500, n_classes) and expected.min() < 0.2 < 0.8 < expected.max()
        np.testing.assert_allclose(loaded.predict_proba_features(rows), expected, atol=1e-6)
        fast = fast_forest(loaded, loaded.model_)  # no row count: compiled regardless of size
        assert type(fast).__name__ == "FastBlend"
        np.testing.assert_allclose(fast(rows), expected, atol=1e-5)


def test_cli_train_then_apply(tmp_path):
    """The model the command line writes loads and applies through the command line."""
    from hrdv2.cli.main import cli

    Image.fromarray(_image()).save(tmp_path / "img.png")
    Image.fromarray(_scribble()).save(tmp_path / "scr.png")
    model = tmp_path / "m.skops"
    runner = CliRunner()
    with threadpool_limits(1):
        res = runner.invoke(cli, ["train", "--image", str(tmp_path / "img.png"),
                                  "--scribble", str(tmp_path / "scr.png"),
                                  "--classifier", "logistic", "--out", str(model)])
        assert res.exit_code == 0, res.output
        res = runner.invoke(cli, ["apply", str(model), str(tmp_path / "img.png"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    labels = np.asarray(Image.open(tmp_path / "out" / "img_labels.png"))
    assert labels[12, 12] == 1 and labels[0, 0] == 2


def test_save_refuses_what_load_would_refuse(base_state, tmp_path):
    """hrdv2 never writes a file it would not read: a model holding a foreign type is not saved."""
    from sklearn.preprocessing import FunctionTransformer

    state = _state_with(base_state, pca=FunctionTransformer(np.log1p))
    with pytest.raises(ModelFileError, match="refusing to write a model holding type sklearn.preprocessing"):
        model_file.write_model(tmp_path / "m.skops", state)
    assert not (tmp_path / "m.skops").exists()


def test_allow_list_is_exact():
    """No function / type references beyond builtin dict-key types, no numpy or scipy class
    outside arrays and the random generator, no FunctionTransformer."""
    allowed = model_file.allowed_types()
    loaders = {loader for loader, _ in allowed}
    assert loaders.isdisjoint({"FunctionNode", "MethodNode", "PartialNode", "OperatorFuncNode", "BytesNode", "SetNode"})
    assert {name for loader, name in allowed if loader == "TypeNode"} <= {
        "builtins.str", "builtins.int", "builtins.float", "builtins.bool"}
    for loader, name in allowed:
        assert "FunctionTransformer" not in name
        assert not name.startswith("scipy.")
        if name.startswith("numpy."):
            assert loader in ("NdArrayNode", "RandomGeneratorNode", "RandomGeneratorNode.bit_generator"), (loader, name)
    assert ("ObjectNode", "sklearn.decomposition._pca.PCA") in allowed
    assert model_file.allowed_types.cache_info().currsize == 1
