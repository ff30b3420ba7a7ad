"""Export a pruned, teacher-initialised student as a registry model that the Generate tab lists.

    export_plan(pipe, plan, "demo-teacher-slim", teacher_name="demo-teacher")
"""
from __future__ import annotations

import json
from pathlib import Path

from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

from studio.blocks import count_params
from studio.paths import models_dir
from studio.removal import RemovalPlan, build_student, export_student


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
