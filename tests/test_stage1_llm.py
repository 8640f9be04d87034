"""Stage 1 LLM backends: an OpenAI-compatible server on 127.0.0.1, and the tiny local Llama."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from iapas.prompts.knowledge import Knowledge
from iapas.prompts.llm import LLM, LLMError, OpenAILLM, TransformersLLM, build_messages, resolve_openai_settings
from iapas.prompts.stage1 import generate_nouns

MAX_SLEEP_S = 3.0  # the slow reply never sleeps longer than this (the server stops it at shutdown)


class ChatServer:
    """A tiny chat-completions server whose behaviour is chosen by the requested model name."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.stop = threading.Event()
        self.flaky_calls = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                request["_path"] = self.path
                request["_auth"] = self.headers.get("Authorization")
                server.requests.append(request)
                model = request.get("model")
                if model == "slow":
                    server.stop.wait(MAX_SLEEP_S)
                    return self.send(200, completion("late, reply"))
                if model == "error":
                    return self.send(500, b'{"error": {"message": "model crashed", "type": "server_error"}}', {"x-should-retry": "false"})
                if model == "flaky":
                    server.flaky_calls += 1
                    if server.flaky_calls == 1:
                        return self.send(503, b'{"error": {"message": "busy"}}', {"retry-after-ms": "10"})
                    return self.send(200, completion("dent, rust"))
                if model == "not-json":
                    return self.send(200, b"<html>oops</html>")
                if model == "no-choices":
                    return self.send(200, json.dumps({"id": "x", "object": "chat.completion", "choices": []}).encode())
                if model == "null-content":
                    return self.send(200, completion(None))
                return self.send(200, completion("Here you go: scratch, dent, rust"))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def completion(content: str | None) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as s:
        yield s


def client(server: ChatServer, model: str, **kwargs) -> OpenAILLM:
    kwargs.setdefault("timeout", 5.0)
    kwargs.setdefault("max_retries", 0)
    return OpenAILLM(model, base_url=server.url, env={}, **kwargs)


def test_openai_backend_speaks_chat_completions(server: ChatServer):
    llm = client(server, "good-model")
    assert isinstance(llm, LLM)
    messages = build_messages("metal nut")
    assert llm.complete(messages, seed=11) == "Here you go: scratch, dent, rust"
    (req,) = server.requests
    assert req["_path"] == "/v1/chat/completions"
    assert req["model"] == "good-model" and req["messages"] == messages
    assert (req["temperature"], req["top_p"], req["max_tokens"], req["seed"]) == (0.6, 0.9, 512, 11)
    assert req["_auth"] == "Bearer not-needed"  # a local server needs no key
    result = generate_nouns("metal nut", llm, seed=11, knowledge=Knowledge.load())
    assert (result.nouns, result.fallback_used, result.base_url) == (["scratch", "dent", "rust"], False, server.url)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("error", "HTTP 500: model crashed"),
        ("not-json", "unusable reply: JSONDecodeError"),
        ("no-choices", "no choices"),
        ("null-content", "message is empty"),
    ],
)
def test_openai_failures_become_llm_errors_and_a_fallback(server: ChatServer, model: str, message: str):
    llm = client(server, model)
    with pytest.raises(LLMError, match=message):
        llm.complete(build_messages("bottle"), seed=0)
    result = generate_nouns("bottle", llm, seed=0, knowledge=Knowledge.load())
    assert result.fallback_used and result.knowledge_family == "glass" and result.nouns
    assert result.fallback_reason.startswith("LLM error")


def test_openai_timeout_is_bounded(server: ChatServer):
    llm = client(server, "slow", timeout=0.5)
    start = time.monotonic()
    with pytest.raises(LLMError, match=r"no reply within 0.5 s"):
        llm.complete(build_messages("bottle"), seed=0)
    assert time.monotonic() - start < 2.5


def test_openai_retries_are_bounded(server: ChatServer):
    assert client(server, "flaky", max_retries=1).complete(build_messages("bottle"), seed=0) == "dent, rust"
    assert server.flaky_calls == 2
    server.flaky_calls = 0
    with pytest.raises(LLMError, match="HTTP 503"):
        client(server, "flaky", max_retries=0).complete(build_messages("bottle"), seed=0)
    assert server.flaky_calls == 1


def test_openai_connection_refused_is_an_llm_error():
    llm = OpenAILLM("m", base_url="http://127.0.0.1:9/v1", env={}, timeout=1.0, max_retries=0)
    with pytest.raises(LLMError, match="cannot connect|no reply"):
        llm.complete(build_messages("bottle"), seed=0)


def test_openai_settings_come_from_options_then_environment():
    env = {"IAPAS_LLM_BASE_URL": "http://a/v1", "OPENAI_BASE_URL": "http://b/v1", "IAPAS_LLM_MODEL": "llama3", "OPENAI_API_KEY": "k"}
    assert resolve_openai_settings(env=env) == ("llama3", "http://a/v1", "k")
    assert resolve_openai_settings("m", "http://c/v1", "key", env=env) == ("m", "http://c/v1", "key")
    assert resolve_openai_settings(env={"OPENAI_BASE_URL": "http://b/v1", "IAPAS_LLM_MODEL": "x"}) == ("x", "http://b/v1", "not-needed")
    with pytest.raises(LLMError, match="needs a model name"):
        resolve_openai_settings(env={})
    with pytest.raises(LLMError, match="OPENAI_API_KEY"):
        resolve_openai_settings("gpt-x", env={})


def test_openai_package_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(LLMError, match=r"pip install iapas\[openai\]"):
        OpenAILLM("m", base_url="http://127.0.0.1:1/v1", env={})


def test_tiny_transformers_llm_is_seeded_and_its_garbage_never_breaks_stage1(tiny_models: dict[str, Path]):
    import torch

    llm = TransformersLLM.from_pretrained(str(tiny_models["llm"]), device="cpu", max_new_tokens=64)
    assert isinstance(llm, LLM) and llm.model.dtype == torch.float32
    messages = build_messages("bottle")
    state = torch.random.get_rng_state()
    first = llm.complete(messages, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is untouched
    assert llm.complete(messages, seed=3) == first
    assert "<|eot_id|>" not in first and "<|start_header_id|>" not in first
    for seed in range(3):
        result = generate_nouns("bottle", llm, seed=seed, knowledge=Knowledge.load())
        assert result.nouns and result.raw_text is not None
        assert result.fallback_used == (result.fallback_reason is not None)


def test_transformers_llm_load_errors_are_clear(tmp_path: Path, tiny_models: dict[str, Path]):
    from iapas.models.loading import ModelLoadError

    with pytest.raises(ModelLoadError, match="LLM: .* holds a 'clip' model"):
        TransformersLLM.from_pretrained(str(tiny_models["clip"]), device="cpu")
    with pytest.raises(ModelLoadError, match="LLM: model folder ./no/such/llm does not exist"):
        TransformersLLM.from_pretrained("./no/such/llm", device="cpu")
