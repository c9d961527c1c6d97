"""
In-context learning tasks: the task parameters, vectorised, seeded prompt samplers, the Task records, and
Garg's curriculum (Garg's out-of-distribution prompts for evaluation: tasks_ood.py).

A prompt is N pairs (x_i, y_i) with a fresh function per prompt. Every sampler returns
xs (B, N, d) and ys (B, N, y_dim) in float32; the model interleaves them and predicts y_i at x_i.
References (docs/paper.md §2):
- Garg et al. 2022, github.com/dtsip/in-context-learning (samplers.py, tasks.py, eval.py)
- the paper's code, github.com/in-context-learning-2024/in-context (src/function_classes)

All randomness comes from one CPU torch.Generator and everything is sampled on the CPU and then
moved, so a seed fixes the data stream bit for bit on any device (CUDA RNG streams differ from the
CPU ones). At batch 64 and <= 140 points the sampling cost is noise next to a 12-layer forward.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch

Tensor = torch.Tensor
Prompts = Tuple[Tensor, Tensor]  # xs (B, N, d), ys (B, N, y_dim)

# -----------------------------------------------------------------------------
# task parameters: keyword arguments of the samplers, and config keys of train.py (its --help reads them here)
TASK_DEFAULTS = dict(
    sparsity=3,             # sparse_linear_regression: non-zero weights
    mlp_hidden=100,         # relu2nn_regression: hidden width
    mlp_normalize=False,    # relu2nn_regression: Garg's sqrt(2/h) scaling (the paper: off)
    tree_depth=4,           # decision_tree: depth
    parity_k=2,             # sparse_parity: size of the hidden subset
    noise_std=0.0,          # training noise on y (regression tasks)
)

# -----------------------------------------------------------------------------
# samplers: one function per task, sampler(B, N, d, d_act, g, **params) -> xs (B, N, d), ys (B, N, y_dim),
# float32 on the CPU. d is the model's x dimension, d_act <= d the curriculum's active dims (the rest are
# zero); params are all of TASK_DEFAULTS' keys but noise_std, each sampler taking the ones it needs.

def _subset(batch_size, n, k, generator):
    # a uniform k-subset of range(n) per row, without replacement: argsort of iid uniforms is a
    # uniform random permutation (the batched version of Garg's torch.randperm(n)[:k])
    return torch.rand(batch_size, n, generator=generator).argsort(dim=1)[:, :k]  # (B, k)


def _gaussian_x(B: int, N: int, d: int, d_act: int, g: torch.Generator) -> Tensor:
    # the four Garg regression tasks: x ~ N(0, I_d), inactive coordinates zeroed before f is applied
    xs = torch.randn(B, N, d, generator=g)  # (B, N, d)
    xs[:, :, d_act:] = 0
    return xs


def sample_linear(B: int, N: int, d: int, d_act: int, g: torch.Generator, **params) -> Prompts:
    # w ~ N(0, I) with no 1/sqrt(d) scaling (as Garg), so E[y^2] = d_act
    xs = _gaussian_x(B, N, d, d_act, g)
    w = torch.randn(B, d, 1, generator=g)  # (B, d, 1)
    return xs, xs @ w  # (B, N, 1)


def sample_sparse_linear(B: int, N: int, d: int, d_act: int, g: torch.Generator, sparsity: int,
                         **params) -> Prompts:
    # keep `sparsity` coordinates chosen among the active dims only (Garg's valid_coords), so
    # E[y^2] = sparsity at every curriculum stage. if fewer dims are active than `sparsity`,
    # all of them are kept, like Garg's randperm(valid)[:k]
    xs = _gaussian_x(B, N, d, d_act, g)
    w = torch.randn(B, d, generator=g)  # (B, d)
    idx = _subset(B, d_act, min(sparsity, d_act), g)  # (B, k)
    mask = torch.zeros(B, d).scatter_(1, idx, 1.0)  # (B, d) exactly k ones
    return xs, xs @ (w * mask).unsqueeze(-1)  # (B, N, 1)


def sample_relu2nn(B: int, N: int, d: int, d_act: int, g: torch.Generator, mlp_hidden: int,
                   mlp_normalize: bool, **params) -> Prompts:
    # y = relu(x W1^T) W2 with N(0,1) entries. the paper leaves this unnormalised, so
    # E[y^2] = mlp_hidden * d_act / 2 (1000 at d=20); Garg scales by sqrt(2/hidden) so E[y^2] = d_act
    xs = _gaussian_x(B, N, d, d_act, g)
    W1 = torch.randn(B, mlp_hidden, d, generator=g)  # (B, H, d)
    W2 = torch.randn(B, mlp_hidden, 1, generator=g)  # (B, H, 1)
    ys = torch.relu(xs @ W1.transpose(1, 2)) @ W2  # (B, N, H) @ (B, H, 1) -> (B, N, 1)
    if mlp_normalize:
        ys = ys * math.sqrt(2 / mlp_hidden)
    return xs, ys


def sample_decision_tree(B: int, N: int, d: int, d_act: int, g: torch.Generator, tree_depth: int,
                         **params) -> Prompts:
    # full binary tree stored as a heap: node n has children 2n+1 (x <= 0) and 2n+2 (x > 0).
    # split coords are uniform over ALL d dims even mid-curriculum (Garg, paper): a zeroed dim
    # always sends x left. only the leaf values (the last 2^depth nodes) are ever read
    xs = _gaussian_x(B, N, d, d_act, g)
    n_nodes = 2 ** (tree_depth + 1) - 1
    coords = torch.randint(0, d, (B, n_nodes), generator=g)  # (B, n_nodes)
    values = torch.randn(B, n_nodes, generator=g)  # (B, n_nodes)
    node = torch.zeros(B, N, dtype=torch.long)  # (B, N) every point starts at the root
    for _ in range(tree_depth):
        c = coords.gather(1, node)  # (B, N) the coordinate this node splits on
        xc = xs.gather(2, c.unsqueeze(-1)).squeeze(-1)  # (B, N)
        node = 2 * node + 1 + (xc > 0).long()
    return xs, values.gather(1, node).unsqueeze(-1)  # (B, N, 1)


def sample_sparse_parity(B: int, N: int, d: int, d_act: int, g: torch.Generator, parity_k: int,
                         **params) -> Prompts:
    xs = torch.randint(0, 2, (B, N, d), generator=g).float() * 2 - 1  # (B, N, d) uniform on {-1,+1}^d
    xs[:, :, d_act:] = 0
    if parity_k > d_act:
        raise ValueError(f"parity_k={parity_k} > n_dims_active={d_act}")
    # a fresh subset per prompt (not one shared across the batch), drawn among the active dims
    # so the product is never multiplied by a zeroed coordinate
    idx = _subset(B, d_act, parity_k, g)  # (B, k)
    ys = xs.gather(2, idx.unsqueeze(1).expand(B, N, parity_k)).prod(dim=-1, keepdim=True)  # (B, N, 1)
    return xs, ys


def sample_mqar(B: int, N: int, d: int, d_act: int, g: torch.Generator, **params) -> Prompts:
    # vector MQAR (paper's Retrieval): N-1 key/value pairs plus one query that repeats a key;
    # the target at the query is that key's value. paper: 64 pairs + 1 query = 65 points
    if N < 2:
        raise ValueError(f"mqar needs n_points >= 2 (pairs + 1 query), got {N}")
    P = N - 1
    keys = torch.randn(B, P, d, generator=g)  # (B, P, d)
    vals = torch.randn(B, P, d, generator=g)  # (B, P, d)
    q = torch.randint(0, P, (B,), generator=g)  # (B,) query index per prompt
    ar = torch.arange(B)
    xs = torch.cat([keys, keys[ar, q].unsqueeze(1)], dim=1)  # (B, N, d)
    ys = torch.cat([vals, vals[ar, q].unsqueeze(1)], dim=1)  # (B, N, d)
    xs[:, :, d_act:] = 0  # (no curriculum in the paper; kept so the contract holds for every task)
    # every vector onto the sphere of radius sqrt(d): a normalised Gaussian is uniform on it
    xs = xs * (math.sqrt(d) / xs.norm(dim=-1, keepdim=True))
    ys = ys * (math.sqrt(d) / ys.norm(dim=-1, keepdim=True))
    return xs, ys

# -----------------------------------------------------------------------------
# the task records: every fact about a task that train.py, evaluate.py and baselines.py need

def _one(n_dims: int) -> int:
    return 1


@dataclass(frozen=True)
class Task:
    sampler: Callable[..., Prompts]     # sampler(B, N, d, d_act, generator, **params) -> xs, ys (above)
    # the score's baseline: a baselines.BASELINES name, or "model" (a trained run)
    score_baseline: str
    plot_baselines: tuple               # the classical curves drawn next to a model's
    # score_baseline "model" without --baseline_run: this classical one instead
    fallback_baseline: str = ""
    y_dim: Callable[[int], int] = _one  # n_dims -> the width of y
    predict_last: bool = False          # trained and scored on the final (query) point only
    noise: bool = True                  # takes noise_std (training noise on y)


TASKS = {
    "linear_regression": Task(sample_linear, "least_squares", ("least_squares", "averaging", "knn")),
    "sparse_linear_regression": Task(sample_sparse_linear, "lasso", ("lasso", "least_squares", "knn")),
    "relu2nn_regression": Task(sample_relu2nn, "gd_mlp", ("gd_mlp", "least_squares", "knn")),
    # the paper scores these two against trained networks: GPT-2 for trees, Mamba for parity
    "decision_tree": Task(sample_decision_tree, "model", ("knn", "least_squares", "averaging"),
                          fallback_baseline="knn"),
    "sparse_parity": Task(sample_sparse_parity, "model", ("parity_bayes", "parity_prior"),
                          fallback_baseline="parity_bayes", noise=False),
    # mqar retrieves a whole d-dim value vector, at the query only
    "mqar": Task(sample_mqar, "retrieval_dict", ("retrieval_dict",), y_dim=lambda n_dims: n_dims,
                 predict_last=True, noise=False),
}


def get(task: str) -> "Task":
    """the Task record of a task name; a ValueError naming the known ones otherwise"""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r:.60}, expected one of {', '.join(TASKS)}")
    return TASKS[task]


def y_dim(task: str, n_dims: int) -> int:
    return get(task).y_dim(n_dims)


def sample(task: str, batch_size: int, n_points: int, n_dims: int, generator: torch.Generator, *,
           n_dims_active: Optional[int] = None, device: Union[str, torch.device] = "cpu",
           **params) -> Prompts:
    """
    Sample a batch of prompts for `task` -> xs (B, N, n_dims), ys (B, N, y_dim(task, n_dims)),
    float32 on `device`. Coordinates >= n_dims_active (the curriculum's current dims) are zero;
    the model is always built for the full n_dims. params are TASK_DEFAULTS keys; noise_std > 0 adds
    N(0, noise_std^2) to y (training noise), for the tasks whose record allows it.
    """
    record = get(task)
    params = {**TASK_DEFAULTS, **params}
    unknown = set(params) - set(TASK_DEFAULTS)
    if unknown:
        raise TypeError(f"sample() got unknown task parameters {sorted(unknown)}")
    d_act = n_dims if n_dims_active is None else n_dims_active
    if not 1 <= d_act <= n_dims:
        raise ValueError(f"n_dims_active={d_act} must be in [1, n_dims={n_dims}]")
    noise_std = params.pop("noise_std")
    if noise_std > 0 and not record.noise:
        raise ValueError(f"noise_std={noise_std} is only defined for the regression tasks, not {task!r}")
    xs, ys = record.sampler(batch_size, n_points, n_dims, d_act, generator, **params)
    if noise_std > 0:
        ys = ys + noise_std * torch.randn(ys.shape, generator=generator)
    return xs.to(device), ys.to(device)

# -----------------------------------------------------------------------------
# curriculum

def curriculum(step: int, cfg: dict) -> Tuple[int, int]:
    """
    Garg's curriculum as a pure function of the step: (n_dims_active, n_points) at `step`.
    value = min(start + inc * (step // interval), end), so with the paper's settings dims go 5 -> 20
    by 1 and points 11 -> 41 by 2 (or 26 -> 101 by 5) every 2000 steps, reaching the end at 30k.
    No state, so resuming from a checkpoint only needs the step.
    """
    if not cfg["curriculum"]:
        return cfg["n_dims"], cfg["n_points"]
    k = step // cfg["curriculum_interval"]
    dims = min(cfg["curriculum_dims_start"] + cfg["curriculum_dims_inc"] * k, cfg["n_dims"])
    points = min(cfg["curriculum_points_start"] + cfg["curriculum_points_inc"] * k, cfg["n_points"])
    return int(dims), int(points)
