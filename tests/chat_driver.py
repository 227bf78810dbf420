"""`lingotune chat` with a scripted model, for tests/test_chat.py's pseudo-terminal tests.

The model's real forward runs (so generation, the KV cache and the chat template are lingotune's own), then
its last logits are replaced so that the n-th reply is CHAT_SCRIPT[n] (JSON list of texts) followed by the
end-of-sequence token (tokenized by the tokenizer in the directory CHAT_TOKENIZER). With CHAT_HOLD=k, the first reply's k-th decoding step waits until the file
CHAT_GO exists (two minutes at most): the test reads what was streamed while the reply is unfinished.

    python tests/chat_driver.py chat MODEL_DIR [options]
"""

from __future__ import annotations

import json
import os
import sys
import time

from transformers import AutoTokenizer, LlamaForCausalLM

from lingotune.cli import app

tok = AutoTokenizer.from_pretrained(os.environ["CHAT_TOKENIZER"])
script = [tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in json.loads(os.environ["CHAT_SCRIPT"])]
hold, go = int(os.environ.get("CHAT_HOLD", "-1")), os.environ.get("CHAT_GO", "")
state = {"reply": -1, "step": 0}
forward = LlamaForCausalLM.forward


def scripted(self, *args, **kwargs):
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids.shape[1] > 1:  # the prompt: a new reply starts
        state["reply"] += 1
        state["step"] = 0
    else:
        state["step"] += 1
    if state["reply"] == 0 and state["step"] == hold:
        deadline = time.monotonic() + 120  # a test that failed before making the file must not leave us waiting
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.02)
    out = forward(self, *args, **kwargs)
    target = script[state["reply"] % len(script)]
    out.logits[:, -1] = -1e4
    out.logits[:, -1, target[min(state["step"], len(target) - 1)]] = 0.0
    return out


LlamaForCausalLM.forward = scripted
sys.argv = ["lingotune", *sys.argv[1:]]
app()
