"""Arena ratings: online Elo and the Bradley-Terry leaderboard with bootstrap CIs (Chatbot Arena / FastChat math).

    rows = leaderboard(votes, RatingConfig(bootstrap_rounds=200))

A *vote* is a mapping with at least ``model_a``, ``model_b`` (the models shown as "Model A" / "Model B") and
``vote`` in {"A", "B", "tie", "bad"}; ``category`` and ``created_at`` (epoch seconds) are used by `filter_votes`.
This is exactly what `studio.arena.load_votes` returns. Nothing here touches the database or the UI.
`parse_date` turns the UI's and the CLI's date filters into the epoch bounds `filter_votes` takes.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

# score of model A for each vote value; "bad" (both are bad) counts as a tie, as in FastChat
VOTE_SCORES = {"A": 1.0, "B": 0.0, "tie": 0.5, "bad": 0.5}


@dataclass(frozen=True)
class RatingConfig:
    """Constants of the Elo and Bradley-Terry ratings (defaults: FastChat's)."""

    k: float = 4.0  # online Elo step size
    scale: float = 400.0  # rating points per factor `base` in odds
    base: float = 10.0
    init: float = 1000.0  # starting Elo rating; mean Bradley-Terry rating
    bootstrap_rounds: int = 100  # resamples for the confidence intervals; 0 disables them
    ci: float = 0.95  # confidence level of the bootstrap intervals
    seed: int = 0  # seed of the bootstrap resampling
    separable_ridge: float = 1e-3  # L2 penalty used only when the MLE does not exist (see `fit_bradley_terry`)
    min_votes: int = 20  # a model with fewer votes gets a provisional rating (Chatbot Arena: "preliminary")

    def __post_init__(self):
        for name in ("k", "scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"RatingConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not self.base > 1:
            raise ValueError(f"RatingConfig.base must be > 1, got {self.base!r}")
        if not (isinstance(self.bootstrap_rounds, int) and self.bootstrap_rounds >= 0):
            raise ValueError(f"RatingConfig.bootstrap_rounds must be an int >= 0, got {self.bootstrap_rounds!r}")
        if not 0 < self.ci < 1:
            raise ValueError(f"RatingConfig.ci must be in (0, 1), got {self.ci!r}")
        if not self.separable_ridge > 0:
            raise ValueError(f"RatingConfig.separable_ridge must be > 0, got {self.separable_ridge!r}")
        if not (isinstance(self.min_votes, int) and not isinstance(self.min_votes, bool) and self.min_votes >= 1):
            raise ValueError(f"RatingConfig.min_votes must be an int >= 1, got {self.min_votes!r}")


# ---------------------------------------------------------------------------------------------------------------
# helpers


def _score(vote: Mapping) -> float:
    try:
        return VOTE_SCORES[vote["vote"]]
    except KeyError:
        raise ValueError(f"vote must be one of {', '.join(VOTE_SCORES)}; got {vote.get('vote')!r}") from None


def parse_date(text: str | None, *, end: bool = False) -> float | None:
    """An ISO date or date-time -> epoch seconds (None for empty text). A date alone as an ``end`` bound includes that
    whole day (``until="2026-11-27"`` keeps the votes of the 27th). ValueError for anything else."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"dates look like 2026-11-27 or 2026-11-27T14:00; got {text!r}") from None
    if end and len(text) == 10:
        moment += timedelta(days=1)
    return moment.timestamp()


def models_of(votes: Iterable[Mapping]) -> list[str]:
    """Sorted names of every model appearing in `votes`."""
    return sorted({v["model_a"] for v in votes} | {v["model_b"] for v in votes})


def filter_votes(votes: Iterable[Mapping], *, category: str | None = None, since: float | None = None,
                 until: float | None = None) -> list[Mapping]:
    """Votes of one prompt category and/or a time range (`since` inclusive, `until` exclusive; epoch seconds)."""
    return [v for v in votes
            if (category is None or v.get("category") == category)
            and (since is None or v["created_at"] >= since)
            and (until is None or v["created_at"] < until)]


def predicted_win_prob(r_a: float, r_b: float, *, scale: float = 400.0, base: float = 10.0) -> float:
    """Probability that a model rated `r_a` beats one rated `r_b`: 1 / (1 + base ** ((r_b - r_a) / scale))."""
    return 1.0 / (1.0 + base ** ((r_b - r_a) / scale))


# ---------------------------------------------------------------------------------------------------------------
# online Elo


def compute_elo(votes: Iterable[Mapping], config: RatingConfig = RatingConfig()) -> dict[str, float]:
    """Online Elo over `votes` in the given (time) order, exactly as FastChat's ``compute_elo``.

    ``e_a = 1 / (1 + base ** ((r_b - r_a) / scale))``; ``r_a += k (s_a - e_a)``; ``r_b += k ((1 - s_a) - (1 - e_a))``
    with ``s_a`` = 1 (A wins), 0 (B wins), 0.5 (tie or both bad). Order-dependent: a live feel, not the leaderboard.
    """
    ratings: dict[str, float] = {}
    for v in votes:
        a, b, s_a = v["model_a"], v["model_b"], _score(v)
        r_a, r_b = ratings.setdefault(a, config.init), ratings.setdefault(b, config.init)
        e_a = predicted_win_prob(r_a, r_b, scale=config.scale, base=config.base)
        ratings[a] = r_a + config.k * (s_a - e_a)
        ratings[b] = r_b + config.k * ((1 - s_a) - (1 - e_a))
    return ratings


# ---------------------------------------------------------------------------------------------------------------
# Bradley-Terry maximum likelihood


@dataclass(frozen=True)
class _Battles:
    """Votes aggregated into unique (A index, B index, score) rows with counts: the bootstrap resamples counts."""

    models: list[str]
    a: np.ndarray  # (U,) int
    b: np.ndarray  # (U,) int
    s: np.ndarray  # (U,) score of A in {0, 0.5, 1}
    w: np.ndarray  # (U,) number of votes of this kind


def _aggregate(votes: Sequence[Mapping], models: list[str]) -> _Battles:
    index = {m: i for i, m in enumerate(models)}
    counts: dict[tuple[int, int, float], int] = {}
    for v in votes:
        key = (index[v["model_a"]], index[v["model_b"]], _score(v))
        counts[key] = counts.get(key, 0) + 1
    rows = np.array(list(counts), dtype=float).reshape(-1, 3)
    return _Battles(models, rows[:, 0].astype(int), rows[:, 1].astype(int), rows[:, 2],
                    np.array(list(counts.values()), dtype=float))


def _closure(adj: np.ndarray) -> np.ndarray:
    """Reflexive transitive closure of a boolean adjacency matrix by repeated squaring."""
    reach = adj | np.eye(len(adj), dtype=bool)
    for _ in range(max(1, math.ceil(math.log2(max(len(adj), 2))))):
        reach = (reach.astype(np.int64) @ reach.astype(np.int64)) > 0
    return reach


def _components(n: int, a: np.ndarray, b: np.ndarray, s: np.ndarray) -> tuple[list[np.ndarray], list[bool]]:
    """Connected components of the comparison graph, and for each whether it is strongly connected in "scored" edges.

    The BT MLE exists (is finite) iff, within every component, the directed graph "i scored > 0 against j" is
    strongly connected (Zermelo 1929; Ford 1957). A tie or both-bad vote gives an edge both ways.
    """
    beat = np.zeros((n, n), dtype=bool)
    beat[a[s > 0], b[s > 0]] = True  # A scored against B
    beat[b[s < 1], a[s < 1]] = True  # B scored against A
    reach, linked = _closure(beat), _closure(beat | beat.T)
    comps, seen = [], np.zeros(n, dtype=bool)
    for i in range(n):
        if not seen[i]:
            seen |= linked[i]
            comps.append(np.flatnonzero(linked[i]))
    return comps, [bool(reach[np.ix_(c, c)].all()) for c in comps]


def _newton(x: np.ndarray, s: np.ndarray, w: np.ndarray, ridge: float, max_iter: int = 100) -> np.ndarray:
    """Minimise  -sum w [s log p + (1-s) log(1-p)] + ridge/2 |beta|^2,  p = sigmoid(x @ beta), by damped Newton."""

    def loss(beta):
        z = x @ beta
        return float(np.sum(w * (np.logaddexp(0.0, z) - s * z)) + 0.5 * ridge * beta @ beta)

    beta = np.zeros(x.shape[1])
    current = loss(beta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ beta)))
        grad = x.T @ (w * (p - s)) + ridge * beta
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + ridge * np.eye(len(beta))
        step = np.linalg.pinv(hess, hermitian=True) @ grad  # pinv: the all-ones direction is unidentified
        t = 1.0
        while t > 1e-8 and loss(beta - t * step) > current + 1e-12:
            t *= 0.5  # backtracking keeps the loss monotone
        beta = beta - t * step
        new = loss(beta)
        if abs(current - new) < 1e-12 * max(1.0, abs(current)) and np.abs(grad).max() < 1e-8:
            break
        current = new
    return beta


def _fit(battles: _Battles, w: np.ndarray, config: RatingConfig) -> np.ndarray:
    """Ratings (NaN for models absent from `w`); the tiny ridge only when the data are separable."""
    n, keep = len(battles.models), w > 0
    a, b, s, w = battles.a[keep], battles.b[keep], battles.s[keep], w[keep]
    present = np.zeros(n, dtype=bool)
    present[a] = present[b] = True
    comps, strongly = _components(n, a, b, s)
    x = np.zeros((len(w), n))
    x[np.arange(len(w)), a] = math.log(config.base)
    x[np.arange(len(w)), b] = -math.log(config.base)
    ridge = 0.0 if all(strongly) else config.separable_ridge
    beta = _newton(x, s, w, ridge)
    for c in comps:  # the likelihood only fixes differences within a component: centre each one
        beta[c] -= beta[c].mean()
    ratings = config.scale * beta + config.init
    ratings[~present] = np.nan
    return ratings


def fit_bradley_terry(votes: Sequence[Mapping], config: RatingConfig = RatingConfig()) -> dict[str, float]:
    """Bradley-Terry MLE ratings as in FastChat's ``compute_mle_elo``; order-independent.

    Design matrix: one column per model, ``+log(base)`` for A and ``-log(base)`` for B; label 1 when A won; ties and
    both-bad enter as two half-weight rows, one each way (equivalently a row with label 0.5). Logistic regression
    without intercept and without penalty, solved by Newton's method in numpy (scipy is not a dependency);
    ratings = ``scale * coef + init``, so rating differences give `predicted_win_prob` and the mean rating of each
    connected group of models is `init`.

    When the MLE does not exist (a model never lost, or never won, against its group — "separable" data, where the
    unpenalised coefficients run to infinity) a tiny ridge ``config.separable_ridge / 2 * |coef|^2`` is added so the
    ratings stay finite.
    """
    models = models_of(votes)
    if not models:
        return {}
    battles = _aggregate(votes, models)
    ratings = _fit(battles, battles.w, config)
    return dict(zip(models, ratings.tolist()))


def bootstrap_bradley_terry(votes: Sequence[Mapping], config: RatingConfig = RatingConfig()
                            ) -> dict[str, tuple[float, float]]:
    """Bootstrap confidence intervals: resample votes with replacement `bootstrap_rounds` times, refit, and take the
    (1 - ci)/2 and (1 + ci)/2 percentiles per model. Resampling N votes with replacement is drawn as one multinomial
    over the aggregated vote kinds (same distribution, much faster)."""
    models = models_of(votes)
    if not models or config.bootstrap_rounds == 0:
        return {m: (math.nan, math.nan) for m in models}
    battles = _aggregate(votes, models)
    rng = np.random.default_rng(config.seed)
    total = int(battles.w.sum())
    samples = np.stack([_fit(battles, rng.multinomial(total, battles.w / total).astype(float), config)
                        for _ in range(config.bootstrap_rounds)])
    tail = 100 * (1 - config.ci) / 2
    lo, hi = np.nanpercentile(samples, [tail, 100 - tail], axis=0)
    return {m: (float(low), float(high)) for m, low, high in zip(models, lo, hi)}


# ---------------------------------------------------------------------------------------------------------------
# tables and plots


def win_rate_matrix(votes: Iterable[Mapping], models: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """M[i, j] = fraction of the non-tied battles between models i and j that i won (NaN when none), either side.

    Ties and both-bad votes are left out, as in Chatbot Arena's "fraction of model A wins" plot.
    """
    votes = list(votes)
    models = list(models) if models is not None else models_of(votes)
    index = {m: i for i, m in enumerate(models)}
    wins = np.zeros((len(models), len(models)))
    for v in votes:
        if v["vote"] in ("A", "B") and v["model_a"] in index and v["model_b"] in index:
            winner, loser = (v["model_a"], v["model_b"]) if v["vote"] == "A" else (v["model_b"], v["model_a"])
            wins[index[winner], index[loser]] += 1
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return models, np.where(games > 0, wins / games, np.nan)


def estimable(votes: Sequence[Mapping]) -> dict[str, bool]:
    """Whether each model's Bradley-Terry rating is a maximum-likelihood estimate at all: within its group of models
    compared with each other, every model must have scored against and conceded to the others (the "scored" graph
    strongly connected). Otherwise — one vote, or a model that never lost — the MLE is infinite and the rating is the
    ridge's finite stand-in, with no meaningful confidence interval."""
    models = models_of(votes)
    if not models:
        return {}
    battles = _aggregate(votes, models)
    comps, strongly = _components(len(models), battles.a, battles.b, battles.s)
    return {models[i]: ok for c, ok in zip(comps, strongly) for i in c}


@dataclass(frozen=True)
class LeaderboardRow:
    rank: int
    model: str
    rating: float  # Bradley-Terry rating
    ci_low: float
    ci_high: float
    elo: float  # online Elo in time order
    votes: int
    win_rate: float  # (wins + ties/2 + both-bad/2) / votes
    provisional: bool = False  # fewer than RatingConfig.min_votes votes
    estimable: bool = True  # the rating is an MLE (see `estimable`); False: its CI cannot be estimated yet

    @property
    def rating_text(self) -> str:
        """The BT rating as shown: "—" while provisional (after a vote or two the MLE sits at the edge its prior
        allows: a number that says nothing yet), else one decimal."""
        return "—" if self.provisional else f"{self.rating:.1f}"

    @property
    def ci_text(self) -> str:
        """The 95% CI as shown: "n/a" while provisional or without bootstrap, "needs more votes" where it cannot be
        estimated (no MLE, or every resample gave the same rating), else "low – high"."""
        if self.provisional or math.isnan(self.ci_low) or math.isnan(self.ci_high):
            return "n/a"
        if not self.estimable or self.ci_high - self.ci_low < 1e-6:
            return "needs more votes"
        return f"{self.ci_low:.0f} – {self.ci_high:.0f}"

    def note(self, min_votes: int) -> str:
        return f"provisional: {self.votes} of {min_votes} votes" if self.provisional else ""


def plural(n: int, word: str) -> str:
    """``1 vote``, ``2 votes``, ``1,200 votes``."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def leaderboard_cells(rows: Sequence[LeaderboardRow], config: RatingConfig = RatingConfig()) -> list[list]:
    """Rows for a table: rank, model, BT rating, 95% CI, Elo, votes, win rate, note (provisional ratings: "—" and
    "n/a", see `LeaderboardRow.rating_text`)."""
    return [[r.rank, r.model, r.rating_text, r.ci_text, round(r.elo, 1), r.votes, f"{r.win_rate:.0%}",
             r.note(config.min_votes)] for r in rows]


def leaderboard(votes: Sequence[Mapping], config: RatingConfig = RatingConfig(), *, category: str | None = None,
                since: float | None = None, until: float | None = None) -> list[LeaderboardRow]:
    """Leaderboard rows sorted by Bradley-Terry rating, after `filter_votes`; Elo uses the votes sorted by time."""
    votes = filter_votes(votes, category=category, since=since, until=until)
    if not votes:
        return []
    ordered = sorted(votes, key=lambda v: v.get("created_at", 0.0))
    bt, ci, elo = fit_bradley_terry(votes, config), bootstrap_bradley_terry(votes, config), compute_elo(ordered, config)
    count = {m: 0 for m in bt}
    points = {m: 0.0 for m in bt}
    for v in votes:
        s = _score(v)
        count[v["model_a"]] += 1
        count[v["model_b"]] += 1
        points[v["model_a"]] += s
        points[v["model_b"]] += 1 - s
    ranked, mle = sorted(bt, key=lambda m: -bt[m]), estimable(votes)
    return [LeaderboardRow(i + 1, m, bt[m], ci[m][0], ci[m][1], elo[m], count[m], points[m] / count[m],
                           provisional=count[m] < config.min_votes, estimable=mle[m])
            for i, m in enumerate(ranked)]


def plot_win_rate_heatmap(models: Sequence[str], matrix: np.ndarray, *, title: str = "Win rate of row over column"):
    """A matplotlib Figure of a (win-rate or predicted-probability) matrix with the values written in the cells.

    Built with ``matplotlib.figure.Figure`` (no pyplot state), so it is safe from worker threads; `gr.Plot` shows it.
    """
    from matplotlib.figure import Figure

    n = len(models)
    fig = Figure(figsize=(max(4.0, 1.2 + 0.8 * n), max(3.0, 1.0 + 0.7 * n)), layout="constrained")  # room for the title
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap="RdBu", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels=list(models), rotation=45, ha="right")
    ax.set_yticks(range(n), labels=list(models))
    ax.set_xlabel("model B (column)")
    ax.set_ylabel("model A (row)")
    ax.set_title(title)
    for i in range(n):
        for j in range(n):
            if not math.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax)
    return fig
