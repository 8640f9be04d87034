"""Asking an LLM for anomaly nouns (METHOD.md stage 1 step 4).

Every chat model is behind :class:`LLM`: ``complete(messages, seed=...)`` returns the reply
text or raises :class:`LLMError`. Backends:

* :class:`TransformersLLM`: a local ``transformers`` chat model (default
  Meta-Llama-3-8B-Instruct, bf16 on GPU, float32 on CPU) with the paper's sampling
  (temperature 0.6, top-p 0.9, at most 512 new tokens, seeded, stopping at eos or Llama 3's
  ``<|eot_id|>``), through the tokenizer's chat template.

The messages come in named prompt styles (:data:`PROMPT_STYLES`): ``reference`` (the default,
the paper's reference code's) and ``inspector`` (iapas's own wording).
* :class:`OpenAILLM`: any OpenAI-compatible chat-completions endpoint (Ollama, vLLM, llama.cpp
  server, hosted APIs) through the ``openai`` client, with a time-out and bounded retries.

The offline vocabulary (:mod:`iapas.prompts.knowledge`) is not an LLM; stage 1 uses it when
asked to and whenever an LLM fails.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

Message = dict[str, str]

DEFAULT_LLM = "meta-llama/Meta-Llama-3-8B-Instruct"
TEMPERATURE = 0.6
TOP_P = 0.9
MAX_NEW_TOKENS = 512
OPENAI_TIMEOUT_S = 60.0
OPENAI_MAX_RETRIES = 2
OPENAI_INSTALL_HINT = "pip install iapas[openai]"

# The prompt styles: the system message and the user message (``{object}``: the object tag).
# 'reference' is the paper's: the reference code's messages (sybeam27/IAP-ZSAS,
# utils/function.py, process_anomaly_tags_2), quoted character for character, including the
# line break and indentation its triple-quoted user message sends (the tokens the LLM sees
# depend on them). 'inspector' is iapas's own wording, with an example for leather.
REFERENCE_SYSTEM_MESSAGE = (
    "The assistant should always answer only by listing lowercase words in the following format: 'word, word'"
)
REFERENCE_USER_TEMPLATE = (
    "I would like to extract words to enter into the object detection model to find abnormal parts of {object}. \n"
    "                    Please write down non-redundant anomalous nouns that can appear in {object} images."
)
INSPECTOR_SYSTEM_MESSAGE = (
    "You are an expert in industrial visual inspection. Reply with a single line holding a "
    "comma-separated list of lowercase words, like: word, word, word. Write only that list: no "
    "numbering, no explanations, no other text."
)
INSPECTOR_USER_TEMPLATE = (
    "Name the anomalous parts that can appear in images of a {object}: the defects, damage and "
    "foreign matter an inspector would mark on it. Give non-redundant nouns, not adjectives; for "
    "leather, for example: fray, stain, scratch, hole, burn."
)
PROMPT_STYLES: dict[str, tuple[str, str]] = {
    "reference": (REFERENCE_SYSTEM_MESSAGE, REFERENCE_USER_TEMPLATE),
    "inspector": (INSPECTOR_SYSTEM_MESSAGE, INSPECTOR_USER_TEMPLATE),
}
DEFAULT_PROMPT_STYLE = "reference"
# Generation stops at the tokenizer's eos token and at these, where the tokenizer has them
# (Llama 3 Instruct ends a turn with <|eot_id|>, not its eos token; the reference stops at both).
STOP_TOKENS: tuple[str, ...] = ("<|eot_id|>",)


class LLMError(RuntimeError):
    """An LLM call failed (error, time-out, malformed reply); stage 1 then falls back."""


@runtime_checkable
class LLM(Protocol):
    """A chat model: messages in, reply text out."""

    name: str  # backend name: 'transformers', 'openai'
    model_id: str

    def complete(self, messages: Sequence[Mapping[str, str]], *, seed: int) -> str:
        """The reply to ``messages`` (``[{'role': 'system'|'user', 'content': ...}]``).

        Raises :class:`LLMError` on any failure.
        """
        ...


def check_prompt_style(style: str) -> str:
    """``style`` if it is a prompt style, else ValueError naming the styles."""
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    return style


def build_messages(object_tag: str, style: str = DEFAULT_PROMPT_STYLE) -> list[Message]:
    """The system and user messages of prompt ``style`` that ask for anomaly nouns of ``object_tag``."""
    system, user = PROMPT_STYLES[check_prompt_style(style)]
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": user.format(object=object_tag.strip().lower())},
    ]


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The token ids generation stops at: the tokenizer's eos token and each of
    :data:`STOP_TOKENS` that its vocabulary holds (no id for a token it lacks)."""
    ids: list[int] = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(int(eos))
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids.extend(int(vocab[token]) for token in STOP_TOKENS if token in vocab)
    return list(dict.fromkeys(ids))


def causal_lm_model_types() -> tuple[str, ...]:
    """``model_type`` values transformers can load as a causal LM (for clear folder errors)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return tuple(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


class TransformersLLM:
    """A local chat model through ``transformers`` (the paper's setting by default)."""

    name = "transformers"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        device: str,
        model_id: str,
        temperature: float = TEMPERATURE,
        top_p: float = TOP_P,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.model_id = model_id
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_LLM,
        device: str = "auto",
        dtype: str = "auto",
        **kwargs: Any,
    ) -> TransformersLLM:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from iapas.models.loading import ModelLoadError, load_pretrained, resolve_device, resolve_dtype

        dev = resolve_device(device)
        if dtype == "auto":  # the paper's bf16 on a GPU that has it
            if dev.startswith("cuda") and torch.cuda.is_bf16_supported():
                torch_dtype = torch.bfloat16
            else:
                torch_dtype = resolve_dtype("auto", dev)
        else:
            torch_dtype = resolve_dtype(dtype, dev)
        what = "LLM"
        types = causal_lm_model_types()
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name_or_path, what=what, expected_model_types=types)
        if not getattr(tokenizer, "chat_template", None):
            raise ModelLoadError(
                f"{what}: the tokenizer of {name_or_path!r} has no chat template; use an instruction-tuned "
                "chat model (e.g. meta-llama/Meta-Llama-3-8B-Instruct)"
            )
        model = load_pretrained(
            AutoModelForCausalLM.from_pretrained, name_or_path, what=what, expected_model_types=types, dtype=torch_dtype
        )
        model = model.to(dev).eval()
        logger.info("loaded %s from %s on %s (%s)", what, name_or_path, dev, torch_dtype)
        return cls(model, tokenizer, device=dev, model_id=name_or_path, **kwargs)

    def complete(self, messages: Sequence[Mapping[str, str]], *, seed: int) -> str:
        import torch

        try:
            enc = self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            enc = {k: v.to(self.device) for k, v in enc.items()}
            pad = self.tokenizer.pad_token_id
            if pad is None:
                pad = self.tokenizer.eos_token_id
            stops = stop_token_ids(self.tokenizer)
            stop = {"eos_token_id": stops} if stops else {}
            cuda = list(range(torch.cuda.device_count())) if self.device.startswith("cuda") else []
            with torch.random.fork_rng(devices=cuda):  # seeded sampling without touching the caller's RNG
                torch.manual_seed(seed)
                with torch.inference_mode():
                    out = self.model.generate(
                        **enc,
                        do_sample=True,
                        temperature=self.temperature,
                        top_p=self.top_p,
                        max_new_tokens=self.max_new_tokens,
                        pad_token_id=pad,
                        **stop,
                    )
            new_tokens = out[0, enc["input_ids"].shape[1] :]
            return str(self.tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
        except Exception as exc:  # noqa: BLE001 - any model failure becomes the documented fallback
            raise LLMError(f"{self.model_id}: generation failed: {type(exc).__name__}: {exc}") from exc


class UnloadedLLM:
    """Stands in for an LLM that could not be loaded (gated or missing model, missing package):
    every :meth:`complete` raises :class:`LLMError` with the load error, so stage 1 falls back
    to the knowledge vocabulary and records why, as it does for an LLM that fails to reply."""

    def __init__(self, name: str, model_id: str, error: str) -> None:
        self.name = name
        self.model_id = model_id
        self.error = error

    def complete(self, messages: Sequence[Mapping[str, str]], *, seed: int) -> str:
        raise LLMError(f"could not load {self.model_id}: {self.error}")


def load_failure_hint(backend: str, model_id: str, error: str) -> str:
    """What to do about an LLM that could not be loaded, in one sentence."""
    text = error.lower()
    if "gated" in text or "401" in text or "403" in text or "restricted" in text:
        return (
            f"{model_id} is gated on the Hugging Face hub: accept its licence on https://huggingface.co/{model_id} "
            "and log in with 'hf auth login' (or set HF_TOKEN), or use --llm openai (e.g. a local Ollama server) "
            "or --llm knowledge"
        )
    if backend == "openai":
        if "package" in text:
            return f"install the client ({OPENAI_INSTALL_HINT}), or use --llm knowledge"
        return "check --llm-model, --llm-base-url and OPENAI_API_KEY, or use --llm knowledge"
    return "give a chat model that loads (--llm-model), or use --llm openai or --llm knowledge"


def resolve_openai_settings(
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    env: Mapping[str, str] | None = None,
) -> tuple[str, str | None, str]:
    """``(model, base_url, api_key)`` from the options, else the environment.

    Base URL: ``IAPAS_LLM_BASE_URL``, then ``OPENAI_BASE_URL`` (None: the OpenAI API); model:
    ``IAPAS_LLM_MODEL``; key: ``OPENAI_API_KEY``. Local servers need no key: a placeholder is
    sent when a base URL is set without one.
    """
    env = os.environ if env is None else env
    base_url = base_url or env.get("IAPAS_LLM_BASE_URL") or env.get("OPENAI_BASE_URL") or None
    model = model or env.get("IAPAS_LLM_MODEL") or None
    if not model:
        raise LLMError("the openai backend needs a model name: --llm-model NAME or IAPAS_LLM_MODEL")
    api_key = api_key or env.get("OPENAI_API_KEY") or None
    if api_key is None:
        if base_url is None:
            raise LLMError(
                "the openai backend needs OPENAI_API_KEY for the OpenAI API, or a server URL "
                "(--llm-base-url or IAPAS_LLM_BASE_URL, e.g. http://localhost:11434/v1 for Ollama)"
            )
        api_key = "not-needed"
    return model, base_url, api_key


class OpenAILLM:
    """An OpenAI-compatible chat-completions endpoint through the official ``openai`` client.

    The client's own retries (connection errors, 408/409/429/5xx, honouring ``Retry-After``)
    are bounded by ``max_retries``; each request by ``timeout`` seconds.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = OPENAI_TIMEOUT_S,
        max_retries: int = OPENAI_MAX_RETRIES,
        temperature: float = TEMPERATURE,
        top_p: float = TOP_P,
        max_tokens: int = MAX_NEW_TOKENS,
        env: Mapping[str, str] | None = None,
    ) -> None:
        try:
            import openai
        except ModuleNotFoundError:
            raise LLMError(f"the openai backend needs the 'openai' package: {OPENAI_INSTALL_HINT}") from None
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.model_id, self.base_url, key = resolve_openai_settings(model, base_url, api_key, env)
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self._openai = openai
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=max_retries)

    def complete(self, messages: Sequence[Mapping[str, str]], *, seed: int) -> str:
        openai = self._openai
        where = self.base_url or "the OpenAI API"
        try:
            response = self.client.chat.completions.create(
                model=self.model_id,
                messages=[dict(m) for m in messages],  # type: ignore[misc]
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_tokens,
                seed=seed,
            )
        except openai.APITimeoutError:
            raise LLMError(f"{where}: no reply within {self.timeout:g} s (after {self.max_retries} retries)") from None
        except openai.APIStatusError as exc:
            body = exc.body if isinstance(exc.body, dict) else {}
            detail = body.get("message") if isinstance(body.get("message"), str) else exc.message
            raise LLMError(f"{where}: HTTP {exc.status_code}: {_short(detail)}") from None
        except openai.APIConnectionError as exc:
            raise LLMError(f"{where}: cannot connect: {_short(str(exc))}") from None
        except Exception as exc:  # noqa: BLE001 - malformed replies surface as assorted errors
            raise LLMError(f"{where}: unusable reply: {type(exc).__name__}: {_short(str(exc))}") from None
        try:
            content = response.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise LLMError(f"{where}: the reply has no choices[0].message") from None
        if not isinstance(content, str) or not content.strip():
            raise LLMError(f"{where}: the reply's message is empty")
        return content.strip()


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
