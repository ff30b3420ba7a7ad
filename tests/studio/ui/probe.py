"""An anonymous visitor at the HTTP level, as an attacker would script one: the app's /config, its queue (join +
event stream, the browser's own protocol, with any fn_index) and /gradio_api/file=. Used by the public-mode tests."""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

import httpx


@dataclass
class RawVisitor:
    url: str  # the app's root URL, ending in "/"
    headers: dict = field(default_factory=dict)  # e.g. {"x-forwarded-for": "1.2.3.4"} behind the Spaces proxy
    session_hash: str = field(default_factory=lambda: secrets.token_hex(6))

    def __post_init__(self):
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=120, follow_redirects=False)
        self.config = self.http.get("config").json()
        self.fn_index = {d.get("api_name"): d["id"] for d in self.config["dependencies"] if d.get("api_name")}

    def call(self, api_name_or_index: str | int, *data) -> dict:
        """Join the queue for one event and read its stream to the end; the ``process_completed`` message."""
        fn = api_name_or_index if isinstance(api_name_or_index, int) else self.fn_index[api_name_or_index]
        joined = self.http.post("gradio_api/queue/join", json={"data": list(data), "fn_index": fn,
                                                               "session_hash": self.session_hash,
                                                               "event_data": None, "trigger_id": None})
        if joined.status_code != 200:
            return {"success": False, "joined": joined.status_code, "output": {"error": joined.text}}
        event_id = joined.json()["event_id"]
        with self.http.stream("GET", "gradio_api/queue/data", params={"session_hash": self.session_hash}) as s:
            for line in s.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") == event_id and message.get("msg") == "process_completed":
                    message["raw"] = line[5:]
                    return message
        raise AssertionError(f"no process_completed for {api_name_or_index}")

    def get_file(self, path: str) -> httpx.Response:
        return self.http.get(f"gradio_api/file={path}")
