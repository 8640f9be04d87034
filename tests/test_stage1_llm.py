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
                if model == "chatty":
                    return self.send(200, completion("I cannot help with that."))
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


class RecordingTokenizer:
    """A chat tokenizer stand-in that records how it is called."""

    pad_token_id = None  # as Llama 3's: the eos id pads
    eos_token_id = 9

    def __init__(self) -> None:
        self.template_calls: list[tuple[list[dict[str, str]], dict]] = []

    def apply_chat_template(self, messages, **kwargs):
        import torch

        self.template_calls.append((messages, kwargs))
        return {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}

    def decode(self, tokens, skip_special_tokens=False):
        assert skip_special_tokens
        return " ".join(f"w{int(t)}" for t in tokens) + "  "


class RecordingModel:
    """A causal LM stand-in: records generate()'s arguments and the seed it runs under, and
    answers with tokens drawn from torch's RNG (so the reply follows the seed)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def generate(self, **kwargs):
        import torch

        self.calls.append({**kwargs, "_seed": torch.initial_seed()})
        new = torch.randint(100, 10_000, (1, 4))
        return torch.cat([kwargs["input_ids"], new], dim=1)


def test_transformers_llm_samples_with_the_paper_s_settings_through_the_chat_template():
    tokenizer, model = RecordingTokenizer(), RecordingModel()
    llm = TransformersLLM(model, tokenizer, device="cpu", model_id="m")
    messages = build_messages("bottle")
    reply = llm.complete(messages, seed=11)
    assert tokenizer.template_calls == [
        (messages, {"add_generation_prompt": True, "return_tensors": "pt", "return_dict": True})
    ]
    (call,) = model.calls
    assert call["input_ids"].tolist() == [[5, 6, 7]] and call["attention_mask"].tolist() == [[1, 1, 1]]
    assert (call["do_sample"], call["temperature"], call["top_p"], call["max_new_tokens"]) == (True, 0.6, 0.9, 512)
    assert call["pad_token_id"] == 9  # no pad token: eos
    assert call["_seed"] == 11  # sampling runs under the given seed
    assert reply.startswith("w") and reply == reply.strip() and len(reply.split()) == 4  # only the new tokens
    assert llm.complete(messages, seed=11) == reply
    assert llm.complete(messages, seed=12) != reply and model.calls[-1]["_seed"] == 12


def test_transformers_llm_failures_are_llm_errors():
    class Broken(RecordingModel):
        def generate(self, **kwargs):
            raise RuntimeError("CUDA out of memory")

    llm = TransformersLLM(Broken(), RecordingTokenizer(), device="cpu", model_id="m")
    with pytest.raises(LLMError, match="m: generation failed: RuntimeError: CUDA out of memory"):
        llm.complete(build_messages("bottle"), seed=0)


def test_tiny_llama_replies_follow_the_seed(tiny_models: dict[str, Path]):
    llm = TransformersLLM.from_pretrained(str(tiny_models["llm"]), device="cpu")
    assert (llm.temperature, llm.top_p, llm.max_new_tokens) == (0.6, 0.9, 512)
    messages = build_messages("bottle")
    replies = [llm.complete(messages, seed=seed) for seed in (0, 1, 2)]
    assert len(set(replies)) > 1  # another seed, another sample
    assert llm.complete(messages, seed=1) == replies[1]


def test_an_llm_that_cannot_be_loaded_falls_back_with_a_reason_and_a_fix(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    import logging

    from iapas.prompts.llm import UnloadedLLM
    from iapas.prompts.resources import Stage1Models, Stage1Options

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.WARNING)
    # the default, gated Llama 3, not in the (offline) cache
    models = Stage1Models(Stage1Options(llm="transformers", device="cpu"))
    llm = models.llm()
    assert isinstance(llm, UnloadedLLM) and llm.model_id == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert models.llm() is llm  # not tried again for the next category
    text = " ".join(caplog.text.split())
    assert "could not load the LLM meta-llama/Meta-Llama-3-8B-Instruct" in text
    # offline, the advice is the offline one (the gated-model advice only for an access error)
    assert "HF_HUB_OFFLINE is set" in text and "--llm knowledge" in text and "hf auth login" not in text
    from iapas.prompts.llm import load_failure_hint

    gated = load_failure_hint("transformers", llm.model_id, "Cannot access gated repo ... 401 Client Error")
    assert "gated" in gated and "hf auth login" in gated and "--llm knowledge" in gated
    result = generate_nouns("bottle", llm, seed=0, knowledge=Knowledge.load())
    assert result.fallback_used and result.fallback_reason.startswith("LLM error: could not load meta-llama/")
    assert result.nouns and result.knowledge_family == "glass"

    # the openai client package missing
    caplog.clear()
    monkeypatch.setitem(sys.modules, "openai", None)
    llm = Stage1Models(Stage1Options(llm="openai", llm_model="m", llm_base_url="http://127.0.0.1:1/v1")).llm()
    assert isinstance(llm, UnloadedLLM)
    assert "pip install iapas[openai]" in caplog.text
    assert "pip install iapas[openai]" in generate_nouns("bottle", llm, seed=0, knowledge=Knowledge.load()).fallback_reason
