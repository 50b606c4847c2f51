"""lm-eval's ``local-completions`` model against a vLLM engine, scoring what HFLM scores.

:func:`completions_lm` builds lm-eval's own
:class:`~lm_eval.models.openai_completions.LocalCompletionsAPI` (HF tokenizer of the base,
``num_concurrent`` requests in flight) with four adjustments, so that a benchmark through it
goes through :func:`mmmo.evaluation.evaluate_benchmark` exactly as one through HFLM does:

- **the same tokens**: requests are sent as token ids (``tokenized_requests=True``), tokenised
  as HFLM tokenises them: with the tokenizer's own special tokens (BOS when it adds one),
  except for a string that already starts with BOS. Sent as text instead, the server adds
  its BOS to a prompt whose context length lm-eval counted without it, and every
  loglikelihood gains the last context token's log-probability (measured on the fixture
  family: -47.7 instead of HF's -37.1); multiple-choice accuracy hides this (the shift is the
  same for every choice), ``acc_norm`` and perplexities do not;
- **chat templates**: applied by the HF tokenizer to a string, as HFLM does (the completions
  endpoint takes no message lists);
- **timing**: the request methods add their time to the calling thread's
  :class:`~mmmo.evaluation.lm.Timing` (``BenchmarkResult.request_seconds``), as TimedHFLM's do;
- **time limits and fault points**: each HTTP request first checks the evaluation's cancel
  event (a time-limited benchmark stops within one request), the ``benchmark:forward`` crash
  point and an injected out-of-memory error, the checks HFLM's forward hooks make.

lm-eval's ``vllm`` model (``lm_eval.models.vllm_causallms.VLLM``) is no alternative: it
builds its own ``vllm.LLM`` in the calling process from a path (no way to wrap a running
engine or a server), and it would need vLLM in mm-mo's environment, which Prefect's pins rule
out.
"""

from __future__ import annotations

from typing import Any

from mmmo.evaluation.lm import EvaluationCancelled, TimedRequests, _current
from mmmo.hooks import crash_point

__all__ = ["completions_lm"]

_cls: type | None = None


def _timed_class() -> type:
    """LocalCompletionsAPI with HFLM's tokenisation, timing and cancellation (built once)."""
    global _cls
    if _cls is not None:
        return _cls
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class TimedCompletions(TimedRequests, LocalCompletionsAPI):
        """lm-eval's completions model over a vLLM engine, tokenising as HFLM does."""

        def tok_encode(self, string: Any, left_truncate_len: int | None = None,
                       add_special_tokens: bool | None = None, truncation: bool = False,
                       **kwargs: Any) -> Any:
            # None (add_bos_token is None, so generation passes None too): as HFLM, the
            # tokenizer's own special tokens unless the text starts with BOS; an explicit
            # False (an empty context's continuation) is kept, as in HFLM
            if add_special_tokens is None:
                bos = self.tokenizer.bos_token
                first = string if isinstance(string, str) else (string[0] if string else "")
                add_special_tokens = not (bos and first.startswith(bos))
            encoding = self.tokenizer(string, add_special_tokens=add_special_tokens,
                                      truncation=truncation,
                                      return_attention_mask=False).input_ids
            if left_truncate_len:
                if isinstance(string, str):
                    encoding = encoding[-left_truncate_len:]
                else:
                    encoding = [enc[-left_truncate_len:] for enc in encoding]
            return encoding

        def apply_chat_template(self, chat_history: list[dict[str, str]],
                                add_generation_prompt: bool = True) -> str:
            return self.tokenizer.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt)

        def model_call(self, *args: Any, **kwargs: Any) -> Any:
            _before_request()
            return super().model_call(*args, **kwargs)

        async def amodel_call(self, *args: Any, **kwargs: Any) -> Any:
            _before_request()
            return await super().amodel_call(*args, **kwargs)

    _cls = TimedCompletions
    return _cls


def _before_request() -> None:
    """What HFLM's forward pre-hook checks, once per HTTP request."""
    state = _current()
    if state is None:
        return
    if state[1] is not None and state[1].is_set():
        raise EvaluationCancelled("evaluation cancelled (time limit reached)")
    crash_point("benchmark:forward")
    if state[2]["oom"]:
        import torch

        state[2]["oom"] = False
        raise torch.OutOfMemoryError("out of memory (injected by MMMO_FAULTS)")


def completions_lm(*, url: str, model: str, tokenizer: str, batch_size: int,
                   num_concurrent: int, max_length: int, timeout: float,
                   max_retries: int = 3, trust_remote_code: bool = False) -> Any:
    """An lm-eval ``LM`` that scores through the engine at ``url``.

    Args:
        url: The engine's base URL (``http://127.0.0.1:PORT``).
        model: The name the engine serves the model under.
        tokenizer: The base model's folder (its HF tokenizer tokenises every request).
        batch_size: Prompts per HTTP request.
        num_concurrent: Requests in flight at once.
        max_length: The engine's context length (``max_model_len``).
        timeout: Seconds one request may take.
        max_retries: Tries per request (lm-eval retries with exponential back-off).
        trust_remote_code: Passed to the tokenizer.
    """
    cls = _timed_class()
    return cls(model=model, base_url=f"{url}/v1/completions", tokenizer_backend="huggingface",
               tokenizer=str(tokenizer), tokenized_requests=True, add_bos_token=None,
               batch_size=int(batch_size), num_concurrent=int(num_concurrent),
               max_length=int(max_length), timeout=int(timeout), max_retries=int(max_retries),
               trust_remote_code=trust_remote_code)
