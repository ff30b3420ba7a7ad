"""Layer ablation: what removing UNet units does to the images, leave-one-out sweeps, and student export.

    config = AblationConfig(model="demo-teacher", units=("mid_block.attentions.0",), steps=20)
    cmp = compare_ablation(pipe, config_plan(config, pipe.unet.config), config)  # images, Δparams, ΔMACs, SSIM
    result = sweep(pipe, config, model_name="demo-teacher")  # rows ranked by damage per parameter saved
    export_plan(pipe, plan, "demo-teacher-slim", teacher_name="demo-teacher")  # appears in list_models()

Image distance to the full model's image: PSNR (dB, 8-bit range) and SSIM (Wang et al. 2004, "Image quality
assessment: from error visibility to structural similarity": 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03,
computed per RGB channel on [0, 1] images with a torch depthwise convolution over the valid region, then averaged).
Sweep damage = 1 − SSIM to the full model's image, averaged over prompts × seeds (the evaluator's fidelity drop is
recorded beside it when the prompts parse, but it is coarse: 3 attributes per image). Rows are ranked by damage per
million parameters saved, least harmful first: the top of the table is what to remove first.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from PIL import Image

from studio.blocks import BlockRow, block_map, count_params, full_config, unet_layout
from studio.generation import MAX_SEED, MAX_SIZE, MAX_STEPS, MIN_SIZE, GenerateRequest, GenerationCancelled, generate
from studio.paths import ASSETS_DIR, data_dir, models_dir
from studio.removal import (RECIPES, RemovalPlan, ablate, build_student, export_student, parse_unit, recipe_plan,
                            runtime_modules, student_config, validate_plan)

OnStep = Callable[[int, int, dict], None]
ShouldStop = Callable[[], bool]
MAX_PROMPTS, MAX_SEEDS = 16, 8
CACHE_VERSION = 1  # bump when the cached row format or the metrics change


# ---------------------------------------------------------------- config

@dataclass(frozen=True)
class AblationConfig:
    """What to remove and how to look at it; one prompt × seed pair is one generation per model."""

    model: str = "demo-teacher"  # registry name of the teacher
    units: tuple[str, ...] = ()  # unit ids to remove (studio.removal.UNIT_FORMS); added to the recipe's units
    recipe: str = ""  # a removal recipe name (studio.removal.RECIPES), "" for none
    prompts: tuple[str, ...] = ("a red circle on a blue background",)  # prompt set; compare uses all pairs
    seeds: tuple[int, ...] = (0,)  # one generation per prompt and seed
    steps: int = 20  # denoising steps
    guidance: float = 5.0  # classifier-free guidance scale
    resolution: int | None = None  # image side in pixels; None = the model's native size

    def __post_init__(self):
        for name in ("units", "prompts", "seeds"):
            value = getattr(self, name)
            if isinstance(value, (str, int)):
                raise ValueError(f"AblationConfig.{name}: give a list, not a single {type(value).__name__}")
            object.__setattr__(self, name, tuple(value))
        if not self.model:
            raise ValueError("AblationConfig.model: name a registry model")
        for unit in self.units:
            parse_unit(unit)
        if self.recipe and self.recipe not in RECIPES:
            raise ValueError(f"AblationConfig.recipe={self.recipe!r}: allowed: {', '.join(RECIPES)} or ''")
        if not 1 <= len(self.prompts) <= MAX_PROMPTS or not all(isinstance(p, str) and p.strip()
                                                                 for p in self.prompts):
            raise ValueError(f"AblationConfig.prompts: give 1-{MAX_PROMPTS} non-empty prompts; got {self.prompts!r}")
        if not 1 <= len(self.seeds) <= MAX_SEEDS or not all(isinstance(s, int) and 0 <= s <= MAX_SEED
                                                             for s in self.seeds):
            raise ValueError(f"AblationConfig.seeds: give 1-{MAX_SEEDS} seeds in 0..{MAX_SEED}; got {self.seeds!r}")
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"AblationConfig.steps must be between 1 and {MAX_STEPS}; got {self.steps}")
        if not 0 <= self.guidance <= 30:
            raise ValueError(f"AblationConfig.guidance must be between 0 and 30; got {self.guidance}")
        if self.resolution is not None and (self.resolution % 8 or not MIN_SIZE <= self.resolution <= MAX_SIZE):
            raise ValueError(f"AblationConfig.resolution must be a multiple of 8 in {MIN_SIZE}..{MAX_SIZE} "
                             f"(or None for native); got {self.resolution}")

    def to_dict(self) -> dict:
        return asdict(self)


def config_plan(config: AblationConfig, unet_config: dict) -> RemovalPlan:
    """The plan ``config`` names for this teacher: the recipe's units plus the listed units, validated."""
    units = set(config.units)
    name = "custom"
    if config.recipe:
        units |= recipe_plan(config.recipe, dict(unet_config)).units
        name = config.recipe if not config.units else f"{config.recipe}+custom"
    plan = RemovalPlan(frozenset(units), name)
    validate_plan(dict(unet_config), plan)
    return plan


# ---------------------------------------------------------------- image distances

def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB of two same-size 8-bit images (``inf`` when identical)."""
    mse = float(((_to_tensor(a) - _to_tensor(b)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim(a: Image.Image, b: Image.Image, *, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004) over the valid region, per RGB channel; 1.0 for identical images."""
    x, y = _to_tensor(a).double(), _to_tensor(b).double()  # (1, 3, H, W) in [0, 1]
    if x.shape != y.shape:
        raise ValueError(f"ssim: images differ in size ({a.size} vs {b.size})")
    window = min(window, x.shape[-1], x.shape[-2])
    g = torch.exp(-((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(3, 1, window, window)  # depthwise: one window per channel

    def blur(t):
        return torch.nn.functional.conv2d(t, kernel, groups=3)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def fidelity(image: Image.Image, prompt: str) -> float | None:
    """Share of the prompt's attributes (background, colour, shape) the evaluator finds; None if it cannot parse."""
    try:
        from studio.evaluator import evaluate, parse_prompt
    except ImportError:  # the evaluator needs training.synthetic; without it there is no fidelity score
        return None
    try:
        parse_prompt(prompt)
    except ValueError:
        return None
    return float(np.mean(list(evaluate(image, prompt).correct.values())))


# ---------------------------------------------------------------- cost of a plan (block map)

@functools.lru_cache(maxsize=32)
def _cached_rows(config_json: str, resolution: int, vae_scale_factor: int, text_tokens: int) -> tuple[BlockRow, ...]:
    return tuple(block_map(json.loads(config_json), resolution=resolution, vae_scale_factor=vae_scale_factor,
                           text_tokens=text_tokens))


def model_rows(unet_config: dict, resolution: int, vae_scale_factor: int, text_tokens: int = 77) -> list[BlockRow]:
    """``block_map`` rows (cached: the FLOP-counting pass takes seconds even on the meta device)."""
    return list(_cached_rows(json.dumps(full_config(dict(unet_config)), sort_keys=True), resolution,
                             vae_scale_factor, text_tokens))


def plan_cost(unet_config: dict, plan: RemovalPlan, *, resolution: int, vae_scale_factor: int,
              text_tokens: int = 77) -> dict:
    """Kind, teacher/student params and MACs (one batch-1 UNet forward at ``resolution``) of a validated plan.

    When ``ablate`` can skip the plan's modules, their own block-map rows are subtracted (exact: a config student
    keeps every other module at the same shape); otherwise (pairs, levels) the student's block map is measured.
    """
    unet_config = dict(unet_config)
    kind = validate_plan(unet_config, plan)
    rows = model_rows(unet_config, resolution, vae_scale_factor, text_tokens)
    params, macs = (sum(getattr(r, f) for r in rows if r.depth == 0) for f in ("params", "macs"))
    try:
        by_unit = {r.unit: r for r in rows}
        skipped = [by_unit[path] for path, _ in runtime_modules(unet_config, plan)]
        s_params = params - sum(r.params for r in skipped)
        s_macs = macs - sum(r.macs for r in skipped)
    except ValueError:
        srows = model_rows(student_config(unet_config, plan), resolution, vae_scale_factor, text_tokens)
        s_params, s_macs = (sum(getattr(r, f) for r in srows if r.depth == 0) for f in ("params", "macs"))
    return {"kind": kind, "params": params, "student_params": s_params, "delta_params": params - s_params,
            "macs": macs, "student_macs": s_macs, "delta_macs": macs - s_macs}


def removable_units(unet_config: dict, *, groups: bool = False) -> list[str]:
    """Units a leave-one-out sweep tries, in layout order: every transformer layer of a stack deeper than one (a
    depth-1 stack is tried as its whole attention), every mid-block attention, every resnet ``ablate`` can skip;
    with ``groups`` also every whole attention and the whole mid block."""
    return list(_removable(json.dumps(full_config(dict(unet_config)), sort_keys=True), groups))


@functools.lru_cache(maxsize=32)
def _removable(config_json: str, groups: bool) -> tuple[str, ...]:
    unet_config = json.loads(config_json)
    out = []
    for b in unet_layout(unet_config):
        for i, skippable in enumerate(b.skippable_resnets):
            if skippable:
                out.append(f"{b.name}.resnets.{i}")
        for a, depth in enumerate(b.depths):
            if depth > 1:
                out += [f"{b.name}.attentions.{a}.transformer_blocks.{k}" for k in range(depth)]
            if depth == 1 or groups or b.kind == "mid":
                out.append(f"{b.name}.attentions.{a}")
        if groups and b.kind == "mid":
            out.append("mid_block")
    valid = []
    for unit in out:
        try:  # every candidate is a run-time skip; _resolve still rejects e.g. a block's only resnet
            runtime_modules(unet_config, RemovalPlan({unit}))
            valid.append(unit)
        except ValueError:
            pass
    return tuple(valid)


def model_facts(name: str) -> tuple[dict, int, int]:
    """(UNet config, VAE scale factor, native resolution in pixels) of registry model ``name``, read from its
    config files on disk (local folders, or the Hugging Face cache) without loading weights; ValueError if absent."""
    from studio.registry import get_spec

    def read(spec, component: str) -> dict:
        if spec.source_kind == "folder":
            folder = Path(spec.source)
            for file in [folder / component / "config.json"] + ([folder / "config.json"] if component == "unet"
                                                                  else []):
                if file.is_file():
                    return json.loads(file.read_text())
        elif spec.source_kind == "hub":
            from huggingface_hub import try_to_load_from_cache

            file = try_to_load_from_cache(spec.source, f"{component}/config.json")
            if isinstance(file, str):
                return json.loads(Path(file).read_text())
            if spec.name == "sdxl":  # the reference config ships with the studio (its VAE: 4 levels, factor 8)
                return json.loads((ASSETS_DIR / "configs" / "sdxl" / "unet" / "config.json").read_text()) \
                    if component == "unet" else {"block_out_channels": [128, 256, 512, 512]}
        raise ValueError(f"model {spec.name!r}: no {component} config on this machine ({spec.source}); load it once "
                         f"(e.g. in the Generate tab) or download it")

    spec = get_spec(name)
    unet = read(spec, "unet")
    vae = read(get_spec(spec.base) if spec.base else spec, "vae")
    factor = 2 ** (len(vae.get("block_out_channels", [0] * 4)) - 1)
    return unet, factor, spec.default_size or unet.get("sample_size", 128) * factor


# ---------------------------------------------------------------- compare

@dataclass
class AblationComparison:
    """Full vs ablated model on every prompt × seed pair of the config (lists are in that order)."""

    plan: RemovalPlan
    cost: dict  # plan_cost(): kind, params, student_params, delta_params, macs, student_macs, delta_macs
    pairs: list[tuple[str, int]]  # (prompt, seed)
    full_images: list[Image.Image]
    ablated_images: list[Image.Image]
    full_latency_s: float  # summed over the pairs
    ablated_latency_s: float
    psnr: list[float]
    ssim: list[float]
    full_fidelity: list[float | None] = field(default_factory=list)
    ablated_fidelity: list[float | None] = field(default_factory=list)

    @property
    def latency_ratio(self) -> float:
        """Ablated latency / full latency (< 1: faster). Whole-pipeline wall time, text encoders and VAE included."""
        return self.ablated_latency_s / self.full_latency_s

    def summary(self) -> dict:
        """JSON-ready numbers (images left out; PSNR of identical images is ``inf``)."""
        def mean(xs):
            xs = [x for x in xs if x is not None]
            return float(np.mean(xs)) if xs else None
        return {"plan": self.plan.to_dict(), **self.cost, "latency_ratio": self.latency_ratio,
                "full_latency_s": self.full_latency_s, "ablated_latency_s": self.ablated_latency_s,
                "psnr": mean(self.psnr), "ssim": mean(self.ssim), "full_fidelity": mean(self.full_fidelity),
                "ablated_fidelity": mean(self.ablated_fidelity), "pairs": [list(p) for p in self.pairs]}


def _request(config: AblationConfig, prompt: str, seed: int) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, seed=seed, steps=config.steps, guidance=config.guidance,
                           width=config.resolution, height=config.resolution)


def _resolution(pipe: StableDiffusionXLPipeline, config: AblationConfig) -> int:
    return config.resolution or pipe.unet.config.sample_size * pipe.vae_scale_factor


def _text_tokens(pipe: StableDiffusionXLPipeline) -> int:
    return pipe.tokenizer.model_max_length if pipe.tokenizer is not None else 77


def _pairs(config: AblationConfig) -> list[tuple[str, int]]:
    return [(p, s) for p in config.prompts for s in config.seeds]


def compare_ablation(pipe: StableDiffusionXLPipeline, plan: RemovalPlan, config: AblationConfig, *,
                     on_step: OnStep | None = None, should_stop: ShouldStop | None = None) -> AblationComparison:
    """Generate every prompt × seed of ``config`` with the full model and with ``plan`` applied.

    A config-expressible plan runs a real student (``build_student``: teacher weights copied) in a pipeline view
    sharing the text encoders, VAE and scheduler; a runtime-only plan runs the teacher inside ``ablate``. Progress
    goes to ``on_step(step, total, info)`` per generation (``info["model"]`` is "full" or "ablated");
    ``should_stop`` cancels (GenerationCancelled).
    """
    resolution = _resolution(pipe, config)
    cost = plan_cost(pipe.unet.config, plan, resolution=resolution, vae_scale_factor=pipe.vae_scale_factor,
                     text_tokens=_text_tokens(pipe))
    pairs = _pairs(config)
    full = [generate(pipe, _request(config, p, s), model_name="full", on_step=on_step, should_stop=should_stop)
            for p, s in pairs]
    if cost["kind"] == "config":
        student, _ = build_student(pipe.unet, plan)
        view = StableDiffusionXLPipeline(**{**pipe.components, "unet": student.eval()},
                                         force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
        ablated = [generate(view, _request(config, p, s), model_name="ablated", on_step=on_step,
                            should_stop=should_stop) for p, s in pairs]
    else:
        with ablate(pipe.unet, plan):
            ablated = [generate(pipe, _request(config, p, s), model_name="ablated", on_step=on_step,
                                should_stop=should_stop) for p, s in pairs]
    fi, ai = [r.images[0] for r in full], [r.images[0] for r in ablated]
    return AblationComparison(
        plan=plan, cost=cost, pairs=pairs, full_images=fi, ablated_images=ai,
        full_latency_s=sum(r.stats.latency_s for r in full), ablated_latency_s=sum(r.stats.latency_s for r in ablated),
        psnr=[psnr(a, b) for a, b in zip(fi, ai)], ssim=[ssim(a, b) for a, b in zip(fi, ai)],
        full_fidelity=[fidelity(im, p) for im, (p, _) in zip(fi, pairs)],
        ablated_fidelity=[fidelity(im, p) for im, (p, _) in zip(ai, pairs)])


# ---------------------------------------------------------------- leave-one-out sweep

SWEEP_COLUMNS = ("rank", "unit", "kind", "params_saved", "macs_saved", "damage", "damage_per_mparam", "ssim", "psnr",
                 "fidelity_drop", "latency_ratio")


@dataclass
class SweepResult:
    """Leave-one-out rows ranked by ``damage_per_mparam`` (least harmful per parameter saved first)."""

    model: str
    config: AblationConfig
    rows: list[dict]  # one dict per unit, keys SWEEP_COLUMNS
    cached: int  # rows served from the on-disk cache
    computed: int  # rows generated now
    cancelled: bool  # should_stop() ended the sweep early: rows holds the units finished so far
    wall_s: float

    def table(self) -> list[list]:
        return [[row[c] for c in SWEEP_COLUMNS] for row in self.rows]

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        return path


def weights_fingerprint(unet: torch.nn.Module) -> str:
    """Hash of every tensor's name, shape, dtype and ~4096 evenly strided values (exact bytes, cheap on SDXL)."""
    digest = hashlib.sha256()
    for name, t in unet.state_dict().items():
        flat = t.detach().flatten()
        sample = flat[::max(1, flat.numel() // 4096)].float().cpu().numpy()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


def sweep_dir() -> Path:
    path = data_dir() / "sweeps"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=list).encode()).hexdigest()[:24]


def _run_pairs(pipe, plan: RemovalPlan | None, config: AblationConfig, tick, should_stop) -> list:
    """Generate every pair with ``plan`` applied (runtime ablation when it can, else a student view)."""
    pairs = _pairs(config)

    def run(p):
        return [generate(p, _request(config, prompt, seed), model_name="sweep", on_step=tick,
                         should_stop=should_stop) for prompt, seed in pairs]
    if plan is None:
        return run(pipe)
    try:
        runtime_modules(dict(pipe.unet.config), plan)
    except ValueError:  # pairs and levels: a real student
        student, _ = build_student(pipe.unet, plan)
        return run(StableDiffusionXLPipeline(**{**pipe.components, "unet": student.eval()},
                                             force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt))
    with ablate(pipe.unet, plan):
        return run(pipe)


def _full_folder(base: dict) -> Path:
    return sweep_dir() / f"full-{_key(base)}"


def _full_reference(pipe, config: AblationConfig, base: dict, tick, should_stop) -> tuple[list[Image.Image], float]:
    """The full model's images and summed latency for the config's pairs, cached as PNGs under sweeps/."""
    folder = _full_folder(base)
    meta = folder / "meta.json"
    n = len(_pairs(config))
    if meta.is_file():
        images = [Image.open(folder / f"{i}.png").convert("RGB") for i in range(n)]
        return images, json.loads(meta.read_text())["latency_s"]
    results = _run_pairs(pipe, None, config, tick, should_stop)
    folder.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(results):
        r.images[0].save(folder / f"{i}.png")
    latency = sum(r.stats.latency_s for r in results)
    meta.write_text(json.dumps({"key": base, "latency_s": latency}, indent=1))
    return [r.images[0] for r in results], latency


def sweep(pipe: StableDiffusionXLPipeline, config: AblationConfig, *, model_name: str | None = None,
          units: list[str] | None = None, groups: bool = False, on_step: OnStep | None = None,
          should_stop: ShouldStop | None = None) -> SweepResult:
    """Leave-one-out over ``units`` (default ``removable_units``): remove each alone, compare with the full model.

    Args:
        pipe (`StableDiffusionXLPipeline`): the teacher (its UNet is ablated in place and restored).
        config (`AblationConfig`): prompts, seeds, steps, guidance, resolution (its ``units``/``recipe`` are
            ignored: pass ``units`` to sweep a subset).
        model_name (`str`, *optional*): the cache key's model name; default ``config.model``.
        groups (`bool`): also try whole attentions and the whole mid block.
        on_step (`callable`, *optional*): ``on_step(step, total, info)`` with steps counted over the whole sweep
            (cached units cost no steps and are not reported).
        should_stop (`callable`, *optional*): polled every step; the sweep then returns ``cancelled=True`` with the
            units finished so far (each finished unit is already cached).

    Every unit's row is cached as JSON under ``data_dir()/sweeps/`` keyed by a hash of (model name, UNet weights
    fingerprint, unit, prompts, seeds, steps, guidance, resolution), so a repeated sweep generates nothing.
    """
    start = time.perf_counter()
    model_name = model_name or config.model
    unet_config = dict(pipe.unet.config)
    units = list(units) if units is not None else removable_units(unet_config, groups=groups)
    if not units:
        raise ValueError("sweep: no units to try")
    resolution = _resolution(pipe, config)
    base = {"v": CACHE_VERSION, "model": model_name, "weights": weights_fingerprint(pipe.unet),
            "prompts": config.prompts, "seeds": config.seeds, "steps": config.steps, "guidance": config.guidance,
            "resolution": resolution}
    files = {u: sweep_dir() / f"{_key(base, u)}.json" for u in units}
    todo = [u for u in units if not files[u].is_file()]
    costs = {u: plan_cost(unet_config, RemovalPlan({u}), resolution=resolution,  # validates every new unit
                          vae_scale_factor=pipe.vae_scale_factor, text_tokens=_text_tokens(pipe)) for u in todo}
    pairs = _pairs(config)
    full_cached = (_full_folder(base) / "meta.json").is_file()
    total = (len(todo) + (not full_cached)) * len(pairs) * config.steps if todo else 0
    done = [0]

    def tick(step, steps, info):
        done[0] += 1
        if on_step is not None:
            on_step(done[0], total, info)

    rows, cancelled, full = [], False, None
    for unit in units:
        if files[unit].is_file():
            rows.append(json.loads(files[unit].read_text())["row"])
            continue
        try:
            if full is None:
                full = _full_reference(pipe, config, base, tick, should_stop)
            unit_tick = lambda s, n, info, u=unit: tick(s, n, {**info, "unit": u})  # noqa: E731
            results = _run_pairs(pipe, RemovalPlan({unit}), config, unit_tick, should_stop)
        except GenerationCancelled:
            cancelled = True
            break
        row = _sweep_row(unit, costs[unit], full, [r.images[0] for r in results],
                         sum(r.stats.latency_s for r in results), pairs)
        files[unit].write_text(json.dumps({"key": base, "unit": unit, "row": row}, indent=1))
        rows.append(row)
    rows.sort(key=lambda r: (r["damage_per_mparam"], r["unit"]))
    for i, row in enumerate(rows):
        row["rank"] = i + 1
    computed = sum(1 for u in todo if files[u].is_file())
    return SweepResult(model_name, config, rows, len(rows) - computed, computed, cancelled,
                       time.perf_counter() - start)


def _sweep_row(unit: str, cost: dict, full: tuple[list[Image.Image], float], images: list[Image.Image],
               latency: float, pairs: list[tuple[str, int]]) -> dict:
    full_images, full_latency = full
    ssims = [ssim(a, b) for a, b in zip(full_images, images)]
    psnrs = [min(psnr(a, b), 100.0) for a, b in zip(full_images, images)]  # identical images: capped for JSON/CSV
    drops = [(fa - fb) if fa is not None and fb is not None else None
             for fa, fb in ((fidelity(a, p), fidelity(b, p)) for a, b, (p, _) in zip(full_images, images, pairs))]
    drops = [d for d in drops if d is not None]
    damage = 1.0 - float(np.mean(ssims))
    return {"rank": 0, "unit": unit, "kind": parse_unit(unit)[0], "params_saved": cost["delta_params"],
            "macs_saved": cost["delta_macs"], "damage": damage,
            "damage_per_mparam": damage / max(cost["delta_params"] / 1e6, 1e-9), "ssim": float(np.mean(ssims)),
            "psnr": float(np.mean(psnrs)), "fidelity_drop": float(np.mean(drops)) if drops else None,
            "latency_ratio": latency / full_latency}


def short_label(unit: str) -> str:
    """Compact name of a unit: ``d2 a1.3`` (down_blocks.2, attention 1, layer 3), ``mid r0``, ``u0 a2``."""
    block, slot = _slot(unit)
    short = "mid" if block == "mid_block" else block[0] + block.split(".")[-1]
    return f"{short} {slot}" if not unit.startswith("levels") else unit


def _slot(unit: str) -> tuple[str, str]:
    """(block, short label) of a unit for the heatmap: r1 resnet, a0 attention, a0.3 transformer layer."""
    form, g = parse_unit(unit)
    if form == "mid":
        return "mid_block", "all"
    return g[0], {"resnet": lambda: f"r{g[1]}", "attention": lambda: f"a{g[1]}",
                  "layer": lambda: f"a{g[1]}.{g[2]}", "pair": lambda: f"p{g[1]}"}[form]()


def _layout_key(unit: str) -> tuple:
    """Forward order inside a block: resnet i, then attention i (whole, then its layers 0, 1, ...)."""
    form, g = parse_unit(unit)
    if form in ("mid", "level"):
        return (-1, 0, -1)
    return (int(g[1]), 0 if form == "resnet" else 1, int(g[2]) if form == "layer" else -1)


def plot_sweep(result: SweepResult, unet_config: dict, *, metric: str = "damage"):
    """Heatmap over the UNet layout: one row per block, one cell per swept unit (layout order), coloured by
    ``metric`` (a SWEEP_COLUMNS number). Returns a ``matplotlib.figure.Figure`` (no pyplot)."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    if metric not in ("damage", "damage_per_mparam", "ssim", "psnr", "fidelity_drop", "latency_ratio"):
        raise ValueError(f"plot_sweep: metric {metric!r} is not a numeric sweep column")
    by_unit = {r["unit"]: r for r in result.rows}
    blocks = [b.name for b in unet_layout(dict(unet_config))]
    cells = {b: sorted((u for u in by_unit if _slot(u)[0] == b), key=_layout_key) for b in blocks}
    blocks = [b for b in blocks if cells[b]]
    width = max((len(c) for c in cells.values()), default=1)
    grid = np.full((len(blocks), width), np.nan)
    for i, b in enumerate(blocks):
        for j, u in enumerate(cells[b]):
            value = by_unit[u][metric]
            grid[i, j] = np.nan if value is None else value
    fig = Figure(figsize=(min(18.0, max(7.0, 2.5 + 0.42 * width)), 1.6 + 0.45 * len(blocks)), layout="constrained")
    ax = fig.subplots()
    positive = grid[np.isfinite(grid) & (grid > 0)]
    log = metric.startswith("damage") and positive.size > 1 and positive.max() > 20 * positive.min()
    norm = LogNorm(positive.min(), positive.max()) if log else None  # damage spans decades: log colours
    image = ax.imshow(np.ma.masked_invalid(np.where(grid > 0, grid, np.nan) if log else grid), cmap="magma_r",
                      norm=norm, aspect="auto")
    for i, b in enumerate(blocks):
        for j, u in enumerate(cells[b]):
            dark = np.isfinite(grid[i, j]) and image.norm(grid[i, j]) > 0.55  # the colour's position in the map
            ax.text(j, i, _slot(u)[1], ha="center", va="center", fontsize=6, color="white" if dark else "black")
    ax.set_yticks(range(len(blocks)), blocks, fontsize=8)
    ax.set_xticks([])
    fig.colorbar(image, ax=ax, label=metric + (" (log scale)" if log else ""), shrink=0.9)
    ax.set_title(f"{result.model}: leave-one-out {metric} per unit", fontsize=10)
    ax.set_xlabel("r = resnet, a = attention, a.k = transformer layer k; blank = not swept", fontsize=8)
    return fig


# ---------------------------------------------------------------- export

def export_plan(teacher: StableDiffusionXLPipeline | UNet2DConditionModel, plan: RemovalPlan, out_name: str, *,
                teacher_name: str, description: str = "", overwrite: bool = False) -> Path:
    """Export the pruned, teacher-initialised student as registry model ``out_name`` (``models_dir()/out_name``).

    The folder holds the UNet in ``unet/``, ``studio_model.json`` (base = ``teacher_name``, so the text encoders,
    VAE and scheduler come from the teacher), and ``plan.json``, ``name_map.json``, ``README.md`` from
    ``export_student``. ValueError for runtime-only plans, bad or taken names.
    """
    from studio.registry import NAME_RE, SPEC_FILE, get_spec, list_models

    if not NAME_RE.match(out_name or ""):
        raise ValueError(f"export name {out_name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-'")
    out = models_dir() / out_name
    taken = {s.name for s in list_models()}
    if (out_name in taken or out.exists()) and not (overwrite and out.exists()):
        raise ValueError(f"export name {out_name!r} is taken (a model or folder of that name exists); choose another")
    if teacher_name not in taken:
        raise ValueError(f"teacher_name {teacher_name!r} is not a registry model (the student's base must be one)")
    unet = teacher.unet if isinstance(teacher, StableDiffusionXLPipeline) else teacher
    student, names = build_student(unet, plan)  # ValueError for runtime-only plans
    teacher_params = count_params(dict(unet.config))
    export_student(student, names, plan, out / "unet", teacher=teacher_name, teacher_params=teacher_params)
    for name in ("plan.json", "name_map.json", "README.md"):
        (out / "unet" / name).replace(out / name)
    readme = (out / "README.md").read_text().replace(
        'from_pretrained("unet")', f'from_pretrained("{out_name}", subfolder="unet")')
    (out / "README.md").write_text(readme + f"\nIn the studio it is registry model `{out_name}` (base "
                                   f"`{teacher_name}`), listed in the Generate tab.\n")
    spec = get_spec(teacher_name)
    params = sum(p.numel() for p in student.parameters())
    meta = {"base": teacher_name, "default_size": spec.default_size, "default_steps": spec.default_steps,
            "default_guidance": spec.default_guidance,
            "description": description or f"{plan.name} student of {teacher_name} ({params / teacher_params:.0%} "
                                          f"of its UNet), not distilled yet"}
    (out / SPEC_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    return out
