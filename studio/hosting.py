"""How the studio is hosted: local or public mode, who is an admin, who a visitor is, every cap, where data lives.

    hosting = Hosting.from_env(public=None)            # public with --public, or on a Space (SPACE_ID set)
    visitor = hosting.visitor(client_host="1.2.3.4", headers={...}, password_user=None, hf_user=None)
    hosting.caps.check("steps", 40)                    # CapError: "steps 40 is above this server's cap of 30 ..."
    hosting.caps.check_sweep(units=12, prompts=2, seeds=2, steps=20)
    display_path(Path("/srv/studio/outputs/jobs/x/log.txt"))  # "<data>/jobs/x/log.txt"

Local mode (``python app.py``) trusts its one user: everyone is an admin and the caps are the hard validation
limits. Public mode (``python app.py --public``, or automatically on Hugging Face Spaces) trusts nobody but admins:
training, job control, model export and free-form paths are for admins; visitors get the public caps below.

Every cap is a field of `Caps`, read from one environment variable each (table `CAP_ENV`, documented in the README's
"Hosting" section); a request above a cap gets a `CapError` naming the value, the cap and the variable.
No gradio here: the UI adapter is ``studio/ui/access.py``.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace

from studio.storage import (PERSISTENT_ENV, PRIVATE_DATA_FOLDERS, SPACES_DATA, blocked_paths,  # noqa: F401
                            deliverable, display_path, hub_cache_dir, persistent_dir, redact, resolve_display_path,
                            storage_is_persistent)

LOG = logging.getLogger(__name__)
MODES = ("local", "public")
ADMIN_USER = "admin"  # the username a password-signed-in admin gets (gr.Request.username)
PUBLIC_ENV = "STUDIO_PUBLIC"  # "1": public mode without --public (e.g. a container)
ADMIN_PASSWORD_ENV = "STUDIO_ADMIN_PASSWORD"
ADMINS_ENV = "STUDIO_ADMINS"  # Hugging Face usernames, comma-separated
PROXY_HOPS_ENV = "STUDIO_PROXY_HOPS"  # on Spaces: which x-forwarded-for entry, counted from the right, is the client
VOTES_DATASET_ENV = "STUDIO_VOTES_DATASET"
HF_DATASETS_ENV = "STUDIO_HF_DATASETS"  # hub data sets ("owner/name", comma-separated) public-mode jobs may train on


class CapError(ValueError):
    """A request above one of this server's caps; the message names the value, the cap and its env variable."""


class AdminOnlyError(PermissionError):
    """An action reserved for admins; the message says how to become one."""


# ---------------------------------------------------------------------------------------------------------------
# caps


@dataclass(frozen=True)
class Caps:
    """Every limit a request meets, in one place. ``Caps.defaults(mode)`` gives the mode's defaults;
    ``Caps.from_env(mode)`` applies the ``STUDIO_*`` overrides of `CAP_ENV`."""

    steps: int  # denoising steps per image
    size: int  # width and height, pixels each
    batch: int  # images per model per request
    models: int  # models per side-by-side request
    sweep_cost: int  # units x prompts x seeds x steps of one Layers sweep
    init_pixels: int  # pixels of an uploaded init image (checked before decoding)
    text_chars: int  # prompts and other free text
    name_chars: int  # names and path-like strings (one file name is at most 255 bytes)
    queue_size: int  # Gradio queue max_size (all events together)
    pending: int  # one visitor's events waiting or running in the gpu, sweep and arena lanes (admins: no limit)
    concurrency: int  # default concurrency of cheap events (lists, leaderboard, votes)
    sweep_concurrency: int  # the "sweep" lane (Layers sweeps)
    queued_jobs: int  # training jobs queued or running at once
    battles_per_minute: int  # arena battles per visitor
    votes_per_minute: int  # arena votes per visitor
    votes_per_day: int  # arena votes per visitor per 24 h (counted in the database: survives restarts)
    min_view_s: float  # seconds a visitor looks at a battle before the vote counts

    def __post_init__(self):
        for f in fields(self):
            value, (env, low, high, _) = getattr(self, f.name), CAP_ENV[f.name]
            kind = float if f.name == "min_view_s" else int
            ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                  and (kind is float or float(value).is_integer()) and low <= value <= high)
            if not ok:
                raise ValueError(f"Caps.{f.name} ({env}) must be {'a number' if kind is float else 'an integer'} "
                                 f"between {low} and {high}; got {value!r}")

    @classmethod
    def defaults(cls, mode: str) -> Caps:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        return cls(**{name: spec[3][MODES.index(mode)] for name, spec in CAP_ENV.items()})

    @classmethod
    def from_env(cls, mode: str, env: Mapping[str, str] | None = None) -> Caps:
        """The mode's defaults with every ``STUDIO_*`` cap variable that is set; a bad value raises naming it."""
        env = os.environ if env is None else env
        caps, overrides = cls.defaults(mode), {}
        for name, (var, low, high, _) in CAP_ENV.items():
            text = env.get(var, "").strip()
            if not text:
                continue
            try:
                value = float(text) if name == "min_view_s" else int(text)
            except ValueError:
                raise ValueError(f"{var}={text!r}: expected {'a number' if name == 'min_view_s' else 'an integer'} "
                                 f"between {low} and {high}") from None
            overrides[name] = value
        return replace(caps, **overrides)

    def check(self, name: str, value: float, what: str | None = None) -> None:
        """Raise `CapError` when ``value`` is above the cap ``name`` (a field of this class)."""
        cap = getattr(self, name)
        if value > cap:
            raise CapError(f"{what or name} {value:,} is above this server's cap of {cap:,} "
                           f"({CAP_ENV[name][0]}){_HINTS.get(name, '')}")

    def check_generation(self, *, models: int = 1, steps: int = 1, width: int | None = None,
                         height: int | None = None, batch: int = 1) -> None:
        """The caps of one generation request (None size = the model's native size, checked by the caller)."""
        self.check("models", models, "models per request")
        self.check("steps", steps)
        for name, value in (("width", width), ("height", height)):
            if value is not None:
                self.check("size", value, name)
        self.check("batch", batch, "images per model")

    def check_sweep(self, *, units: int, prompts: int, seeds: int, steps: int, what: str = "sweep") -> int:
        """The cost units x prompts x seeds x steps of a Layers sweep (``what``: or of a comparison, whose two units
        are the full and the ablated model), refused above ``sweep_cost``."""
        cost = units * prompts * seeds * steps
        self.check("sweep_cost", cost, f"{what} cost ({units} units x {prompts} prompts x {seeds} seeds x "
                                       f"{steps} steps =)")
        return cost

    def check_text(self, field_name: str, text: str | None, *, name: bool = False) -> None:
        """Free text (``text_chars``) or a name/path-like string (``name_chars``, with ``name=True``)."""
        if text is not None and not isinstance(text, str):
            raise CapError(f"{field_name} must be text; got {type(text).__name__}")
        self.check("name_chars" if name else "text_chars", len(text or ""), f"{field_name} length (characters)")

    def check_pixels(self, width: int, height: int, what: str = "init image") -> None:
        self.check("init_pixels", width * height, f"{what} pixels ({width}x{height} =)")


# field -> (env variable, lowest, highest, (local default, public default)); the README table lists these.
CAP_ENV: dict[str, tuple[str, float, float, tuple]] = {
    "steps": ("STUDIO_MAX_STEPS", 1, 150, (150, 30)),
    "size": ("STUDIO_MAX_SIZE", 32, 2048, (2048, 1024)),
    "batch": ("STUDIO_MAX_BATCH", 1, 8, (8, 2)),
    "models": ("STUDIO_MAX_MODELS", 1, 4, (4, 3)),
    "sweep_cost": ("STUDIO_MAX_SWEEP_COST", 1, 10**9, (10**8, 4000)),
    "init_pixels": ("STUDIO_MAX_INIT_PIXELS", 64 * 64, 8192 * 8192, (4096 * 4096, 2048 * 2048)),
    "text_chars": ("STUDIO_MAX_TEXT", 1, 2000, (2000, 500)),
    "name_chars": ("STUDIO_MAX_NAME", 1, 200, (200, 64)),
    "queue_size": ("STUDIO_QUEUE_SIZE", 1, 10_000, (64, 32)),
    "pending": ("STUDIO_MAX_PENDING", 1, 1000, (64, 2)),
    "concurrency": ("STUDIO_CONCURRENCY", 1, 64, (1, 4)),
    "sweep_concurrency": ("STUDIO_SWEEP_CONCURRENCY", 1, 8, (1, 1)),
    "queued_jobs": ("STUDIO_MAX_QUEUED_JOBS", 1, 1000, (16, 2)),
    "battles_per_minute": ("STUDIO_BATTLES_PER_MINUTE", 1, 10_000, (10, 6)),
    "votes_per_minute": ("STUDIO_VOTES_PER_MINUTE", 1, 10_000, (20, 6)),
    "votes_per_day": ("STUDIO_VOTES_PER_DAY", 1, 10**6, (10**6, 200)),
    "min_view_s": ("STUDIO_MIN_VIEW_S", 0, 600, (0.0, 3.0)),
}
_HINTS = {
    "steps": "; use fewer steps (few-step students need 2-8)",
    "size": "; pick a smaller size",
    "sweep_cost": "; tick fewer units or use fewer prompts, seeds or steps",
    "init_pixels": "; downscale the image before uploading it",
    "pending": "; wait for your earlier requests to finish",
}

# Concurrency lanes (Gradio ``concurrency_id``): events sharing a lane share its limit.
GPU_LANE = "gpu"  # generation, live arena battles, Layers compare/export: one at a time (pipelines are shared and
# not thread-safe, so this lane's limit is fixed at 1, not configurable)
SWEEP_LANE = "sweep"  # long Layers sweeps, kept apart so they cannot starve generation (needs a private pipeline)
ARENA_LANE = "arena"  # cache-only arena battles: no GPU, several at once


HEAVY_LANES = (GPU_LANE, SWEEP_LANE, ARENA_LANE)  # what `Caps.pending` counts per visitor


def lane(name: str, caps: Caps) -> dict:
    """``concurrency_id``/``concurrency_limit`` keyword arguments of an event in lane ``name``."""
    limits = {GPU_LANE: 1, SWEEP_LANE: caps.sweep_concurrency, ARENA_LANE: caps.concurrency}
    if name not in limits:
        raise ValueError(f"lane must be one of {', '.join(limits)}; got {name!r}")
    return {"concurrency_id": name, "concurrency_limit": limits[name]}


# ---------------------------------------------------------------------------------------------------------------
# visitors and admins


@dataclass(frozen=True)
class Visitor:
    """Who is calling, as the server sees it (never the client-chosen session hash).

    ``key`` is what rate limits and vote caps count: ``admin`` (password sign-in), ``hf:<username>`` (Hugging Face
    sign-in) or ``ip:<address>`` (IPv6 by /64, as one household gets a whole /64).
    """

    key: str
    admin: bool
    username: str | None = None
    ip: str | None = None


def client_ip(client_host: str | None, headers: Mapping[str, str], *, trust_proxy: bool, hops: int = 1) -> str:
    """The visitor's address: the ``hops``-th ``x-forwarded-for`` entry from the right when behind a trusted proxy
    (the Spaces proxy appends the address it saw; entries further left are whatever the client sent), else the
    connection's peer. IPv6 is reduced to its /64; an unparsable address becomes ``unknown`` (one shared identity)."""
    candidate = client_host
    if trust_proxy:
        forwarded = next((v for k, v in headers.items() if k.lower() == "x-forwarded-for"), "")
        entries = [e.strip() for e in forwarded.split(",") if e.strip()]
        if len(entries) >= hops:
            candidate = entries[-hops]
    try:
        address = ipaddress.ip_address((candidate or "").strip().strip("[]"))
    except ValueError:
        return "unknown"
    if address.version == 6:
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class AdminGate:
    """Password sign-in for admins (``STUDIO_ADMIN_PASSWORD``): constant-time checks, at most `max_failures` wrong
    passwords per client per 15 minutes, and signed expiring tokens (a cookie) keyed by a per-process secret."""

    def __init__(self, password: str, *, ttl_s: float = 12 * 3600, max_failures: int = 5):
        if len(password) < 8:
            raise ValueError(f"{ADMIN_PASSWORD_ENV} must have at least 8 characters")
        self._digest = hashlib.sha256(password.encode()).digest()
        self._key, self.ttl_s, self.max_failures = secrets.token_bytes(32), ttl_s, max_failures
        self._failures: dict[str, deque] = {}
        self._lock = threading.Lock()

    def check(self, password: str | None, client: str) -> bool:
        """True for the right password; False for a wrong one; `CapError` once a client has failed too often."""
        now = time.monotonic()
        with self._lock:
            recent = self._failures.setdefault(client, deque())
            while recent and now - recent[0] > 900:
                recent.popleft()
            if len(recent) >= self.max_failures:
                raise CapError(f"too many wrong admin passwords from this address; try again in "
                               f"{900 - (now - recent[0]):.0f} s")
        ok = hmac.compare_digest(hashlib.sha256((password or "").encode()).digest(), self._digest)
        if not ok:
            with self._lock:
                self._failures[client].append(now)
        return ok

    def issue(self) -> str:
        expires = str(int(time.time() + self.ttl_s))
        return f"{expires}.{hmac.new(self._key, expires.encode(), hashlib.sha256).hexdigest()}"

    def verify(self, token: str | None) -> bool:
        expires, _, mac = (token or "").partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(mac, hmac.new(self._key, expires.encode(), hashlib.sha256).hexdigest())


# ---------------------------------------------------------------------------------------------------------------
# the hosting configuration


@dataclass(frozen=True)
class Hosting:
    """Mode, caps, admins and proxy trust of one running studio (``Hosting.from_env`` reads them all)."""

    mode: str = "local"
    caps: Caps = field(default_factory=lambda: Caps.defaults("local"))
    on_spaces: bool = False  # SPACE_ID is set: the Spaces proxy is in front, x-forwarded-for can be trusted
    admins: frozenset[str] = frozenset()  # Hugging Face usernames (lower case)
    admin_password: str | None = field(default=None, repr=False)
    proxy_hops: int = 1
    mcp: bool = False
    oauth: bool = False  # "Sign in with Hugging Face" is available (a Space with hf_oauth: true)
    hf_datasets: frozenset[str] = frozenset()  # hub data sets a public studio's jobs may use (local: any)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"Hosting.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not (isinstance(self.proxy_hops, int) and 1 <= self.proxy_hops <= 8):
            raise ValueError(f"{PROXY_HOPS_ENV} must be an integer between 1 and 8; got {self.proxy_hops!r}")

    @classmethod
    def from_env(cls, public: bool | None = None, *, mcp: bool = False,
                 env: Mapping[str, str] | None = None) -> Hosting:
        """Public when ``public`` is True, ``STUDIO_PUBLIC=1`` or ``SPACE_ID`` is set (``public=False`` forces
        local, e.g. for a Space owner's own debugging copy)."""
        env = os.environ if env is None else env
        on_spaces = bool(env.get("SPACE_ID"))
        if public is None:
            public = on_spaces or env.get(PUBLIC_ENV, "") == "1"
        mode = "public" if public else "local"
        admins = frozenset(n.strip().lower() for n in env.get(ADMINS_ENV, "").split(",") if n.strip())
        hops = env.get(PROXY_HOPS_ENV, "1").strip() or "1"
        if not hops.isdigit():
            raise ValueError(f"{PROXY_HOPS_ENV}={hops!r}: expected an integer between 1 and 8")
        datasets = frozenset(n.strip() for n in env.get(HF_DATASETS_ENV, "").split(",") if n.strip())
        return cls(mode=mode, caps=Caps.from_env(mode, env), on_spaces=on_spaces, admins=admins,
                   admin_password=env.get(ADMIN_PASSWORD_ENV) or None, proxy_hops=int(hops), mcp=mcp,
                   oauth=on_spaces and bool(env.get("OAUTH_CLIENT_ID")) and bool(admins), hf_datasets=datasets)

    @property
    def public(self) -> bool:
        return self.mode == "public"

    def visitor(self, *, client_host: str | None, headers: Mapping[str, str] | None = None,
                password_user: str | None = None, hf_user: str | None = None) -> Visitor:
        """The calling visitor. ``password_user`` is what the admin sign-in set (`ADMIN_USER` or empty);
        ``hf_user`` the Hugging Face username of a signed-in visitor."""
        ip = client_ip(client_host, headers or {}, trust_proxy=self.on_spaces, hops=self.proxy_hops)
        if password_user == ADMIN_USER and self.admin_password:
            return Visitor(ADMIN_USER, True, ADMIN_USER, ip)
        if hf_user:
            name = hf_user.strip().lower()
            return Visitor(f"hf:{name}", not self.public or name in self.admins, name, ip)
        return Visitor(f"ip:{ip}", not self.public, None, ip)

    def is_admin(self, visitor: Visitor) -> bool:
        return visitor.admin

    def require_admin(self, visitor: Visitor, action: str) -> None:
        """`AdminOnlyError` for a non-admin in public mode (local mode: everyone is an admin)."""
        if not visitor.admin:
            raise AdminOnlyError(f"{action} is for admins only on this public studio. {self.how_to_become_admin()}")

    def require_owner(self, visitor: Visitor, owner: str | None, action: str) -> None:
        """`AdminOnlyError` unless ``visitor`` is an admin or ``owner`` (a `Visitor.key`; None: unknown, e.g. no such
        job — refused the same way, so a refusal says nothing about what exists)."""
        if not visitor.admin and (not owner or owner != visitor.key):
            raise AdminOnlyError(f"{action} is for the visitor who started it or an admin on this public studio. "
                                 f"{self.how_to_become_admin()}")

    @property
    def hub_datasets(self) -> frozenset[str] | None:
        """The hub data sets jobs may train on: `hf_datasets` in public mode, None (any) locally."""
        return self.hf_datasets if self.public else None

    def how_to_become_admin(self) -> str:
        ways = []
        if self.oauth:
            ways.append(f"sign in with Hugging Face as one of the Space's admins ({ADMINS_ENV})")
        if self.admin_password:
            ways.append(f"sign in at /studio-admin with the password set in {ADMIN_PASSWORD_ENV}")
        if not ways:
            return (f"No admin sign-in is configured: set {ADMIN_PASSWORD_ENV} (or, on a Space with hf_oauth, "
                    f"{ADMINS_ENV}=user1,user2), or run your own copy locally with `python app.py`.")
        return "To become an admin, " + " or ".join(ways) + "; or run your own copy locally with `python app.py`."

    def admin_gate(self) -> AdminGate | None:
        """The password gate of a public studio with ``STUDIO_ADMIN_PASSWORD``; None otherwise."""
        return AdminGate(self.admin_password) if self.public and self.admin_password else None


_ACTIVE: list[Hosting] = []


def activate(hosting: Hosting) -> Hosting:
    """Make ``hosting`` the one `current()` returns (build_app calls this; tabs without a parameter read it)."""
    _ACTIVE[:] = [hosting]
    return hosting


def current() -> Hosting:
    """The hosting of the app being built or served; local defaults before any `activate`."""
    return _ACTIVE[0] if _ACTIVE else Hosting()


# ---------------------------------------------------------------------------------------------------------------
# ZeroGPU


def gpu_task(fn: Callable | None = None, *, duration: float | None = None):
    """``spaces.GPU`` (ZeroGPU: a GPU is attached while ``fn`` runs) when the ``spaces`` package is importable;
    ``fn`` unchanged otherwise. Use as ``@gpu_task`` or ``gpu_task(fn, duration=120)``."""
    def wrap(f: Callable) -> Callable:
        try:
            import spaces  # noqa: PLC0415 - only present on Spaces
        except ImportError:
            return f
        return spaces.GPU(duration=duration)(f) if duration else spaces.GPU(f)

    return wrap(fn) if fn is not None else wrap
