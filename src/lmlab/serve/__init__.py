"""`lmlab serve`: lmlab models behind an OpenAI-compatible HTTP API, with continuous batching and a playground.

    from lmlab.serve import create_app, load_models
    app = create_app(load_models(["runs/baby"]))      # any ASGI server; `lmlab serve` runs uvicorn

Modules: batching.py (the scheduler: one thread per model decodes every running request together, on the one
decoding driver), schemas.py (request bodies, their checks, OpenAI-shaped errors), routes.py (the endpoints,
module-level functions), app.py (create_app: state, metrics, middleware, error handlers), static/ (the
playground page).
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ..errors import LmlabError

__all__ = ["create_app", "load_models", "serve", "Limits", "is_loopback", "ServerThread"]

def __getattr__(name: str):
    if name in ("create_app", "Limits"):  # FastAPI is imported on first use
        from . import app

        return getattr(app, name)
    raise AttributeError(name)


def model_name(spec: str) -> tuple[str, str]:
    """'NAME=PATH' or 'PATH' (named after the run directory, or the n-gram file without its suffix)."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if not name or not path:
            raise LmlabError(f"{spec!r} is not NAME=PATH or a path; give e.g. tiny=runs/tiny.")
        return name, path
    path = Path(spec)
    name = path.stem if path.suffix in (".arpa", ".npz", ".lmbin") else path.resolve().name
    return name, spec


def load_models(specs: list[str], device: str = "cpu", dtype: str = "fp32") -> dict[str, tuple]:
    """{name: (model, tokenizer)} for run directories / n-gram files given as PATH or NAME=PATH; `dtype` the
    precision the weights decode in (lmlab.generate.decoding_model: fp32, fp16, bf16, int8)."""
    from ..checkpoint import load
    from ..generate import decoding_model
    from ..models.base import require_causal

    models: dict[str, tuple] = {}
    for spec in specs:
        name, path = model_name(spec)
        if name in models:
            raise LmlabError(f"two models are named {name!r}; name them apart with NAME=PATH.")
        model, tokenizer = load(path, device=device)
        require_causal(model, path)  # lmlab serve serves causal language models
        models[name] = (decoding_model(model, dtype), tokenizer)
    return models


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def chat_templates_for(specs: list[str] | None, names: list[str]) -> dict[str, str]:
    """--chat-template values ([NAME=]FILE; a bare FILE is every model's) as {model name: file}."""
    out: dict[str, str] = {}
    for spec in specs or []:
        name, _, path = spec.rpartition("=") if "=" in spec and not Path(spec).exists() else ("", "", spec)
        for model in ([name] if name else names):
            out[model] = path
    return out


def serve(specs: list[str], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          device: str = "cpu", log_level: str = "info", dtype: str = "fp32", chat_template: list[str] | None = None,
          truncate_history: bool = False, **limits) -> None:
    """Load the models and serve them with uvicorn until interrupted."""
    import uvicorn

    from .app import Limits, create_app

    api_key = api_key or os.environ.get("LMLAB_API_KEY") or None
    if not is_loopback(host) and not api_key:
        raise LmlabError(f"--host {host} makes the server reachable from other machines; give --api-key KEY "
                         "(or set LMLAB_API_KEY), or bind to 127.0.0.1.")
    from ..runtime import resolve_device

    check_limits(**limits)
    check_port(host, port)
    models = load_models(specs, device=str(resolve_device(device)), dtype=dtype)
    app = create_app(models, Limits(**limits), api_key=api_key,
                     chat_templates=chat_templates_for(chat_template, list(models)), truncate_history=truncate_history)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


def check_port(host: str, port: int) -> None:
    """Fail early, in one sentence, when the address cannot be bound (before the models are loaded)."""
    import socket

    if not 0 <= port <= 65535:
        raise LmlabError(f"--port must be between 0 and 65535, got {port}.")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise LmlabError(f"--host {host} is not an address or a known host name.") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise LmlabError(f"cannot listen on {host}:{port} ({e.strerror}); choose another --port or --host.") from None


def check_limits(max_tokens=512, max_body_bytes=1 << 20, timeout=120.0, max_batch=32, max_queue=256) -> None:
    for name, value in (("--max-tokens", max_tokens), ("--max-body-bytes", max_body_bytes),
                        ("--max-batch", max_batch), ("--max-queue", max_queue)):
        if value < 1:
            raise LmlabError(f"{name} must be >= 1, got {value}.")
    if not timeout > 0:
        raise LmlabError(f"--timeout must be > 0 seconds, got {timeout}.")


class ServerThread:
    """Run an app with uvicorn in a background thread on a free loopback port (tests, notebooks, benchmarks):

        with ServerThread(create_app(load_models(["runs/baby"]))) as url:
            requests.get(url + "/health")
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit it: without it a response's second write waits for a delayed ACK (40 ms).
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="lmlab-uvicorn")

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
