"""
Train an ICL model, in one process or many with torchrun (the global batch does not depend on it):
    python train.py configs/llama_mamba.py configs/linear_regression.py --max_iters=1000
    torchrun --standalone --nproc_per_node=8 train.py configs/llama.py configs/sparse_parity.py
    python train.py --help          # every key with its default and what it does

The config: the defaults below <- config files <- --key=value overrides. Config files are Python run in one
namespace (imports, helpers and comprehensions are fine); their plain values set keys. They apply in the order
given, except that a file that sets `task` (a task config) applies after those that don't (architecture
configs), so a task's sizes win wherever it stands (MQAR's E = 128, 2 blocks). Overrides apply last, in
order, wherever they stand. Bad input stops with one line `error: ...` (exit code 2) before anything is
written. A run directory holds one run: a new run refuses a directory that holds any checkpoint, log or
metrics file, and a lock file keeps a second train.py out of a directory in use.
"""
import contextlib
import datetime
import hashlib
import importlib.util
import json
import math
import os
import re
import shlex
import sys
import time
from dataclasses import asdict

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import configurator
import ssm_scan
import tasks
from configurator import parse_value  # noqa: F401 -- (scripts reach it through train)
# the armour (checkpoints, the run directory and its lock, signals); launchers and tests reach
# load_checkpoint, run_status and RUN_FILES through train too. (No str or number constant here: every such
# global of this module is a config key)
from harness import (RUN_FILES, RunDirectory, StopSignals, UserError, exit_finished_worker,  # noqa: F401
                     git_rev, load_checkpoint, oneline, resume_checkpoint, run_status, save_checkpoint, short,
                     truncate_metrics)
from model import ICLModel, InitRuleError, ModelConfig, NORMS, POSITIONS, ATTNS, FFNS, MAMBA_INITS

# -----------------------------------------------------------------------------
# default config values: a small GPT-2 on 5-d linear regression that learns in a few CPU minutes
# I/O
out_dir = ''                 # run directory; '' -> out/<arch>-<task>
ckpt_interval = 500          # write ckpt.pt (the resume point) every this many steps, and at the end
keep_last = 3                # step checkpoints ckpt_<step>.pt kept besides ckpt.pt: the last few
keep_every = 0               # ... and every multiple of this (0: none); a multiple of ckpt_interval
eval_interval = 250          # held-out loss every this many steps
eval_batches = 4             # ... on this many batches of batch_size fixed prompts (never trained on)
log_interval = 50            # one log line / metrics row every this many steps
resume = False               # continue the run in out_dir from its latest checkpoint; 'auto': for launchers
allow_config_change = False  # on resume, accept changed model/data keys or process count (at your own risk)
wandb_log = False            # log to wandb (off by default; imported lazily on rank 0)
wandb_project = 'icl'        # the wandb project
# task (tasks.py); the task configs in configs/ hold the paper's settings
task = 'linear_regression'   # a tasks.TASKS name
n_dims = 5                   # x dimension; the model is built for it (the curriculum's end value)
n_points = 11                # points per prompt at the end of the curriculum (2d + 1: enough to solve it)
curriculum = False           # Garg's curriculum: dims and points grow every curriculum_interval steps
curriculum_interval = 2000   # steps per curriculum stage
curriculum_dims_start = 5    # active dims at step 0, then + curriculum_dims_inc per stage, up to n_dims
curriculum_dims_inc = 1      # active dims added per stage
curriculum_points_start = 11 # points at step 0, then + curriculum_points_inc per stage, up to n_points
curriculum_points_inc = 2    # points added per stage
sparsity = 3                 # sparse_linear_regression: non-zero weights
mlp_hidden = 100             # relu2nn_regression: hidden width
mlp_normalize = False        # relu2nn_regression: Garg's sqrt(2/h) scaling (the paper: off)
tree_depth = 4               # decision_tree: depth
parity_k = 2                 # sparse_parity: size of the hidden subset
noise_std = 0.0              # training noise on y (regression tasks)
# model (model.ModelConfig documents each field; the presets in configs/ set these)
arch = 'gpt2'                # a label for run names and score tables
n_layer = 4                  # blocks
n_embd = 64                  # width of the residual stream
n_head = 4                   # attention heads
n_positions = 141            # learned position table holds 2 * n_positions tokens
norm = 'layernorm'           # a model.NORMS name: layernorm | rmsnorm
pos = 'learned'              # learned | rope | none
attn = 'gpt2'                # gpt2 (biased fused qkv and proj) | llama (no biases)
ffn = 'gelu'                 # a model.FFNS name: gelu | swiglu | mamba | none
ffn_mult = 4.0               # FFN hidden width = ffn_mult * n_embd (the reference: 4, SwiGLU too)
mamba_embed = False          # a leading Mamba block as positional embedder (2.1, 2.3, MambaFormer)
layer_pattern = 'A'          # mixer per block, tiled: model.MIXERS letters, A = attention, M = Mamba
d_state = 16                 # Mamba state size per channel
d_conv = 4                   # Mamba's causal conv width
expand = 4                   # Mamba width = expand * n_embd; 4 as the paper (sizes like the transformers')
dt_rank = 0                  # Mamba dt projection rank; 0 -> ceil(n_embd / 16)
scan_backend = 'auto'        # ssm_scan.selective_scan backend: auto | torch | cpu | triton
mamba_init = 'gpt2'          # Mamba mixers' init: gpt2 (N(0, 0.02) linears) | mamba (mamba_ssm's and HF's)
reference_quirks = False     # the reference package's init and doubling (docs/paper.md §3.4), or some parts
# optimizer: Adam as in the paper (no decay, no schedule, no clipping unless asked)
batch_size = 64              # prompts per optimizer step, summed over all processes
micro_batch_size = 0         # prompts per forward pass per process; 0 -> batch_size / world_size
learning_rate = 1e-3         # the paper uses 1e-4 (parity 4e-4, MQAR 2e-4) at full size: see configs/
max_iters = 5000             # optimizer steps
weight_decay = 0.0           # AdamW decay of Linear/Embedding weights; 0: plain Adam, the paper's
beta1 = 0.9                  # Adam's beta1
beta2 = 0.999                # Adam's beta2
grad_clip = 0.0              # clip the global grad norm to this; 0 = off
lr_schedule = 'constant'     # constant | cosine (linear warmup, then cosine to min_lr at max_iters)
warmup_iters = 0             # steps of linear warmup
min_lr = 0.0                 # the cosine schedule's final learning rate
# system
seed = 1337                  # fixes the init and the data stream
device = 'auto'              # auto | cpu | cuda | cuda:N
dtype = 'float32'            # float32 | bfloat16 (autocast; the scan and the loss stay fp32)
compile = False              # torch.compile the model (the selective scan is one opaque op in the graph)
compile_mode = 'default'     # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
ddp_timeout = 600            # seconds a process waits for the others before the job fails
# -----------------------------------------------------------------------------
DEFAULTS = configurator.defaults_of(globals())
# the tables themselves (not copies): a task or FFN added to tasks.TASKS or model.FFNS is a valid name at once
CHOICES = dict(task=tasks.TASKS, norm=NORMS, pos=POSITIONS, attn=ATTNS, ffn=FFNS,
               lr_schedule=('constant', 'cosine'), dtype=('float32', 'bfloat16'),
               scan_backend=ssm_scan.BACKENDS, mamba_init=MAMBA_INITS,
               compile_mode=('default', 'reduce-overhead', 'max-autotune'))
# number keys that must be >= 1 (POSITIVE) or >= 0 (NONNEG); ints <= 2**62 (tensor sizes) or their UPPER bound
POSITIVE = '''batch_size n_dims n_points n_layer n_embd n_head n_positions d_state d_conv expand ckpt_interval
    keep_last eval_interval eval_batches log_interval curriculum_interval curriculum_dims_start
    curriculum_dims_inc curriculum_points_start curriculum_points_inc mlp_hidden tree_depth parity_k sparsity
    ddp_timeout'''.split()
NONNEG = '''max_iters keep_every micro_batch_size warmup_iters seed dt_rank grad_clip weight_decay min_lr
    noise_std'''.split()
# upper bounds (seed: manual_seed's; ddp_timeout: timedelta's)
UPPER = dict(seed=2**63 - 1, tree_depth=20, n_layer=1024, eval_batches=1000, ddp_timeout=10**7)
# keys that may differ between a checkpoint and the resumed run without changing what is trained
RESUME_FREE = set('''out_dir resume allow_config_change max_iters ckpt_interval keep_last keep_every
    eval_interval eval_batches log_interval wandb_log wandb_project device compile compile_mode scan_backend
    ddp_timeout'''.split())


# -----------------------------------------------------------------------------
# config

# keys that take a word besides a value of their default's type
WORDS = dict(resume=('auto',), reference_quirks=str)


def load_config(argv, sources=None):
    """defaults <- config files (architecture files, then files that set `task`) <- --key=value overrides
    (configurator.load). Returns (cfg, the keys set explicitly); a `sources` dict gets where each key's value
    came from."""
    cfg, explicit = configurator.load(argv, DEFAULTS, sources, WORDS)
    cfg['out_dir'] = os.path.expanduser(cfg['out_dir']) or os.path.join('out', f"{cfg['arch']}-{cfg['task']}")
    return cfg, explicit


def coerce(key, value, default, where):  # a saved config's value as today's type (resume_config)
    return configurator.coerce(key, value, default, where, WORDS.get(key, ()))


def validate(cfg, world_size=1):
    """range and consistency checks; returns the ModelConfig. Raises UserError naming the problem."""
    for key, allowed in CHOICES.items():
        if cfg[key] not in allowed:
            raise UserError(f"{key}={short(cfg[key])} is not one of {', '.join(allowed)}")
    for key in POSITIVE + NONNEG:
        lo = int(key in POSITIVE)
        hi = UPPER.get(key, math.inf if type(cfg[key]) is float else 2**62)  # ints: tensor sizes
        if not (lo <= cfg[key] <= hi and cfg[key] < math.inf):  # also false for nan; no float() of huge ints
            bound = (f'in [{lo}, {hi}]' if key in UPPER
                     else f'>= {lo}' + (' (and <= 2**62)' if hi < math.inf else ''))
            raise UserError(f"{key} must be {bound}, got {short(cfg[key])}")
    checks = (('learning_rate', 0 < cfg['learning_rate'] < math.inf, 'positive and finite'),
              ('ffn_mult', 0 < cfg['ffn_mult'] < math.inf, 'positive and finite'),
              ('beta1', 0 <= cfg['beta1'] < 1, 'in [0, 1)'),
              ('beta2', 0 <= cfg['beta2'] < 1, 'in [0, 1)'),
              ('n_points', cfg['n_points'] >= 2, '>= 2 (the score needs a prediction made after an example)'))
    for key, ok, what in checks:
        if not ok:
            raise UserError(f"{key} must be {what}, got {short(cfg[key])}")
    if cfg['keep_every'] % cfg['ckpt_interval']:
        raise UserError(f"keep_every={cfg['keep_every']} must be a multiple of "
                        f"ckpt_interval={cfg['ckpt_interval']} "
                        "(checkpoints exist only at multiples of ckpt_interval)")
    if not re.fullmatch(r'auto|cpu|cuda(:\d+)?', cfg['device']):
        raise UserError(f"device={short(cfg['device'])} is not one of auto, cpu, cuda, cuda:N")
    per_rank = cfg['batch_size'] // world_size
    if cfg['batch_size'] % world_size or per_rank % (cfg['micro_batch_size'] or per_rank):
        raise UserError(f"batch_size={cfg['batch_size']} must split evenly over {world_size} process(es) "
                        f"and then into micro-batches of micro_batch_size={cfg['micro_batch_size']}")
    if cfg['pos'] == 'learned' and cfg['n_points'] > cfg['n_positions']:
        raise UserError(f"n_points={cfg['n_points']} exceeds the learned position table "
                        f"(n_positions={cfg['n_positions']})")
    # one prompt at step 0 (the run's smallest) runs the sampler's own checks: parity_k, mqar points, noise
    try:
        get_batch(cfg, 0, 0, 1)
        return ModelConfig.from_dict({**cfg, 'y_dim': tasks.y_dim(cfg['task'], cfg['n_dims'])})
    except (ValueError, RuntimeError) as e:  # RuntimeError: a prompt too large to allocate
        raise UserError(f"config: {oneline(e)}")


def resolve_device(cfg):
    """the device to run on, after checking it exists and can run the requested scan backend"""
    dev = cfg['device']
    if dev == 'auto':
        dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    if dev.startswith('cuda') and (torch.device(dev).index or 0) >= torch.cuda.device_count():
        raise UserError(f"device={dev!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if cfg['scan_backend'] == 'triton' and not dev.startswith('cuda') and not ssm_scan.INTERPRET:
        raise UserError("scan_backend='triton' needs a CUDA device "
                        "(or TRITON_INTERPRET=1 for the interpreter); use scan_backend='auto'")
    if cfg['scan_backend'] == 'triton' and not ssm_scan.HAS_TRITON:
        raise UserError("scan_backend='triton' but triton is not installed")
    if cfg['scan_backend'] == 'cpu' and dev != 'cpu':
        raise UserError(f"scan_backend='cpu' is the CPU kernel, but the run is on {dev}; "
                        "use scan_backend='auto'")
    mamba = 'M' in cfg['layer_pattern'] or cfg['ffn'] == 'mamba' or cfg['mamba_embed']
    scan = ssm_scan.resolve_backend(cfg['scan_backend'], torch.device(dev))
    if cfg['compile'] and mamba and scan == 'torch':
        raise UserError("compile=True needs the fused scan (scan_backend='auto', 'cpu' or 'triton'): the "
                        "torch backend's backward cannot run inside the compiled graph")
    if cfg['wandb_log'] and importlib.util.find_spec('wandb') is None:
        raise UserError("wandb_log=True but wandb is not installed (pip install wandb), "
                        "or leave wandb_log off")
    return dev


def describe_task(cfg, sources):
    """one line: the task and its size, and where they came from; how to get the paper's setting"""
    where = sources['task']
    text = (f"task: {cfg['task']}, d = {cfg['n_dims']}, {cfg['n_points']} points, "
            f"lr {cfg['learning_rate']:g}, {cfg['max_iters']:,} steps (from {where})")
    if where == "train.py's defaults":
        text += f"; the paper's setting of a task: add configs/<task>.py, e.g. configs/{cfg['task']}.py"
    return text

# -----------------------------------------------------------------------------
# data and schedule

def batch_generator(seed, step, rank):
    """the data of (seed, step, rank) is a pure function of them: resume replays no RNG, ranks never share a
    stream."""
    digest = hashlib.blake2b(f'{seed}/{step}/{rank}'.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, 'little') >> 1)


def get_batch(cfg, step, rank, n_prompts, gen=None):
    n_dims_active, n_points = tasks.curriculum(step, cfg)
    gen = gen or batch_generator(cfg['seed'], step, rank)
    params = {k: cfg[k] for k in tasks.TASK_DEFAULTS}
    return tasks.sample(cfg['task'], n_prompts, n_points, cfg['n_dims'], gen, n_dims_active=n_dims_active,
                        **params)


def get_lr(it, cfg):
    lr = cfg['learning_rate']
    warm = cfg['warmup_iters']
    if it < warm or cfg['lr_schedule'] == 'constant':
        return lr * min(1.0, (it + 1) / warm) if warm else lr  # linear warmup
    progress = min(1.0, (it - warm) / max(1, cfg['max_iters'] - warm))
    return cfg['min_lr'] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - cfg['min_lr'])


def icl_loss(pred, ys, task):
    if tasks.get(task).predict_last:
        return F.mse_loss(pred[:, -1].float(), ys[:, -1])  # MQAR: only the query counts
    return F.mse_loss(pred.float(), ys)  # mean over prompts, positions and y dims, as the paper

# -----------------------------------------------------------------------------
# the pieces of a run around the loop

def resume_free(saved):
    """the keys a resume of a run with config `saved` may change without changing what is trained"""
    free = set(RESUME_FREE)
    if saved.get('lr_schedule') == 'cosine':
        free.discard('max_iters')  # the cosine decays to max_iters: changing it changes the run
    return free


def resume_config(cfg, explicit, ckpt, where, world):
    """the config a resumed run continues with: the checkpoint's, plus the keys given now. Refuses a change of
    what is trained (model, data, optimizer keys, the number of processes) unless allow_config_change."""
    saved = {k: coerce(k, v, DEFAULTS[k], where) for k, v in ckpt['config'].items() if k in DEFAULTS}
    free = resume_free(saved)
    changed = sorted(f"{k}: {short(saved.get(k))} -> {short(cfg[k])}"
                     for k in explicit - free if saved.get(k) != cfg[k])
    trained_world = ckpt.get('world_size')  # (checkpoints before it was recorded: unknown)
    if trained_world is not None and trained_world != world:
        changed.append(f"processes: {trained_world} -> {world} (each process samples its own prompts, "
                       "so the data stream would change; resume with the same torchrun --nproc_per_node)")
    if changed and not cfg['allow_config_change']:
        raise UserError(f"resume would change the run in {cfg['out_dir']} ({'; '.join(changed)}); "
                        "--allow_config_change=True does it")
    # out_dir: where it is now
    return {**DEFAULTS, **saved, **{k: cfg[k] for k in explicit}, 'out_dir': cfg['out_dir']}


def build(cfg, mcfg, device):
    """the held-out prompts and the model. Only a failure to allocate gets the friendly message; any other
    error (a bug in a new module, say) keeps its traceback."""
    try:
        # the end of the curriculum, on its own seed stream (never trained on)
        val_cfg = {**cfg, 'curriculum': False}
        val = []
        for i in range(cfg['eval_batches']):
            batch = get_batch(val_cfg, 0, 0, cfg['batch_size'], batch_generator(cfg['seed'], -1 - i, 0))
            val.append([t.to(device) for t in batch])
        return val, ICLModel(mcfg).to(device)
    except InitRuleError as e:  # a table row without its init rules: the user's edit, not a bug to trace
        raise UserError(str(e))
    except (RuntimeError, OverflowError, MemoryError) as e:
        allocation = isinstance(e, (torch.OutOfMemoryError, MemoryError, OverflowError)) or re.search(
            r"alloc|out of memory|not enough memory|Overflow|too large|invalid argument|numel", str(e), re.I)
        if not allocation:
            raise
        raise UserError(f"cannot build this model or held-out set here (too large?): {oneline(e)}")


# -----------------------------------------------------------------------------
# the run

def main(argv):
    if any(a in ('-h', '--help') for a in argv):
        print(configurator.help_text(__file__, __doc__.strip()))
        return None
    sources = {}
    cfg, explicit = load_config(argv, sources)
    ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun?
    rank = int(os.environ['RANK']) if ddp else 0
    world = int(os.environ['WORLD_SIZE']) if ddp else 1
    master = rank == 0
    run = RunDirectory(cfg['out_dir'])
    ckpt = None
    # 'auto' (for launchers): a new run into a directory without one, else continue it, or do nothing if done
    auto = cfg['resume'] == 'auto'
    if cfg['resume'] and not (auto and not run.run_files()):
        ckpt_path, ckpt = resume_checkpoint(run.dir)
        cfg = resume_config(cfg, explicit, ckpt, ckpt_path, world)
        if auto and ckpt['step'] >= cfg['max_iters']:
            if master:
                print(f"{run.dir}: finished at step {ckpt['step']} (max_iters {cfg['max_iters']}); "
                      "nothing to do")
            return ckpt['step']
    else:
        run.check_new()
    mcfg = validate(cfg, world)
    dev = resolve_device(cfg)

    # --- processes and devices
    if ddp:
        if dev.startswith('cuda'):
            dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(dev)
        backend = 'nccl' if dev.startswith('cuda') else 'gloo'
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg['ddp_timeout']))
    device = torch.device(dev)
    torch.manual_seed(cfg['seed'])  # the same init on every rank: the seed is global
    # (a model too large to allocate is refused before anything is written)
    val, raw_model = build(cfg, mcfg, device)
    # rank 0 claims the directory (the lock, and a re-check under it: two new runs started at once); every
    # rank learns whether it did before anything is written
    claim_error = None
    if master:
        try:
            run.claim()
            if ckpt is None:
                run.check_new()
        except UserError as e:
            run.release()
            claim_error = e
    if ddp:
        claimed = torch.tensor([0.0 if claim_error else 1.0], device=device)
        dist.all_reduce(claimed, op=dist.ReduceOp.MIN)
        if claimed.item() == 0 and not claim_error:
            claim_error = UserError(f"process 0 could not claim {run.dir}; see its message")
    if claim_error:
        raise claim_error
    try:
        step = _train(cfg, mcfg, sources, ckpt, run, device, ddp, rank, world, val, raw_model)
    finally:
        run.release()
    if ddp:  # (after a failure the process exits instead: a group with a dead peer may not tear down cleanly)
        dist.destroy_process_group()
    return step


def make_optimizer(cfg, raw_model, ckpt, run, device):
    """(Adam, the step to start at): fresh, or with the checkpoint's weights, moments, step and RNG state"""
    groups = raw_model.optim_groups(cfg['weight_decay'])
    opt_cls = torch.optim.AdamW if cfg['weight_decay'] > 0 else torch.optim.Adam  # the paper: plain Adam
    # fused: one kernel for the whole update on a GPU (launch-bound steps); the CPU keeps the default,
    # so CPU runs stay bit-identical
    fused = dict(fused=True) if device.type == 'cuda' else {}
    optimizer = opt_cls(groups, lr=cfg['learning_rate'], betas=(cfg['beta1'], cfg['beta2']), **fused)
    step = 0
    if ckpt is not None:
        try:
            raw_model.load_state_dict(ckpt['model'])
            optimizer.load_state_dict(ckpt['optimizer'])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"the checkpoint in {run.dir} does not fit this model/optimizer "
                            f"(another architecture?): {oneline(e)}")
        # the saved groups would override betas/decay set now
        for g, fresh in zip(optimizer.param_groups, groups):
            g.update(betas=(cfg['beta1'], cfg['beta2']), weight_decay=fresh['weight_decay'])
        step = ckpt['step']
        torch.set_rng_state(ckpt['rng']['torch'])
    return optimizer, step


def log_header(log, cfg, mcfg, sources, run, ckpt, step, counts, world, device):
    """the first lines of a run's log: where it runs, its config, its size, its task and scan backend"""
    where = f"resuming at step {step}" if ckpt else "new run"
    pattern = ('M+' if mcfg.mamba_embed else '') + ''.join(mcfg.blocks())
    log(f"{where} in {run.dir} | {world} process(es) on {device} | torch {torch.__version__} | "
        f"git {git_rev()}")
    log(f"config: {json.dumps(cfg, sort_keys=True)}")
    log("params: " + ', '.join(f'{k} {v:,}' for k, v in counts.items()) + f" | blocks: {pattern}")
    log(describe_task(cfg, sources))
    if counts['mamba']:
        log(f"selective scan: the {ssm_scan.resolve_backend(cfg['scan_backend'], device)} backend")


def forward_backward(model, xs, ys, cfg, micro, ddp, autocast):
    """one step's gradients, summed over its micro-batches; returns the step's mean loss on this process"""
    accum = len(xs) // micro
    loss_sum = torch.zeros((), device=xs.device)
    for m in range(accum):
        sl = slice(m * micro, (m + 1) * micro)
        # all-reduce the grads once per step, at the last micro-batch
        sync = not ddp or m == accum - 1
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast:
                loss = icl_loss(model(xs[sl], ys[sl]), ys[sl], cfg['task'])
            (loss / accum).backward()
        loss_sum += loss.detach() / accum
    return loss_sum


def metrics_row(step, cfg, loss_val, gnorm, lr, clock, raw_model, val, autocast):
    """the metrics row of `step`: loss, grad norm, lr, curriculum and speed every log_interval, the held-out
    loss every eval_interval (just {step} between them); `clock` holds the last row's step and times"""
    last = step == cfg['max_iters']
    row = dict(step=step)
    if step % cfg['log_interval'] == 0 or last:
        n_dims_now, n_points_now = tasks.curriculum(step - 1, cfg)
        rate = (step - clock['step']) / max(time.time() - clock['t'], 1e-9)
        row.update(loss=loss_val, grad_norm=gnorm, lr=lr, n_dims=n_dims_now, n_points=n_points_now,
                   steps_per_s=round(rate, 3), time=round(time.time() - clock['t0'], 2))
        clock.update(step=step, t=time.time())
    # (no dropout or batch norm: no train/eval mode)
    if step % cfg['eval_interval'] == 0 or last:
        with torch.no_grad(), autocast:
            val_losses = [icl_loss(raw_model(x, y), y, cfg['task']).item() for x, y in val]
        row['val_loss'] = sum(val_losses) / len(val)
    return row


def _train(cfg, mcfg, sources, ckpt, run, device, ddp, rank, world, val, raw_model):
    master = rank == 0
    per_rank = cfg['batch_size'] // world
    micro = cfg['micro_batch_size'] or per_rank  # validate() checked that it divides per_rank
    torch.backends.cuda.matmul.allow_tf32 = device.type == 'cuda'  # (no-ops on CPU)
    torch.backends.cudnn.allow_tf32 = device.type == 'cuda'
    if cfg['dtype'] == 'bfloat16':
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = contextlib.nullcontext()
    optimizer, step = make_optimizer(cfg, raw_model, ckpt, run, device)
    # reduce-overhead: CUDA graphs replay each step's kernels in one launch (shapes are static per curriculum
    # stage, so each stage captures once)
    model = torch.compile(raw_model, mode=cfg['compile_mode']) if cfg['compile'] else raw_model
    if ddp:
        model = DDP(model, device_ids=[device.index] if device.type == 'cuda' else None)
    counts = raw_model.param_counts()
    wandb_id = ckpt.get('wandb_id') if ckpt else os.urandom(4).hex()  # one wandb run across resumes
    good_step = step  # the step of the last checkpoint on disk

    def checkpoint():  # everything a resume needs; written and rotated by harness.save_checkpoint
        state = dict(model=raw_model.state_dict(), optimizer=optimizer.state_dict(), step=step, config=cfg,
                     model_args=asdict(mcfg), param_counts=counts, rng=dict(torch=torch.get_rng_state()),
                     wandb_id=wandb_id, world_size=world,
                     curriculum=dict(zip(('n_dims_active', 'n_points'), tasks.curriculum(step, cfg))))
        save_checkpoint(run, state, cfg['keep_last'], cfg['keep_every'], good_step)

    # --- run directory, log, metrics (rank 0 writes; nothing is written before the config is valid)
    bar = tqdm(total=cfg['max_iters'], initial=step, dynamic_ncols=True, disable=None if master else True,
               desc=os.path.basename(run.dir))

    def log(msg):
        if master:
            bar.write(msg)
            run.append(run.log, msg + '\n')
    if master:
        if ckpt is None:
            checkpoint()  # step 0 first: from here on a killed run can always be resumed
        dropped = truncate_metrics(run.metrics, step)
        log_header(log, cfg, mcfg, sources, run, ckpt, step, counts, world, device)
        if dropped:
            log(f"note: dropped {dropped} malformed line(s) of {run.metrics}")
    wandb = None
    if cfg['wandb_log'] and master:
        # optional: imported only when used (resolve_device checked it)
        wandb = importlib.import_module('wandb')
        wandb.init(project=cfg['wandb_project'], name=os.path.basename(run.dir), config=cfg, id=wandb_id,
                   resume='allow')

    start = step
    fell_back = set(ssm_scan.fallbacks())
    stopping = False
    t0 = time.time()
    clock = dict(step=step, t=t0, t0=t0)
    with StopSignals() as signals:
        try:
            while step < cfg['max_iters'] and not stopping:
                lr = get_lr(step, cfg)
                for group in optimizer.param_groups:
                    group['lr'] = lr
                xs, ys = (t.to(device) for t in get_batch(cfg, step, rank, per_rank))
                loss_sum = forward_backward(model, xs, ys, cfg, micro, ddp, autocast)
                # a stop asked for during this step is honoured at its end: read here, after the backward,
                # so a signal costs at most the rest of a step (torchrun kills its workers 30 s after
                # forwarding one)
                stop_flag = float(signals.count > 0)
                if ddp:  # the true mean loss over ranks, and whether any rank was asked to stop
                    flags = torch.stack([loss_sum, torch.tensor(stop_flag, device=device)])
                    dist.all_reduce(flags)
                    loss_sum, stop_flag = flags[0], flags[1].item()
                loss_val = loss_sum.item() / world
                stopping = stop_flag > 0
                # the grads are all-reduced, so every rank sees the same norm; grad_clip=0 computes it
                # without clipping
                gnorm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(),
                                                       cfg['grad_clip'] or math.inf).item()
                # before the optimizer step: weights untouched
                if not (math.isfinite(loss_val) and math.isfinite(gnorm)):
                    msg = (f"non-finite loss ({loss_val}) or grad norm ({gnorm}) in step {step + 1}, "
                           f"before its update; the last good checkpoint {run.ckpt} (step {good_step}) "
                           "is intact. Lower learning_rate or set grad_clip, and continue from it with "
                           "--resume=True --allow_config_change=True")
                    log(f"stopped: {msg}")
                    raise UserError(msg)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for kernel, why in ssm_scan.fallbacks().items():  # stderr only would leave the log silent
                    if kernel not in fell_back:
                        fell_back.add(kernel)
                        log(f"note: the {kernel} scan failed ({why}); this run uses the torch backend "
                            "(slower)")
                step += 1
                last = step == cfg['max_iters']
                save = last or stopping or step % cfg['ckpt_interval'] == 0
                if master:
                    bar.update(1)
                    bar.set_postfix(loss=f'{loss_val:.4f}', refresh=False)
                    row = metrics_row(step, cfg, loss_val, gnorm, lr, clock, raw_model, val, autocast)
                    if len(row) > 1:
                        run.append(run.metrics, json.dumps(row) + '\n')
                        fields = [f'{k} {v:.4g}' if type(v) is float else f'{k} {v}'
                                  for k, v in row.items() if k != 'time']
                        log(' | '.join(fields))
                        if wandb:
                            wandb.log(row, step=step)
                    if save:
                        checkpoint()
                if save:
                    good_step = step
        except KeyboardInterrupt as e:  # the second signal
            raise UserError(f"{e}: stopped at once in step {step + 1}; the last checkpoint {run.ckpt} "
                            f"(step {good_step}) is intact")
        except (RuntimeError if ddp else torch.OutOfMemoryError) as e:
            # OOM mid-run; DDP: a peer died or hung
            if isinstance(e, torch.OutOfMemoryError):
                why = 'out of memory: try a smaller micro_batch_size'
            else:
                why = 'did another process die or hang? see its output'
            raise UserError(f"process {rank} failed at step {step} ({why}); last checkpoint {run.ckpt} "
                            f"(step {good_step}): {oneline(e)}")
        finally:
            bar.close()
    status = 'stopped' if stopping else 'done'
    log(f"{status} at step {step} ({step - start} steps in {time.time() - t0:.1f}s); checkpoint {run.ckpt}")
    if stopping:
        launcher = f'torchrun --nproc_per_node={world}' if ddp else 'python'
        log(f"resume with: {launcher} train.py --out_dir={shlex.quote(run.dir)} --resume=True")
    if ddp:
        dist.barrier()  # rank 0 has written the last checkpoint before anyone leaves
    return step



if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except BrokenPipeError:  # `python train.py --help | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (UserError, OSError) as e:  # OSError: permissions, a path that is not a directory
        print('error: ' + ' '.join(str(e).splitlines()), file=sys.stderr)
        if int(os.environ.get('RANK', -1)) != -1:  # a failed torchrun worker: exit 2, not a gloo SIGABRT
            exit_finished_worker(2)
        sys.exit(2)
    if int(os.environ.get('RANK', -1)) != -1:  # launched by torchrun
        exit_finished_worker()
