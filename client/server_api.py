"""HTTP + WebSocket client for one ComfyUI server.

``ComfyServer`` wraps /object_info, /upload/image, /prompt, /history, /view, /queue (standard
library ``http.client``) and follows /ws with the ``websocket-client`` library (ws:// for an
http server, wss:// for https). The follower only *wakes up* waiters; the result of a prompt is
always read from /history, so losing the socket (or a server without /ws) just falls back to
polling. ``websocket-client`` is imported lazily: without it the client still works, polls
/history, and says so once.

Proxies come from the standard environment variables (``http_proxy``, ``https_proxy``,
``no_proxy``, upper case too) for HTTP and WebSocket alike; loopback addresses never use one.
"""
from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import mimetypes
import os
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from typing import Any, Callable

from ..core.errors import AtelierError


class ServerUnavailable(ConnectionError):
    """The server cannot be reached or broke the connection (the job may be moved elsewhere)."""


class PromptRejected(RuntimeError):
    """The server refused the prompt (validation error); carries the server's message."""

    def __init__(self, message: str, payload: Any = None):
        super().__init__(message)
        self.payload = payload


class ExecutionFailed(RuntimeError):
    """The prompt ran and failed (execution_error) or was interrupted."""


def format_prompt_error(payload: Any) -> str:
    """Readable text from a /prompt 400 body: {"error": {...}, "node_errors": {...}}."""
    if not isinstance(payload, dict):
        return str(payload)
    err = payload.get("error")
    parts = []
    if isinstance(err, dict):
        parts.append(err.get("message") or err.get("type") or "prompt rejected")
        if err.get("details"):
            parts.append(str(err["details"]))
    elif err:
        parts.append(str(err))
    for nid, ne in (payload.get("node_errors") or {}).items():
        if not isinstance(ne, dict):
            continue
        for e in ne.get("errors") or []:
            parts.append(f"node {nid} ({ne.get('class_type')}): {e.get('message')}: {e.get('details', '')}".rstrip(": "))
    return "; ".join(p for p in parts if p) or "prompt rejected"


def history_error(entry: dict) -> str | None:
    """Error text of a finished /history entry, or None when it succeeded."""
    status = entry.get("status") or {}
    if status.get("status_str") == "error" or status.get("completed") is False:
        for name, data in status.get("messages") or []:
            if name == "execution_error" and isinstance(data, dict):
                return (f"node {data.get('node_id')} ({data.get('node_type')}): "
                        f"{data.get('exception_type')}: {str(data.get('exception_message', '')).strip()}")
            if name == "execution_interrupted":
                return "execution interrupted on the server"
        return "execution failed (no detail in /history)"
    return None


def output_files(entry: dict) -> list[dict]:
    """[{"node", "filename", "subfolder", "type"}] of a /history entry, sorted by node id then order."""
    files = []
    outputs = entry.get("outputs") or {}

    def key(n):
        return (0, int(n)) if str(n).isdigit() else (1, str(n))

    for nid in sorted(outputs, key=key):
        for kind in ("images", "gifs", "videos", "audio", "files"):
            for f in outputs[nid].get(kind) or []:
                if isinstance(f, dict) and f.get("filename"):
                    files.append({"node": str(nid), "filename": f["filename"], "subfolder": f.get("subfolder", ""),
                                  "type": f.get("type", "output")})
    return files


# ---------------------------------------------------------------------- proxies and the ws library

PROXY_TYPES = ("http", "socks4", "socks4a", "socks5", "socks5h")


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy_for(scheme: str, host: str, port: int) -> dict | None:
    """The proxy the standard environment gives for ``scheme://host:port``, or None (direct).

    Returns {"host", "port", "auth": (user, password) | None, "type": "http" | "socks5" ...}.
    ``no_proxy`` (with its host, domain-suffix and host:port forms) and loopback hosts go direct.
    """
    if _is_loopback(host):
        return None
    proxies = urllib.request.getproxies()
    url = proxies.get("https" if scheme in ("https", "wss") else "http")
    if not url:
        return None
    if urllib.request.proxy_bypass(f"{host}:{port}") or urllib.request.proxy_bypass(host):
        return None
    if "://" not in url:
        url = "http://" + url
    u = urllib.parse.urlsplit(url)
    if not u.hostname:
        return None
    ptype = u.scheme if u.scheme in PROXY_TYPES else "http"
    auth = (urllib.parse.unquote(u.username or ""), urllib.parse.unquote(u.password or "")) if u.username else None
    return {"host": u.hostname, "port": u.port or (1080 if ptype.startswith("socks") else 80), "auth": auth,
            "type": ptype}


_ws_note_lock = threading.Lock()
_ws_noted = False


def _note(msg: str) -> None:
    """Where the once-per-process notes go (the batch log is stderr too)."""
    print(msg, file=sys.stderr, flush=True)


def websocket_module():
    """The ``websocket`` module of websocket-client, or None when it is not installed (said once)."""
    global _ws_noted
    try:
        import websocket  # websocket-client: lazy, so the client imports without it
        if not hasattr(websocket, "WebSocket"):
            raise ImportError("a module named websocket that is not websocket-client")
        return websocket
    except ImportError:
        with _ws_note_lock:
            if not _ws_noted:
                _ws_noted = True
                _note("note: websocket-client is not installed: following the servers by polling /history "
                      "(pip install websocket-client for live progress over /ws)")
        return None


class ComfyServer:
    """One ComfyUI server. Thread-safe: each request opens its own HTTP connection."""

    def __init__(self, url: str, *, timeout: float = 30.0, client_id: str | None = None):
        if "://" not in url:
            url = "http://" + url
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise AtelierError(f"server URL '{url}' is not valid", expected="http://HOST:PORT",
                               fix="pass e.g. --server http://127.0.0.1:8188")
        self.url = f"{u.scheme}://{u.netloc}{u.path.rstrip('/')}"
        self.scheme, self.host = u.scheme, u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.base_path = u.path.rstrip("/")
        self.timeout = timeout
        self.client_id = client_id or uuid.uuid4().hex
        self._object_info: dict | None = None
        self._ws: _WSFollower | None = None
        self._ws_lock = threading.Lock()

    def __repr__(self):
        return f"ComfyServer({self.url})"

    @property
    def ws_url(self) -> str:
        """/ws of this server: wss:// for an https server, ws:// for http."""
        scheme = "wss" if self.scheme == "https" else "ws"
        netloc = urllib.parse.urlsplit(self.url).netloc
        return f"{scheme}://{netloc}{self.base_path}/ws?clientId={urllib.parse.quote(self.client_id)}"

    # ------------------------------------------------------------------ HTTP
    def _conn(self, timeout: float | None = None) -> tuple[http.client.HTTPConnection, str, dict]:
        """(connection, request-target prefix, extra headers), through the environment's proxy if any."""
        timeout = timeout or self.timeout
        proxy = proxy_for(self.scheme, self.host, self.port)
        if proxy is None or proxy["type"] != "http":  # socks proxies are for the ws library only
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            return cls(self.host, self.port, timeout=timeout), self.base_path, {}
        auth = {}
        if proxy["auth"]:
            token = base64.b64encode(":".join(proxy["auth"]).encode()).decode()
            auth = {"Proxy-Authorization": f"Basic {token}"}
        if self.scheme == "https":  # CONNECT tunnel through the proxy, TLS to the server
            conn = http.client.HTTPSConnection(proxy["host"], proxy["port"], timeout=timeout)
            conn.set_tunnel(self.host, self.port, headers=auth)
            return conn, self.base_path, {}
        conn = http.client.HTTPConnection(proxy["host"], proxy["port"], timeout=timeout)
        return conn, f"http://{self.host}:{self.port}{self.base_path}", auth

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        conn, prefix, extra = self._conn(timeout)
        try:
            conn.request(method, prefix + path, body=body, headers={**(headers or {}), **extra})
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise ServerUnavailable(f"{self.url}{path}: {type(e).__name__}: {e}") from None
        finally:
            conn.close()

    def get_json(self, path: str, timeout: float | None = None) -> Any:
        status, data = self.request("GET", path, timeout=timeout)
        if status != 200:
            raise ServerUnavailable(f"GET {self.url}{path} answered HTTP {status}: {data[:200]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        status, data = self.request("POST", path, json.dumps(payload).encode(),
                                    {"Content-Type": "application/json"})
        try:
            return status, json.loads(data) if data else None
        except json.JSONDecodeError:
            return status, data.decode("utf-8", "replace")

    def ping(self, timeout: float = 5.0) -> dict:
        """/system_stats (raises ServerUnavailable)."""
        return self.get_json("/system_stats", timeout=timeout)

    def object_info(self, refresh: bool = False) -> dict:
        if self._object_info is None or refresh:
            self._object_info = self.get_json("/object_info", timeout=max(self.timeout, 120))
        return self._object_info

    def upload_image(self, path: str, name: str | None = None, *, subfolder: str = "",
                     overwrite: bool = True, data: bytes | None = None) -> dict:
        """POST /upload/image (multipart). Returns {"name", "subfolder", "type"}."""
        name = name or os.path.basename(path)
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
        boundary = "----atelier" + uuid.uuid4().hex
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        parts = []
        for field, value in (("overwrite", "true" if overwrite else "false"), ("subfolder", subfolder), ("type", "input")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self.request("POST", "/upload/image", b"".join(parts),
                                    {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status != 200:
            if status >= 500:
                raise ServerUnavailable(f"upload of {name} to {self.url} failed: HTTP {status}")
            raise PromptRejected(f"upload of {name} to {self.url} was refused: HTTP {status} {body[:200]!r}")
        return json.loads(body)

    def queue_prompt(self, prompt: dict, *, extra_data: dict | None = None) -> str:
        payload = {"prompt": prompt, "client_id": self.client_id}
        if extra_data:
            payload["extra_data"] = extra_data
        status, body = self.post_json("/prompt", payload)
        if status == 200 and isinstance(body, dict) and body.get("prompt_id"):
            return body["prompt_id"]
        if status >= 500:
            raise ServerUnavailable(f"POST {self.url}/prompt answered HTTP {status}")
        raise PromptRejected(f"{self.url} rejected the prompt: {format_prompt_error(body)}", body)

    def history(self, prompt_id: str) -> dict | None:
        data = self.get_json(f"/history/{urllib.parse.quote(prompt_id)}")
        return data.get(prompt_id) if isinstance(data, dict) else None

    def queue(self) -> dict:
        return self.get_json("/queue")

    def in_queue(self, prompt_id: str) -> bool:
        q = self.queue()
        return any(len(item) > 1 and item[1] == prompt_id
                   for item in (q.get("queue_running") or []) + (q.get("queue_pending") or []))

    def cancel(self, prompt_ids: list[str]) -> None:
        """Remove pending prompts from the queue (never interrupts a running one)."""
        if prompt_ids:
            try:
                self.post_json("/queue", {"delete": list(prompt_ids)})
            except ServerUnavailable:
                pass

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:
        q = urllib.parse.urlencode({"filename": filename, "subfolder": subfolder, "type": type})
        status, data = self.request("GET", f"/view?{q}", timeout=max(self.timeout, 60))
        if status != 200:
            raise ServerUnavailable(f"GET /view {filename} on {self.url} answered HTTP {status}")
        return data

    # ------------------------------------------------------------------ waiting
    def follower(self, start: bool = True) -> "_WSFollower | None":
        """The running /ws follower (started on first use; with ``start=False`` only one already running);
        None without websocket-client."""
        with self._ws_lock:
            if self._ws is None or not self._ws.is_alive():
                if not start:
                    return None
                lib = websocket_module()
                if lib is None:
                    return None
                self._ws = _WSFollower(self, lib)
                self._ws.start()
            return self._ws

    def close(self) -> None:
        with self._ws_lock:
            if self._ws is not None:
                self._ws.stop()
                self._ws = None

    def wait(self, prompt_id: str, *, timeout: float = 600.0, poll: float = 1.0, use_ws: bool = True,
             on_progress: Callable[[int, int], None] | None = None, lost_after: float = 10.0) -> dict:
        """Wait until ``prompt_id`` is in /history; returns the entry.

        WebSocket events wake the waiter at once; otherwise /history is polled every ``poll``
        seconds. If the prompt is neither in /history nor in /queue for ``lost_after`` seconds
        (the server restarted and forgot it), raises ServerUnavailable so the job is moved.
        The /ws follower is started by the first wait that has something to wait for: a prompt already
        in /history on the first look never imports websocket-client (51 ms, the start of a run of
        instant jobs).
        """
        ws = self.follower(start=False) if use_ws else None
        ev = ws.watch(prompt_id, on_progress) if ws else None
        follow = use_ws and ws is None  # the follower is still to be asked for
        # a follower that connected after this prompt finished never tells of it: one more look at /history
        # when it is first seen connected, rather than a 5 s wait for an event that is not coming
        looked_since_connect = ws is not None and ws.connected
        deadline = time.monotonic() + timeout
        missing_since = None
        last_queue_check = time.monotonic()
        finished_since = None  # ws said it finished, /history may lag by a few ms
        try:
            while True:
                entry = self.history(prompt_id)
                if entry is not None and (entry.get("status") is None or entry.get("status", {}).get("completed") is not None
                                          or entry.get("outputs")):
                    return entry
                if follow:  # not finished at the first look: follow /ws from now on
                    follow = False
                    ws = self.follower()
                    ev = ws.watch(prompt_id, on_progress) if ws else None
                now = time.monotonic()
                if now > deadline:
                    raise TimeoutError(f"prompt {prompt_id} did not finish on {self.url} within {timeout:.0f}s")
                if entry is None and now - last_queue_check > 2.0:
                    last_queue_check = now
                    if not self.in_queue(prompt_id):
                        missing_since = missing_since or now
                        if now - missing_since > lost_after:
                            raise ServerUnavailable(f"prompt {prompt_id} vanished from {self.url} (server restarted?)")
                    else:
                        missing_since = None
                if ev is not None and ws.connected:
                    if not looked_since_connect:
                        looked_since_connect = True
                        continue
                    if ev.is_set():
                        finished_since = finished_since or now
                        if now - finished_since < 2.0:
                            time.sleep(0.005 if now - finished_since < 0.1 else 0.05)
                            continue
                        ev.clear()
                        finished_since = None
                    ev.wait(min(5.0, max(0.01, deadline - now)))
                elif ws is not None and now - ws.started < 3.0:
                    time.sleep(0.02)  # the socket is still connecting: poll briskly meanwhile
                else:
                    time.sleep(poll)
        finally:
            if ws is not None:
                ws.unwatch(prompt_id)


class _WSFollower(threading.Thread):
    """Follows ComfyUI's /ws with websocket-client: reads text messages, wakes prompt waiters.

    Reconnects with a backoff while the server is down; binary messages (previews) are ignored.
    """

    def __init__(self, server: ComfyServer, lib):
        super().__init__(daemon=True, name=f"ws-{server.host}:{server.port}")
        self.server = server
        self.lib = lib
        self.connected = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: dict[str, tuple[threading.Event, Callable | None]] = {}
        self._ws = None
        self._recent: dict[str, bool] = {}  # prompt ids seen finishing (insertion ordered, capped)
        self.started = time.monotonic()

    def watch(self, prompt_id: str, on_progress=None) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            self._watch[prompt_id] = (ev, on_progress)
            if prompt_id in self._recent:  # finished before we started watching
                ev.set()
        return ev

    def unwatch(self, prompt_id: str) -> None:
        with self._lock:
            self._watch.pop(prompt_id, None)

    def stop(self):
        self._stop.set()
        ws = self._ws
        if ws is not None:
            try:
                ws.abort()  # wakes the thread blocked in recv()
            except Exception:
                pass

    def _wake_all(self):
        with self._lock:
            for ev, _ in self._watch.values():
                ev.set()

    def connect_options(self) -> dict:
        """Keyword arguments for websocket-client's connect(): timeout, proxy from the environment."""
        srv = self.server
        opts: dict[str, Any] = {"timeout": 10, "suppress_origin": True}
        proxy = proxy_for(srv.scheme, srv.host, srv.port)
        if proxy is None:
            opts["http_no_proxy"] = ["*"]  # direct: the library must not read the environment again
        else:
            opts.update(http_proxy_host=proxy["host"], http_proxy_port=proxy["port"],
                        http_proxy_auth=proxy["auth"], proxy_type=proxy["type"])
        return opts

    def run(self):
        backoff = 0.5
        errors = (OSError, ConnectionError, ValueError, self.lib.WebSocketException)
        while not self._stop.is_set():
            try:
                self._connect()
                backoff = 0.5
                self._loop()
            except errors:
                pass
            finally:
                self.connected = False
                ws, self._ws = self._ws, None
                if ws is not None:
                    try:
                        ws.close(timeout=1)
                    except Exception:
                        pass
                self._wake_all()  # waiters fall back to polling /history
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _connect(self):
        ws = self.lib.WebSocket(enable_multithread=True)
        self._ws = ws
        ws.connect(self.server.ws_url, **self.connect_options())
        ws.settimeout(None)  # block in recv(); stop() aborts the socket
        self.connected = True
        self._wake_all()

    def _loop(self):
        while not self._stop.is_set():
            data = self._ws.recv()
            if isinstance(data, str):  # binary messages are previews: ignored
                self._dispatch(data)

    def _dispatch(self, data: str | bytes):
        try:
            msg = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        if not isinstance(msg, dict):
            return
        kind, d = msg.get("type"), msg.get("data") or {}
        pid = d.get("prompt_id") if isinstance(d, dict) else None
        if not pid:
            return
        finished = kind in ("execution_success", "execution_error", "execution_interrupted") or \
            (kind == "executing" and d.get("node") is None)
        with self._lock:
            if finished:
                self._recent[pid] = True
                if len(self._recent) > 2000:
                    for k in list(self._recent)[:1000]:
                        del self._recent[k]
            target = self._watch.get(pid)
        if target is None:
            return
        ev, on_progress = target
        if kind == "progress" and on_progress is not None:
            try:
                on_progress(int(d.get("value", 0)), int(d.get("max", 0)))
            except Exception:
                pass
        if finished:
            ev.set()
