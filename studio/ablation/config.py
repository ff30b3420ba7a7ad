"""AblationConfig: what to remove from a teacher and how to look at it (prompts, seeds, steps), validated.

    config = AblationConfig(model="demo-teacher", units=("mid_block.attentions.0",), steps=20)
    plan = config_plan(config, pipe.unet.config)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from studio.generation import MAX_SEED, MAX_SIZE, MAX_STEPS, MIN_SIZE
from studio.recipes import RECIPES, recipe_plan
from studio.removal import RemovalPlan, parse_unit, validate_plan

MAX_PROMPTS, MAX_SEEDS = 16, 8


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
