"""Public mode, probed as an anonymous visitor through gradio_client and Gradio's queue protocol (issue 13, items 6-8):
hostile /generate requests get clear messages naming the cap and its variable (nothing absolute about the server in
them), the init-image bomb is refused from its header, LoRAs are listed and loaded only inside the studio's roots,
one visitor cannot fill the queue, and the Layers sweep stays within its cost cap in a lane of its own."""
from __future__ import annotations

import struct
import time
import zlib

import pytest
from gradio_client import Client, handle_file

from studio.paths import data_dir
from studio.ui.fairness import pending_events
from studio.ui.generate_tab import api_parameters
from tests.studio.ui.probe import RawVisitor
from tests.studio.ui.public_app import CAPS, POOL, as_ip

BASE = dict(models=POOL[:1], prompt="a red circle", negative_prompt="", seed=3, steps=3, guidance=5.0,
            scheduler="Euler", batch_size=1, width=0, height=0, init_image=None, strength=0.75, lora="",
            lora_scale=1.0, lora_models=[], vae="default", low_vram=False, attention="sdpa", channels_last=False,
            fuse_qkv=False, vae_decode="auto", feature_reuse=1, feature_reuse_branch=0, compile="off",
            condition_image=None)


def generate(client: Client, **changes):
    values = BASE | changes
    return client.predict(*[values[p] for p in api_parameters()], api_name="/generate")


def declared_png(tmp_path, width: int, height: int) -> str:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path = tmp_path / f"declared-{width}x{height}.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))
    return str(path)


HOSTILE_GENERATE = {  # id -> (changes, what the message says)
    "steps-31": ({"steps": 31}, r"steps 31 is above this server's cap of 30 \(STUDIO_MAX_STEPS\)"),
    "steps-true": ({"steps": True}, "steps must be a whole number"),
    "steps-1e12": ({"steps": 1e12}, "greater than maximum value 150"),
    "width-1536": ({"width": 1536, "height": 64}, r"width 1,536 is above this server's cap of 1,024"),
    "width-2**31": ({"width": 2**31}, "greater than maximum value 2048"),
    "batch-3": ({"batch_size": 3}, r"images per model 3 is above this server's cap of 2 \(STUDIO_MAX_BATCH\)"),
    "batch-1e6": ({"batch_size": 10**6}, "greater than maximum value 8"),
    "4-models": ({"models": [*POOL, "demo-teacher", "demo-ssd"]}, r"models per request 4 is above this server's cap"),
    "prompt-600": ({"prompt": "x" * 600}, r"prompt length \(characters\) 600 is above this server's cap of 500"),
    "negative-600": ({"negative_prompt": "x" * 600}, r"negative_prompt length \(characters\) 600 is above"),
    "seed-minus-2": ({"seed": -2}, "seed must be -1"),
    "seed-2**40": ({"seed": 2**40}, "seed must be -1"),
    "model-path": ({"models": ["/etc"]}, "not in the list of choices"),
    "model-dotdot": ({"models": ["../../outputs/arena"]}, "not in the list of choices"),
    "scheduler": ({"scheduler": "__import__('os')"}, "not in the list of choices"),
    "vae": ({"vae": "../vae"}, "not in the list of choices"),
    "lora-etc": ({"lora": "/etc/passwd"}, "outside the allowed folders"),
    "lora-label-dotdot": ({"lora": "<data>/../../../../etc/x.safetensors"}, "outside the allowed folders"),
    "lora-votes": ({"lora": "<data>/arena/votes.db"}, "outside the allowed folders|only .safetensors|not found"),
    "lora-scale": ({"lora": "assets/demo/loras/demo-ssd-orange.safetensors", "lora_scale": 99},
                   "greater than maximum value 4|LoRA scale must be between"),
    "low-vram": ({"low_vram": True}, r"Switching low-VRAM mode .* is for admins only"),
    "compile": ({"compile": "full"}, r"Switching torch.compile .* is for admins only"),
    "compile-bogus": ({"compile": "max-autotune"}, "not in the list of choices|compile must be one of"),
    "reuse-99": ({"feature_reuse": 99}, "greater than maximum value 10|feature_reuse"),
}


@pytest.mark.hostile
@pytest.mark.parametrize("case", list(HOSTILE_GENERATE))
def test_hostile_generate_requests_get_clear_messages(public, case):
    changes, match = HOSTILE_GENERATE[case]
    client = Client(public.url, verbose=False, headers=as_ip("203.0.113.40"))
    with pytest.raises(Exception, match=match) as raised:
        generate(client, **changes)
    assert str(data_dir()) not in str(raised.value) and "/tmp/" not in str(raised.value)


@pytest.mark.hostile
@pytest.mark.parametrize("field", ["init_image", "condition_image"])
@pytest.mark.parametrize("size", [(12000, 12000), (3000, 2000), (4096, 1025)], ids=["12000sq", "3000x2000", "4096x1025"])
def test_hostile_init_images_are_refused_before_decoding(public, tmp_path, size, field):
    """Issue 13 (6): a 140 KB PNG decoding to 12000x12000 was accepted as an init image. The file here is a few
    hundred bytes declaring that size: refused from the header, with the cap and its variable (the condition image
    of conditional models goes through the same check)."""
    client = Client(public.url, verbose=False, headers=as_ip("203.0.113.41"))
    what = field.replace("_", " ")
    with pytest.raises(Exception, match=rf"{what} pixels .* is above this server's cap of 4,194,304 "
                                        r"\(STUDIO_MAX_INIT_PIXELS\)"):
        generate(client, **{field: handle_file(declared_png(tmp_path, *size))})


def test_init_image_that_is_not_an_image_and_a_forged_server_path(public, tmp_path):
    client = Client(public.url, verbose=False, headers=as_ip("203.0.113.42"))
    fake = tmp_path / "fake.png"
    fake.write_text("not an image")
    with pytest.raises(Exception, match="init image: not a readable image"):
        generate(client, init_image=handle_file(str(fake)))
    visitor = RawVisitor(public.url, as_ip("203.0.113.42"))
    for field in ("init_image", "condition_image"):
        values = BASE | {field: {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}}
        result = visitor.call("generate", *[values[p] for p in api_parameters()])
        assert not result["success"]  # Gradio refuses a file outside its upload folder before the handler runs


def test_negative_prompt_none_and_lora_list_show_no_server_path(public):
    """Issue 13 (7): negative_prompt=None gave "NoneType has no len()"; (8) the LoRA list showed absolute paths."""
    client = Client(public.url, verbose=False, headers=as_ip("203.0.113.43"))
    *galleries, stats, files, seed = generate(client, negative_prompt=None)
    assert seed == 3 and len(files) == 1 and stats["data"][0][0] == POOL[0]
    choices = client.predict(api_name="/list_loras")["choices"]
    paths = [c[1] for c in choices if c[1]]
    assert paths and not [p for p in paths if p.startswith("/") or str(data_dir()) in p]
    generate(client, lora=paths[0], models=["demo-ssd"], steps=2)  # a listed (display) path loads


def join(visitor: RawVisitor, api_name: str, data: list):
    return visitor.http.post("gradio_api/queue/join", json={
        "data": data, "fn_index": visitor.fn_index[api_name], "session_hash": visitor.session_hash,
        "event_data": None, "trigger_id": None})


def test_one_visitor_cannot_fill_the_queue(public):
    """Issue 13 (6): 70 joins from one client filled the queue for everyone. Now a visitor (its address, whatever
    session it claims) has at most `caps.pending` events waiting or running in the heavy lanes; others still get in."""
    assert CAPS.pending == 2
    values = BASE | {"steps": 30, "batch_size": 2}  # about a second or more each on the tiny pool
    data = [values[p] for p in api_parameters()]
    codes, messages = [], set()
    for i in range(12):
        response = join(RawVisitor(public.url, as_ip("203.0.113.44", f"10.9.{i}.1")), "generate", data)
        codes.append(response.status_code)
        if response.status_code != 200:
            messages.add(response.json()["detail"])
    assert codes.count(200) <= CAPS.pending + 1 and codes.count(503) >= 12 - CAPS.pending - 1, codes
    assert messages == {m for m in messages if "at most 2 per visitor (STUDIO_MAX_PENDING)" in m} and messages
    other = join(RawVisitor(public.url, as_ip("203.0.113.45")), "generate", data)
    assert other.status_code == 200, other.text
    cheap = join(RawVisitor(public.url, as_ip("203.0.113.44")), "arena_leaderboard", [None, None, None, "all"])
    assert cheap.status_code in (200, 422)  # cheap, lane-less events are not counted against the visitor
    deadline = time.monotonic() + 120
    while pending_events(public.demo._queue) and time.monotonic() < deadline:  # let the admitted ones finish
        time.sleep(0.5)
    assert not pending_events(public.demo._queue)
    assert join(RawVisitor(public.url, as_ip("203.0.113.44")), "generate", data).status_code == 200  # free again


def test_sweep_cost_cap_lane_and_admin_only_export(public):
    """Issue 13 (6): /layers_sweep had no cost cap and held the shared queue (another user's 1 s generation waited
    77 s). Now: refused above STUDIO_MAX_SWEEP_COST before anything loads, naming the cost and the cap, and run in
    its own "sweep" lane (a private copy of the model), not the generation lane."""
    client = Client(public.url, verbose=False, headers=as_ip("203.0.113.46"))
    prompts = "\n".join(f"prompt {i}" for i in range(16))
    seeds = ",".join(str(s) for s in range(8))
    with pytest.raises(Exception, match=r"sweep cost \(\d+ units x 16 prompts x 8 seeds x 30 steps =\) [\d,]+ is "
                                        r"above this server's cap of 4,000 \(STUDIO_MAX_SWEEP_COST\)"):
        client.predict(POOL[0], [], prompts, seeds, 30, 5.0, 0, False, api_name="/layers_sweep")
    with pytest.raises(Exception, match=r"comparison \(full \+ ablated model\) cost .* above this server's cap"):
        client.predict(POOL[0], [], "(none)", prompts, seeds, 30, 5.0, 0, api_name="/layers_compare")
    with pytest.raises(Exception, match="Exporting a model is for admins only"):
        client.predict(POOL[0], ["mid_block.attentions.0"], "(none)", "stolen", api_name="/layers_export")
    lanes = {fn.api_name: (fn.concurrency_id, fn.concurrency_limit) for fn in public.demo.fns.values()}
    assert lanes["layers_sweep"] == ("sweep", CAPS.sweep_concurrency) and lanes["generate"] == ("gpu", 1)
    assert lanes["layers_compare"] == ("gpu", 1)
