"""Hosting core: modes, caps from env vars (and hostile values for them), server-side visitor identity, admins,
the admin password gate, where data lives, which folders are blocked, display paths and the ZeroGPU wrapper."""
from __future__ import annotations

import math
import re
import sys
import time
import types
from dataclasses import replace
from pathlib import Path

import pytest

from studio import hosting as h
from studio.hosting import (ADMIN_USER, CAP_ENV, AdminGate, AdminOnlyError, CapError, Caps, Hosting, client_ip,
                            display_path, redact)
from studio.paths import ASSETS_DIR, REPO_ROOT, data_dir, models_dir


class TestMode:
    def test_local_by_default_public_by_flag_or_on_a_space(self):
        assert Hosting.from_env(env={}).mode == "local"
        assert Hosting.from_env(True, env={}).mode == "public"
        assert Hosting.from_env(env={"SPACE_ID": "me/studio"}).public
        assert Hosting.from_env(env={"STUDIO_PUBLIC": "1"}).public
        assert not Hosting.from_env(False, env={"SPACE_ID": "me/studio"}).public  # an owner's private copy

    def test_admins_and_oauth_from_env(self):
        env = {"SPACE_ID": "me/studio", "STUDIO_ADMINS": " Alice ,bob,", "OAUTH_CLIENT_ID": "x"}
        hosting = Hosting.from_env(env=env)
        assert hosting.admins == {"alice", "bob"} and hosting.oauth and hosting.on_spaces
        assert not Hosting.from_env(env={**env, "OAUTH_CLIENT_ID": ""}).oauth  # no hf_oauth: no sign-in button
        assert "no admin sign-in is configured" in Hosting.from_env(True, env={}).how_to_become_admin().lower()

    def test_bad_proxy_hops(self):
        for bad in ("two", "-1", "0", "9"):
            with pytest.raises(ValueError, match="STUDIO_PROXY_HOPS"):
                Hosting.from_env(env={"STUDIO_PROXY_HOPS": bad})


class TestCaps:
    def test_defaults_public_tighter_than_local(self):
        local, public = Caps.defaults("local"), Caps.defaults("public")
        for name in ("steps", "size", "batch", "models", "sweep_cost", "init_pixels", "text_chars", "queue_size",
                     "queued_jobs", "votes_per_minute", "votes_per_day"):
            assert getattr(public, name) <= getattr(local, name), name
        assert public.min_view_s > 0 == local.min_view_s

    def test_env_overrides(self):
        caps = Caps.from_env("public", {"STUDIO_MAX_STEPS": "8", "STUDIO_MIN_VIEW_S": "1.5", "STUDIO_QUEUE_SIZE": " 5 "})
        assert (caps.steps, caps.min_view_s, caps.queue_size) == (8, 1.5, 5)
        assert caps.size == Caps.defaults("public").size

    # hostile values of the cap variables: each gets a message naming the variable and the allowed range
    BAD_ENV = [("STUDIO_MAX_STEPS", "abc"), ("STUDIO_MAX_STEPS", "1e9"), ("STUDIO_MAX_STEPS", "-5"),
               ("STUDIO_MAX_STEPS", "0"), ("STUDIO_MAX_STEPS", "3.5"), ("STUDIO_MAX_STEPS", "99999999999"),
               ("STUDIO_MAX_STEPS", "true"), ("STUDIO_MAX_SIZE", "16"), ("STUDIO_QUEUE_SIZE", "NaN"),
               ("STUDIO_MIN_VIEW_S", "nan"), ("STUDIO_MIN_VIEW_S", "inf"), ("STUDIO_MIN_VIEW_S", "-1"),
               ("STUDIO_MAX_INIT_PIXELS", "1e20"), ("STUDIO_MAX_NAME", "300")]

    @pytest.mark.parametrize("var,value", BAD_ENV)
    def test_bad_env_value_names_the_variable(self, var, value):
        with pytest.raises(ValueError, match=var):
            Caps.from_env("public", {var: value})

    @pytest.mark.parametrize("value", [True, math.nan, math.inf, 2.5, -1, 10**12, "30", None])
    def test_bad_field_value_names_the_field(self, value):
        with pytest.raises(ValueError, match=r"Caps\.steps \(STUDIO_MAX_STEPS\)"):
            replace(Caps.defaults("local"), steps=value)

    def test_every_cap_has_an_env_variable_and_defaults_in_range(self):
        assert set(CAP_ENV) == {f for f in Caps.__dataclass_fields__}
        assert len({spec[0] for spec in CAP_ENV.values()}) == len(CAP_ENV)
        for mode in h.MODES:
            Caps.defaults(mode)  # validated in __post_init__

    def test_cap_messages_name_value_cap_and_variable(self):
        caps = Caps.defaults("public")
        with pytest.raises(CapError, match=r"steps 31 is above this server's cap of 30 \(STUDIO_MAX_STEPS\)"):
            caps.check("steps", 31)
        caps.check("steps", 30)
        with pytest.raises(CapError, match="width 1,032 .* cap of 1,024 .*STUDIO_MAX_SIZE"):
            caps.check_generation(width=1032, height=512)
        with pytest.raises(CapError, match="models per request 4"):
            caps.check_generation(models=4)
        with pytest.raises(CapError, match="images per model 3"):
            caps.check_generation(batch=3)
        caps.check_generation(models=3, steps=30, width=None, height=None, batch=2)

    def test_sweep_budget_is_units_prompts_seeds_steps(self):
        caps = Caps.defaults("public")
        assert caps.check_sweep(units=10, prompts=2, seeds=2, steps=20) == 800
        with pytest.raises(CapError, match=r"sweep cost \(100 units x 16 prompts x 8 seeds x 150 steps =\) "
                                           r"1,920,000 is above .* 4,000 \(STUDIO_MAX_SWEEP_COST\)"):
            caps.check_sweep(units=100, prompts=16, seeds=8, steps=150)

    def test_text_and_pixels(self):
        caps = Caps.defaults("public")
        caps.check_text("prompt", "a" * 500)
        with pytest.raises(CapError, match="prompt length .* 501 .* 500"):
            caps.check_text("prompt", "a" * 501)
        with pytest.raises(CapError, match="out_name length .* 65 .*STUDIO_MAX_NAME"):
            caps.check_text("out_name", "n" * 65, name=True)
        with pytest.raises(CapError, match="must be text"):
            caps.check_text("prompt", 12)
        with pytest.raises(CapError, match=r"init image pixels \(12000x12000 =\) 144,000,000"):
            caps.check_pixels(12000, 12000)

    def test_readme_table_matches_the_caps(self):
        """The README's caps table is the documentation of record: same variables, same defaults."""
        readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
        rows = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| `(STUDIO_[A-Z_]+)` \| [^|]+ \| ([\d.]+) \| ([\d.]+) \|$",
                                                        readme, re.MULTILINE)}
        expected = {var: tuple(float(d) for d in defaults) for var, _, _, defaults in CAP_ENV.values()}
        assert {var: tuple(float(x) for x in row) for var, row in rows.items()} == expected

    def test_lanes(self):
        caps = replace(Caps.defaults("public"), sweep_concurrency=2, concurrency=5)
        assert h.lane("gpu", caps) == {"concurrency_id": "gpu", "concurrency_limit": 1}  # never more: shared pipes
        assert h.lane("sweep", caps) == {"concurrency_id": "sweep", "concurrency_limit": 2}
        assert h.lane("arena", caps)["concurrency_limit"] == 5
        with pytest.raises(ValueError, match="gpu, sweep, arena"):
            h.lane("fast", caps)


class TestIdentity:
    def test_forwarded_header_ignored_unless_behind_the_spaces_proxy(self):
        headers = {"X-Forwarded-For": "6.6.6.6"}
        assert client_ip("10.0.0.9", headers, trust_proxy=False) == "10.0.0.9"
        assert client_ip("10.0.0.9", headers, trust_proxy=True) == "6.6.6.6"

    # hostile x-forwarded-for values, as a visitor behind the Spaces proxy could send them (the proxy appends the
    # address it saw: the rightmost entry)
    SPOOFS = [("9.9.9.9, 1.2.3.4", "1.2.3.4"), ("1.2.3.4, 9.9.9.9, 8.8.8.8, 1.2.3.4", "1.2.3.4"),
              ("not-an-ip, 1.2.3.4", "1.2.3.4"), ("1.2.3.4, not-an-ip", "unknown"), ("", "10.0.0.9"),
              (" , ,", "10.0.0.9"), ("1.2.3.4\r\nx-admin: yes", "unknown"), ("999.1.1.1", "unknown"),
              ("2001:db8:0:1::1", "2001:db8:0:1::/64"), ("2001:db8:0:1:ffff::2", "2001:db8:0:1::/64"),
              ("::ffff:1.2.3.4", "1.2.3.4"), ("[2001:db8::1]", "2001:db8::/64"), ("a" * 5000, "unknown")]

    @pytest.mark.hostile
    @pytest.mark.parametrize("forwarded,expected", SPOOFS)
    def test_spoofed_forwarded_for(self, forwarded, expected):
        assert client_ip("10.0.0.9", {"x-forwarded-for": forwarded}, trust_proxy=True) == expected

    def test_proxy_hops(self):
        headers = {"x-forwarded-for": "9.9.9.9, 1.2.3.4, 10.1.1.1"}
        assert client_ip("10.0.0.9", headers, trust_proxy=True, hops=2) == "1.2.3.4"
        assert client_ip("10.0.0.9", headers, trust_proxy=True, hops=5) == "10.0.0.9"  # fewer entries: the peer

    def test_visitors_and_admins(self):
        local = Hosting()
        assert local.visitor(client_host="127.0.0.1").admin  # local mode trusts its user
        public = Hosting(mode="public", admins=frozenset({"alice"}), admin_password="correct horse")
        anon = public.visitor(client_host="5.6.7.8", headers={"x-forwarded-for": "1.1.1.1"})
        assert anon == h.Visitor("ip:5.6.7.8", False, None, "5.6.7.8")  # not on a Space: the header is ignored
        assert public.visitor(client_host="5.6.7.8", hf_user="Alice").admin
        bob = public.visitor(client_host="5.6.7.8", hf_user="bob")
        assert not bob.admin and bob.key == "hf:bob"
        pw = public.visitor(client_host="5.6.7.8", password_user=ADMIN_USER)
        assert pw.admin and pw.key == "admin"
        for fake in ("Admin", "admin ", "root", ""):
            assert not public.visitor(client_host="5.6.7.8", password_user=fake).admin
        nopass = Hosting(mode="public")
        assert not nopass.visitor(client_host="5.6.7.8", password_user=ADMIN_USER).admin
        with pytest.raises(AdminOnlyError, match="Starting a job is for admins only.*STUDIO_ADMIN_PASSWORD"):
            public.require_admin(anon, "Starting a job")
        public.require_admin(pw, "Starting a job")

    def test_session_hash_is_not_part_of_identity(self):
        """Two calls from one address are one visitor whatever session they claim (the UI passes no session)."""
        hosting = Hosting(mode="public", on_spaces=True)
        keys = {hosting.visitor(client_host="10.0.0.1", headers={"x-forwarded-for": f"{i}.0.0.1, 7.7.7.7"}).key
                for i in range(1, 50)}
        assert keys == {"ip:7.7.7.7"}


class TestAdminGate:
    def test_password_tokens_and_lockout(self):
        with pytest.raises(ValueError, match="at least 8"):
            AdminGate("short")
        gate = AdminGate("correct horse battery")
        assert gate.check("correct horse battery", "1.1.1.1")
        wrong = ["", "correct horse", "CORRECT HORSE BATTERY", "correct horse battery ", "' OR 1=1 --"]
        for guess in wrong:
            assert not gate.check(guess, "2.2.2.2")
        with pytest.raises(CapError, match="too many wrong admin passwords"):
            gate.check("correct horse battery", "2.2.2.2")  # even the right one, once locked out
        assert gate.check("correct horse battery", "1.1.1.1")  # other addresses unaffected
        token = gate.issue()
        assert gate.verify(token)
        expires, mac = token.split(".")
        forged = [None, "", "x", f"{expires}.{'0' * 64}", f"{int(expires) + 999}.{mac}", f"{expires}.{mac}x",
                  f"-1.{mac}", AdminGate("correct horse battery").issue()]  # the last: another process's secret
        assert not any(gate.verify(t) for t in forged)
        short = AdminGate("correct horse battery", ttl_s=-1)
        assert not short.verify(short.issue())  # expired


class TestStorage:
    def test_persistent_dir_and_note(self, tmp_path, monkeypatch):
        assert h.persistent_dir({}) == data_dir() and h.storage_is_persistent({})
        space = {"SPACE_ID": "me/studio"}
        if not (h.SPACES_DATA.is_dir() and __import__("os").access(h.SPACES_DATA, __import__("os").W_OK)):
            assert h.persistent_dir(space) == data_dir() and not h.storage_is_persistent(space)
        env = {**space, "STUDIO_PERSISTENT_DIR": str(tmp_path / "store")}
        assert h.persistent_dir(env) == tmp_path / "store" and h.storage_is_persistent(env)

    def test_blocked_paths_cover_private_folders(self, tmp_path, monkeypatch):
        blocked = h.blocked_paths()
        for name in ("arena", "generations", "models", "exports", "jobs", "sweeps", "cache"):
            assert str(data_dir() / name) in blocked
        monkeypatch.setenv("STUDIO_PERSISTENT_DIR", str(tmp_path / "store"))
        assert str(tmp_path / "store") in h.blocked_paths()

    def test_deliverable_copies_outside_the_data_folder(self, tmp_path):
        src = data_dir() / "generations" / "x.png"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(b"png bytes")
        copy = Path(h.deliverable(src))
        assert copy.read_bytes() == b"png bytes" and copy.name == "x.png"
        assert not copy.is_relative_to(data_dir()) and copy != src
        old = Path(h.deliverable(src))
        past = time.time() - 7200
        __import__("os").utime(old.parent, (past, past))
        h.deliverable(src)
        assert not old.exists() and copy.exists()  # stale staging folders are pruned


class TestPaths:
    def test_display_path_never_absolute(self, monkeypatch, tmp_path):
        assert display_path(ASSETS_DIR / "demo" / "teacher") == "assets/demo/teacher"
        assert display_path(models_dir() / "x") == "<data>/models/x"
        assert display_path(data_dir()) == "<data>"
        assert display_path("/etc/passwd") == "<outside the studio's folders>/passwd"
        monkeypatch.setenv("STUDIO_MODEL_ROOTS", str(tmp_path / "weights"))
        assert display_path(tmp_path / "weights" / "sdxl") == "<model root 1>/sdxl"
        monkeypatch.setenv("STUDIO_PERSISTENT_DIR", str(tmp_path / "store"))
        assert display_path(tmp_path / "store" / "arena" / "votes.db") == "<persistent>/arena/votes.db"

    def test_redact_messages(self):
        message = f"cannot read {data_dir()}/jobs/x/config.json nor {ASSETS_DIR}/demo/y, see {Path.home()}/z"
        text = redact(message)
        assert "<data>/jobs/x/config.json" in text and "assets/demo/y" in text
        assert str(data_dir()) not in text and str(ASSETS_DIR) not in text
        assert redact(f"cd {REPO_ROOT} && python -m x --config {data_dir()}") == "cd . && python -m x --config <data>"


class TestGpuTask:
    def test_unchanged_without_spaces_wrapped_with_it(self, monkeypatch):
        def work(x):
            return x + 1

        monkeypatch.setitem(sys.modules, "spaces", None)  # not importable
        assert h.gpu_task(work) is work and h.gpu_task(duration=60)(work) is work
        calls = []

        def gpu(fn=None, *, duration=None):  # the shape of spaces.GPU: @GPU or @GPU(duration=...)
            def deco(f):
                calls.append(duration)
                return lambda *a: ("gpu", f(*a))
            return deco(fn) if fn is not None else deco

        monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
        assert h.gpu_task(work)(1) == ("gpu", 2) and h.gpu_task(work, duration=90)(2) == ("gpu", 3)
        assert calls == [None, 90]
