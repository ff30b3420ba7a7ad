"""Arena ratings against hand-computed cases and a simulated tournament with known strengths."""
from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest

from studio.ratings import (RatingConfig, bootstrap_bradley_terry, compute_elo, filter_votes, fit_bradley_terry,
                            leaderboard, parse_date, plot_win_rate_heatmap, predicted_win_prob, win_rate_matrix)


def v(a: str, b: str, vote: str, t: float = 0.0, category: str = "shapes") -> dict:
    return {"model_a": a, "model_b": b, "vote": vote, "created_at": t, "category": category}


class TestElo:
    def test_first_win_moves_k_over_two(self):
        assert compute_elo([v("x", "y", "A")]) == {"x": 1002.0, "y": 998.0}

    def test_second_win_by_hand(self):
        e_a = 1 / (1 + 10 ** ((998 - 1002) / 400))  # 0.505756...
        r = compute_elo([v("x", "y", "A"), v("x", "y", "A")])
        assert r["x"] == pytest.approx(1002 + 4 * (1 - e_a))
        assert r["y"] == pytest.approx(998 - 4 * (1 - e_a))

    def test_b_win_uses_side_b(self):
        assert compute_elo([v("x", "y", "B")]) == {"x": 998.0, "y": 1002.0}

    @pytest.mark.parametrize("vote", ["tie", "bad"])
    def test_tie_and_both_bad_score_half(self, vote):
        r = compute_elo([v("x", "y", "A"), v("x", "y", vote)])
        e_a = 1 / (1 + 10 ** ((998 - 1002) / 400))
        assert r["x"] == pytest.approx(1002 + 4 * (0.5 - e_a))
        assert r["x"] + r["y"] == pytest.approx(2000)

    def test_k_and_init_configurable(self):
        assert compute_elo([v("x", "y", "A")], RatingConfig(k=32, init=1500)) == {"x": 1516.0, "y": 1484.0}

    def test_invalid_vote_names_allowed_values(self):
        with pytest.raises(ValueError, match="A, B, tie, bad"):
            compute_elo([v("x", "y", "C")])


class TestBradleyTerry:
    def test_three_wins_to_one(self):
        r = fit_bradley_terry([v("x", "y", "A")] * 3 + [v("x", "y", "B")])
        assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), abs=1e-6)
        assert (r["x"] + r["y"]) / 2 == pytest.approx(1000)
        assert predicted_win_prob(r["x"], r["y"]) == pytest.approx(0.75)

    def test_sides_do_not_matter(self):
        r = fit_bradley_terry([v("x", "y", "A"), v("y", "x", "B"), v("y", "x", "B"), v("y", "x", "A")])
        assert r["x"] - r["y"] == pytest.approx(400 * math.log10(3), abs=1e-6)

    @pytest.mark.parametrize("vote", ["tie", "bad"])
    def test_ties_are_half_wins(self, vote):
        # 1 win + 2 ties of 3 battles, entered as half rows each way = 2 of 3 points: odds 2
        r = fit_bradley_terry([v("x", "y", "A"), v("x", "y", vote), v("y", "x", vote)])
        assert r["x"] - r["y"] == pytest.approx(400 * math.log10(2), abs=1e-6)

    def test_score_equations_hold(self):
        """The MLE makes every model's expected points equal its actual points."""
        rng = random.Random(1)
        votes = [v(*rng.sample("abcd", 2), rng.choice(["A", "B", "B", "tie"])) for _ in range(300)]
        r = fit_bradley_terry(votes)
        expected, actual = dict.fromkeys("abcd", 0.0), dict.fromkeys("abcd", 0.0)
        for x in votes:
            p = predicted_win_prob(r[x["model_a"]], r[x["model_b"]])
            s = {"A": 1.0, "B": 0.0, "tie": 0.5}[x["vote"]]
            expected[x["model_a"]] += p
            expected[x["model_b"]] += 1 - p
            actual[x["model_a"]] += s
            actual[x["model_b"]] += 1 - s
        for m in "abcd":
            assert expected[m] == pytest.approx(actual[m], abs=1e-6)
        assert np.mean(list(r.values())) == pytest.approx(1000)  # score equations exact: no ridge was added

    def test_order_independent(self):
        votes = [v("x", "y", "A"), v("y", "z", "A"), v("z", "x", "tie"), v("x", "z", "B"), v("y", "x", "A")]
        assert fit_bradley_terry(votes) == pytest.approx(fit_bradley_terry(votes[::-1]))

    def test_separable_data_uses_tiny_ridge(self):
        """x never lost: the MLE is at infinity; the ridge (1e-3 / 2 |coef|^2) stops it near 1,400 points."""
        votes = [v("x", "y", "A")] * 3
        r = fit_bradley_terry(votes)
        assert all(math.isfinite(x) for x in r.values()) and 1000 < r["x"] - r["y"] < 2000
        wider = fit_bradley_terry(votes, RatingConfig(separable_ridge=1e-4))
        assert wider["x"] - wider["y"] > r["x"] - r["y"]  # a smaller ridge lets it run further

    def test_config_validation_names_field(self):
        with pytest.raises(ValueError, match="RatingConfig.base"):
            RatingConfig(base=1)
        with pytest.raises(ValueError, match="RatingConfig.bootstrap_rounds"):
            RatingConfig(bootstrap_rounds=-1)


def simulate(true: dict[str, float], n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    names = sorted(true)
    votes = []
    for t in range(n):
        a, b = rng.sample(names, 2)
        votes.append(v(a, b, "A" if rng.random() < predicted_win_prob(true[a], true[b]) else "B", float(t),
                       "shapes" if t % 2 else "general"))
    return votes


class TestTournament:
    TRUE = {"m0": 1150.0, "m1": 1075.0, "m2": 1000.0, "m3": 925.0, "m4": 850.0}  # mean 1000, like the fit

    def test_bt_recovers_order_and_cis_cover_truth(self):
        votes = simulate(self.TRUE, 3000, seed=0)
        rows = leaderboard(votes, RatingConfig(bootstrap_rounds=200, seed=0))
        assert [r.model for r in rows] == sorted(self.TRUE, key=lambda m: -self.TRUE[m])
        covered = sum(r.ci_low <= self.TRUE[r.model] <= r.ci_high for r in rows)
        assert covered >= 4, [(r.model, r.ci_low, r.ci_high) for r in rows]
        for r in rows:
            assert abs(r.rating - self.TRUE[r.model]) < 40
            assert r.ci_low < r.rating < r.ci_high
            assert r.votes > 0 and 0 < r.win_rate < 1

    def test_bootstrap_is_seeded(self):
        votes = simulate(self.TRUE, 400, seed=1)
        config = RatingConfig(bootstrap_rounds=30, seed=7)
        assert bootstrap_bradley_terry(votes, config) == bootstrap_bradley_terry(votes, config)

    def test_filters(self):
        votes = simulate(self.TRUE, 100, seed=2)
        assert all(x["category"] == "shapes" for x in filter_votes(votes, category="shapes"))
        assert len(filter_votes(votes, category="shapes")) == 50
        assert [x["created_at"] for x in filter_votes(votes, since=10, until=13)] == [10.0, 11.0, 12.0]
        rows = leaderboard(votes, RatingConfig(bootstrap_rounds=0), category="general")
        assert sum(r.votes for r in rows) == 2 * 50 and math.isnan(rows[0].ci_low)

    def test_date_bounds(self):
        """One date parser for the Arena tab and the CLI: a date alone as the end bound keeps that whole day."""
        day = parse_date("2026-11-27")
        assert parse_date("2026-11-27", end=True) == day + 86400
        assert parse_date("2026-11-27T14:00", end=True) == day + 14 * 3600
        assert parse_date("") is None and parse_date(None, end=True) is None
        votes = [v("x", "y", "A", t=day + 3600), v("x", "y", "B", t=day + 86400 + 1)]
        since, until = parse_date("2026-11-27"), parse_date("2026-11-27", end=True)
        assert filter_votes(votes, since=since, until=until) == votes[:1]
        with pytest.raises(ValueError, match="dates look like 2026-11-27"):
            parse_date("27/11/2026")


class TestTables:
    def test_win_rate_matrix_by_hand(self):
        votes = [v("x", "y", "A"), v("y", "x", "A"), v("x", "y", "A"), v("x", "y", "tie"), v("x", "z", "B")]
        models, m = win_rate_matrix(votes)
        assert models == ["x", "y", "z"]
        assert m[0, 1] == pytest.approx(2 / 3) and m[1, 0] == pytest.approx(1 / 3)
        assert m[2, 0] == 1.0 and m[0, 2] == 0.0 and math.isnan(m[1, 2]) and math.isnan(m[0, 0])

    def test_leaderboard_win_rate_counts_ties_half(self):
        votes = [v("x", "y", "A"), v("x", "y", "bad")]
        rows = {r.model: r for r in leaderboard(votes, RatingConfig(bootstrap_rounds=0))}
        assert rows["x"].win_rate == 0.75 and rows["y"].win_rate == 0.25 and rows["x"].votes == 2

    def test_heatmap_renders(self):
        models, m = win_rate_matrix(simulate(TestTournament.TRUE, 200, seed=3))
        fig = plot_win_rate_heatmap(models, m)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == models


class TestProvisionalAndUnestimable:
    """What the leaderboard may claim after a handful of votes (issue 16: "1 votes", "CI 1633 – 1633")."""

    def test_one_vote_is_provisional_with_no_ci_and_singular(self):
        from studio.ratings import leaderboard_cells, plural

        rows = leaderboard([v("x", "y", "A")], RatingConfig(bootstrap_rounds=50))
        assert [r.provisional for r in rows] == [True, True] and not any(r.estimable for r in rows)
        assert rows[0].rating > 1500  # the MLE at the prior's edge (1633 vs 367): a number that must not be shown
        assert [(r.rating_text, r.ci_text) for r in rows] == [("—", "n/a")] * 2
        cells = leaderboard_cells(rows)
        assert cells[0][:4] == [1, "x", "—", "n/a"] and cells[0][7] == "provisional: 1 of 20 votes"
        assert not any(isinstance(c, float) for row in cells for c in row[2:4])  # no rating number in the table
        (row, _) = leaderboard([v("x", "y", "A")], RatingConfig(bootstrap_rounds=50, min_votes=1))
        assert row.rating_text == f"{row.rating:.1f}" and row.ci_text == "needs more votes"  # the MLE is infinite
        assert plural(1, "vote") == "1 vote" and plural(2, "vote") == "2 votes" and plural(1200, "vote") == "1,200 votes"

    def test_a_model_that_never_lost_has_no_ci_until_it_does(self):
        votes = [v("x", "y", "A")] * 4 + [v("y", "z", "A"), v("z", "y", "A")]
        config = RatingConfig(bootstrap_rounds=50, min_votes=1)  # CIs shown for every model: none provisional
        rows = {r.model: r for r in leaderboard(votes, config)}
        assert not rows["x"].estimable and rows["x"].ci_text == "needs more votes"
        rows = {r.model: r for r in leaderboard(votes + [v("y", "x", "A")], config)}
        assert all(r.estimable for r in rows.values()) and "–" in rows["x"].ci_text

    def test_a_tie_gives_an_mle_but_a_zero_width_bootstrap_is_still_no_ci(self):
        (row, _) = leaderboard([v("x", "y", "tie")], RatingConfig(bootstrap_rounds=50, min_votes=1))
        assert row.estimable and row.ci_low == row.ci_high and row.ci_text == "needs more votes"
        assert leaderboard([v("x", "y", "tie")], RatingConfig(bootstrap_rounds=0, min_votes=1))[0].ci_text == "n/a"

    def test_the_provisional_threshold_is_configurable(self):
        votes = [v("x", "y", "A"), v("y", "x", "A"), v("x", "z", "B"), v("z", "x", "A"), v("y", "z", "tie")]
        rows = {r.model: r for r in leaderboard(votes, RatingConfig(bootstrap_rounds=0, min_votes=4))}
        assert (rows["x"].votes, rows["x"].provisional) == (4, False) and rows["z"].provisional  # z: 3 votes
        assert rows["z"].note(4) == "provisional: 3 of 4 votes" and rows["x"].note(4) == ""
        assert rows["z"].rating_text == "—" and rows["x"].rating_text == f"{rows['x'].rating:.1f}"
        with pytest.raises(ValueError, match="min_votes must be an int >= 1"):
            RatingConfig(min_votes=0)
