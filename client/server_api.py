"""HTTP + WebSocket client for one ComfyUI server (standard library only).

``ComfyServer`` wraps /object_info, /upload/image, /prompt, /history, /view, /queue and a
minimal RFC 6455 WebSocket follower on /ws (text frames only). The follower only *wakes up*
waiters; the result of a prompt is always read from /history, so losing the socket (or a
server without /ws) just falls back to polling.
"""
from __future__ import annotations

import base64
import http.client
import json
import mimetypes
import os
import socket
import struct
import threading
import time
import urllib.parse
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

    # ------------------------------------------------------------------ HTTP
    def _conn(self, timeout: float | None = None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout or self.timeout)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float | None = None) -> tuple[int, bytes]:
        conn = self._conn(timeout)
        try:
            conn.request(method, self.base_path + path, body=body, headers=headers or {})
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
    def follower(self) -> "_WSFollower":
        with self._ws_lock:
            if self._ws is None or not self._ws.is_alive():
                self._ws = _WSFollower(self)
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
        """
        ws = self.follower() if use_ws else None
        ev = ws.watch(prompt_id, on_progress) if ws else None
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
    """Minimal RFC 6455 client for ComfyUI's /ws: reads text frames, wakes prompt waiters."""

    def __init__(self, server: ComfyServer):
        super().__init__(daemon=True, name=f"ws-{server.host}:{server.port}")
        self.server = server
        self.connected = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._watch: dict[str, tuple[threading.Event, Callable | None]] = {}
        self._sock: socket.socket | None = None
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
        s = self._sock
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _wake_all(self):
        with self._lock:
            for ev, _ in self._watch.values():
                ev.set()

    def run(self):
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self._connect()
                backoff = 0.5
                self._loop()
            except (OSError, ConnectionError, ValueError):
                pass
            finally:
                self.connected = False
                if self._sock is not None:
                    try:
                        self._sock.close()
                    except OSError:
                        pass
                    self._sock = None
                self._wake_all()  # waiters fall back to polling /history
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _connect(self):
        s = socket.create_connection((self.server.host, self.server.port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        path = f"{self.server.base_path}/ws?clientId={urllib.parse.quote(self.server.client_id)}"
        req = (f"GET {path} HTTP/1.1\r\nHost: {self.server.host}:{self.server.port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        s.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed during handshake")
            head += chunk
        status_line = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status_line + b" ":
            raise ConnectionError(f"no websocket upgrade: {status_line!r}")
        self._buf = head.split(b"\r\n\r\n", 1)[1]
        s.settimeout(None)
        self._sock = s
        self.connected = True
        self._wake_all()

    def _recv_exact(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _send_frame(self, opcode: int, payload: bytes = b""):
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._sock.sendall(header + mask + masked)

    def _loop(self):
        fragments: list[bytes] = []
        frag_op = 0
        while not self._stop.is_set():
            b1, b2 = self._recv_exact(2)
            fin, opcode = b1 & 0x80, b1 & 0x0F
            n = b2 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._recv_exact(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._recv_exact(8))[0]
            mask = self._recv_exact(4) if b2 & 0x80 else None
            payload = self._recv_exact(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:  # close
                try:
                    self._send_frame(0x8, payload[:2])
                except OSError:
                    pass
                raise ConnectionError("websocket closed by server")
            if opcode == 0x9:  # ping
                self._send_frame(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode in (0x1, 0x2):
                frag_op, fragments = opcode, [payload]
            elif opcode == 0x0:
                fragments.append(payload)
            if not fin:
                continue
            data, op = b"".join(fragments), frag_op
            fragments = []
            if op == 0x1:  # binary frames are previews: ignored
                self._dispatch(data)

    def _dispatch(self, data: bytes):
        try:
            msg = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
        kind, d = msg.get("type"), msg.get("data") or {}
        pid = d.get("prompt_id")
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
