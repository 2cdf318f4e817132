"""How much a prompt's text says, within its task, about which model answers it better.

A router that reads the prompt can beat routing by the task alone (metadata_routing_ceiling) only
if the text predicts, within a task, the difference between two models' outcomes. This script
measures that on an outcome file, the way issue 18's protocol splits it:

- encode every prompt (an encoder of banditd.context.encoders, optionally its last N tokens);
- centre the vectors and the targets on the warm-start half's per-task means (so nothing the task
  already says is counted);
- fit a ridge regression on the warm-start half (or, with --knn K, take the mean of the K
  nearest warm-start prompts of the same task; with --mlp H, train a non-linear head: one hidden
  layer of H units, stopped early on a fifth of the warm-start half), predict the online half,
  and print the correlation r between prediction and outcome within each task (tasks with >= 30
  online prompts) and over all of them.

Targets: the prompt's difficulty (the mean outcome over every model), and the best single
model's outcome minus each other model's (what a router's choice between the two depends on).
r^2 is the share of that difference's variance within a task that the text predicts.

    python bench/text_signal.py --data data/routellm-dev.jsonl.gz --encoder minilm --window 128
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.progress import track

from banditd.context.encoders import get_encoder
from banditd.evaluation.replay.data import load_outcomes, split_point

MIN_TASK_PROMPTS = 30
ENCODE_CHUNK = 256  # prompts an encoder call (a progress step)
MLP_EPOCHS = 60


def centred(values: np.ndarray, groups: np.ndarray, warm: np.ndarray) -> np.ndarray:
    """values less their group's mean over the warm rows (rows of a group with no warm row
    keep their values)."""
    out = values.astype(float).copy()
    for g in np.unique(groups):
        rows, fit = groups == g, (groups == g) & warm
        if fit.any():
            out[rows] -= values[fit].mean(axis=0)
    return out


def ridge_predictions(x: np.ndarray, y: np.ndarray, warm: np.ndarray, ridge: float) -> np.ndarray:
    """A ridge regression of y on x fitted on the warm rows, predicted on every row."""
    xw, yw = x[warm], y[warm]
    return x @ np.linalg.solve(xw.T @ xw + ridge * np.eye(x.shape[1]), xw.T @ yw)


def knn_predictions(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, warm: np.ndarray, k: int
) -> np.ndarray:
    """The mean y of the k warm rows of the same group nearest by cosine, for every row."""
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    pred = np.zeros(len(y))
    for g in np.unique(groups):
        rows, pool = np.flatnonzero(groups == g), np.flatnonzero((groups == g) & warm)
        if len(pool) == 0:
            continue
        sims = unit[rows] @ unit[pool].T
        sims[np.equal.outer(rows, pool)] = -np.inf  # a warm row is not its own neighbour
        near = np.argsort(-sims, axis=1)[:, : min(k, len(pool))]
        pred[rows] = y[pool][near].mean(axis=1)
    return pred


def mlp_predictions(
    x: np.ndarray, y: np.ndarray, warm: np.ndarray, hidden: int, seed: int = 0
) -> np.ndarray:
    """A one-hidden-layer network (ReLU, Adam, weight decay) fitted to y on four fifths of the
    warm rows, stopped at the epoch with the least error on the other fifth; predicted on every
    row. Needs torch (the context extra)."""
    import torch

    torch.manual_seed(seed)
    rows = np.random.default_rng(seed).permutation(np.flatnonzero(warm))
    cut = len(rows) * 4 // 5
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    fit, held = torch.tensor(rows[:cut]), torch.tensor(rows[cut:])
    net = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-3)
    best, state = float("inf"), net.state_dict()
    for _ in range(MLP_EPOCHS):
        for batch in torch.randperm(len(fit)).split(64):
            opt.zero_grad()
            loss = ((net(xt[fit[batch]]).squeeze(1) - yt[fit[batch]]) ** 2).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            err = float(((net(xt[held]).squeeze(1) - yt[held]) ** 2).mean())
        if err < best:
            best, state = err, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    with torch.no_grad():
        return net(xt).squeeze(1).numpy().astype(float)


def correlations(
    pred: np.ndarray, y: np.ndarray, groups: np.ndarray, warm: np.ndarray
) -> tuple[dict[str, float], float]:
    """r between the prediction and y on the online rows, per group and over all."""
    online = ~warm
    per = {}
    for g in np.unique(groups[online]):
        rows = online & (groups == g)
        if rows.sum() >= MIN_TASK_PROMPTS and y[rows].std() > 0 and pred[rows].std() > 0:
            per[str(g)] = float(np.corrcoef(pred[rows], y[rows])[0, 1])
    return per, float(np.corrcoef(pred[online], y[online])[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--split", type=float, default=0.5, help="the warm-start half's share")
    ap.add_argument("--encoder", default="minilm", help="hashing, minilm or minilm-static")
    ap.add_argument("--dim", type=int, default=16, help="the hashing encoder's size")
    ap.add_argument("--window", type=int, default=128, help="last N tokens (0: whole prompt)")
    ap.add_argument("--ridge", type=float, default=100.0)
    ap.add_argument("--knn", type=int, default=0, help="predict by the k nearest warm prompts")
    ap.add_argument("--mlp", type=int, default=0, help="predict by a network of H hidden units")
    ap.add_argument("--metadata-from", default="task", help="the field that names the task")
    args = ap.parse_args()

    head = split_point(args.data, args.split)
    data = load_outcomes(args.data, metadata_from=(args.metadata_from,))
    groups = np.array([m[args.metadata_from] for m in data.metadata])
    warm = np.arange(data.n) < head
    started = time.perf_counter()
    encoder = get_encoder(args.encoder, args.dim)
    chunks = range(0, data.n, ENCODE_CHUNK)
    label = f"encoding {data.n} prompts with {args.encoder} (window {args.window})"
    x = np.concatenate(
        [
            encoder.encode_batch(data.prompts[i : i + ENCODE_CHUNK], args.window)
            for i in track(chunks, description=label)
        ]
    )
    print(f"  {time.perf_counter() - started:.1f} s; fit on {head}, tested on {data.n - head}")
    x = centred(x, groups, warm)

    best = int(np.argmax(data.quality[warm].mean(axis=0)))
    targets = {"difficulty (mean over models)": data.quality.mean(axis=1)}
    for j, arm in enumerate(data.arms):
        if j != best:
            targets[f"{data.arms[best]} - {arm}"] = data.quality[:, best] - data.quality[:, j]
    print(f"r within each task (>= {MIN_TASK_PROMPTS} online prompts), and pooled:")
    for name, y in targets.items():
        yc = centred(y, groups, warm)
        if args.knn:
            pred = knn_predictions(x, yc, groups, warm, args.knn)
        elif args.mlp:
            pred = mlp_predictions(x, yc, warm, args.mlp)
        else:
            pred = ridge_predictions(x, yc, warm, args.ridge)
        per, pooled = correlations(pred, yc, groups, warm)
        tasks = " ".join(f"{g}={r:+.2f}" for g, r in per.items()) if len(per) <= 6 else ""
        mean = np.mean(list(per.values())) if per else float("nan")
        print(f"  {name}: pooled {pooled:+.3f}, task mean {mean:+.3f} {tasks}")


if __name__ == "__main__":
    main()
