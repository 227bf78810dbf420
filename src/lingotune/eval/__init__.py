"""lingotune's evaluation: yes/no benchmarks (DParT), translation, perplexity, k-shot KoBEST.

    from lingotune.eval import EvalConfig, evaluate
    scores = evaluate(model, tokenizer, EvalConfig(tasks=["danetqa"], limit=100), out_dir, label="dpart")
"""

from lingotune.eval.config import EvalConfig
from lingotune.eval.runner import evaluate
from lingotune.eval.tasks import TaskSpec, builtin_tasks, load_task

__all__ = ["EvalConfig", "evaluate", "TaskSpec", "load_task", "builtin_tasks"]
