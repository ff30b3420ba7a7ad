"""The app in public mode (as on a Space: behind the proxy, x-forwarded-for trusted), probed as an anonymous visitor
over plain HTTP and gradio_client: no file of the data folder is served, a battle's payload and images carry no model
name and no seed, limits follow the visitor's address whatever session it claims, exports drop pseudonyms, admin
sign-in, and which endpoints are advertised (API docs, MCP tools) versus merely callable."""
from __future__ import annotations

import base64
import importlib.util
import json
import re
import shutil
import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import httpx
import pytest
from gradio.utils import get_cache_folder
from gradio_client import Client
from PIL import Image

from studio.arena import load_votes
from studio.hosting import Caps, Hosting, persistent_dir
from studio.loading import ModelCache
from studio.paths import data_dir
from studio.ui import PUBLIC_TOOLS, build_app, launch
from studio.ui.arena_tab import POOL_ENV, arena_dir, persistence_note
from tests.studio.ui import free_port
from tests.studio.ui.probe import RawVisitor

POOL = ["pub-teacher", "pub-student"]  # the tests' tiny family at 3 steps (a battle in about a second)
PASSWORD = "correct horse battery"
BASIC = {"authorization": "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()}
CAPS = replace(Caps.defaults("public"), min_view_s=0.5, votes_per_minute=2, battles_per_minute=3)
HAS_MCP = importlib.util.find_spec("mcp") is not None


def as_ip(ip: str, *spoofed: str) -> dict:
    """Headers of a visitor at ``ip`` behind the Spaces proxy (which appends the address it saw), having sent its
    own x-forwarded-for entries ``spoofed`` first."""
    return {"x-forwarded-for": ", ".join([*spoofed, ip])}


def decoys() -> list[Path]:
    """What a real server's data folder holds besides votes: job configs, logs, checkpoints, exported weights,
    sweep CSVs, other visitors' PNGs (with prompts in their metadata), exports."""
    files = {"jobs/20260101-000000-distill/config.json": '{"teachers": "assets/demo/teacher"}',
             "jobs/20260101-000000-distill/job.log": "step 1 loss 0.1",
             "jobs/20260101-000000-distill/train/checkpoint-10/unet/diffusion_pytorch_model.safetensors": "w",
             "sweeps/exports/demo-teacher-20260101.csv": "unit,damage", "generations/2026-01-01/00001-tiny.png": "p",
             "exports/arena-votes.csv": "id,voter"}
    out = []
    for rel, text in files.items():
        path = data_dir() / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        out.append(path)
    return out


def fast_pool(family) -> None:
    """``family``'s models again under `POOL` names, generating at 3 steps (their studio_model.json)."""
    from studio.paths import models_dir

    for name, source in zip(POOL, (family["base"], family["student"])):
        target = models_dir() / name
        if not target.exists():
            shutil.copytree(source, target)
        meta = {"default_steps": 3, "description": "test"}
        if name == POOL[1]:
            meta["base"] = POOL[0]
        (target / "studio_model.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def public(family):
    fast_pool(family)
    mp = pytest.MonkeyPatch()
    mp.setenv(POOL_ENV, ",".join(POOL))
    hosting = Hosting(mode="public", caps=CAPS, on_spaces=True, admin_password=PASSWORD, mcp=HAS_MCP)
    demo = build_app(ModelCache(), hosting=hosting)
    mp.undo()
    decoys()
    _, url, _ = launch(demo, prevent_thread_lock=True, server_port=free_port(), quiet=True)
    yield SimpleNamespace(url=url, demo=demo, hosting=hosting)
    demo.close()


def urls_in(value) -> list[str]:
    text = json.dumps(value)
    return re.findall(r'"url": "([^"]+)"', text)


def test_no_file_of_the_data_folder_is_served_during_an_open_battle(public):
    """Issue 13 (1): allowed_paths=[data_dir()] served votes.db (+ -wal/-shm) with the open battle's models, job
    configs, logs, weights and other users' PNGs. Now: every file under the data and persistent folders, asked for
    by absolute path and by hostile variants of it, is refused."""
    visitor = RawVisitor(public.url, as_ip("203.0.113.10"))
    battle = visitor.call("arena_battle", "a red circle", "all")
    assert battle["success"], battle
    served = urls_in(battle["output"])
    assert len(served) == 2
    for url in served:  # positive control: the battle's own images are served (from Gradio's cache) to its visitor
        response = visitor.http.get(url)
        assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
        assert str(data_dir()) not in url

    db = arena_dir() / "votes.db"
    files = {p for root in (data_dir(), persistent_dir()) for p in root.rglob("*") if p.is_file()}
    files |= {db, Path(f"{db}-wal"), Path(f"{db}-shm")}
    kinds = {p.suffix for p in files}
    assert db in files and Path(f"{db}-wal").exists() and {".safetensors", ".json", ".png", ".csv", ".log"} <= kinds
    cache = Path(get_cache_folder())
    for path in sorted(files):
        for variant in (str(path), quote(str(path)), f"{cache}/../../{path}", str(path).upper(), f"/{path}",
                        f"{cache}/{'../' * 12}{str(path).lstrip('/')}"):
            response = visitor.get_file(variant)
            assert response.status_code in (403, 404), (variant, response.status_code)
            assert b"SQLite format 3" not in response.content
        assert visitor.http.get(f"gradio_api/file/{path}").status_code in (403, 404)  # the older route
    hostile = [f"file://{db}", f"{public.url}gradio_api/file={db}", "http://127.0.0.1:22/", "/etc/passwd",
               str(db.relative_to(data_dir().parent)), "votes.db", f"{data_dir()}/arena"]
    for variant in hostile:
        response = visitor.get_file(variant)
        assert response.status_code in (403, 404), (variant, response.status_code)
    print(f"\nprobed {len(files)} files of the data folder x 7 forms + {len(hostile)} hostile paths: none served")


def test_battle_payload_and_images_carry_no_name_and_no_seed(public):
    """Issue 13 (2): the battle showed the seed and settings (replayable in /generate); names must not leak either."""
    visitor = RawVisitor(public.url, as_ip("203.0.113.11"))
    battle = visitor.call("arena_battle", "", "all")
    assert battle["success"], battle
    before = battle["raw"]
    assert not [m for m in POOL if m in before]
    assert not re.search(r"seed|steps|guidance", before, re.IGNORECASE)
    for url in urls_in(battle["output"]):
        data = visitor.http.get(url).content
        assert not [m for m in POOL if m.encode() in data]
        with Image.open(__import__("io").BytesIO(data)) as im:
            assert not getattr(im, "text", {}) and "parameters" not in im.info
    time.sleep(CAPS.min_view_s + 0.1)
    vote = visitor.call("arena_vote", "A", None)
    assert vote["success"], vote
    reveal = vote["raw"]
    assert all(m in reveal for m in POOL)
    seed = re.search(r"seed (\d+)", reveal).group(1)
    assert not re.search(rf"(?<![0-9a-f]){seed}(?![0-9a-f])", before), "the seed was in the payload before the vote"


def test_too_early_vote_is_refused(public):
    visitor = RawVisitor(public.url, as_ip("203.0.113.12"))
    assert visitor.call("arena_battle", "", "all")["success"]
    early = visitor.call("arena_vote", "B", None)
    assert not early["success"] and "look at both images" in early["output"]["error"]
    time.sleep(CAPS.min_view_s + 0.1)
    assert visitor.call("arena_vote", "B", None)["success"]


def test_new_sessions_do_not_buy_more_votes(public):
    """Issue 13 (3): a new session per battle gave unlimited votes (10 steered votes moved a rating 1025 -> 1129).
    Limits now follow the address the Spaces proxy saw, whatever session or x-forwarded-for entries come first."""
    ip, start = "203.0.113.13", time.monotonic()
    for i in range(CAPS.votes_per_minute):  # 2 battles and votes, each from a fresh session
        client = Client(public.url, verbose=False, headers=as_ip(ip, f"10.0.{i}.1"))
        client.predict("", "all", api_name="/arena_battle")
        time.sleep(CAPS.min_view_s + 0.05)
        client.predict("B", api_name="/arena_vote")
    client = Client(public.url, verbose=False, headers=as_ip(ip, "198.51.100.7"))
    client.predict("", "all", api_name="/arena_battle")  # battle 3 of 3
    time.sleep(CAPS.min_view_s + 0.05)
    with pytest.raises(Exception, match="Too many votes: at most 2 per minute"):
        client.predict("B", api_name="/arena_vote")
    with pytest.raises(Exception, match="Too many battles: at most 3 per minute"):
        Client(public.url, verbose=False, headers=as_ip(ip)).predict("", "all", api_name="/arena_battle")
    assert time.monotonic() - start < 60, "too slow to test a per-minute limit"
    other = Client(public.url, verbose=False, headers=as_ip("203.0.113.14"))
    other.predict("", "all", api_name="/arena_battle")  # another visitor is unaffected


def test_anonymous_export_has_no_pseudonyms_admin_export_rotates_them(public):
    """Issue 13 (8): the export carried linkable per-session pseudonyms."""
    stored = {v["voter"] for v in load_votes(arena_dir() / "votes.db")}
    assert stored
    anon = Client(public.url, verbose=False, headers=as_ip("203.0.113.15"))
    path = anon.predict("csv", api_name="/arena_export")
    header = Path(path).read_text().splitlines()[0]
    assert "voter" not in header and "session" not in header and "model_a" in header
    admin = Client(public.url, verbose=False, headers={**as_ip("203.0.113.16"), **BASIC})
    rows = json.loads(Path(admin.predict("json", api_name="/arena_export")).read_text())
    assert rows and all(r["voter"] for r in rows) and not {r["voter"] for r in rows} & stored
    with pytest.raises(Exception, match="not in the list of choices"):
        anon.predict("xlsx", api_name="/arena_export")


def test_admin_sign_in(public):
    http = httpx.Client(base_url=public.url, headers=as_ip("203.0.113.17"), follow_redirects=False)
    assert "password" in http.get("studio-admin").text
    anon = Client(public.url, verbose=False, headers=as_ip("203.0.113.17"))
    with pytest.raises(Exception, match="Changing the arena pool is for admins only.*studio-admin"):
        anon.predict(", ".join(POOL), api_name="/arena_set_pool")
    assert http.post("studio-admin", data={"password": "wrong"}).status_code == 401
    ok = http.post("studio-admin", data={"password": PASSWORD})
    assert ok.status_code == 303 and "studio-admin" in ok.headers["set-cookie"] and "HttpOnly" in ok.headers[
        "set-cookie"]
    cookie = {"cookie": f"studio-admin={http.cookies['studio-admin']}"}
    admin = Client(public.url, verbose=False, headers={**as_ip("203.0.113.17"), **cookie})
    assert "pub-student, pub-teacher" in admin.predict("pub-student, pub-teacher", api_name="/arena_set_pool")
    for bad in ("pub-teacher, ../../etc/passwd", "pub-teacher", "pub-teacher, pub-teacher", "x" * 5000):
        with pytest.raises(Exception, match="unknown model|at least two distinct|at most 64 model names"):
            admin.predict(bad, api_name="/arena_set_pool")
    assert "pub-teacher, pub-student" in admin.predict("", api_name="/arena_set_pool")  # back to the default
    forged = Client(public.url, verbose=False, headers={**as_ip("203.0.113.17"), "cookie": "studio-admin=9999999999.00"})
    with pytest.raises(Exception, match="admins only"):
        forged.predict(", ".join(POOL), api_name="/arena_set_pool")
    locked = httpx.Client(base_url=public.url, headers=as_ip("203.0.113.18"))
    codes = [locked.post("studio-admin", data={"password": f"guess-{i}"}).status_code for i in range(6)]
    assert codes == [401] * 5 + [429]


def test_advertised_endpoints_versus_callable_ones(public):
    """Public mode advertises (API docs, MCP tools) only read-only endpoints and generation; visibility is not a
    permission: an "undocumented" or "private" event is still callable (checks live in the handlers)."""
    info = Client(public.url, verbose=False).view_api(print_info=False, return_format="dict")
    advertised = {name.lstrip("/") for name in info["named_endpoints"]}
    assert advertised <= PUBLIC_TOOLS and {"generate", "arena_leaderboard"} <= advertised
    assert "arena_battle" not in advertised and "jobs_submit" not in advertised
    visitor = RawVisitor(public.url, as_ip("203.0.113.19"))
    assert visitor.call("arena_battle", "", "all")["success"]  # undocumented: callable by its api_name
    private = next(d["id"] for d in visitor.config["dependencies"]
                   if d.get("api_visibility") == "private" and d.get("backend_fn") and d["targets"]
                   and "arena-vote" in json.dumps([c for c in visitor.config["components"]
                                                   if c["id"] == d["targets"][0][0]]))
    time.sleep(CAPS.min_view_s + 0.1)
    result = visitor.call(private, None)  # a vote button's event, api_visibility="private", by fn_index
    assert result["success"], "private events stay callable over the browser protocol"


@pytest.mark.skipif(not HAS_MCP, reason="the mcp package is not installed (pip install -r requirements.txt)")
def test_mcp_tools_are_the_public_allow_list(public):
    tools = set(public.demo.mcp_server_obj.tool_to_endpoint.values())
    print(f"\nMCP tools in public mode: {sorted(public.demo.mcp_server_obj.tool_to_endpoint)}")
    assert {t.lstrip("/") for t in tools} <= PUBLIC_TOOLS and "/generate" in tools
    schema = httpx.get(public.url + "gradio_api/mcp/schema").json()
    names = {t["name"] for t in schema}
    assert not {n for n in names if "jobs" in n or "vote" in n or "battle" in n or "set_pool" in n}


def test_show_error_is_off_and_monitoring_closed(public):
    assert public.demo.show_error is False
    assert httpx.get(public.url + "monitoring/summary").status_code == 403


def test_persistence_note(monkeypatch, tmp_path):
    monkeypatch.delenv("STUDIO_PERSISTENT_DIR", raising=False)
    assert persistence_note() == ""  # not on a Space: the disk persists
    monkeypatch.setenv("SPACE_ID", "me/studio")
    if not Path("/data").is_dir():
        assert "Votes are not persistent" in persistence_note()
        monkeypatch.setenv("STUDIO_VOTES_DATASET", "me/studio-votes")
        assert "mirrored to the dataset `me/studio-votes`" in persistence_note()
    monkeypatch.setenv("STUDIO_PERSISTENT_DIR", str(tmp_path))
    assert persistence_note() == ""


def test_votes_db_schema_has_no_raw_identity(public):
    """The database stores salted hashes, never an address or a user name."""
    con = sqlite3.connect(arena_dir() / "votes.db")
    try:
        text = json.dumps([list(r) for r in con.execute("SELECT * FROM votes")] +
                          [list(r) for r in con.execute("SELECT * FROM battles")])
    finally:
        con.close()
    assert "203.0.113." not in text and "10.0." not in text
