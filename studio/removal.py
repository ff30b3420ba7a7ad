"""Layer removal: plans that delete parts of a teacher UNet, the student's diffusers config, weight transfer, ablation.

    plan = RemovalPlan({"up_blocks.0.attentions.1.transformer_blocks.3"})  # or studio.recipes.recipe_plan(...)
    student, names = build_student(teacher_unet, plan)  # kept layers copied bit-exactly (BK-SDM style)
    export_student(student, names, plan, "out/ssd-1b-like")
    with ablate(teacher_unet, plan): ...  # the same removal at run time, no new model

Unit ids (``UNIT_FORMS``): a transformer layer ``<block>.attentions.i.transformer_blocks.j``, a whole attention
``<block>.attentions.i``, a resnet ``<block>.resnets.i``, a resnet/attention pair ``down_blocks.b.pairs.i`` /
``up_blocks.b.pairs.i``, the ``mid_block``, and ``levels.k`` (the innermost resolution level: its down and up block).
``<block>`` is ``down_blocks.b``, ``up_blocks.b`` or ``mid_block``.

A plan is "config" when a diffusers config says the same thing (``transformer_layers_per_block`` per-pair lists,
``reverse_transformer_layers_per_block``, ``layers_per_block``, ``mid_block_type``, fewer levels) — such students
load with plain ``UNet2DConditionModel.from_pretrained``. diffusers always drops the *last* layers of a stack, so a
plan removing layer 3 of 10 becomes depth 9 plus a name map (student layers 0..8 <- teacher 0,1,2,4,..,9). Other
plans are "runtime": ``ablate`` skips their units (resnet -> identity when it keeps its shape, attention or
transformer layer -> identity, which is what removing a residual layer means).
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

from studio.blocks import BlockLayout, count_params, full_config, meta_unet, unet_layout

_BLOCK = r"(down_blocks\.\d+|up_blocks\.\d+|mid_block)"
_UNIT_RE = {
    "layer": re.compile(_BLOCK + r"\.attentions\.(\d+)\.transformer_blocks\.(\d+)"),
    "attention": re.compile(_BLOCK + r"\.attentions\.(\d+)"),
    "resnet": re.compile(_BLOCK + r"\.resnets\.(\d+)"),
    "pair": re.compile(r"((?:down|up)_blocks\.\d+)\.pairs\.(\d+)"),
    "mid": re.compile(r"mid_block"),
    "level": re.compile(r"levels\.(\d+)"),
}
UNIT_FORMS = ("<block>.attentions.<i>.transformer_blocks.<j>", "<block>.attentions.<i>", "<block>.resnets.<i>",
              "down_blocks.<b>.pairs.<i>", "up_blocks.<b>.pairs.<i>", "mid_block", "levels.<k> (innermost level)")
_PER_LEVEL_KEYS = ("block_out_channels", "down_block_types", "layers_per_block", "transformer_layers_per_block",
                   "attention_head_dim", "num_attention_heads", "cross_attention_dim", "only_cross_attention")


def parse_unit(unit: str) -> tuple[str, tuple]:
    """``(form, groups)`` of a unit id, e.g. ``("layer", ("down_blocks.2", "0", "3"))``; ValueError if malformed."""
    for form, pattern in _UNIT_RE.items():
        m = pattern.fullmatch(unit.strip())
        if m:
            return form, m.groups()
    raise ValueError(f"unknown unit {unit!r}; allowed forms: {', '.join(UNIT_FORMS)}")


def parse_units(text: str) -> frozenset[str]:
    """Unit ids from a comma/whitespace separated string."""
    return frozenset(u for u in re.split(r"[,\s]+", text) if u)


@dataclass(frozen=True)
class RemovalPlan:
    """Which units of a teacher UNet to remove (checked against a config by ``validate_plan``)."""

    units: frozenset[str] = frozenset()  # unit ids, see UNIT_FORMS
    name: str = "custom"  # recipe name, or "custom"

    def __post_init__(self):
        if isinstance(self.units, str):
            raise ValueError("RemovalPlan.units: give a collection of unit ids, not one string (see parse_units)")
        object.__setattr__(self, "units", frozenset(u.strip() for u in self.units))
        for unit in self.units:
            parse_unit(unit)

    def to_dict(self) -> dict:
        return {"name": self.name, "units": sorted(self.units)}

    @classmethod
    def from_dict(cls, d: dict) -> RemovalPlan:
        return cls(frozenset(d["units"]), d.get("name", "custom"))


# ---------------------------------------------------------------- resolving a plan against a teacher layout

@dataclass
class _Resolved:
    blocks: dict[str, BlockLayout]  # teacher layout by block name
    resnets: dict[str, set[int]]  # removed resnets per block
    attentions: dict[str, set[int]]  # removed whole attentions per block
    layers: dict[tuple[str, int], set[int]]  # removed transformer layers per (block, attention)
    level: bool  # innermost level removed
    mid_unit: bool  # "mid_block" itself named


def _resolve(teacher_config: dict, plan: RemovalPlan) -> _Resolved:
    blocks = {b.name: b for b in unet_layout(teacher_config)}
    r = _Resolved(blocks, {n: set() for n in blocks}, {n: set() for n in blocks}, {}, False, False)
    n_levels = sum(b.kind == "down" for b in blocks.values())

    def block_of(unit: str, name: str) -> BlockLayout:
        if name not in blocks:
            raise ValueError(f"unit {unit!r}: this UNet has no {name}; its blocks are {', '.join(blocks)}")
        return blocks[name]

    def check(unit: str, what: str, i: int, n: int) -> int:
        if i >= n:
            raise ValueError(f"unit {unit!r}: {what} {i} does not exist (allowed: 0..{n - 1})" if n else
                             f"unit {unit!r}: the block has no {what}s")
        return i

    for unit in sorted(plan.units):
        form, g = parse_unit(unit)
        if form == "level":
            if int(g[0]) != n_levels - 1 or n_levels < 2:
                raise ValueError(f"unit {unit!r}: only the innermost level 'levels.{n_levels - 1}' can be removed")
            r.level = True
            for name in (f"down_blocks.{n_levels - 1}", "up_blocks.0"):
                r.resnets[name] = set(range(blocks[name].resnets))
                r.attentions[name] = set(range(len(blocks[name].depths)))
        elif form == "mid":
            b = block_of(unit, "mid_block")
            r.mid_unit = True
            r.resnets["mid_block"] = set(range(b.resnets))
            r.attentions["mid_block"] = set(range(len(b.depths)))
        elif form == "pair":
            b = block_of(unit, g[0])
            i = check(unit, "pair", int(g[1]), b.resnets)
            r.resnets[b.name].add(i)
            if b.depths:
                r.attentions[b.name].add(i)
        elif form == "resnet":
            b = block_of(unit, g[0])
            r.resnets[b.name].add(check(unit, "resnet", int(g[1]), b.resnets))
        else:
            b = block_of(unit, g[0])
            i = check(unit, "attention", int(g[1]), len(b.depths))
            if form == "attention":
                r.attentions[b.name].add(i)
            else:
                r.layers.setdefault((b.name, i), set()).add(check(unit, "transformer layer", int(g[2]), b.depths[i]))
    for name, b in blocks.items():
        if b.kind != "mid" and len(r.resnets[name]) == b.resnets and not (r.level and name in (
                f"down_blocks.{n_levels - 1}", "up_blocks.0")):
            whole = f"; the innermost level can go whole as 'levels.{n_levels - 1}'" if name in (
                f"down_blocks.{n_levels - 1}", "up_blocks.0") else ""
            raise ValueError(f"plan removes every layer of {name} (pairs 0..{b.resnets - 1}); a block must keep at "
                             f"least one resnet/attention pair{whole}")
    for (name, i), gone in r.layers.items():
        if len(gone) == blocks[name].depths[i] and i not in r.attentions[name]:
            raise ValueError(f"plan removes every transformer layer of {name}.attentions.{i} (0..{len(gone) - 1}); "
                             f"keep at least one, or remove the attention '{name}.attentions.{i}' (runtime) or its "
                             f"pair / the mid_block instead")
    return r


# ---------------------------------------------------------------- config expression

class _NotConfig(Exception):
    """The plan has no diffusers-config expression (the message says why)."""


def _kept(r: _Resolved, name: str) -> tuple[list[int], list[int], list[list[int]]]:
    """Kept resnets, kept attentions, and kept layers of each kept attention of teacher block ``name``."""
    b = r.blocks[name]
    res = [i for i in range(b.resnets) if i not in r.resnets[name]]
    att = [i for i in range(len(b.depths)) if i not in r.attentions[name]]
    return res, att, [[k for k in range(b.depths[a]) if k not in r.layers.get((name, a), set())] for a in att]


def _student_blocks(r: _Resolved) -> dict[str, str]:
    """Student block name -> teacher block name."""
    downs = [n for n in r.blocks if n.startswith("down")][: -1 if r.level else None]
    ups = [n for n in r.blocks if n.startswith("up")][1 if r.level else 0:]
    out = {f"down_blocks.{i}": n for i, n in enumerate(downs)}
    mid = r.blocks.get("mid_block")
    if mid and (len(r.resnets["mid_block"]) < mid.resnets or len(r.attentions["mid_block"]) < len(mid.depths)):
        out["mid_block"] = "mid_block"
    out.update({f"up_blocks.{i}": n for i, n in enumerate(ups)})
    return out


def _express(teacher_config: dict, r: _Resolved) -> dict:
    tcfg = full_config(teacher_config)
    cfg = dict(tcfg)
    n = len(tcfg["block_out_channels"]) - (1 if r.level else 0)
    for key in _PER_LEVEL_KEYS:
        if isinstance(cfg.get(key), list):
            cfg[key] = cfg[key][:n]
    cfg["up_block_types"] = tcfg["up_block_types"][len(tcfg["up_block_types"]) - n:]
    t_tl = tcfg["transformer_layers_per_block"]
    t_tl = t_tl if isinstance(t_tl, list) else [t_tl] * (n + r.level)
    t_rev = tcfg.get("reverse_transformer_layers_per_block") or list(reversed(t_tl))
    sblocks = _student_blocks(r)
    for name, b in r.blocks.items():  # pairs only: a resnet and its attention go together
        if b.kind != "mid" and b.depths and name in sblocks.values() and r.resnets[name] != r.attentions[name]:
            raise _NotConfig(f"{name} removes a resnet or an attention without its pair partner")
    lpb, down_tl, up_tl = [], [], []
    for level in range(n):
        res, _, layers = _kept(r, sblocks[f"down_blocks.{level}"])
        up_res, _, up_layers = _kept(r, sblocks[f"up_blocks.{n - 1 - level}"])
        if len(up_res) != len(res) + 1:
            raise _NotConfig(f"{sblocks[f'up_blocks.{n - 1 - level}']} would keep {len(up_res)} pairs but its down "
                             f"partner {sblocks[f'down_blocks.{level}']} keeps {len(res)}; a config needs one more up")
        lpb.append(len(res))
        depths = [len(k) for k in layers]
        down_tl.append((depths[0] if len(set(depths)) == 1 else depths) if depths else t_tl[level])
        up_tl.append([len(k) for k in up_layers] if up_layers else t_rev[len(t_rev) - n + (n - 1 - level)])
    mid = r.blocks.get("mid_block")
    if "mid_block" not in sblocks:
        cfg["mid_block_type"] = None
    elif mid.depths:
        gone = r.resnets["mid_block"], r.attentions["mid_block"]
        if gone == ({1}, {0}):
            cfg["mid_block_type"] = "UNetMidBlock2D"
        elif gone != (set(), set()):
            raise _NotConfig("the mid block can only lose its attention together with its second resnet "
                             "(UNetMidBlock2D) or go whole")
        else:  # diffusers gives the mid block the depth of the last down block's first attention
            depth = len(_kept(r, "mid_block")[2][0])
            last = down_tl[-1] if isinstance(down_tl[-1], int) else down_tl[-1][0]
            if not r.blocks[sblocks[f"down_blocks.{n - 1}"]].depths:
                down_tl[-1] = depth  # a block without attention ignores its entry
            elif last != depth:
                raise _NotConfig(f"a config ties the mid block's depth ({depth}) to the first attention of the "
                                 f"last down block ({last})")
    cfg["layers_per_block"] = lpb[0] if len(set(lpb)) == 1 else lpb
    cfg["transformer_layers_per_block"] = down_tl
    if tcfg.get("reverse_transformer_layers_per_block") or r.layers:
        cfg["reverse_transformer_layers_per_block"] = list(reversed(up_tl))
    return cfg


def _name_map(r: _Resolved, student: UNet2DConditionModel) -> dict[str, str]:
    sblocks = _student_blocks(r)
    out = {name: name for name, child in student.named_children()
           if name not in ("down_blocks", "up_blocks", "mid_block") and any(True for _ in child.parameters())}
    for sname, tname in sblocks.items():
        block = student.get_submodule(sname)
        res, att, layers = _kept(r, tname)
        for i in range(len(block.resnets)):
            out[f"{sname}.resnets.{i}"] = f"{tname}.resnets.{res[i]}"
        for i, attn in enumerate(getattr(block, "attentions", None) or []):
            for child, _ in attn.named_children():
                if child != "transformer_blocks":
                    out[f"{sname}.attentions.{i}.{child}"] = f"{tname}.attentions.{att[i]}.{child}"
            for k in range(len(attn.transformer_blocks)):
                out[f"{sname}.attentions.{i}.transformer_blocks.{k}"] = \
                    f"{tname}.attentions.{att[i]}.transformer_blocks.{layers[i][k]}"
        for sampler in ("downsamplers", "upsamplers"):
            for i in range(len(getattr(block, sampler, None) or [])):
                out[f"{sname}.{sampler}.{i}"] = f"{tname}.{sampler}.{i}"
    return out


def map_key(key: str, names: dict[str, str]) -> str:
    """``key`` with its longest module prefix found in ``names`` replaced (a name map, or its inverse); KeyError
    when no prefix is there."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in names:
            return names[prefix] + key[len(prefix):]
    raise KeyError(f"parameter {key} has no module in the name map")


def _config_and_names(teacher_config: dict, plan: RemovalPlan) -> tuple[dict, dict[str, str]]:
    """Student config + name map, or _NotConfig when no config expresses the plan (shapes verified on meta)."""
    r = _resolve(teacher_config, plan)
    cfg = _express(teacher_config, r)
    try:
        student = meta_unet(cfg)
    except (ValueError, TypeError) as e:
        raise _NotConfig(f"diffusers rejects the student config: {e}") from e
    expected = {s: _kept(r, t) for s, t in _student_blocks(r).items()}
    for b in unet_layout(cfg):
        res, _, layers = expected.get(b.name, ([], [], []))
        if b.name not in expected or b.resnets != len(res) or b.depths != tuple(len(k) for k in layers):
            raise _NotConfig(f"the config cannot reproduce the kept layout of {b.name}")
    names = _name_map(r, student)
    teacher = meta_unet(teacher_config).state_dict()
    for key, p in student.state_dict().items():
        src = map_key(key, names)
        if src not in teacher or teacher[src].shape != p.shape:
            raise _NotConfig(f"student {key} {tuple(p.shape)} has no same-shape teacher source ({src})")
    return cfg, names


# ---------------------------------------------------------------- public plan API

def runtime_modules(teacher_config: dict, plan: RemovalPlan) -> list[tuple[str, str]]:
    """(module path, kind) pairs ``ablate`` replaces by identity; ValueError for units it cannot skip."""
    r = _resolve(teacher_config, plan)
    if r.level:
        raise ValueError("levels.<k> changes the resolution schedule; it can only be removed by config")
    out = [("mid_block", "block")] if r.mid_unit else []
    for name, b in r.blocks.items():
        if name == "mid_block" and r.mid_unit:
            continue
        for i in sorted(r.resnets[name]):
            if not b.skippable_resnets[i]:
                raise ValueError(f"{name}.resnets.{i} changes its channel count or consumes a skip connection, so it "
                                 f"cannot be skipped at run time; remove it by config (a pair, BK-SDM style)")
            out.append((f"{name}.resnets.{i}", "resnet"))
        out += [(f"{name}.attentions.{i}", "attention") for i in sorted(r.attentions[name])]
    for (name, a), gone in sorted(r.layers.items()):
        if a not in r.attentions[name] and not (name == "mid_block" and r.mid_unit):
            out += [(f"{name}.attentions.{a}.transformer_blocks.{k}", "layer") for k in sorted(gone)]
    return out


def validate_plan(teacher_config: dict, plan: RemovalPlan) -> str:
    """``"config"`` or ``"runtime"``; ValueError naming the unit when the plan is invalid for this UNet."""
    try:
        _config_and_names(teacher_config, plan)
        return "config"
    except _NotConfig as e:
        try:
            runtime_modules(teacher_config, plan)
        except ValueError as runtime_error:
            raise ValueError(f"plan is neither config-expressible ({e}) nor skippable at run time "
                             f"({runtime_error})") from None
        return "runtime"


def plan_kind(teacher_config: dict, plan: RemovalPlan) -> str:
    """``"config"`` when a diffusers config expresses the plan (a real smaller student), else ``"runtime"``."""
    return validate_plan(teacher_config, plan)


def student_config(teacher_config: dict, plan: RemovalPlan) -> dict:
    """The student's diffusers UNet config; ValueError (with the reason) for runtime-only plans."""
    try:
        return _config_and_names(teacher_config, plan)[0]
    except _NotConfig as e:
        raise ValueError(f"plan {plan.name!r} is runtime-only: {e}; use ablate() for it") from None


def name_map(teacher_config: dict, plan: RemovalPlan) -> dict[str, str]:
    """Student module prefix -> teacher module prefix for every student parameter (identity entries included)."""
    try:
        return _config_and_names(teacher_config, plan)[1]
    except _NotConfig as e:
        raise ValueError(f"plan {plan.name!r} is runtime-only: {e}") from None


def student_params(teacher_config: dict, plan: RemovalPlan) -> int:
    """Parameter count of the student (meta device, no weights)."""
    return count_params(student_config(teacher_config, plan))


# ---------------------------------------------------------------- weight transfer and export

def build_student(teacher: UNet2DConditionModel, plan: RemovalPlan) -> tuple[UNet2DConditionModel, dict[str, str]]:
    """A student UNet whose every parameter is a copy of its teacher source (BK-SDM init), and the name map."""
    tcfg = dict(teacher.config)
    try:
        cfg, names = _config_and_names(tcfg, plan)
    except _NotConfig as e:
        raise ValueError(f"plan {plan.name!r} is runtime-only: {e}; use ablate() for it") from None
    with torch.device("meta"):
        student = UNet2DConditionModel.from_config(cfg)
    source = teacher.state_dict()
    state = {key: source[map_key(key, names)].detach().clone() for key in student.state_dict()}
    student.load_state_dict(state, strict=True, assign=True)
    return student.train(teacher.training), names


def export_student(student: UNet2DConditionModel, names: dict[str, str], plan: RemovalPlan, out_dir: str | Path, *,
                   teacher: str = "", teacher_params: int | None = None) -> Path:
    """Save a diffusers UNet folder (safetensors) + ``name_map.json`` + ``plan.json`` + ``README.md`` model card."""
    out = Path(out_dir)
    student.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in student.parameters())
    (out / "name_map.json").write_text(json.dumps(names, indent=1) + "\n")
    info = plan.to_dict() | {"kind": "config", "params": params, "teacher": teacher, "teacher_params": teacher_params}
    (out / "plan.json").write_text(json.dumps(info, indent=1) + "\n")
    moved = {s: t for s, t in names.items() if s != t}
    ratio = f" ({params / teacher_params:.1%} of the teacher's {teacher_params:,})" if teacher_params else ""
    units = "\n".join(f"- `{u}`" for u in sorted(plan.units)) or "- (nothing)"
    (out / "README.md").write_text(
        f"# Layer-removed UNet student: {plan.name}\n\n"
        f"Made by the studio's layer-removal engine from teacher `{teacher or 'unknown'}`.\n"
        f"Parameters: {params:,}{ratio}.\n\n## Removed units\n{units}\n\n"
        f"## Initialisation\nEvery student layer is an exact copy of the teacher layer it replaces (BK-SDM style); "
        f"`name_map.json` maps student module prefixes to teacher prefixes ({len(moved)} of {len(names)} renamed).\n"
        f"The student has not been distilled yet: train it with task + output + feature distillation "
        f"(BK-SDM, SSD-1B) before use.\n\n## Loading\n```python\nfrom diffusers import UNet2DConditionModel\n"
        f"unet = UNet2DConditionModel.from_pretrained(\"{out.name}\")\n```\n")
    return out


# ---------------------------------------------------------------- run-time ablation

def _first(args: tuple, kwargs: dict, name: str):
    return args[0] if args else kwargs[name]


def _skip_attention(*args, return_dict: bool = True, **kwargs):
    hidden = _first(args, kwargs, "hidden_states")
    return Transformer2DModelOutput(sample=hidden) if return_dict else (hidden,)


_SKIPS = {
    "resnet": lambda *a, **k: _first(a, k, "input_tensor"),
    "layer": lambda *a, **k: _first(a, k, "hidden_states"),
    "block": lambda *a, **k: _first(a, k, "hidden_states"),
    "attention": _skip_attention,
}


@contextlib.contextmanager
def ablate(unet: UNet2DConditionModel, plan: RemovalPlan):
    """Skip the plan's units inside the ``with`` block (identity instead of the unit; the compute is saved too).

    Implemented by replacing ``forward`` on the module instances (restored on exit), so forward hooks of feature
    distillation still fire. Units that change shapes (levels, up-block resnets, channel-changing resnets) raise.
    """
    modules = runtime_modules(dict(unet.config), plan)
    patched = []
    try:
        for path, kind in modules:
            module = unet.get_submodule(path)
            patched.append((module, module.__dict__.get("forward")))
            module.forward = _SKIPS[kind]
        yield unet
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous
