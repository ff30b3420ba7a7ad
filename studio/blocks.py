"""Block map of an SD/SDXL-family UNet: parameters and MACs of every block, resnet, attention and transformer layer.

    rows = block_map(json.load(open("assets/configs/sdxl/unet/config.json")), resolution=1024)
    print(format_table(rows)); fig = plot_block_map(rows)

Everything runs on the meta device: the UNet is built from its config inside ``torch.device("meta")`` (no weights
allocated) and one forward pass on meta tensors is traced by ``torch.utils.flop_counter.FlopCounterMode``, which
counts matmul/conv/attention FLOPs from shapes alone (MACs = FLOPs / 2; norms and activations are not counted, SDPA
score matmuls are). SDXL at 1024² gives 3.381 TMACs, the analytic figure of ``performance.md``.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

BLOCK_KINDS = ("down_block", "mid_block", "up_block")
SUB_LAYERS = {"attn1": "attn1", "attn2": "attn2", "ff": "ff"}  # transformer-layer children reported as rows


# ---------------------------------------------------------------- building on the meta device

def _config_key(config: dict) -> str:
    return json.dumps({k: v for k, v in dict(config).items() if not k.startswith("_")}, sort_keys=True, default=list)


@functools.lru_cache(maxsize=16)
def _meta_unet_cached(key: str) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(json.loads(key))


def meta_unet(config: dict) -> UNet2DConditionModel:
    """The UNet of ``config`` built on the meta device (shapes only, no memory). Cached: do not modify it."""
    return _meta_unet_cached(_config_key(config))


def full_config(config: dict) -> dict:
    """``config`` completed with diffusers' defaults (JSON-ready, no ``_``-private keys)."""
    cfg = meta_unet(config).config
    return json.loads(json.dumps({k: v for k, v in cfg.items() if not k.startswith("_")}, default=list))


def count_params(config: dict) -> int:
    """Number of parameters of the UNet that ``config`` builds (meta device, no weights)."""
    return sum(p.numel() for p in meta_unet(config).parameters())


@dataclass(frozen=True)
class BlockLayout:
    """What one down/mid/up block contains: the facts removal plans are checked against."""

    name: str  # "down_blocks.1" | "mid_block" | "up_blocks.0"
    resnets: int  # number of ResnetBlock2D
    depths: tuple[int, ...]  # transformer layers of each attention (empty: no attention)
    skippable_resnets: tuple[bool, ...]  # resnet j maps C -> C without shortcut, so identity can replace it
    sampler: bool  # has a down/upsampler

    @property
    def kind(self) -> str:
        return self.name.split("_")[0]  # "down" | "mid" | "up"


def unet_layout(config: dict) -> list[BlockLayout]:
    """The block layout (down blocks, mid block if any, up blocks) of the UNet ``config`` builds."""
    unet = meta_unet(config)
    blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        blocks.append(("mid_block", unet.mid_block))
    blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(unet.up_blocks)]
    out = []
    for name, block in blocks:
        attns = getattr(block, "attentions", None) or []
        out.append(BlockLayout(
            name=name, resnets=len(block.resnets),
            depths=tuple(len(a.transformer_blocks) for a in attns),
            skippable_resnets=tuple(r.in_channels == r.out_channels and r.conv_shortcut is None for r in block.resnets),
            sampler=bool(getattr(block, "downsamplers", None) or getattr(block, "upsamplers", None))))
    return out


# ---------------------------------------------------------------- names and numbers shown to users

_LABEL_RULES = [(r"^down_blocks\.(\d+)", r"d\1"), (r"^up_blocks\.(\d+)", r"u\1"), (r"^mid_block", "mid"),
                (r"\.resnets\.(\d+)", r" r\1"), (r"\.attentions\.(\d+)", r" a\1"),
                (r"\.transformer_blocks\.(\d+)", r".\1"), (r"\.pairs\.(\d+)", r" p\1"),
                (r"\.downsamplers\.\d+", " down"), (r"\.upsamplers\.\d+", " up"), (r"\.(attn1|attn2|ff)$", r" \1")]


def unit_label(path: str) -> str:
    """The one short name of a UNet module the studio shows everywhere (checkboxes, tables, charts, heatmap), e.g.
    ``u1 a1.0`` for ``up_blocks.1.attentions.1.transformer_blocks.0``: d/mid/u = down/mid/up block, r = resnet,
    a = attention (whole stack), a1.0 = its transformer layer 0, p = resnet+attention pair, down/up = sampler.
    Top-level modules (``conv_in``, ``time_embedding``) and ``levels`` units keep their names."""
    if path.startswith("levels"):
        return path
    for pattern, repl in _LABEL_RULES:
        path = re.sub(pattern, repl, path)
    return path


def si_scale(value: float) -> tuple[float, str]:
    """(divisor, prefix) for showing numbers up to ``value``: 1e9 "G", 1e6 "M", 1e3 "k" or 1 ""."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return scale, prefix
    return 1.0, ""


def format_si(value: float, unit: str = "", digits: int = 3) -> str:
    """``10035200`` -> ``"10.0 M"`` (``digits`` significant digits, k/M/G/T; ``unit`` appended, e.g. "MACs")."""
    if value == 0:
        return f"0 {unit}".rstrip()
    scale, prefix = si_scale(value)
    if scale == 1 and float(value).is_integer():
        return f"{int(value)} {unit}".rstrip()
    number = value / scale
    text = f"{number:.{max(0, digits - 1 - int(abs(number) >= 10) - int(abs(number) >= 100))}f}"
    return f"{text} {prefix}{unit}".rstrip()


# ---------------------------------------------------------------- block map

@dataclass(frozen=True)
class BlockRow:
    """One unit of the block map."""

    unit: str  # module path, e.g. "down_blocks.2.attentions.1.transformer_blocks.3"
    kind: str  # stem | down_block | mid_block | up_block | resnet | attention | transformer_layer | attn1 | attn2
    #            | ff | downsampler | upsampler
    parent: str  # enclosing down/mid/up block ("" for top-level rows)
    depth: int  # 0 top level (these rows partition the model), 1 in a block, 2 transformer layer, 3 its sub-layers
    resolution: int  # latent side length the unit works at (its input)
    params: int
    macs: int  # multiply-accumulates of one forward at batch 1

    def to_dict(self) -> dict:
        return asdict(self)


def _dummy_inputs(config: dict, latent: int, text_tokens: int) -> tuple[tuple, dict]:
    cfg = full_config(config)
    cross = cfg["cross_attention_dim"]
    cross = cross[0] if isinstance(cross, list) else cross
    with torch.device("meta"):
        args = (torch.randn(1, cfg["in_channels"], latent, latent), torch.tensor([500.0]),
                torch.randn(1, text_tokens, cross))
        kwargs = {}
        if cfg.get("addition_embed_type") == "text_time":
            pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.randn(1, 6)}
    return args, kwargs


def measure_macs(config: dict, *, latent: int, text_tokens: int = 77) -> dict[str, int]:
    """MACs per module path ("" = whole model) of one batch-1 forward at ``latent``², counted on the meta device."""
    unet = meta_unet(config)
    args, kwargs = _dummy_inputs(config, latent, text_tokens)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(*args, **kwargs)
    root = type(unet).__name__
    out = {}
    for name, ops in counter.get_flop_counts().items():
        if name == root or name.startswith(root + "."):
            out[name[len(root) + 1:]] = sum(ops.values()) // 2
    return out


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def block_map(config: dict | UNet2DConditionModel, *, resolution: int | None = None, vae_scale_factor: int = 8,
              text_tokens: int = 77) -> list[BlockRow]:
    """Rows for every top-level module, block, resnet, attention, transformer layer (and its attn1/attn2/ff).

    Args:
        config (`dict` or `UNet2DConditionModel`): a diffusers UNet config (or a model, whose config is used).
        resolution (`int`, *optional*): image side in pixels; default ``sample_size * vae_scale_factor``.
        vae_scale_factor (`int`, defaults to 8): pixels per latent (SD/SDXL: 8; the tiny demo family: 4).
        text_tokens (`int`, defaults to 77): length of the text sequence cross-attention attends to.
    """
    if isinstance(config, UNet2DConditionModel):
        config = dict(config.config)
    cfg = full_config(config)
    if resolution is None:
        resolution = cfg["sample_size"] * vae_scale_factor
    latent = resolution // vae_scale_factor
    n_levels = len(cfg["block_out_channels"])
    if resolution <= 0 or resolution % vae_scale_factor or latent % 2 ** (n_levels - 1):
        step = vae_scale_factor * 2 ** (n_levels - 1)
        raise ValueError(f"resolution={resolution}: must be a positive multiple of vae_scale_factor * "
                         f"{2 ** (n_levels - 1)} = {step} for a {n_levels}-level UNet")
    macs = measure_macs(config, latent=latent, text_tokens=text_tokens)
    unet = meta_unet(config)
    rows: list[BlockRow] = []

    def add(unit, kind, parent, depth, res, module):
        rows.append(BlockRow(unit, kind, parent, depth, res, _n_params(module), macs.get(unit, 0)))

    for name, child in unet.named_children():
        if name in ("down_blocks", "up_blocks", "mid_block") or _n_params(child) == 0:
            continue
        add(name, "stem", "", 0, latent, child)
    levels = [("down_blocks", i, b, latent >> i) for i, b in enumerate(unet.down_blocks)]
    if unet.mid_block is not None:
        levels.append(("mid_block", None, unet.mid_block, latent >> (n_levels - 1)))
    levels += [("up_blocks", i, b, latent >> (n_levels - 1 - i)) for i, b in enumerate(unet.up_blocks)]
    for group, i, block, res in levels:
        bname = group if i is None else f"{group}.{i}"
        add(bname, group.rstrip("s"), "", 0, res, block)
        for j, resnet in enumerate(block.resnets):
            add(f"{bname}.resnets.{j}", "resnet", bname, 1, res, resnet)
        for j, attn in enumerate(getattr(block, "attentions", None) or []):
            aname = f"{bname}.attentions.{j}"
            add(aname, "attention", bname, 1, res, attn)
            for k, layer in enumerate(attn.transformer_blocks):
                lname = f"{aname}.transformer_blocks.{k}"
                add(lname, "transformer_layer", bname, 2, res, layer)
                for sub, kind in SUB_LAYERS.items():
                    if getattr(layer, sub, None) is not None:
                        add(f"{lname}.{sub}", kind, bname, 3, res, getattr(layer, sub))
        for sname, kind in (("downsamplers", "downsampler"), ("upsamplers", "upsampler")):
            for j, sampler in enumerate(getattr(block, sname, None) or []):
                add(f"{bname}.{sname}.{j}", kind, bname, 1, res, sampler)
    return rows


def total(rows: list[BlockRow], field: str = "params") -> int:
    """Sum of ``field`` over the top-level rows, which partition the model (equals the model's total)."""
    return sum(getattr(r, field) for r in rows if r.depth == 0)


def format_table(rows: list[BlockRow], *, max_depth: int = 2) -> str:
    """Fixed-width text table of the rows down to ``max_depth`` (params in M, MACs in G)."""
    lines = [f"{'unit':<52} {'kind':<17} {'res':>4} {'params (M)':>11} {'GMACs':>10}"]
    for r in rows:
        if r.depth <= max_depth:
            lines.append(f"{'  ' * r.depth + r.unit:<52} {r.kind:<17} {r.resolution:>4} "
                         f"{r.params / 1e6:>11.2f} {r.macs / 1e9:>10.2f}")
    lines.append(f"{'total':<52} {'':<17} {'':>4} {total(rows) / 1e6:>11.2f} {total(rows, 'macs') / 1e9:>10.2f}")
    return "\n".join(lines)


def plot_block_map(rows: list[BlockRow], *, compare: list[BlockRow] | None = None,
                   kinds: tuple[str, ...] = ("stem",) + BLOCK_KINDS, labels: tuple[str, str] = ("teacher", "student"),
                   title: str | None = None):
    """Horizontal bar chart (params | MACs) of the rows of ``kinds``; ``compare`` overlays a second model's rows.

    Returns a ``matplotlib.figure.Figure`` (built without pyplot, so it is safe in server threads).
    """
    from matplotlib.figure import Figure

    units = [r.unit for r in rows if r.kind in kinds]
    if compare is not None:
        units += [r.unit for r in compare if r.kind in kinds and r.unit not in units]
    fig = Figure(figsize=(11, max(3.0, 0.28 * len(units) + 1.2)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    sets = [(rows, labels[0])] + ([(compare, labels[1])] if compare is not None else [])
    height = 0.8 / len(sets)
    for (field, name), ax in zip((("params", "params"), ("macs", "MACs")), axes):
        scale, prefix = si_scale(total(rows, field))  # the unit of the total (the title's unit): one per view
        unit_name = f"{prefix}{name}" if field == "macs" else f"params ({prefix})" if prefix else name
        for s, (rs, label) in enumerate(sets):
            by_unit = {r.unit: getattr(r, field) / scale for r in rs}
            ys = [i + (s - (len(sets) - 1) / 2) * height for i in range(len(units))]
            ax.barh(ys, [by_unit.get(u, 0.0) for u in units], height=height, label=label)
        ax.set_xlabel(unit_name)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(units)), [u if unit_label(u) == u else f"{unit_label(u)} · {u}" for u in units],
                       fontsize=7)
    axes[0].invert_yaxis()
    if compare is not None:
        axes[1].legend(loc="lower right")
    fig.suptitle(title or f"params {format_si(total(rows))}, {format_si(total(rows, 'macs'), 'MACs')} per forward")
    return fig
