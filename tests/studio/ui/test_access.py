"""studio.ui.access on a live server: who the caller is (address, x-forwarded-for only behind the Spaces proxy,
"Sign in with Hugging Face" as one of STUDIO_ADMINS), and the admin-only refusal."""
from __future__ import annotations

import base64
import hashlib
import importlib.util
import json

import gradio as gr
import httpx
import pytest
from gradio_client import Client

from studio.hosting import Hosting
from studio.ui import access
from tests.studio.ui import free_port


def who_app(hosting: Hosting) -> gr.Blocks:
    def who(_: str, request: gr.Request) -> str:
        v = access.visitor(request, hosting)
        return f"{v.key} admin={v.admin}"

    def guarded(_: str, request: gr.Request) -> str:
        access.require_admin(request, "Exporting a model", hosting)
        return "done"

    with gr.Blocks() as demo:
        access.sign_in_widgets(hosting)
        text, out = gr.Textbox(), gr.Textbox()
        gr.Button().click(who, text, out, api_name="who")
        gr.Button().click(guarded, text, out, api_name="guarded")
    return demo


def serve(demo) -> str:
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True, ssr_mode=False)
    return url


def test_identity_and_admin_refusal_by_mode():
    for hosting, forwarded, expected in ((Hosting(), "6.6.6.6", "admin=True"),
                                         (Hosting(mode="public"), None, "ip:127.0.0.1 admin=False"),
                                         (Hosting(mode="public", on_spaces=True), "9.9.9.9, 6.6.6.6",
                                          "ip:6.6.6.6 admin=False")):
        demo = who_app(hosting)
        url = serve(demo)
        try:
            headers = {"x-forwarded-for": forwarded} if forwarded else {}
            assert expected in Client(url, verbose=False, headers=headers).predict("x", api_name="/who")
            if hosting.public:
                with pytest.raises(Exception, match="Exporting a model is for admins only"):
                    Client(url, verbose=False).predict("x", api_name="/guarded")
            else:
                assert Client(url, verbose=False).predict("x", api_name="/guarded") == "done"
        finally:
            demo.close()


@pytest.mark.skipif(importlib.util.find_spec("authlib") is None or importlib.util.find_spec("itsdangerous") is None,
                    reason="Hugging Face sign-in needs gradio[oauth] (pip install -r requirements.txt)")
def test_hugging_face_sign_in_makes_listed_users_admins(monkeypatch):
    """On a Space with hf_oauth: true, Gradio keeps the OAuth profile in a signed session cookie; a visitor signed in
    as one of STUDIO_ADMINS is an admin, anyone else (signed in or not) is not."""
    import gradio.oauth as oauth
    from itsdangerous import TimestampSigner

    for name, value in (("OAUTH_CLIENT_ID", "client"), ("OAUTH_CLIENT_SECRET", "secret"),
                        ("OPENID_PROVIDER_URL", "https://huggingface.co"), ("OAUTH_SCOPES", "openid profile")):
        monkeypatch.setattr(oauth, name, value)
    monkeypatch.setenv("SYSTEM", "spaces")  # gradio.utils.get_space(): the real (not mocked) OAuth routes
    monkeypatch.setenv("SPACE_ID", "me/studio")
    hosting = Hosting.from_env(env={"SPACE_ID": "me/studio", "OAUTH_CLIENT_ID": "client", "STUDIO_ADMINS": "alice"})
    assert hosting.oauth
    demo = who_app(hosting)
    url = serve(demo)
    signer = TimestampSigner(hashlib.sha256(b"secret-v4").hexdigest())  # Gradio's session secret for this client

    def signed_in(username: str) -> dict:
        info = {"oauth_info": {"userinfo": {"preferred_username": username, "name": username, "profile": "",
                                            "picture": ""}, "expires_at": 9_999_999_999, "access_token": "t",
                               "scope": "openid profile"}}
        return {"cookie": "session=" + signer.sign(base64.b64encode(json.dumps(info).encode())).decode()}

    try:
        config = httpx.get(url + "config").json()
        assert any("Sign in with Hugging Face" in json.dumps(c.get("props", {})) for c in config["components"])
        assert Client(url, verbose=False, headers=signed_in("Alice")).predict("x", api_name="/who") == \
               "hf:alice admin=True"
        assert Client(url, verbose=False, headers=signed_in("mallory")).predict("x", api_name="/who") == \
               "hf:mallory admin=False"
        assert Client(url, verbose=False).predict("x", api_name="/who").endswith("admin=False")
        forged = {"cookie": "session=" + base64.b64encode(b'{"oauth_info": {"userinfo": '
                                                          b'{"preferred_username": "alice"}}}').decode()}
        assert Client(url, verbose=False, headers=forged).predict("x", api_name="/who").endswith("admin=False")
    finally:
        demo.close()
