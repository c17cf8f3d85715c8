"""client/server_api.py: the /ws follower through websocket-client (wss for https, proxies from the
environment), polling when the library is missing, and HTTP through an environment proxy."""
from __future__ import annotations

import http.server
import json
import socketserver
import sys
import threading
import time
import types

import pytest

from comfyui_atelier.client import server_api
from comfyui_atelier.client.server_api import ComfyServer, proxy_for

PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "all_proxy",
              "ALL_PROXY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for v in PROXY_VARS:
        monkeypatch.delenv(v, raising=False)


def fake_websocket_module():
    """A stand-in for websocket-client recording every connect(url, **options)."""
    calls, connected = [], threading.Event()

    class WebSocketException(Exception):
        pass

    class WebSocket:
        def __init__(self, enable_multithread=True):
            self.release = threading.Event()

        def connect(self, url, **options):
            calls.append((url, options))
            connected.set()

        def settimeout(self, t):
            pass

        def recv(self):
            self.release.wait(10)
            raise WebSocketException("closed")

        def abort(self):
            self.release.set()

        def close(self, timeout=None):
            self.release.set()

    mod = types.ModuleType("websocket")
    mod.WebSocket, mod.WebSocketException = WebSocket, WebSocketException
    return mod, calls, connected


def follow(monkeypatch, url: str):
    mod, calls, connected = fake_websocket_module()
    monkeypatch.setitem(sys.modules, "websocket", mod)
    srv = ComfyServer(url, client_id="abc")
    try:
        assert srv.follower() is not None
        assert connected.wait(5), "the follower never called connect()"
    finally:
        srv.close()
    return calls[0]


def test_https_server_is_followed_over_wss_through_the_https_proxy(monkeypatch):
    monkeypatch.setenv("https_proxy", "http://alice:s%3Acret@proxy.example.net:3128")
    monkeypatch.setenv("http_proxy", "http://wrong.example.net:1")  # not the one for https
    url, opts = follow(monkeypatch, "https://gpu.example.org:8443/comfy/")
    assert url == "wss://gpu.example.org:8443/comfy/ws?clientId=abc"
    assert (opts["http_proxy_host"], opts["http_proxy_port"]) == ("proxy.example.net", 3128)
    assert opts["http_proxy_auth"] == ("alice", "s:cret")
    assert opts["proxy_type"] == "http"


def test_http_server_uses_http_proxy_and_no_proxy_goes_direct(monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "socks5h://socks.example.net")
    url, opts = follow(monkeypatch, "http://gpu.example.org:8188")
    assert url == "ws://gpu.example.org:8188/ws?clientId=abc"
    assert (opts["http_proxy_host"], opts["http_proxy_port"], opts["proxy_type"]) == ("socks.example.net", 1080,
                                                                                      "socks5h")
    monkeypatch.setenv("no_proxy", "other.example,.example.org")
    url, opts = follow(monkeypatch, "http://gpu.example.org:8188")
    assert "http_proxy_host" not in opts
    assert opts["http_no_proxy"] == ["*"]  # the library is told not to pick the environment's proxy itself


def test_loopback_never_goes_through_a_proxy(monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.example.net:3128")
    assert proxy_for("http", "127.0.0.1", 8188) is None
    assert proxy_for("http", "localhost", 8188) is None
    assert proxy_for("http", "::1", 8188) is None
    assert proxy_for("http", "10.1.2.3", 8188)["host"] == "proxy.example.net"


def test_without_websocket_client_it_polls_and_says_so_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "websocket", None)  # import websocket -> ImportError
    notes = []
    monkeypatch.setattr(server_api, "_note", notes.append)
    monkeypatch.setattr(server_api, "_ws_noted", False)
    srv = ComfyServer("http://gpu.example.org:8188")
    answers = iter([None, None, {"status": {"completed": True}, "outputs": {}}])
    monkeypatch.setattr(srv, "history", lambda pid: next(answers))
    monkeypatch.setattr(srv, "in_queue", lambda pid: True)
    assert srv.follower() is None
    entry = srv.wait("p1", poll=0.01, timeout=5)
    assert entry["status"]["completed"] is True
    ComfyServer("http://other.example.org:8188").follower()
    assert len(notes) == 1 and "websocket-client is not installed" in notes[0] and "polling" in notes[0]


class _JsonHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the JSON of ``answer(path)``, quietly."""

    def do_GET(self):
        body = json.dumps(self.answer(self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


class _Proxy(_JsonHandler):
    seen: list = []

    def answer(self, path):
        type(self).seen.append((path, self.headers.get("Proxy-Authorization")))
        return {"ok": True}


def test_http_requests_go_through_the_environment_proxy(monkeypatch):
    _Proxy.seen = []
    httpd = socketserver.TCPServer(("127.0.0.1", 0), _Proxy)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        monkeypatch.setenv("http_proxy", f"http://bob:pw@127.0.0.1:{httpd.server_address[1]}")
        srv = ComfyServer("http://gpu.invalid:8188/base")  # .invalid never resolves: only the proxy answers
        assert srv.ping() == {"ok": True}
        path, auth = _Proxy.seen[0]
        assert path == "http://gpu.invalid:8188/base/system_stats"
        assert auth == "Basic Ym9iOnB3"  # bob:pw
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_real_library_follows_progress_and_finish_over_ws():
    """websocket-client against a real (aiohttp) /ws: progress reaches the callback, the finish wakes wait()."""
    pytest.importorskip("websocket")
    aiohttp_web = pytest.importorskip("aiohttp.web")
    import asyncio

    state = {"done": False}
    steps = []
    loop = asyncio.new_event_loop()
    go = threading.Event()

    async def ws_handler(request):
        ws = aiohttp_web.WebSocketResponse()
        await ws.prepare(request)
        assert request.query["clientId"] == "cid"
        await asyncio.get_running_loop().run_in_executor(None, go.wait, 10)
        for v in (1, 2):
            await ws.send_str(json.dumps({"type": "progress", "data": {"value": v, "max": 2, "prompt_id": "p1"}}))
        await ws.send_bytes(b"\x00\x00\x00\x01preview")
        state["done"] = True
        await ws.send_str(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "p1"}}))
        async for _ in ws:  # until the client goes away
            pass
        return ws

    async def history(request):  # finished once the progress went out (and, so the test is exact, arrived)
        done = state["done"] and len(steps) >= 2
        return aiohttp_web.json_response({"p1": {"status": {"completed": True}, "outputs": {}}} if done else {})

    async def queue(request):
        return aiohttp_web.json_response({"queue_running": [[0, "p1"]], "queue_pending": []})

    app = aiohttp_web.Application()
    app.add_routes([aiohttp_web.get("/ws", ws_handler), aiohttp_web.get("/history/p1", history),
                    aiohttp_web.get("/queue", queue)])
    runner = aiohttp_web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = aiohttp_web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    srv = ComfyServer(f"http://127.0.0.1:{port}", client_id="cid")
    try:
        ws = srv.follower()
        for _ in range(200):
            if ws.connected:
                break
            threading.Event().wait(0.02)
        assert ws.connected
        def on_progress(v, m):
            steps.append((v, m))
        ws.watch("p1", on_progress)  # registered before the server sends (a real prompt is queued first)
        go.set()
        entry = srv.wait("p1", poll=30, timeout=20, on_progress=on_progress)
        assert entry["status"]["completed"] is True
        assert steps == [(1, 2), (2, 2)]
    finally:
        srv.close()
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        t.join(5)


class _History(_JsonHandler):
    looks: dict = {}  # prompt id -> how many /history looks it takes to be finished

    def answer(self, path):
        pid = path.rsplit("/", 1)[-1]
        left = type(self).looks.get(pid, 0)
        type(self).looks[pid] = left - 1
        return {pid: {"status": {"completed": True}, "outputs": {}}} if left <= 1 else {}


def test_ws_is_followed_only_once_a_prompt_is_still_running_at_the_first_look(monkeypatch):
    """A prompt already in /history when wait() first looks never starts the /ws follower (so a run of
    instant jobs never imports websocket-client); the first one still running starts it, and later waits
    watch through that follower from before their first look."""
    mod, calls, connected = fake_websocket_module()
    monkeypatch.setitem(sys.modules, "websocket", mod)
    _History.looks = {"done": 1, "later": 2, "next": 1}
    httpd = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _History)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    srv = ComfyServer(f"http://127.0.0.1:{httpd.server_address[1]}", client_id="c")
    try:
        assert srv.wait("done", poll=0.01)["status"]["completed"] is True
        assert srv._ws is None and calls == []  # noqa: SLF001 - nothing to wait for: no follower
        t0 = time.monotonic()
        assert srv.wait("later", poll=0.01, timeout=10)["status"]["completed"] is True
        # it finished before the new follower connected: looked up again at once, not after the 5 s event wait
        assert time.monotonic() - t0 < 2.5
        ws = srv._ws  # noqa: SLF001
        assert ws is not None and connected.wait(5) and len(calls) == 1
        watched = []
        orig = ws.watch
        monkeypatch.setattr(ws, "watch", lambda pid, cb=None: watched.append(pid) or orig(pid, cb))
        assert srv.wait("next", poll=0.01, timeout=10)["status"]["completed"] is True
        assert watched == ["next"] and srv._ws is ws and len(calls) == 1  # noqa: SLF001 - the same follower
    finally:
        srv.close()
        httpd.shutdown()
        httpd.server_close()
