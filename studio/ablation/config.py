"""AblationConfig: what to remove from a teacher and how to look at it (prompts, seeds, steps), validated.

    config = AblationConfig(model="demo-teacher", units=("mid_block.attentions.0",), steps=20)
    plan = config_plan(config, pipe.unet.config)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from studio.generation import MAX_PROMPT_CHARS, MAX_SEED, MAX_SIZE, MAX_STEPS, MIN_SIZE
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
        if not 1 <= len(self.prompts) <= MAX_PROMPTS or not all(
                isinstance(p, str) and p.strip() and len(p) <= MAX_PROMPT_CHARS for p in self.prompts):
            raise ValueError(f"AblationConfig.prompts: give 1-{MAX_PROMPTS} non-empty prompts of at most "
                             f"{MAX_PROMPT_CHARS} characters; got {len(self.prompts)} ({str(self.prompts)[:80]})")
        if not 1 <= len(self.seeds) <= MAX_SEEDS or not all(_integer(s) and 0 <= s <= MAX_SEED for s in self.seeds):
            raise ValueError(f"AblationConfig.seeds: give 1-{MAX_SEEDS} seeds in 0..{MAX_SEED}; got "
                             f"{str(self.seeds)[:80]}")
        if not _integer(self.steps) or not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"AblationConfig.steps must be an integer between 1 and {MAX_STEPS}; got {self.steps!r}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or \
                not 0 <= self.guidance <= 30:
            raise ValueError(f"AblationConfig.guidance must be between 0 and 30; got {self.guidance!r}")
        check_resolution(self.resolution, "AblationConfig.resolution")

    def to_dict(self) -> dict:
        return asdict(self)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_resolution(value, name: str = "resolution") -> None:
    """An image side: a multiple of 8 from MIN_SIZE to MAX_SIZE, or None (the model's native size)."""
    if value is not None and (not _integer(value) or value % 8 or not MIN_SIZE <= value <= MAX_SIZE):
        raise ValueError(f"{name} must be a multiple of 8 in {MIN_SIZE}..{MAX_SIZE} (or 0 for the model's native "
                         f"size); got {value!r}")


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
