"""Arena tab: blind A/B battles between the models of a pool, and the leaderboard (Bradley-Terry + CIs, Elo, heatmap).

    with gr.Tab("Arena"):
        build_arena_tab(cache, hosting=hosting)

The pool, the live settings and the votes database: `studio.arena_service.ArenaService`.

Nothing identifies a model before the vote: the battle response holds two anonymous images (no metadata, handed to
Gradio's cache as images, never as files of the data folder), the labels "Model A" / "Model B" and the prompt — no
seed, no settings; the battle id stays in server-side `gr.State`. Rate limits, the daily vote cap, battle ownership
and the minimum viewing time count the visitor's server-side identity (`studio.ui.access.visitor`). Votes live in
``<persistent dir>/arena/votes.db`` (``/data`` on a Space with persistent storage); a battle cache built with
``python -m studio arena-cache --cache-dir <data dir>/arena/cache ...`` is used when present.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import gradio as gr

import studio.ui.access as access
from studio.arena import LABELS, VOTES, ArenaConfig
from studio.arena_cache import ArenaError
from studio.arena_service import (
    ALL,
    CACHE_NOTE,
    DEMO_CATEGORY,
    ArenaService,
    how_to_add_models,
    persistence_note,
    pool_line,
    prompt_hint,
)
from studio.arena_votes import export_votes
from studio.hosting import Hosting, deliverable
from studio.loading import ModelCache
from studio.ratings import (
    RatingConfig,
    filter_votes,
    leaderboard,
    leaderboard_cells,
    parse_date,
    plot_win_rate_heatmap,
    plural,
    win_rate_matrix,
)
from studio.ui.help import first_step

VOTE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "bad": "Both are bad"}  # no emoji: not every
# browser has an emoji font (headless Chromium on Debian shows boxes)
# demo models draw at 64 px: scale battle images up to the box, pixel-sharp, instead of showing a thumbnail
IMAGE_CSS = ("#arena-image-a img, #arena-image-b img {width: 100%; height: 100%; object-fit: contain; "
             "image-rendering: pixelated;}")
LEADERBOARD_COLUMNS = ["rank", "model", "BT rating", "95% CI", "Elo", "votes", "win rate", "note"]


# ---------------------------------------------------------------------------------------------------------------
# handlers


def _category(value: str | None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ArenaError(f"category must be text; got {type(value).__name__}")
    return None if value in (None, "", ALL) else value


def _buttons(interactive: bool) -> list:
    return [gr.update(interactive=interactive) for _ in VOTES]


def _battle_info(battle: dict) -> str:
    """Prompt and category only: the seed and settings would let a voter replay the battle (shown after the vote)."""
    text = f"**Prompt:** {_md(battle['prompt'])}  \n*category {_md(battle['category'])}*"
    if battle["source"] == "cache":
        text += f"  \n*Note: this battle was {CACHE_NOTE} (no live generation).*"
    return text


def _settings_text(result: dict) -> str:
    s = result["settings"]
    size = f"{s['width']}×{s['height']}" if s.get("width") else "native size"
    details = "".join(f" · {k} {s[k]}" for k in ("steps", "guidance") if k in s)
    return f"seed {result['seed']} · {size}{details}"


def _md(text: str) -> str:
    """Visitor text shown as Markdown, inert: no HTML, links or emphasis of its own."""
    return "".join("\\" + c if c in "\\`*_{}[]()#+-.!|<>~" else c for c in str(text))


class ArenaHandlers:
    """Event handlers bound to one `ArenaService`; every user error becomes a `gr.Error` toast."""

    def __init__(self, service: ArenaService):
        self.service = service

    def _voter(self, request: gr.Request | None) -> str:
        return access.visitor(request, self.service.hosting).key

    def on_draw_prompt(self, category: str) -> str:
        try:
            return self.service.draw(_category(category)).text
        except ArenaError as err:
            raise gr.Error(str(err)) from err

    def on_battle(self, prompt: str, category: str, request: gr.Request):
        """Both anonymous images of a new battle in one response; names, seed and settings stay on the server
        until the vote."""
        try:
            battle = self.service.new_battle(prompt, self._voter(request), _category(category))
        except ArenaError as err:
            raise gr.Error(str(err)) from err
        # images, not files of the data folder: Gradio writes them to its own cache for this visitor
        images = [gr.update(value=battle["images"][label], label=label) for label in LABELS]
        reveal = "Which image fits the prompt better? Vote to reveal the models."
        info = _battle_info(battle)
        if hint := prompt_hint(prompt, self.service.pool()):
            info += f"  \n*Hint:* {hint}"
        return (*images, info, reveal, *_buttons(True), battle["battle_id"])

    def on_prompt_change(self, prompt: str) -> str:
        """The shapes hint while a visitor types a prompt the demo pool does not know ('' otherwise)."""
        hint = prompt_hint(prompt, self.service.pool())
        return f"**Hint:** {hint}" if hint else ""

    def on_pool(self) -> str:
        return pool_line(self.service.pool())

    def on_vote(self, vote: str, battle_id: str | None, request: gr.Request):
        """Record the one vote of this visitor's battle, reveal both names and disable the vote buttons."""
        if not battle_id:
            raise gr.Error("Start a battle first (“New battle”).")
        try:
            result = self.service.vote(battle_id, vote, self._voter(request))
        except ArenaError as err:
            raise gr.Error(str(err)) from err
        names = [result[label] for label in LABELS]
        outcome = f"winner **{result['winner']}**" if result["winner"] else "no winner"
        reveal = (f"### {LABELS[0]}: {names[0]} · {LABELS[1]}: {names[1]}\nYou voted *{VOTE_LABELS[vote]}* — "
                  f"{outcome}. Both drew with {_settings_text(result)}. Thanks! Start a new battle for the next "
                  "vote.")
        labels = [gr.update(label=f"{label}: {name}") for label, name in zip(LABELS, names)]
        return (*labels, reveal, *_buttons(False))

    def on_leaderboard(self, category: str, since: str, until: str):
        """Leaderboard rows (BT rating with bootstrap 95% CI, Elo, votes, win rate) and the win-rate heatmap."""
        try:
            votes = filter_votes(self.service.votes(), category=_category(category), since=parse_date(since),
                                 until=parse_date(until, end=True))
            config = RatingConfig(bootstrap_rounds=100, min_votes=self.service.min_votes)
            rows = leaderboard(votes, config)
        except ValueError as err:  # an ArenaError, or a bad date
            raise gr.Error(str(err)) from err
        table = leaderboard_cells(rows, config)
        if not rows:
            return table, None, "No votes match these filters yet."
        models, matrix = win_rate_matrix(votes, [r.model for r in rows])
        summary = (f"{plural(len(votes), 'vote')} · ratings: Bradley-Terry MLE (mean 1000), 95% CI from 100 "
                   f"bootstrap rounds. A rating with fewer than {plural(config.min_votes, 'vote')} is "
                   "**provisional**: shown as “—”, its CI as “n/a”. A CI also needs each model to have both won and "
                   "lost within its group (until then: “needs more votes”). Elo: online, K = 4 per vote in vote order, so it stays near 1000 for the "
                   "first votes. Heatmap: share of decisive votes won (ties and both-bad left out).")
        return table, plot_win_rate_heatmap(models, matrix, title="Win rate, row vs column"), summary

    def on_export(self, fmt: str, request: gr.Request) -> str:
        """All votes as CSV or JSON (model names, sides, vote, prompt, settings). Admins (everyone, locally) get
        voter pseudonyms rotated for this export; anonymous visitors of a public studio get none."""
        if fmt not in ("csv", "json"):
            raise gr.Error(f"export format must be one of csv, json; got {str(fmt)[:40]!r}")
        if not self.service.db_path.is_file():
            raise gr.Error("No votes yet.")
        voters = "rotate" if access.visitor(request, self.service.hosting).admin else "drop"
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / f"arena-votes-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
            export_votes(self.service.db_path, out, fmt, voters=voters)
            return deliverable(out)

    def on_set_pool(self, names: str, request: gr.Request) -> str:
        """Admins: the arena pool as comma-separated model names (empty = back to the default)."""
        access.require_admin(request, "Changing the arena pool", self.service.hosting)
        try:
            pool = self.service.set_pool(str(names or "").split(","))
        except ArenaError as err:
            raise gr.Error(str(err)) from err
        return f"Arena pool: {', '.join(pool) or '(none)'}"


def _vote_button_fn(handlers: ArenaHandlers, vote: str):
    def on_vote_button(battle_id: str | None, request: gr.Request):
        return handlers.on_vote(vote, battle_id, request)

    return on_vote_button


# ---------------------------------------------------------------------------------------------------------------
# layout


def build_arena_tab(cache: ModelCache, *, pool: list[str] | None = None, db_path: str | Path | None = None,
                    cache_dir: str | Path | None = None, settings: dict | None = None,
                    config: ArenaConfig | None = None, hosting: Hosting | None = None) -> ArenaService:
    """Battle and Leaderboard sub-tabs; see `ArenaService` for the options. Returns the service (for tests)."""
    service = ArenaService(cache, pool=pool, db_path=db_path, cache_dir=cache_dir, settings=settings, config=config,
                           hosting=hosting)
    handlers = ArenaHandlers(service)
    categories = [ALL, *service.categories()]
    default_category = DEMO_CATEGORY if service.fixed_pool is None and DEMO_CATEGORY in categories else ALL
    with gr.Tab("Battle", elem_id="arena-battle") as battle_tab:
        first_step("Press **New battle** (an empty prompt draws a curated one), compare the two images, then vote: "
                   "the names appear after your vote.")
        gr.Markdown("**Blind arena** — two anonymous models draw the same prompt with the same seed. Vote for the "
                    "better image; the names are revealed after your vote (one vote per battle).")
        current = service.pool()
        pool_md = gr.Markdown(pool_line(current), elem_id="arena-pool")
        if len(set(current)) < 2:
            gr.Markdown(f"**Note:** {how_to_add_models(current)}")
        if note := persistence_note():
            gr.Markdown(note, elem_id="arena-persistence")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt (empty = a curated prompt)", lines=1, scale=4,
                                elem_id="arena-prompt")
            category = gr.Dropdown(categories, value=default_category, label="Category", scale=1, elem_id="arena-category")
            draw = gr.Button("Draw a prompt", scale=0, elem_id="arena-draw")
        hint = gr.Markdown(elem_id="arena-prompt-hint")
        battle_btn = gr.Button("New battle", variant="primary", elem_id="arena-new-battle")
        info = gr.Markdown(elem_id="arena-info")
        with gr.Row():
            images = [gr.Image(label=label, type="filepath", format="png", interactive=False, height=320,
                               elem_id=f"arena-image-{side}") for label, side in zip(LABELS, "ab")]
        with gr.Row():
            vote_btns = {v: gr.Button(VOTE_LABELS[v], interactive=False, elem_id=f"arena-vote-{v}") for v in VOTES}
        reveal = gr.Markdown(elem_id="arena-reveal")
        battle_id = gr.State(None)  # server side: never sent to the browser
        vote_choice = gr.Radio(list(VOTES), value="A", visible=False, label="vote")  # API input of arena_vote
        vote_api = gr.Button(visible=False)
        gr.HTML(f"<style>{IMAGE_CSS}</style>", padding=False, container=False)  # last: its empty block adds a gap
    with gr.Tab("Leaderboard", elem_id="arena-board") as board_tab:
        first_step(f"Vote in a few battles, then come back here; a rating with fewer than {plural(service.min_votes, 'vote')} "
                   "is marked provisional.")
        with gr.Row():
            board_category = gr.Dropdown([*categories, "custom"], value=ALL, label="Category")
            since = gr.Textbox(label="From (YYYY-MM-DD)", placeholder="any")
            until = gr.Textbox(label="To, inclusive (YYYY-MM-DD)", placeholder="any")
            refresh = gr.Button("Refresh", elem_id="arena-refresh")
        summary = gr.Markdown(elem_id="arena-summary")
        table = gr.Dataframe(headers=LEADERBOARD_COLUMNS, interactive=False, label="Leaderboard",
                             elem_id="arena-leaderboard")
        heatmap = gr.Plot(label="Pairwise win rate", elem_id="arena-heatmap")
        with gr.Row():
            fmt = gr.Radio(["csv", "json"], value="csv", label="Export format")
            export = gr.Button("Export votes", elem_id="arena-export")
            export_file = gr.File(label="Votes export", interactive=False, height=120, elem_id="arena-export-file")
        with gr.Accordion("Arena pool (admins)", open=False):
            with gr.Row():
                pool_names = gr.Textbox(label="Models, comma-separated (empty = the default pool)", scale=4,
                                        value="" if service.hosting.public else ", ".join(current))
                set_pool = gr.Button("Set pool", scale=0)
            pool_info = gr.Markdown()

    draw.click(handlers.on_draw_prompt, category, prompt, api_name="arena_draw_prompt")
    prompt.change(handlers.on_prompt_change, prompt, hint, api_visibility="private", show_progress="hidden",
                  trigger_mode="always_last")
    battle_tab.select(handlers.on_pool, None, pool_md, api_visibility="private", show_progress="hidden")
    battle_lane = access.lane("gpu" if service.config.live else "arena", service.hosting)  # cache-only: no GPU
    battle_btn.click(handlers.on_battle, [prompt, category], [*images, info, reveal, *vote_btns.values(), battle_id],
                     api_name="arena_battle", **battle_lane)
    vote_outputs = [*images, reveal, *vote_btns.values()]
    vote_api.click(handlers.on_vote, [vote_choice, battle_id], vote_outputs, api_name="arena_vote")
    for vote, button in vote_btns.items():
        button.click(_vote_button_fn(handlers, vote), battle_id, vote_outputs, api_visibility="private")
    board_inputs, board_outputs = [board_category, since, until], [table, heatmap, summary]
    refresh.click(handlers.on_leaderboard, board_inputs, board_outputs, api_name="arena_leaderboard")
    board_tab.select(handlers.on_leaderboard, board_inputs, board_outputs, api_visibility="private")
    export.click(handlers.on_export, fmt, export_file, api_name="arena_export")
    set_pool.click(handlers.on_set_pool, pool_names, pool_info, api_name="arena_set_pool").then(
        handlers.on_pool, None, pool_md, api_visibility="private", show_progress="hidden")
    return service
