"""training.demo_family / demo_teacher: the teacher entry point runs end to end at toy size, learns, and is
reproducible; the evaluation prompt set."""
import csv
import json

import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionXLPipeline

from studio.build import build_sdxl_pipeline
from training import demo_family
from studio.demo.shapes import eval_prompts
from training.demo_teacher import TeacherConfig, demo_tokenizer, diffusion_loss, train_teacher


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: stable on a shared 2-core machine
    yield
    torch.set_num_threads(old)


def test_cli_tiny_run_saves_a_loadable_pipeline(tmp_path):
    out = tmp_path / "teacher"
    demo_family.main(["teacher", "--tiny", "--out", str(out), "--steps", "3", "--vae-steps", "3",
                      "--num-images", "32", "--threads", "1"])
    for rel in ("model_index.json", "unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                "text_encoder/model.safetensors", "text_encoder_2/model.safetensors", "tokenizer/tokenizer.json",
                "tokenizer_2/tokenizer.json", "scheduler/scheduler_config.json", "training_config.json", "loss.csv"):
        assert (out / rel).is_file(), rel
    with open(out / "loss.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["stage"] for r in rows] == ["vae"] * 3 + ["unet"] * 3
    assert all(float(r["loss"]) == float(r["loss"]) for r in rows)  # no NaN
    info = json.loads((out / "training_config.json").read_text())
    assert info["steps_done"] == 3 and info["config"]["steps"] == 3
    assert TeacherConfig.from_dict(info["config"]) == TeacherConfig.tiny(steps=3, vae_steps=3, num_images=32)
    pipe = StableDiffusionXLPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(info["vae_scaling_factor"])
    assert pipe.vae.config.scaling_factor != 1.0  # set from the latent std
    img = pipe("a red circle on a blue background", num_inference_steps=2, output_type="np").images
    assert img.shape == (1, 32, 32, 3)


def test_loss_goes_down_on_a_fixed_batch():
    cfg = TeacherConfig.tiny(caption_dropout=0.0)
    pipe = build_sdxl_pipeline(cfg.arch, demo_tokenizer(), seed=0)
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(0)
    latents = torch.randn(8, 4, 16, 16)
    captions = ["a red circle on a blue background", "a green star on a white background"] * 4
    params = [p for m in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=2e-3)
    losses = []
    for _ in range(20):
        loss = diffusion_loss(pipe, noise_sched, latents, captions, cfg, torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def test_same_seed_reproduces_other_seed_differs():
    def run(seed):
        res = train_teacher(TeacherConfig.tiny(seed=seed, num_images=32), verbose=False)
        return res.losses, res.vae_losses, torch.cat([p.flatten() for p in res.pipe.unet.parameters()])

    a, b, c = run(0), run(0), run(1)
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2])
    assert a[0] != c[0]


@pytest.mark.parametrize("kwargs, field", [
    (dict(steps=-1), "steps"), (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"),
    (dict(caption_dropout=1.0), "caption_dropout"), (dict(vae_crop=30), "vae_crop"),
    (dict(guidance_scale=0.5), "guidance_scale"), (dict(noise_offset=-0.1), "noise_offset")])
def test_config_validation_names_field(kwargs, field):
    with pytest.raises(ValueError, match=f"TeacherConfig.{field}"):
        TeacherConfig(**kwargs)


def test_eval_prompts_cover_split_without_repeats():
    prompts = eval_prompts(24, "heldout")
    assert len({p for p, _ in prompts}) == 12 and len({s for _, s in prompts}) == 24
