"""What feature reuse can skip, in arithmetic: the share of a UNet forward's MACs in the modules a reused step does not
run (``studio.reuse.skipped_modules``), per branch, for the demo family at its 64 px (latent 16²) and the real models
at 1024² (latent 128²). Counted on the meta device (no weights, a few seconds).

    python scripts/reuse_macs.py

The Amdahl bound on a UNet-only speed-up at interval N is 1 / (1 - share * (N - 1) / N).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root
from studio.blocks import measure_macs, meta_unet
from studio.paths import ASSETS_DIR
from studio.reuse import skipped_modules

MODELS = [("demo-teacher", "demo/teacher", 16), ("demo-ssd", "demo/ssd", 16), ("demo-vega", "demo/vega", 16),
          ("sdxl", "configs/sdxl", 128), ("ssd-1b", "configs/ssd-1b", 128), ("vega", "configs/vega", 128)]
BRANCHES = (0, 1, 2, 3, 5)

print("| model | latent | GMACs per forward | " + " | ".join(f"skipped share, branch {b}" for b in BRANCHES)
      + " | bound N=2 / N=3 (branch 0) |")
print("|---|---|---|" + "---|" * len(BRANCHES) + "---|")
for name, folder, latent in MODELS:
    config = json.loads((ASSETS_DIR / folder / "unet" / "config.json").read_text())
    macs, unet = measure_macs(config, latent=latent), meta_unet(config)
    shares = [sum(macs.get(path, 0) for path, _ in skipped_modules(unet, b)) / macs[""] for b in BRANCHES]
    bounds = [1 / (1 - shares[0] * (n - 1) / n) for n in (2, 3)]
    print(f"| {name} | {latent}² | {macs[''] / 1e9:,.3f} | " + " | ".join(f"{s:.3f}" for s in shares)
          + f" | {bounds[0]:.2f}× / {bounds[1]:.2f}× |")
