"""Layer ablation: what removing UNet units does to the images, leave-one-out sweeps, and student export.

    config = AblationConfig(model="demo-teacher", units=("mid_block.attentions.0",), steps=20)
    cmp = compare_ablation(pipe, config_plan(config, pipe.unet.config), config)  # images, Δparams, ΔMACs, SSIM
    result = sweep(pipe, config, model_name="demo-teacher")  # rows ranked by damage per parameter saved
    export_plan(pipe, plan, "demo-teacher-slim", teacher_name="demo-teacher")  # appears in list_models()

    config    AblationConfig and the plan it names
    cost      params / MACs of a plan (block map on the meta device), sweep candidates, a model's configs on disk
    metrics   PSNR, SSIM, the demo evaluator's prompt fidelity
    compare   full vs ablated on the same prompts and seeds
    sweep     leave-one-out, ranked by damage (1 - SSIM) per million parameters saved, cached on disk
    plots     the sweep as a heatmap over the UNet layout and as a table; compact unit labels
    export    the pruned, teacher-initialised student as a registry model
"""
from studio.ablation.compare import AblationComparison, compare_ablation
from studio.ablation.config import AblationConfig, check_resolution, config_plan
from studio.ablation.cost import model_facts, model_rows, plan_cost, removable_units
from studio.ablation.export import export_plan
from studio.ablation.metrics import fidelity, psnr, ssim
from studio.ablation.plots import SHOWN_SWEEP_COLUMNS, SWEEP_HEADERS, plot_sweep, short_label, sweep_table
from studio.ablation.sweep import SWEEP_COLUMNS, SweepResult, sweep, sweep_dir, weights_fingerprint

__all__ = ["SHOWN_SWEEP_COLUMNS", "SWEEP_COLUMNS", "SWEEP_HEADERS", "sweep_table", "AblationComparison", "AblationConfig", "SweepResult", "check_resolution", "compare_ablation",
           "config_plan",
           "export_plan", "fidelity", "model_facts", "model_rows", "plan_cost", "plot_sweep", "psnr",
           "removable_units", "short_label", "ssim", "sweep", "sweep_dir", "weights_fingerprint"]
