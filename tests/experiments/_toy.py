"""A small real trainable for the search/seed tests: softmax regression trained with SGD.

Validation accuracy genuinely depends on the learning rate and the weight decay (too small a
learning rate underfits in the few epochs given, a large weight decay shrinks the weights towards
chance, a huge learning rate oscillates), and the seed changes the initialisation and the
mini-batch order. It reports, like a fine-tuning run, the best validation accuracy over epochs
and the test accuracy and validation loss of that epoch. Pure numpy: milliseconds per run, no
torch import in Ray workers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_DATA_SEED = 1234


def _data() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(_DATA_SEED)
    centers = rng.normal(0.0, 1.0, size=(3, 10))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 3, size=n)
        return centers[labels] + rng.normal(0.0, 1.5, size=(n, 10)), labels

    return (*split(300), *split(150), *split(150))


def train(config: dict[str, Any]) -> dict[str, float]:
    """SGD with momentum 0.9 and coupled weight decay, 8 epochs of batch 32."""
    x_train, y_train, x_val, y_val, x_test, y_test = _data()
    rng = np.random.default_rng(int(config.get("seed", 0)))
    lr, wd = float(config["lr"]), float(config["weight_decay"])
    weights = rng.normal(0.0, 0.01, size=(10, 3))
    bias = np.zeros(3)
    velocity_w, velocity_b = np.zeros_like(weights), np.zeros_like(bias)

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.mean(np.argmax(x @ weights + bias, axis=1) == y) * 100)

    def loss(x: np.ndarray, y: np.ndarray) -> float:
        logits = x @ weights + bias
        logits = logits - logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(y)), y].mean())

    best_val, test_at_best, val_loss = -1.0, float("nan"), float("nan")
    for _ in range(int(config.get("epochs", 8))):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), 32):
            batch = order[start : start + 32]
            logits = x_train[batch] @ weights + bias
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            probs[np.arange(len(batch)), y_train[batch]] -= 1.0
            grad_w = x_train[batch].T @ probs / len(batch) + wd * weights
            grad_b = probs.mean(axis=0)
            velocity_w = 0.9 * velocity_w + grad_w
            velocity_b = 0.9 * velocity_b + grad_b
            weights = weights - lr * velocity_w
            bias = bias - lr * velocity_b
        if not np.all(np.isfinite(weights)):
            nan = float("nan")
            return {"val_top1": nan, "test_top1": nan, "val_loss": nan}
        val = accuracy(x_val, y_val)
        if val > best_val:
            best_val, test_at_best, val_loss = val, accuracy(x_test, y_test), loss(x_val, y_val)
    return {"val_top1": best_val, "test_top1": test_at_best, "val_loss": val_loss}


def train_failing_above(config: dict[str, Any], threshold: float = 0.05) -> dict[str, float]:
    """``train``, but raising for learning rates above ``threshold`` (a crashing trial)."""
    if float(config["lr"]) > threshold:
        raise RuntimeError(f"simulated crash at lr={config['lr']:.3g}")
    return train(config)


def train_marked(config: dict[str, Any]) -> dict[str, float]:
    """``train`` that leaves one marker file per start in its trial directory (to count how
    often a trial ran) and then takes ``sleep_s`` seconds, like a longer run would."""
    import os
    import time
    from pathlib import Path

    (Path(config["trial_dir"]) / f"started-{os.getpid()}-{time.time_ns()}").touch()
    metrics = train(config)
    time.sleep(float(config.get("sleep_s", 0.0)))
    return metrics
