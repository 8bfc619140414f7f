"""The explorer's server over real HTTP on 127.0.0.1: the token, Host and Origin
checks, path traversal, uploads, streaming, two clients at once, and stopping
(in process and the CLI on SIGTERM)."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from PIL import Image

from netsight.explore import Explorer, explore
from netsight.explore.server import ExploreWarning


@pytest.fixture(scope="module")
def server() -> Iterator[Explorer]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    handle = explore(model, torch.randn(2, 3, 64, 64), open_browser=False, max_upload=1 << 20)
    try:
        yield handle
    finally:
        handle.stop()


def request(
    handle: Explorer,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    token: bool = True,
) -> tuple[int, bytes, dict[str, str]]:
    """One raw HTTP request (http.client sends the path exactly as given)."""
    conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=60)
    sent = dict(headers or {})
    if token:
        sent.setdefault("X-Netsight-Token", handle.token)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def as_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"))


def png_bytes(
    size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (10, 200, 30)
) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "path", ["/", "/api/model", "/api/images", "/api/layer?image=i1&layer=conv1"]
)
def test_every_api_call_and_the_page_need_the_token(server: Explorer, path: str):
    assert request(server, path, token=False)[0] == 403
    assert request(server, path, headers={"X-Netsight-Token": "wrong"})[0] == 403
    status, _, _ = request(server, path)
    assert status == 200
    status, _, _ = request(
        server, f"{path}{'&' if '?' in path else '?'}token={server.token}", token=False
    )
    assert status == 200


def test_the_page_forbids_inline_script(server: Explorer):
    status, _, headers = request(server, f"/?token={server.token}", token=False)
    assert status == 200
    policy = headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_a_foreign_origin_is_refused(server: Explorer):
    for origin in ("http://evil.example", f"http://127.0.0.1:{server.port + 1}", "null"):
        assert request(server, "/api/model", headers={"Origin": origin})[0] == 403
    own = f"http://127.0.0.1:{server.port}"
    assert request(server, "/api/model", headers={"Origin": own})[0] == 200


def test_a_foreign_host_header_is_refused(server: Explorer):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1:1"):
        assert request(server, "/api/model", headers={"Host": host})[0] == 400
    assert request(server, "/api/model", headers={"Host": f"localhost:{server.port}"})[0] == 200


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e%2f%2e%2e%2f__init__.py",
        "/static/../../../../etc/passwd",
        "/static//etc/passwd",
        "/api/../static/../server.py",
        "/static/%2fetc%2fpasswd",
    ],
)
def test_path_traversal_is_refused(server: Explorer, path: str):
    status, body, _ = request(server, path)
    assert status in (400, 403, 404)
    assert b"root:" not in body and b"def create_app" not in body


def test_no_endpoint_takes_a_path(server: Explorer, tmp_path: Path):
    picture = tmp_path / "secret.png"
    picture.write_bytes(png_bytes())
    status, body, _ = request(server, f"/api/images?name={picture}", method="POST", body=b"")
    assert status == 400  # an empty upload; the name is only a label, never opened
    status, body, _ = request(server, f"/api/layer?image={picture}&layer=conv1")
    assert status == 400 and b"no image" in body


def test_uploads_are_decoded_limited_and_refused_with_a_message(server: Explorer):
    status, body, _ = request(server, "/api/images?name=green.png", method="POST", body=png_bytes())
    assert status == 200
    info = as_json(body)
    assert info["name"] == "green.png" and len(info["predictions"]) == 5
    status, body, _ = request(
        server, "/api/images?name=x.png", method="POST", body=b"no image here"
    )
    assert status == 400 and "not an image" in as_json(body)["error"]
    big = b"\x89PNG" + bytes(2 << 20)
    status, body, _ = request(server, "/api/images?name=big.png", method="POST", body=big)
    assert status == 413 and "too large" in as_json(body)["error"]
    status, _, _ = request(server, f"/api/images/{info['id']}", method="DELETE")
    assert status == 200


def test_a_decompression_bomb_gets_a_4xx(server: Explorer, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # the 40x30 picture is over twice that
    status, body, _ = request(server, "/api/images?name=bomb.png", method="POST", body=png_bytes())
    assert status == 400 and "too large to decode safely" in as_json(body)["error"]


def test_bad_questions_get_a_message(server: Explorer):
    status, body, _ = request(server, "/api/layer?image=i1&layer=layer9")
    assert status == 400 and "no layer named 'layer9'" in as_json(body)["error"]
    status, body, _ = request(server, "/api/cam?image=i1&class=99")
    assert status == 400 and "10 classes" in as_json(body)["error"]
    status, body, _ = request(server, "/api/layer?image=i1&layer=conv1&page=x")
    assert status == 400 and "page" in as_json(body)["error"]
    status, body, _ = request(server, "/api/graph?depth=deep")
    assert status == 400 and "depth" in as_json(body)["error"]


def test_patterns_stream_progress_then_the_result(server: Explorer):
    body = json.dumps({"layer": "layer1.0.conv1", "channels": [0, 2], "steps": 3}).encode()
    status, data, headers = request(
        server,
        "/api/patterns",
        method="POST",
        body=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 200 and headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert [line.get("progress") for line in lines[:-1]] == [1, 2, 3]
    assert lines[-1]["result"]["channels"] == [0, 2]


def test_two_clients_at_once_are_both_served(server: Explorer):
    results: dict[str, int] = {}

    def ask(name: str, path: str) -> None:
        for _ in range(3):
            status, _, _ = request(server, path)
            results[name] = max(results.get(name, 0), status)

    threads = [
        threading.Thread(target=ask, args=("a", "/api/layer?image=i1&layer=layer2.0.conv1")),
        threading.Thread(target=ask, args=("b", "/api/cam?image=i2&class=1")),
        threading.Thread(target=ask, args=("c", "/api/graph")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == {"a": 200, "b": 200, "c": 200}


def test_stop_ends_the_server_and_its_thread():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)
    )
    model(torch.zeros(1, 3, 8, 8))
    with explore(model, torch.zeros(1, 3, 8, 8), open_browser=False) as handle:
        assert request(handle, "/api/model")[0] == 200
        name = f"netsight-explore-{handle.port}"
    started = time.monotonic()
    assert not handle.running and time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name == name]
    with pytest.raises(OSError):
        request(handle, "/api/model")


def test_another_host_warns():
    model = torch.nn.Conv2d(3, 2, 1)
    with pytest.warns(ExploreWarning, match="reachable from other machines"):
        handle = explore(model, host="0.0.0.0", open_browser=False)
    handle.stop()


def test_the_cli_serves_and_stops_on_sigterm_within_two_seconds(tmp_path: Path):
    image = tmp_path / "dot.png"
    image.write_bytes(png_bytes((64, 64)))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "netsight", "explore", "torchvision:resnet18", str(tmp_path)]
    cmd += ["--size", "64", "--no-browser"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "http://127.0.0.1:" in line, (
            line,
            proc.stderr.read() if proc.poll() is not None and proc.stderr else "",
        )
        url = line.split(" at ", 1)[1].strip()
        port = int(url.split(":")[2].split("/")[0])
        token = url.split("token=")[1]
        # the URL comes first; the graph, then the images, load behind it
        for _ in range(300):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("GET", "/api/model", headers={"X-Netsight-Token": token})
            pending = json.loads(conn.getresponse().read())["pending_images"]
            conn.request("GET", "/api/images", headers={"X-Netsight-Token": token})
            images = json.loads(conn.getresponse().read())
            conn.close()
            if pending == 0:
                break
            time.sleep(0.1)
        assert [i["name"] for i in images] == ["dot.png"]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        # the server stops (its port refuses) within 2 s ...
        while time.monotonic() - started < 2.0:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the server still accepts connections 2 s after SIGTERM")
        # ... and the process, threads and all, exits cleanly
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
