"""Sentence heatmaps of stored studies: the engine call, the `/heatmap` API function and the app's panel."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest

from db.store import CaseStore, StoreError
from medcm.data.demo_archive import write_demo_archive
from medcm.engine.facade import Engine
from medcm.engine.grounding import grounded_instance, heatmap_grid, overlay

SIZE = 48


@pytest.fixture(scope="module")
def engine(untrained_checkpoint, tmp_path_factory):
    """Four demo studies (48 px) in a SQLite store, with an untrained 32-px checkpoint."""
    root = tmp_path_factory.mktemp("grounding")
    write_demo_archive(root / "demo", n_train=4, n_dev=0, seed=0, size=SIZE)
    store = CaseStore(f"sqlite:///{root / 'cases.db'}")
    engine = Engine(store, checkpoint=untrained_checkpoint(volume=False), device="cpu")
    assert engine.ingest([root / "demo" / "studies"], user="tester").added_instances == 4
    store.add_user("dr.v", "viewer", "viewer-pass")
    yield engine
    store.close()


@pytest.fixture(scope="module")
def study_uid(engine):
    return engine.store.list_studies()[0].study_uid


def test_a_sentence_heatmap_covers_the_stored_image(engine, study_uid):
    heat = engine.sentence_heatmap(study_uid, "  There is a small right pleural effusion. ")
    assert heat.sentence == "There is a small right pleural effusion."
    assert heat.heatmap.shape == heat.pixels.shape == (SIZE, SIZE) and heat.heatmap.dtype == np.float32
    assert 0.0 <= float(heat.heatmap.min()) < 0.1 and 0.9 < float(heat.heatmap.max()) <= 1.0  # resized from 32 px
    assert heat.heatmap[heat.peak] == heat.heatmap.max()
    instance = engine.store.get_study(study_uid).instances[0]
    assert heat.sop_instance_uid == instance.sop_instance_uid
    other = engine.sentence_heatmap(study_uid, "The heart is moderately enlarged.")
    assert not np.allclose(other.heatmap, heat.heatmap)  # the map depends on the sentence


def test_bad_requests_are_refused_in_one_line(engine, study_uid):
    with pytest.raises(ValueError, match="the sentence is empty"):
        engine.sentence_heatmap(study_uid, "   ")
    with pytest.raises(StoreError):
        engine.sentence_heatmap("1.2.3.4.unknown", "No pneumothorax.")


def test_the_middle_instance_of_the_first_series_is_grounded():
    views = [SimpleNamespace(series_uid=s, metadata={"instance_number": n}, name=f"{s}{n}")
             for s, n in (("a", 3), ("b", 1), ("a", 1), ("a", 2))]
    assert grounded_instance(views).name == "a2"
    with pytest.raises(ValueError, match="no stored image"):
        grounded_instance([])


def test_grid_and_overlay_are_small_and_faithful():
    heat = np.zeros((64, 96), dtype=np.float32)
    heat[:16, -24:] = 1.0  # the top-right corner
    grid = heatmap_grid(heat, 32)
    assert (len(grid), len(grid[0])) == (32, 32)
    assert grid[0][-1] == 1.0 and grid[-1][0] == 0.0
    picture = overlay(np.full((64, 96), 0.5, np.float32), heat)
    assert picture.shape == (64, 96, 3) and picture.dtype == np.uint8
    assert tuple(picture[-1, 0]) == (128, 128, 128)  # cold: the grey image unchanged
    assert int(picture[0, -1, 0]) > int(picture[0, -1, 2]) + 100  # hot: red over the grey


def test_heatmap_endpoint_returns_json_ready_fields(engine, study_uid, tmp_path):
    pytest.importorskip("gradio")
    from PIL import Image

    from ui.api import Endpoints, heatmap_json

    endpoints = Endpoints(engine, engine.store, tmp_path)
    result = endpoints.heatmap(study_uid, "Small right pleural effusion.", SimpleNamespace(username="dr.v"))
    assert result == heatmap_json(engine.sentence_heatmap(study_uid, "Small right pleural effusion."))
    assert result["shape"] == [SIZE, SIZE] and len(result["grid"]) == 32 and len(result["grid"][0]) == 32
    assert 0 <= result["peak"][0] < SIZE and 0 <= result["peak"][1] < SIZE
    assert all(0.0 <= v <= 1.0 for row in result["grid"] for v in row)
    with Image.open(io.BytesIO(base64.b64decode(result["overlay_png"]))) as png:
        assert (png.size, png.mode) == ((SIZE, SIZE), "RGB")
    events = engine.store.events(kind="view", user="dr.v", limit=5)
    assert events and events[0]["detail"]["screen"] == "api /heatmap"


def test_heatmap_endpoint_refuses_bad_input_readably(engine, study_uid, tmp_path):
    gr = pytest.importorskip("gradio")
    from ui.api import Endpoints

    endpoints = Endpoints(engine, engine.store, tmp_path)
    viewer = SimpleNamespace(username="dr.v")
    for uid, sentence, message in ((study_uid, " ", "no sentence"), ("", "Effusion.", "no study"),
                                   (study_uid, "Effusion.", "not logged in")):
        request = viewer if message != "not logged in" else SimpleNamespace(username=None)
        with pytest.raises(gr.Error, match=message):
            endpoints.heatmap(uid, sentence, request)


def test_the_app_shows_the_selected_sentences_heatmap(engine, study_uid, tmp_path):
    gr = pytest.importorskip("gradio")
    import typing

    from medcm.report.draft_types import DraftSentence
    from ui.app import build_app
    from ui.handlers import Handlers
    from ui.study import load_study

    handlers = Handlers(engine, engine.store, tmp_path)
    assert typing.get_type_hints(Handlers.on_sentence_heatmap)["evt"] is gr.SelectData  # Gradio injects it by type
    sentences = [DraftSentence("No pneumothorax.", "FINDINGS", 0.5, ()),
                 DraftSentence("Small right pleural effusion.", "FINDINGS", 0.6, ())]
    row_two = gr.SelectData(None, {"index": [1, 2], "value": "", "row_value": [2, "FINDINGS"]})
    viewer = SimpleNamespace(username="dr.v")
    picture = handlers.on_sentence_heatmap(load_study(engine.store, study_uid), sentences, row_two, viewer)
    expected = engine.sentence_heatmap(study_uid, "Small right pleural effusion.")
    assert picture.mode == "RGB" and picture.size == (11 * SIZE, 11 * SIZE)  # magnified to at least 512 px
    shrunk = np.asarray(picture.resize((SIZE, SIZE), resample=0))  # every 11th pixel: the overlay itself
    assert np.abs(shrunk.astype(int) - overlay(expected.pixels, expected.heatmap).astype(int)).max() <= 1
    app = build_app(engine, engine.store, upload_dir=tmp_path)
    assert "/heatmap" in {f"/{d['api_name']}" for d in app.get_config_file()["dependencies"] if d.get("api_name")}
