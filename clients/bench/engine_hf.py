"""The Hugging Face transformers + PEFT side of `chameleon bench engine` (dev-only packages).

Batched `generate` with left padding, greedy, exactly `tokens` new tokens (min_new_tokens =
max_new_tokens). The base-model cases run on a plain `LlamaForCausalLM`; all adapters are
loaded into one `PeftModel` over a second copy: a shared adapter is the active one,
distinct adapters go in as `adapter_names` (PEFT's mixed-batch inference).

For the step breakdown, forward hooks open profiler ranges named like the engine's scopes:
every base `nn.Linear` (and the LM head) is `base_linear`, every PEFT LoRA layer is `lora`
(its base layer inside stays `base_linear`), every attention block is `attention` (its
projections inside stay `base_linear`/`lora`). HF's sampling is not a module, so it falls
in "other".
"""
from __future__ import annotations

import time

import torch

from gpu_worker.core.profiling import ATTENTION, BASE_LINEAR, LORA


def available() -> str | None:
    """None when transformers and peft import; else why not."""
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{e.name or e} is not installed (pip install -e '.[dev]')"
    return None


class _StepClock:
    """A stopping criterion that only records when each generation step ended."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores, **kw):
        self.times.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


class HfPeft:
    def __init__(self, model_dir, adapters_dir, adapter_names: list[str]):
        from transformers import AutoTokenizer, LlamaForCausalLM

        self.model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
        # PEFT wraps the model it is given in place: the adapters get their own copy, so the
        # base-model cases always run on the plain model
        self._peft_base = LlamaForCausalLM.from_pretrained(str(model_dir),
                                                           torch_dtype=torch.float32).eval()
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.tok.padding_side = "left"
        self.pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        self.adapters_dir, self.names = adapters_dir, adapter_names
        self.peft = None

    def _wrap(self) -> None:
        from peft import PeftModel

        first, *rest = self.names
        self.peft = PeftModel.from_pretrained(self._peft_base, str(self.adapters_dir / first),
                                              adapter_name=first).eval()
        for n in rest:
            self.peft.load_adapter(str(self.adapters_dir / n), adapter_name=n)

    def generate(self, prompts: list[str], adapters: list[str | None], tokens: int
                 ) -> tuple[float, list[float], int]:
        """(seconds, step end times, tokens generated) for one batch."""
        enc = self.tok(prompts, add_special_tokens=False, return_tensors="pt", padding=True)
        kw = {}
        if all(a is None for a in adapters):
            model = self.model
        else:
            if self.peft is None:
                self._wrap()
            model = self.peft
            if len(set(adapters)) == 1:
                model.set_adapter(adapters[0])
            else:
                kw["adapter_names"] = list(adapters)
        clock = _StepClock()
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=tokens, min_new_tokens=tokens,
                                 pad_token_id=self.pad, stopping_criteria=[clock], **kw)
        wall = time.perf_counter() - t0
        new = out.shape[1] - enc.input_ids.shape[1]
        return wall, [t0] + clock.times, new * len(prompts)

    def label_modules(self) -> list:
        """Forward hooks that open the breakdown's profiler ranges; returns the handles."""
        from peft.tuners.lora import LoraLayer

        handles = []

        def ranged(module, name):
            state = {}

            def pre(_m, _args):
                state["r"] = torch.profiler.record_function(name)
                state["r"].__enter__()

            def post(_m, _args, _out):
                state.pop("r").__exit__(None, None, None)

            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post))

        models = [self.model] + ([self.peft] if self.peft is not None else [])
        for name, m in (nm for model in models for nm in model.named_modules()):
            if isinstance(m, LoraLayer):
                ranged(m, LORA)
            elif isinstance(m, torch.nn.Linear) and "lora_" not in name:
                ranged(m, BASE_LINEAR)
            elif type(m).__name__.endswith("Attention"):
                ranged(m, ATTENTION)
        return handles
