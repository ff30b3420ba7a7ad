"""Layers tab through gradio_client on a live localhost server: block map, plan kind, compare, sweep, export."""
from __future__ import annotations

import dataclasses

import gradio as gr
import pytest
import torch
from gradio_client import Client

from studio.ablation import (
    SHOWN_SWEEP_COLUMNS,
    SWEEP_HEADERS,
    AblationConfig,
    model_facts,
    plot_sweep,
    removable_units,
    sweep_table,
)
from studio.ablation.sweep import SweepResult
from studio.blocks import format_si
from studio.hosting import Hosting
from studio.loading import ModelCache
from studio.paths import data_dir
from studio.recipes import recipe_plan
from studio.ui import build_app, launch
from studio.ui.fields import handler_fields
from studio.ui.layers_tab import LayersHandlers, config_from_values
from tests.studio.ui import free_port

LAYER = "down_blocks.2.attentions.1.transformer_blocks.3"


def test_handlers_take_config_fields_by_name():
    fields = {f.name for f in dataclasses.fields(AblationConfig)}
    assert set(handler_fields(LayersHandlers.on_compare, AblationConfig)) == fields
    # the ticked units are what to sweep
    assert set(handler_fields(LayersHandlers.on_sweep, AblationConfig)) == fields - {"recipe"}
    values = dict(model="tiny-base", units=[LAYER], recipe="(none)", prompts="a\n\nb ", seeds="1, 2", steps=3.0,
                  guidance=2.0, resolution=0)
    assert config_from_values(values) == AblationConfig("tiny-base", (LAYER,), "", ("a", "b"), (1, 2), 3, 2.0, None)
    with pytest.raises(ValueError, match="seeds: give whole numbers"):
        config_from_values(dict(values, seeds="x"))




@pytest.fixture(scope="module")
def client(family):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    demo = build_app(ModelCache(), hosting=Hosting())
    _, url, _ = launch(demo, prevent_thread_lock=True, server_port=free_port(), quiet=True)
    yield Client(url, verbose=False)
    demo.close()
    torch.set_num_threads(threads)


def test_map_and_plan(client):
    table, plot, units, info = client.predict("tiny-base", 0, api_name="/layers_map")
    rows = table["data"]
    assert rows[0][0] == "conv_in" and any(r[0].strip() == "d2 a1.3" and r[1] == LAYER for r in rows)
    assert "tiny-base" in info and "32×32" in info and plot is not None
    choices = dict((value, label) for label, value in units["choices"])
    assert choices[LAYER] == "d2 a1.3" and choices["mid_block"] == "mid"
    by_path = {r[1]: r for r in rows}  # numbers formatted k/M/G, indentation kept (non-breaking spaces)
    assert by_path[LAYER][0] == "\u00a0" * 6 + "d2 a1.3" and by_path["down_blocks.2"][4].endswith(" k")
    kind = client.predict("tiny-base", [LAYER], "(none)", 0, api_name="/layers_plan")
    assert "Config-expressible" in kind
    kind = client.predict("tiny-base", ["mid_block.attentions.0"], "(none)", 0, api_name="/layers_plan")
    assert "Runtime-only" in kind
    every = [f"down_blocks.1.attentions.0.transformer_blocks.{k}" for k in (0, 1)]  # a stack must keep one layer
    assert "invalid plan" in client.predict("tiny-base", every, "(none)", 0, api_name="/layers_plan")


def test_compare_and_export(client):
    full, ablated, numbers, head = client.predict(
        "tiny-base", ["mid_block.attentions.0", "mid_block.resnets.1"], "(none)",
        "a red circle on a blue background", "4", 2, 5.0, 0, api_name="/layers_compare")
    assert len(full) == len(ablated) == 1 and "(config)" in head
    quantities = [r[0] for r in numbers["data"]]
    assert quantities[:2] == ["UNet params", "MACs / UNet forward"] and "SSIM to full image" in quantities
    latency = numbers["data"][quantities.index("latency")]  # one image per side: no ratio shown as fact
    assert latency[1:3] == ["—", "—"] and "timing noise" in latency[3]
    out = client.predict("tiny-base", ["mid_block.attentions.0", "mid_block.resnets.1"], "(none)", "tiny-ui-slim",
                         api_name="/layers_export")
    assert "tiny-ui-slim" in out
    with pytest.raises(Exception, match="is taken"):
        client.predict("tiny-base", ["mid_block"], "(none)", "tiny-ui-slim", api_name="/layers_export")


def test_sweep(client):
    text = client.predict(
        "tiny-base", ["mid_block.attentions.0", LAYER], "a red circle on a blue background", "4242", 2, 5.0, 0, False,
        api_name="/layers_sweep_estimate")  # measured cost per step x (2 units + the full reference) x 2 steps
    assert "2 of 2 units to run: 3 images × 2 steps ≈ **" in text and "s per step" in text
    assert text.endswith("Starting…")  # short: it starts at once, no question
    table, heatmap, csv, status = client.predict(
        "tiny-base", ["mid_block.attentions.0", LAYER], "a red circle on a blue background", "4242", 2, 5.0, 0, False,
        api_name="/layers_sweep")  # a seed no other test sweeps with: the on-disk sweep cache is shared
    assert len(table["data"]) == 2 and table["headers"] == SWEEP_HEADERS
    assert {r[-1] for r in table["data"]} == {"mid_block.attentions.0", LAYER} and "latency_ratio" not in SHOWN_SWEEP_COLUMNS  # one timing per unit is noise: only in the CSV
    assert "2 generated" in status and open(csv).readline().startswith("rank,unit")
    assert str(data_dir()) not in csv  # a staged copy, not a file of the data folder
    text = client.predict("tiny-base", ["mid_block.attentions.0", LAYER], "a red circle on a blue background",
                                "4242", 2, 5.0, 0, False, api_name="/layers_sweep_estimate")
    assert "all in the cache: no generation needed" in text

    with pytest.raises(Exception, match="resolution must be a multiple of 8"):
        client.predict("tiny-base", [], "a", "0", 2, 5.0, 36, False, api_name="/layers_sweep")


@pytest.mark.hostile
@pytest.mark.parametrize("resolution", [2**31, -8, 1e300, 33.5])
def test_bad_resolutions_get_a_clear_message(client, resolution):
    """Issue 13 (7): resolution 2**31 gave a raw overflow error."""
    with pytest.raises(Exception, match="resolution must be"):
        client.predict("tiny-base", resolution, api_name="/layers_map")
    with pytest.raises(Exception, match="resolution must be"):
        client.predict("tiny-base", [], "a", "0", 2, 5.0, resolution, False, api_name="/layers_sweep")


def test_paths_outside_the_model_roots_are_refused(client, tiny_folder):
    """The Layers tab loaded models with cache.get(name) without roots: any local path. The model dropdown refuses
    values it does not list; behind it, the handlers keep paths inside the model roots (and, in public mode, paths
    are for admins)."""
    for path in (str(tiny_folder), "/etc", "../../x/y.safetensors"):
        with pytest.raises(Exception, match="not in the list of choices"):
            client.predict(path, 0, api_name="/layers_map")
    handlers = LayersHandlers(ModelCache(), Hosting())
    for path in (str(tiny_folder), "/etc", "assets/../../x"):
        with pytest.raises(ValueError, match="outside the allowed folders"):
            handlers._pipe(path)
    public = LayersHandlers(ModelCache(), Hosting(mode="public"))
    with pytest.raises(gr.Error, match="Naming a model by path is for admins only"):
        public._check_model(str(tiny_folder), _anonymous())


def _anonymous():
    from types import SimpleNamespace

    return SimpleNamespace(client=SimpleNamespace(host="203.0.113.9"), headers={}, username=None, request=None)


def test_the_sweep_works_on_a_copy_of_its_own(family):
    """The sweep ablates its UNet in place: on its own copy, never on the cached pipeline generation uses."""
    cache = ModelCache()
    shared = cache.get("tiny-base")
    handlers = LayersHandlers(cache, Hosting())
    private = handlers._private_pipe("tiny-base")
    assert private is not shared and private.unet is not shared.unet
    assert private.text_encoder is not shared.text_encoder and private.vae is not shared.vae
    assert all(torch.equal(a, b) for a, b in zip(private.unet.state_dict().values(), shared.unet.state_dict().values()))


def test_released_configs_without_weights(client):
    """SD 1.4 from assets/configs/: block map and BK-SDM plans on the real shapes; generating needs weights."""
    table, plot, units, info = client.predict("sd-v1-4", 0, api_name="/layers_map")
    assert "sd-v1-4" in info and "512×512" in info and "859,520,964" in info and plot is not None
    assert any(r[0] == "d3" and r[1] == "down_blocks.3" for r in table["data"])
    plan = client.predict("sd-v1-4", [], "bk-sdm-small", 0, api_name="/layers_plan")
    assert "Config-expressible" in plan and "Params 860 M → 482 M" in plan
    with pytest.raises(Exception, match="released UNet config without weights"):
        client.predict("sd-v1-4", [], "bk-sdm-small", "a red circle on a blue background", "0", 2, 5.0, 0,
                       api_name="/layers_compare")


def test_one_name_per_unit_in_checkboxes_table_heatmap_and_sweep_table():
    unet_config = model_facts("sdxl")[0]
    units = removable_units(unet_config, groups=True)
    handlers = LayersHandlers(ModelCache())
    table, _, boxes, _ = handlers.on_map("sdxl", 0)
    checkbox = {value: label for label, value in boxes.constructor_args["choices"]}
    in_table = {row[1]: row[0].strip() for row in table}
    rows = [{"unit": u, "damage": 0.1, "damage_per_mparam": 0.1, "ssim": 0.9, "psnr": 20.0, "fidelity_drop": None,
             "latency_ratio": 1.0, "rank": i, "kind": "x", "params_saved": 1, "macs_saved": 1}
            for i, u in enumerate(units)]
    fig = plot_sweep(SweepResult("sdxl", AblationConfig("sdxl"), rows, 0, len(rows), False, 0.0), unet_config)
    in_heatmap = {t.get_text() for t in fig.axes[0].texts}
    in_sweep = {row[-1]: row[SHOWN_SWEEP_COLUMNS.index("unit")] for row in sweep_table(rows)}
    assert checkbox["up_blocks.1.attentions.1.transformer_blocks.0"] == "u1 a1.0"
    for unit in units:
        names = {checkbox[unit], in_sweep[unit]} | ({in_table[unit]} if unit in in_table else set())
        assert len(names) == 1 and names <= in_heatmap, (unit, names)


def test_choosing_a_recipe_ticks_its_units_and_unticking_one_leaves_the_recipe(family):
    handlers = LayersHandlers(ModelCache())
    unet_config = model_facts("sdxl")[0]
    ticked = handlers.on_recipe("sdxl", "vega", 0).value
    assert set(ticked) == recipe_plan("vega", unet_config).units and len(ticked) == 47
    assert "the **vega** recipe (47 units, ticked below)" in handlers.on_plan("sdxl", ticked, "vega", 0)
    assert handlers.on_units_edited("sdxl", ticked[1:], "vega") == "(none)"  # one unticked: no longer the recipe
    assert handlers.on_units_edited("sdxl", [*ticked, "mid_block.attentions.0"], "vega") != "(none)"
    assert handlers.on_recipe("sdxl", "(none)", 0).value == []
    plan = handlers.on_plan("sdxl", ticked[1:], "(none)", 0)
    assert "the 46 ticked units" in plan and "Params 2.57 G → " in plan
    koala = handlers.on_recipe("sdxl", "koala-700m", 0).value  # its pairs cannot be ticked: the plan names them
    assert "The recipe also removes d0 p1" in handlers.on_plan("sdxl", koala, "koala-700m", 0)


@pytest.mark.parametrize("value,text", [(10035200, "10.0 M"), (216_750_000, "217 M"), (999, "999"),
                                        (1234, "1.23 k"), (2_567_000_000, "2.57 G"), (0, "0")])
def test_numbers_are_formatted_with_k_m_g(value, text):
    assert format_si(value) == text
    assert format_si(value, "MACs") == (text + "MACs" if text[-1].isalpha() else text + " MACs")


def test_a_long_sweep_asks_first_with_its_estimate(family, monkeypatch):
    import studio.ui.layers_tab as layers_tab

    handlers = LayersHandlers(ModelCache())
    args = ("tiny-base", [], "a red circle on a blue background", "777", 3, 5.0, 0, False)
    text, confirm, go = handlers.on_sweep_estimate(*args)
    assert go is text.endswith("Starting…") and confirm.visible is not go  # short: starts; long: asks
    monkeypatch.setattr(layers_tab, "LONG_RUN_S", 0.0)  # any sweep counts as long now
    text, confirm, go = handlers.on_sweep_estimate(*args)
    n = len(removable_units(model_facts("tiny-base")[0]))
    assert f"{n} of {n} units to run: {n + 1} images × 3 steps" in text and "Start it with the button below" in text
    assert go is False and confirm.visible and confirm.value.startswith("Run the sweep (≈ ")
