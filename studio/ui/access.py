"""Who is calling, from a ``gr.Request``; admin-only actions; concurrency lanes; the admin sign-in routes.

    visitor = access.visitor(request)                  # studio.hosting.Visitor: key, admin, username, ip
    access.require_admin(request, "Starting a training job")   # gr.Error for anonymous visitors in public mode
    button.click(fn, inputs, outputs, api_name="x", **access.lane("gpu"))

Admins sign in one of two ways (public mode; in local mode everyone is an admin):
- ``STUDIO_ADMIN_PASSWORD``: ``/studio-admin`` shows a password form; the right password sets a signed, expiring,
  HttpOnly cookie. Gradio's ``auth_dependency`` hook reads it (or an ``Authorization: Basic admin:<password>``
  header from API clients) and sets ``gr.Request.username`` to ``admin``; everyone else gets an empty username and
  the app stays open to anonymous visitors (Gradio's ``auth=`` would put the whole app behind a login page).
- On a Space with ``hf_oauth: true`` and ``STUDIO_ADMINS=user1,user2``: "Sign in with Hugging Face"
  (``gr.LoginButton``); the signed-in username is read from the OAuth session.
"""
from __future__ import annotations

import base64
import html

import gradio as gr
from starlette.requests import Request as StarletteRequest
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import Route

from studio import hosting as hosting_mod
from studio.hosting import ADMIN_USER, AdminGate, AdminOnlyError, CapError, Hosting, Visitor

ADMIN_PATH = "/studio-admin"
COOKIE = "studio-admin"


def _headers(request) -> dict[str, str]:
    return {k.lower(): v for k, v in dict(request.headers or {}).items()}


def _hf_user(raw) -> str | None:
    """The Hugging Face username of an OAuth sign-in (only where Gradio installed its session middleware)."""
    if raw is None or "session" not in getattr(raw, "scope", {}):
        return None
    info = raw.session.get("oauth_info") or {}
    return (info.get("userinfo") or {}).get("preferred_username")


def raw_visitor(raw: StarletteRequest, username: str | None, hosting: Hosting) -> Visitor:
    """The visitor of a raw request (Gradio's queue sees these) and the username Gradio's auth gave it."""
    client = getattr(raw, "client", None)
    return hosting.visitor(client_host=getattr(client, "host", None), headers=_headers(raw),
                           password_user=username or None, hf_user=_hf_user(raw))


def visitor(request: gr.Request | None, hosting: Hosting | None = None) -> Visitor:
    """The server-side identity of the caller of an event (never its session hash)."""
    hosting = hosting or hosting_mod.current()
    if request is None:  # called in-process (tests, CLI): the local user
        return hosting.visitor(client_host="127.0.0.1")
    client = getattr(request, "client", None)
    return hosting.visitor(client_host=getattr(client, "host", None), headers=_headers(request),
                           password_user=getattr(request, "username", None) or None,
                           hf_user=_hf_user(getattr(request, "request", None)))


def require_admin(request: gr.Request | None, action: str, hosting: Hosting | None = None) -> Visitor:
    """The caller, or a `gr.Error` "<action> is for admins only ..." saying how to become one."""
    hosting = hosting or hosting_mod.current()
    who = visitor(request, hosting)
    try:
        hosting.require_admin(who, action)
    except AdminOnlyError as err:
        raise gr.Error(str(err)) from None
    return who


def require_owner(request: gr.Request | None, owner: str | None, action: str, hosting: Hosting | None = None) -> Visitor:
    """The caller, or a `gr.Error` unless it is an admin or ``owner`` (see `Hosting.require_owner`)."""
    hosting = hosting or hosting_mod.current()
    who = visitor(request, hosting)
    try:
        hosting.require_owner(who, owner, action)
    except AdminOnlyError as err:
        raise gr.Error(str(err)) from None
    return who


def lane(name: str, hosting: Hosting | None = None) -> dict:
    """``concurrency_id``/``concurrency_limit`` of lane ``name`` ("gpu", "sweep", "arena") for an event."""
    return hosting_mod.lane(name, (hosting or hosting_mod.current()).caps)


# ---------------------------------------------------------------------------------------------------------------
# password sign-in (public mode with STUDIO_ADMIN_PASSWORD)


def _client(request: StarletteRequest, hosting: Hosting) -> str:
    host = request.client.host if request.client else None
    return hosting_mod.client_ip(host, _headers(request), trust_proxy=hosting.on_spaces, hops=hosting.proxy_hops)


def _secure(request: StarletteRequest, hosting: Hosting) -> bool:
    proto = _headers(request).get("x-forwarded-proto", "") if hosting.on_spaces else ""
    return request.url.scheme == "https" or proto == "https"


def auth_dependency(gate: AdminGate, hosting: Hosting):
    """Gradio ``auth_dependency``: ``"admin"`` for a valid admin cookie or Basic header, ``""`` (an anonymous
    visitor, still let in) otherwise."""
    def dependency(request: StarletteRequest) -> str:
        if gate.verify(request.cookies.get(COOKIE)):
            return ADMIN_USER
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and value:
            try:
                user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
                if user == ADMIN_USER and gate.check(password, _client(request, hosting)):
                    return ADMIN_USER
            except (ValueError, UnicodeDecodeError, CapError):
                pass
        return ""

    return dependency


_FORM = """<!doctype html><meta name="viewport" content="width=device-width"><title>Studio admin</title>
<body style="font-family: sans-serif; max-width: 28rem; margin: 4rem auto">
<h2>Studio admin sign-in</h2><p>{message}</p>
<form method="post" action="{action}"><input type="password" name="password" autocomplete="current-password"
 autofocus required style="width: 100%; padding: .5rem"> <p><button type="submit">Sign in</button>
 <a href="{logout}">sign out</a> · <a href="{home}">back to the studio</a></p></form></body>"""


def admin_routes(gate: AdminGate, hosting: Hosting) -> list[Route]:
    """``GET/POST /studio-admin`` (form, sign-in) and ``GET /studio-admin/logout``, for ``app_kwargs["routes"]``."""
    def page(request: StarletteRequest, message: str, status: int = 200) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return HTMLResponse(_FORM.format(message=html.escape(message), action=root + ADMIN_PATH,
                                         logout=root + ADMIN_PATH + "/logout", home=root + "/"), status_code=status)

    async def sign_in(request: StarletteRequest):
        if request.method == "GET":
            return page(request, "Admins start training jobs, control jobs and export models.")
        form = await request.form()
        try:
            ok = gate.check(str(form.get("password") or ""), _client(request, hosting))
        except CapError as err:
            return page(request, str(err), 429)
        if not ok:
            return page(request, "Wrong password.", 401)
        response = RedirectResponse(request.scope.get("root_path", "") + "/", status_code=303)
        secure = _secure(request, hosting)
        response.set_cookie(COOKIE, gate.issue(), max_age=int(gate.ttl_s), httponly=True, secure=secure,
                            samesite="none" if secure else "lax")  # "none": the Space page embeds the app
        return response

    async def sign_out(request: StarletteRequest):
        response = RedirectResponse(request.scope.get("root_path", "") + "/", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    return [Route(ADMIN_PATH, sign_in, methods=["GET", "POST"]), Route(ADMIN_PATH + "/logout", sign_out)]


def sign_in_widgets(hosting: Hosting) -> None:
    """A line under the intro saying the mode and how admins sign in (plus the HF sign-in button on a Space)."""
    if not hosting.public:
        return
    text = ("**Public studio** — generate, explore layers and vote blind in the arena; training and model export are "
            "for admins. " + hosting.how_to_become_admin())
    with gr.Row():
        gr.Markdown(text, elem_id="studio-mode")
        if hosting.oauth:
            gr.LoginButton(scale=0)
