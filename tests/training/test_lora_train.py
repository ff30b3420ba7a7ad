"""training.lora on the tiny SDXL-layout pipeline (32 px, a few CPU steps): only adapters train, the file loads in
plain diffusers and changes the image (scale 0 = base), resume replays the next step exactly, bad inputs fail
clearly."""
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from studio.build import SDXLArch, build_sdxl_pipeline
from studio.lora import LoraRef, ensure_loaded
from studio.demo.tokenizer import build_tokenizer
from tests.conftest import TINY_WORDS
from studio.train_config.lora import LORA_WEIGHT_NAME, LoraTrainConfig
from training.lora import main, make_trainer, run_lora
from studio.demo.shapes import export_imagefolder
from training.trainer import read_state

PROMPT = "a red circle on a blue background"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return export_imagefolder(tmp_path_factory.mktemp("lora-data") / "shapes", 6, size=32)


def tiny_config(base, data, out, **overrides) -> LoraTrainConfig:
    cfg = dict(base_model=str(base), dataset=str(data), buckets=[[32, 32]], steps=3, batch_size=2, lr=1e-2, rank=4,
               alpha=2.0, checkpoint_every=2, output_dir=str(out))
    return LoraTrainConfig(**{**cfg, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_folder, data, tmp_path_factory):
    """A 3-step run with checkpoints at 2 and 3 (rank 4, alpha 2: scale 0.5 must survive the save)."""
    out = tmp_path_factory.mktemp("lora") / "run"
    trainer = make_trainer(tiny_config(tiny_folder, data, out))
    result = trainer.run()
    return trainer, result


def render(pipe, **kwargs):
    out = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(3), output_type="np", **kwargs)
    return out.images[0]


def test_only_adapter_parameters_train_and_base_weights_stay_bit_identical(trained, tiny_folder):
    trainer, result = trained
    model = trainer.task.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == trainer.task.lora_params
    fresh = StableDiffusionXLPipeline.from_pretrained(tiny_folder).unet.state_dict()
    now = {k.replace(".base_layer", ""): v for k, v in model.unet.state_dict().items() if "lora_" not in k}
    assert set(now) == set(fresh)
    assert all(torch.equal(now[k], fresh[k]) for k in fresh)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in lora_b)  # B starts at zero ("gaussian" init) and moved
    assert result.steps_done == 3 and all(np.isfinite(h["loss"]) for h in result.history)


def test_output_is_a_diffusers_lora_with_config(trained):
    trainer, result = trained
    out = result.output
    assert out == trainer.out and (out / "lora_config.json").exists() and (out / "config.json").exists()
    state = load_file(out / LORA_WEIGHT_NAME)
    assert state and all(k.startswith("unet.") and "lora" in k for k in state)
    with safe_open(str(out / LORA_WEIGHT_NAME), framework="pt") as fh:
        meta = fh.metadata()
    assert json.loads(meta["studio_lora_config"])["rank"] == 4 and "lora_adapter_metadata" in meta
    card = json.loads((out / "lora_config.json").read_text())
    assert card["lora_params"] == trainer.task.lora_params and card["config"]["alpha"] == 2.0
    # checkpoints keep the adapters only (same format), not the frozen UNet
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    files = {p.name for p in (out / "checkpoint-2").iterdir()}
    assert LORA_WEIGHT_NAME in files and "model.safetensors" not in files


def test_plain_diffusers_loads_it_changes_the_image_and_scale_zero_is_the_base(trained, tiny_folder):
    trainer, result = trained
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    base = render(pipe)
    pipe.load_lora_weights(str(result.output), adapter_name="trained")
    with_lora = render(pipe)
    assert np.abs(with_lora - base).max() > 1e-3
    trainer.task.model.eval()
    assert np.abs(with_lora - render(trainer.task.pipe)).max() < 1e-4  # same output as the trained model in memory
    pipe.set_adapters(["trained"], adapter_weights=[0.0])
    assert np.abs(render(pipe) - base).max() < 1e-5


def test_resume_replays_the_next_step_exactly(trained, tiny_folder, data, tmp_path):
    trainer, result = trained
    ckpt = result.output / "checkpoint-2"
    assert read_state(ckpt)["step"] == 2
    resumed = run_lora(tiny_config(tiny_folder, data, tmp_path / "resumed"), resume_from=str(ckpt))
    assert [h["step"] for h in resumed.history] == [3]
    assert resumed.history[0]["loss"] == pytest.approx(result.history[2]["loss"], rel=1e-6, abs=1e-9)
    a, b = load_file(result.output / LORA_WEIGHT_NAME), load_file(resumed.output / LORA_WEIGHT_NAME)
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)


def test_cli_with_toml_and_text_encoder_lora(tiny_folder, data, tmp_path):
    cfg = tmp_path / "lora-tiny.toml"
    cfg.write_text(f'base_model = "{tiny_folder}"\ndataset = "{data}"\nbuckets = [[32, 32]]\nrank = 2\n'
                   f'batch_size = 2\nsteps = 3\noutput_dir = "{tmp_path / "cli"}"\n')
    assert main(["--config", str(cfg), "--steps", "1", "--save_dtype", "fp16", "--exclude_modules",
                 r".*up_blocks\..*"]) == 0
    keys = load_file(tmp_path / "cli" / LORA_WEIGHT_NAME)
    assert {k.split(".")[0] for k in keys} == {"unet"} and {v.dtype for v in keys.values()} == {torch.float16}
    assert keys and not any(k.startswith("unet.up_blocks.") for k in keys)
    assert load_file(tmp_path / "cli" / "checkpoint-1" / LORA_WEIGHT_NAME)["unet." + next(iter(
        k[5:] for k in keys))].dtype == torch.float32  # checkpoints keep full precision
    plain = StableDiffusionXLPipeline.from_pretrained(tiny_folder)
    plain.load_lora_weights(str(tmp_path / "cli"))
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())["config"]
    assert saved["steps"] == 1 and saved["rank"] == 2 and saved["train_text_encoder"] is False
    assert main(["--config", str(cfg), "--steps", "1", "--set", "train_text_encoder=true"]) == 0
    keys = load_file(tmp_path / "cli" / LORA_WEIGHT_NAME)
    assert {k.split(".")[0] for k in keys} == {"unet", "text_encoder", "text_encoder_2"}
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())["config"]
    assert saved["steps"] == 1 and saved["train_text_encoder"] is True
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_folder)
    pipe.load_lora_weights(str(tmp_path / "cli"))
    assert len(pipe.get_list_adapters()) == 3


def other_arch_lora(folder):
    """A LoRA made for a UNet with other widths (same text encoders)."""
    pipe = build_sdxl_pipeline(SDXLArch(block_out_channels=(8, 16, 24), head_dim=8, text_hidden=(16, 16),
                                        vae_channels=(8, 8, 8), image_size=32), build_tokenizer(TINY_WORDS))
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    return folder / LORA_WEIGHT_NAME


def test_bad_inputs_get_clear_errors(tiny_folder, data, tmp_path, trained):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="exclude_modules: bad regex"):
        tiny_config(tiny_folder, data, out, exclude_modules="(")
    for rank in (0, -2, 1.5, 10**9, True):
        with pytest.raises(ValueError, match="rank must be an integer >= 1 and <= 1024"):
            tiny_config(tiny_folder, data, out, rank=rank)
    with pytest.raises(ValueError, match="has no metadata.jsonl. Put your images there with a metadata.jsonl"):
        tiny_config(tiny_folder, tmp_path, out)
    with pytest.raises(ValueError, match="'data/lora-images' does not exist. Put your images there"):
        tiny_config(tiny_folder, "data/lora-images", out)
    with pytest.raises(ValueError, match="unknown model"):
        tiny_config("no-such-model", data, out)
    no_captions = tmp_path / "no-captions"
    no_captions.mkdir()
    (no_captions / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": p.name}) + "\n" for p in sorted(data.glob("*.png"))))
    for p in data.glob("*.png"):
        (no_captions / p.name).write_bytes(p.read_bytes())
    with pytest.raises(ValueError, match="needs 'file_name' and 'text'"):
        make_trainer(tiny_config(tiny_folder, no_captions, out))
    (no_captions / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": p.name, "text": " "}) + "\n" for p in sorted(data.glob("*.png"))))
    with pytest.raises(ValueError, match="empty 'text' caption"):
        make_trainer(tiny_config(tiny_folder, no_captions, out))
    with pytest.raises(ValueError, match="do not fit UNet2DConditionModel"):
        make_trainer(tiny_config(tiny_folder, data, out, target_modules=["no_such_proj"]))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a valid .safetensors file"):
        make_trainer(tiny_config(tiny_folder, data, out, init_lora=str(corrupt)))
    wrong = other_arch_lora(tmp_path / "other")
    with pytest.raises(ValueError, match="does not fit this model's architecture"):
        make_trainer(tiny_config(tiny_folder, data, out, init_lora=str(wrong)))
    with pytest.raises(ValueError, match="does not fit this model's architecture"):  # our LoRA, another model
        other = build_sdxl_pipeline(SDXLArch(block_out_channels=(8, 16, 24), head_dim=8, text_hidden=(16, 16),
                                             vae_channels=(8, 8, 8), image_size=32), build_tokenizer(TINY_WORDS))
        ensure_loaded(other, LoraRef(str(trained[1].output)))


@pytest.mark.parametrize("concept", ["heart", "orange"])
def test_demo_concept_data_and_scoring(concept, tiny_folder, tmp_path):
    from PIL import Image

    from studio.demo.concepts import concept_prompts, evaluate_concept, export_concept_data

    folder = export_concept_data(tmp_path / concept, 4, concept, reg_count=2, size=32)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    assert [r["concept"] for r in rows] == [True] * 4 + [False] * 2
    assert all(concept in (r["shape"], r["colour"]) for r in rows[:4])
    assert all(r["text"] == f"a {r['colour']} {r['shape']} on a {r['background']} background" for r in rows)
    images, texts = [Image.open(folder / r["file_name"]) for r in rows], [r["text"] for r in rows]
    assert evaluate_concept(images, texts)["accuracy"]["all"] == 1.0  # clean data is recognised, old and new
    wrong = texts[0].replace("heart", "circle") if concept == "heart" else texts[0].replace("orange", "red")
    assert evaluate_concept(images[:1], [wrong])["accuracy"]["all"] == 0.0
    assert len({p for p, _ in concept_prompts(40, concept)}) == 40
    with pytest.raises(ValueError, match="unknown demo concept"):
        concept_prompts(2, "teal")
    cfg = LoraTrainConfig.load(f"configs/lora-demo-{concept}.toml",
                               {"base_model": str(tiny_folder), "dataset": str(folder)})
    assert cfg.target_modules == ["attn2.to_k", "attn2.to_v"] and cfg.save_dtype == "fp16"


def test_demo_concept_dataset_name_builds_the_same_data_in_memory(tiny_folder, tmp_path):
    """dataset = "demo:<concept>" trains on exactly what ``demo data`` exports (no folder to prepare first)."""
    import numpy as np
    from PIL import Image

    from studio.demo.concepts import export_concept_data
    from training.data import DEMO_CONCEPT_COUNTS, load_items

    folder = export_concept_data(tmp_path / "orange", 2, "orange", reg_count=2)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    items = load_items("demo:orange")
    assert len(items) == sum(DEMO_CONCEPT_COUNTS)
    for item, row in zip([items[0], items[1], items[DEMO_CONCEPT_COUNTS[0]]], rows[:2] + rows[2:3]):
        assert item.text == row["text"]
        assert np.array_equal(np.asarray(item.image), np.asarray(Image.open(folder / row["file_name"])))
    cfg = LoraTrainConfig.load(None, {"base_model": str(tiny_folder), "dataset": "demo:orange"})
    assert cfg.dataset == "demo:orange"
    with pytest.raises(ValueError, match="LoraTrainConfig.dataset: unknown demo concept 'teal'; allowed: demo:heart"):
        LoraTrainConfig.load(None, {"base_model": str(tiny_folder), "dataset": "demo:teal"})


def test_a_teacher_lora_is_ported_to_a_student_through_its_name_map(tiny_folder, tmp_path):
    """Student transformer layer j is a copy of some teacher layer (the Vega recipe renumbers them): the ported LoRA
    gives each student module the adapter of its teacher source, drops the removed layers' adapters, and loads in
    plain diffusers on the student with every adapter matched."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers

    from studio.recipes import recipe_plan
    from studio.removal import build_student, export_student
    from training.lora_files import port_lora

    teacher = StableDiffusionXLPipeline.from_pretrained(tiny_folder)
    plan = recipe_plan("vega", dict(teacher.unet.config))
    student_dir = export_student(*build_student(teacher.unet, plan), plan, tmp_path / "student")
    names = json.loads((student_dir / "name_map.json").read_text())
    torch.manual_seed(0)
    teacher.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, init_lora_weights=False,
                                        target_modules=["attn2.to_k", "attn2.to_v"]))
    StableDiffusionXLPipeline.save_lora_weights(tmp_path / "teacher-lora", unet_lora_layers=(
        convert_state_dict_to_diffusers(get_peft_model_state_dict(teacher.unet))))
    source = load_file(tmp_path / "teacher-lora" / LORA_WEIGHT_NAME)

    ported = load_file(port_lora(tmp_path / "teacher-lora", student_dir, tmp_path / "ported"))
    renumbered = 0
    for key, value in ported.items():
        module = key[5:].split(".attn2.")[0]
        assert torch.equal(value, source["unet." + names[module] + key[5 + len(module):]])
        renumbered += names[module] != module
    assert renumbered > 0 and 0 < len(ported) < len(source)
    assert len(source) - len(ported) == sum(not any(k[5:].startswith(t + ".") for t in names.values())
                                            for k in source)

    student_unet = UNet2DConditionModel.from_pretrained(student_dir)
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_folder, unet=student_unet)
    base = render(pipe)
    pipe.load_lora_weights(str(tmp_path / "ported"))
    assert sum(len(v) for v in pipe.get_list_adapters().values()) == 1
    assert np.abs(render(pipe) - base).max() > 1e-3
    with pytest.raises(ValueError, match="has no name_map.json"):
        port_lora(tmp_path / "teacher-lora", tiny_folder, tmp_path / "nope")


def test_output_kd_matches_a_teacher_with_its_lora_fused(tiny_folder, data, tmp_path, trained):
    """kd_teacher = the base itself: the adapter starts as a no-op (lora_B = 0), so the KD term starts at exactly 0;
    with a trained LoRA fused into the teacher it is positive; bad KD settings are refused before training."""
    same = make_trainer(tiny_config(tiny_folder, data, tmp_path / "same", kd_teacher=str(tiny_folder), kd_weight=1.0,
                                    steps=1, checkpoint_every=0))
    same.prepare()
    assert same.train_step()["kd"] == 0.0
    fused = make_trainer(tiny_config(tiny_folder, data, tmp_path / "fused", kd_teacher=str(tiny_folder),
                                     kd_teacher_lora=str(trained[1].output), kd_weight=0.5, steps=1,
                                     checkpoint_every=0))
    fused.prepare()
    info = fused.train_step()
    assert info["kd"] > 0 and info["loss"] > 0.5 * info["kd"]
    with pytest.raises(ValueError, match="LoraTrainConfig.kd_teacher: kd_weight 1.0 needs a teacher"):
        tiny_config(tiny_folder, data, tmp_path / "x", kd_weight=1.0)
    with pytest.raises(ValueError, match="LoraTrainConfig.kd_teacher_lora: .* does not exist"):
        tiny_config(tiny_folder, data, tmp_path / "x", kd_teacher=str(tiny_folder), kd_weight=1.0,
                    kd_teacher_lora=str(tmp_path / "missing"))


@pytest.mark.parametrize("name", ["lora-demo-orange", "lora-demo-heart", "lora-demo-ssd-orange"])
def test_shipped_lora_configs_validate_as_they_are(name):
    cfg = LoraTrainConfig.load(f"configs/{name}.toml")
    assert cfg.dataset.startswith("demo:") and cfg.save_dtype == "fp16" and cfg.rank == 2
