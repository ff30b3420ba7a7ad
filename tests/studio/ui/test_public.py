"""The app in public mode (as on a Space: behind the proxy, x-forwarded-for trusted), probed as an anonymous visitor
over plain HTTP and gradio_client: no file of the data folder is served, a battle's payload and images carry no model
name and no seed, limits follow the visitor's address whatever session it claims, exports drop pseudonyms, admin
sign-in, and which endpoints are advertised (API docs, MCP tools) versus merely callable."""
from __future__ import annotations

import json
import re
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from gradio.utils import get_cache_folder
from gradio_client import Client
from PIL import Image

from studio.arena_service import arena_dir, persistence_note
from studio.arena_votes import load_votes
from studio.hosting import persistent_dir, redact
from studio.paths import data_dir
from studio.ui import PUBLIC_TOOLS
from tests.studio.ui.probe import RawVisitor
from tests.studio.ui.public_app import BASIC, CAPS, HAS_MCP, PASSWORD, POOL, as_ip


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


JOBS_ENDPOINTS = {"jobs_preset", "jobs_validate", "jobs_submit", "jobs_list", "jobs_status", "jobs_cancel",
                  "jobs_resume", "jobs_delete"}


def job_ids(client: Client) -> set[str]:
    table, _ = client.predict(api_name="/jobs_list")
    return {row[0] for row in table["data"]}


def test_every_jobs_endpoint_refuses_anonymous_callers_and_starts_no_job(public, family):
    """Issue 13 (4): /jobs_submit started a subprocess for any anonymous caller (25 in 3 s) and any session could
    cancel, resume or delete another's job. Probed as an anonymous visitor against an admin's job: every /jobs_*
    endpoint (and the Train tab's private timer event) either refuses or shows nothing of the job but its summary;
    no job folder or runner entry appears; the admin's job is untouched."""
    from studio.paths import models_dir

    named = {fn.api_name for fn in public.demo.fns.values() if str(fn.api_name or "").startswith("jobs_")}
    assert named == JOBS_ENDPOINTS  # a new /jobs_* endpoint must join this probe
    admin = Client(public.url, verbose=False, headers={**as_ip("203.0.113.30"), **BASIC})
    config = dict(teachers=[{"path": str(models_dir() / POOL[0])}], student="vega", buckets=[[32, 32]],
                  dataset_count=8, steps=400, batch_size=1, checkpoint_every=0, validate_every=0)
    _, selected, _ = admin.predict("distill", json.dumps(config), "admin-job", api_name="/jobs_submit")
    job = selected if isinstance(selected, str) else selected["value"]
    admin.predict(job, api_name="/jobs_cancel")  # stopped at once (no CPU for the probe); resumable by its owner
    anon = Client(public.url, verbose=False, headers=as_ip("203.0.113.31"))
    folders = sorted(p.name for p in (data_dir() / "jobs").iterdir())
    before = job_ids(anon)
    assert job in before

    flood = RawVisitor(public.url, as_ip("203.0.113.31"))
    for i in range(25):  # the flood (25 submissions in 3 s), each from a fresh session
        flood.session_hash = f"flood{i}"
        result = flood.call("jobs_submit", "distill", json.dumps(config | {"seed": i}), f"mine-{i}")
        assert not result["success"] and "Starting a training job is for admins only" in result["output"]["error"]
    for target in (job, "20260101-000000-distill", "../../arena", "x" * 5000):
        for action in ("cancel", "resume", "delete"):
            refusal = "is for the visitor who started it or an admin" if target == job else \
                "is for the visitor who started it or an admin|not in the list of choices"  # ids it does not list
            with pytest.raises(Exception, match=refusal):
                anon.predict(target, api_name=f"/jobs_{action}")
    summary, _, image, log, files, command = anon.predict(job, api_name="/jobs_status")
    assert job in summary and str(data_dir()) not in summary
    assert log == "(shown to the job's owner and admins)" and not files and not command and image is None
    tick = next(fn for fn in public.demo.fns.values() if getattr(fn.fn, "__name__", "") == "on_tick")
    ticked = RawVisitor(public.url, as_ip("203.0.113.31")).call(tick._id, job, {})
    assert str(data_dir()) not in ticked["raw"] and "job.log" not in ticked["raw"], ticked["raw"][:300]
    assert "shown to the job's owner" in ticked["raw"] or "not in the list of choices" in ticked["raw"]
    answers = {anon.predict("distill", json.dumps({"teachers": [{"path": p}]}), api_name="/jobs_validate")[0]
               .replace(p, "P").replace(redact(p), "P") for p in ("/root", "/nonexistent")}
    assert len(answers) == 1  # no existence answers for paths outside the roots
    _, preset_config, *_ = anon.predict("distill-demo-vega", api_name="/jobs_preset")
    assert str(data_dir()) not in preset_config and "/work/" not in preset_config

    assert job_ids(anon) == before and sorted(p.name for p in (data_dir() / "jobs").iterdir()) == folders
    deadline = time.monotonic() + 120
    while re.search(r"\*\*(queued|running|cancelling)\*\*", admin.predict(job, api_name="/jobs_status")[0]) \
            and time.monotonic() < deadline:  # a stop asked for shows as "cancelling" until the process ends
        time.sleep(0.5)
    admin.predict(job, api_name="/jobs_delete")  # an admin can
    assert job not in job_ids(anon)


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
