"""UI smoke: the Blocks app builds, widgets map to request fields by name, and the named endpoints work
through gradio_client on a live localhost server (including a bad request, after which it still serves)."""
import dataclasses

import pytest
from gradio_client import Client, handle_file

from studio.compare import STATS_COLUMNS
from studio.generation import GenerateRequest
from studio.loading import ModelCache
from studio.pngmeta import read_png
from studio.ui import build_app, launch
from studio.ui.fields import handler_fields
from studio.ui.generate_tab import GenerateHandlers
from tests.studio.ui import free_port


def test_handler_fields_are_exactly_the_request_fields():
    assert set(handler_fields(GenerateHandlers.on_generate, GenerateRequest)) == \
        {f.name for f in dataclasses.fields(GenerateRequest)}




@pytest.fixture(scope="module")
def client(family):
    demo = build_app(ModelCache())
    _, url, _ = launch(demo, prevent_thread_lock=True, server_port=free_port(), quiet=True)
    yield Client(url, verbose=False)
    demo.close()


def call_generate(client, models, **overrides):
    kwargs = dict(prompt="a red circle", negative_prompt="", seed=5, steps=2, guidance=5.0, scheduler="Euler",
                  batch_size=1, width=0, height=0, init_image=None, strength=0.75)
    kwargs.update(overrides)
    *galleries, stats, files, seed = client.predict(models, **kwargs, api_name="/generate")
    unwrap = [g["value"] if isinstance(g, dict) else g for g in galleries]  # visibility updates carry a value
    return (*unwrap, stats, files, seed)


def test_generate_two_models_side_by_side_through_the_api(client):
    *galleries, stats, files, seed = call_generate(client, ["tiny-base", "tiny-student"])
    assert len(galleries[0]) == 1 and len(galleries[1]) == 1 and not galleries[2]
    assert [row[0] for row in stats["data"]] == ["tiny-base", "tiny-student"]
    assert stats["data"][0][3] == 1.0  # speed-up of the first model vs itself
    assert seed == 5 and len(files) == 2
    params, meta = read_png(files[1])
    assert params["Model"] == "tiny-student" and params["Seed"] == "5" and meta["steps"] == 2


def test_image_to_image_through_the_api(client, tmp_path):
    from PIL import Image

    init = tmp_path / "init.png"
    Image.new("RGB", (32, 32), (0, 0, 255)).save(init)
    *galleries, stats, files, seed = call_generate(client, ["tiny-base"], init_image=handle_file(str(init)),
                                                   strength=0.5)
    assert len(galleries[0]) == 1
    params, _ = read_png(files[0])
    assert params["Denoising strength"] == "0.5"


def test_bad_input_is_reported_and_the_app_keeps_serving(client):
    with pytest.raises(Exception, match="choose at least one model"):
        call_generate(client, [])
    with pytest.raises(Exception, match="width must be a multiple of 8"):
        call_generate(client, ["tiny-base"], width=36)
    *galleries, stats, files, seed = call_generate(client, ["tiny-base"], seed=9)
    assert seed == 9 and len(files) == 1


def test_speed_options_through_the_api_and_bad_ones_refused(client):
    *galleries, stats, files, seed = call_generate(client, ["tiny-base"], steps=4, feature_reuse=2,
                                                   fuse_qkv=True, channels_last=True, vae_decode="full")
    params, meta = read_png(files[0])
    assert params["Feature reuse"] == "2 (branch 0)" and meta["feature_reuse"] == 2 and meta["fuse_qkv"] is True
    with pytest.raises(Exception, match="less than minimum value 1"):  # the slider's own bound
        call_generate(client, ["tiny-base"], feature_reuse=0)
    *galleries, stats, files, seed = call_generate(client, ["tiny-base"], feature_reuse=2, feature_reuse_branch=11)
    assert not files and stats["data"][0][STATS_COLUMNS.index("note")] == "failed: feature_reuse_branch must be an integer…"
    with pytest.raises(Exception, match="max is not in the list of choices"):  # the dropdown's own check
        call_generate(client, ["tiny-base"], compile="max")
    *galleries, stats, files, seed = call_generate(client, ["tiny-base"], seed=4)
    assert seed == 4 and "Feature reuse" not in read_png(files[0])[0]


def test_model_and_lora_lists_see_folders_added_while_the_app_runs(client, family, tmp_path):
    """What opening the Generate tab (and "↻ models" / "↻ LoRAs") sends: the registry and LoRAs as they are now."""
    import shutil

    from studio.hosting import display_path
    from studio.paths import models_dir
    from studio.ui.generate_tab import on_refresh_lists

    models, loras = on_refresh_lists()
    assert {"tiny-base", "tiny-student"} <= {c[0] for c in models.choices}
    assert "added-later" not in {c[0] for c in models.choices}
    added = models_dir() / "added-later"
    shutil.copytree(family["student"], added)
    lora = models_dir() / "loras" / "added-lora"
    lora.mkdir(parents=True)
    (lora / "pytorch_lora_weights.safetensors").write_bytes(b"")
    try:
        models, loras = on_refresh_lists()
        assert "added-later" in {c[0] for c in models.choices}
        assert any(path == display_path(lora) for _, path in loras.choices)  # "<data>/models/loras/added-lora"
        assert not [path for _, path in loras.choices if path.startswith("/")]  # no absolute server path
        assert client.predict(api_name="/list_models") is not None  # the endpoint stays served
    finally:
        shutil.rmtree(added)
        shutil.rmtree(lora)


def test_api_parameters_keep_their_names_and_order_new_ones_last(tmp_path):
    """The /generate API is an interface: the original parameters keep their names and positions; LoRA, then the
    VAE choice and low-VRAM mode, then the speed options, then the condition image were added at the end, with
    defaults."""
    import inspect

    from studio.ui.generate_tab import LORA_FIELDS, MEMORY_FIELDS, SPEED_FIELDS, GenerateHandlers, api_parameters

    assert api_parameters() == ["models", "prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler",
                                "batch_size", "width", "height", "init_image", "strength", *LORA_FIELDS, "vae",
                                *MEMORY_FIELDS, *SPEED_FIELDS, "condition_image"]
    assert SPEED_FIELDS == ("attention", "channels_last", "fuse_qkv", "vae_decode", "feature_reuse",
                            "feature_reuse_branch", "compile")
    signature = inspect.signature(GenerateHandlers.on_generate).parameters
    assert all(signature[p].default is not inspect.Parameter.empty
               for p in (*LORA_FIELDS, "vae", *MEMORY_FIELDS, *SPEED_FIELDS, "condition_image"))


def test_generate_with_a_lora_on_one_of_two_models_through_the_api(client):
    from studio.paths import models_dir
    from tests.conftest import make_tiny_pipeline
    from tests.studio.test_lora import save_random_lora

    folder = models_dir() / "loras" / "tiny-style"
    file = save_random_lora(make_tiny_pipeline(), folder)
    choices = client.predict(api_name="/list_loras")
    paths = [c[1] if isinstance(c, (list, tuple)) else c for c in choices["choices"]] if isinstance(choices, dict) \
        else choices
    assert "<data>/models/loras/tiny-style" in str(paths) and str(folder) not in str(paths)
    *galleries, stats, files, seed = call_generate(client, ["tiny-base", "tiny-student"], lora=str(file),
                                                   lora_scale=0.8, lora_models=["tiny-base"])
    assert len(files) == 2
    with_lora, _ = read_png(files[0])
    without, _ = read_png(files[1])
    assert with_lora["Lora hashes"].startswith("pytorch_lora_weights: ") and "Lora hashes" not in without
