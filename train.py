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
import importlib
import json
import math
import os
import re
import shlex
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import configurator
import ssm_scan
import tasks
# scripts reach these through train: sweep.py the config rules and run directories, launchers and tests the
# checkpoints. (No str or number constant here: every such global of this module is a config key)
from configurator import RESUME_FREE, parse_value, resume_free  # noqa: F401
from harness import (RUN_FILES, RunDirectory, StopSignals, UserError, git_rev, load_checkpoint,  # noqa: F401
                     oneline, resume_checkpoint, run_command, run_status, save_checkpoint, truncate_metrics)
from model import ICLModel, InitRuleError, ModelConfig

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
# ... and the task parameters (sparsity, mlp_hidden, tree_depth, parity_k, noise_std ...): tasks.TASK_DEFAULTS
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
mamba_init = 'mamba'         # Mamba mixers' init: mamba (mamba_ssm's and HF's) | gpt2 (N(0, 0.02) linears)
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
DEFAULTS = {**configurator.defaults_of(globals()), **tasks.TASK_DEFAULTS}

# -----------------------------------------------------------------------------
# config

def load_config(argv: list, sources: Optional[dict] = None) -> tuple:
    """defaults <- config files (architecture files, then files that set `task`) <- --key=value overrides
    (configurator.load). Returns (cfg, the keys set explicitly); a `sources` dict gets where each key's value
    came from."""
    cfg, explicit = configurator.load(argv, DEFAULTS, sources, configurator.WORDS)
    cfg['out_dir'] = os.path.expanduser(cfg['out_dir']) or os.path.join('out', f"{cfg['arch']}-{cfg['task']}")
    return cfg, explicit


def coerce(key, value, default, where):  # a saved config's value as today's type (sweep.py's resume check)
    return configurator.coerce(key, value, default, where, configurator.WORDS.get(key, ()))


def validate(cfg: dict, world_size: int = 1) -> ModelConfig:
    """every check before anything is written: train.py's keys (configurator), the model's (ModelConfig),
    then one prompt of the run's smallest size through the sampler (its own checks: parity_k, mqar's points,
    noise). Returns the ModelConfig; a UserError names the first problem."""
    configurator.check_ranges(cfg)
    configurator.check_consistency(cfg, world_size)
    try:
        mcfg = ModelConfig.from_dict({**cfg, 'y_dim': tasks.y_dim(cfg['task'], cfg['n_dims'])})
    except ValueError as e:
        raise UserError(oneline(e))
    try:
        get_batch(cfg, 0, 0, 1)
    except (ValueError, RuntimeError) as e:  # RuntimeError: a prompt too large to allocate
        raise UserError(f"config: {oneline(e)}")
    return mcfg

# -----------------------------------------------------------------------------
# data, schedule, loss

def batch_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """the data of (seed, step, rank) is a pure function of them: resume replays no RNG, ranks never share a
    stream."""
    digest = hashlib.blake2b(f'{seed}/{step}/{rank}'.encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, 'little') >> 1)


def get_batch(cfg: dict, step: int, rank: int, n_prompts: int,
              gen: Optional[torch.Generator] = None) -> tuple:
    """n_prompts prompts of `step` at its curriculum stage -> xs (B, N, d), ys (B, N, y_dim) on the CPU"""
    n_dims_active, n_points = tasks.curriculum(step, cfg)
    gen = gen or batch_generator(cfg['seed'], step, rank)
    params = {k: cfg[k] for k in tasks.TASK_DEFAULTS}
    return tasks.sample(cfg['task'], n_prompts, n_points, cfg['n_dims'], gen, n_dims_active=n_dims_active,
                        **params)


def get_lr(it: int, cfg: dict) -> float:
    lr = cfg['learning_rate']
    warm = cfg['warmup_iters']
    if it < warm or cfg['lr_schedule'] == 'constant':
        return lr * min(1.0, (it + 1) / warm) if warm else lr  # linear warmup
    progress = min(1.0, (it - warm) / max(1, cfg['max_iters'] - warm))
    return cfg['min_lr'] + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - cfg['min_lr'])


def icl_loss(pred: torch.Tensor, ys: torch.Tensor, task: str) -> torch.Tensor:
    if tasks.get(task).predict_last:
        return F.mse_loss(pred[:, -1].float(), ys[:, -1])  # MQAR: only the query counts
    return F.mse_loss(pred.float(), ys)  # mean over prompts, positions and y dims, as the paper

# -----------------------------------------------------------------------------
# setting up a run: processes, model, optimizer

def start_processes(cfg: dict, ddp: bool) -> torch.device:
    """this process's device, after checking the machine has it; under torchrun also the process group"""
    dev = configurator.resolve_device(cfg)
    if ddp:
        if dev.startswith('cuda'):
            dev = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(dev)
        backend = 'nccl' if dev.startswith('cuda') else 'gloo'
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg['ddp_timeout']))
    return torch.device(dev)


def build(cfg: dict, mcfg: ModelConfig, device: torch.device) -> Tuple[list, ICLModel]:
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
                            f"(another architecture? from before model.py's tables: python harness.py "
                            f"convert CKPT): {oneline(e)}")
        # the saved groups would override betas/decay set now
        for g, fresh in zip(optimizer.param_groups, groups):
            g.update(betas=(cfg['beta1'], cfg['beta2']), weight_decay=fresh['weight_decay'])
        step = ckpt['step']
        torch.set_rng_state(ckpt['rng']['torch'])
    return optimizer, step


@dataclass
class Loop:
    """what the pieces of the loop share: fixed by setup(), except the step, the step of the last checkpoint
    on disk, the stop flag and the clock of the metrics rows"""
    cfg: dict
    mcfg: ModelConfig
    run: RunDirectory
    ddp: bool
    rank: int
    world: int
    device: torch.device
    raw_model: ICLModel
    model: Any                         # raw_model, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    autocast: Any                      # bf16 autocast, or a null context
    val: list                          # the held-out batches
    step: int
    good_step: int                     # the step of the last checkpoint on disk
    bar: Any                           # the progress bar (drawn by rank 0)
    wandb_id: Optional[str]            # one wandb run across resumes
    wandb: Any = None                  # the wandb module, when logging to it
    stopping: bool = False
    fell_back: set = field(default_factory=set)    # scan kernels whose fallback the log has said
    clock: dict = field(default_factory=dict)      # the last metrics row's step and times

    def log(self, msg: str) -> None:
        if self.rank == 0:
            self.bar.write(msg)
            self.run.append(self.run.log, msg + '\n')

    def checkpoint(self) -> None:
        """everything a resume needs; written and rotated by harness.save_checkpoint"""
        stage = tasks.curriculum(self.step, self.cfg)
        state = dict(model=self.raw_model.state_dict(), optimizer=self.optimizer.state_dict(), step=self.step,
                     config=self.cfg, model_args=asdict(self.mcfg),
                     param_counts=self.raw_model.param_counts(), rng=dict(torch=torch.get_rng_state()),
                     wandb_id=self.wandb_id, world_size=self.world,
                     curriculum=dict(zip(('n_dims_active', 'n_points'), stage)))
        save_checkpoint(self.run, state, self.cfg['keep_last'], self.cfg['keep_every'], self.good_step)


def setup(cfg: dict, mcfg: ModelConfig, ckpt: Optional[dict], run: RunDirectory, ddp: bool,
          device: torch.device, val: list, raw_model: ICLModel) -> Loop:
    """the optimizer (fresh or resumed), the model as it trains (compiled, wrapped in DDP), the precision and
    the progress bar, in one Loop"""
    rank = int(os.environ['RANK']) if ddp else 0
    world = int(os.environ['WORLD_SIZE']) if ddp else 1
    torch.backends.cuda.matmul.allow_tf32 = device.type == 'cuda'  # (no-ops on CPU)
    torch.backends.cudnn.allow_tf32 = device.type == 'cuda'
    autocast: Any = contextlib.nullcontext()
    if cfg['dtype'] == 'bfloat16':
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    optimizer, step = make_optimizer(cfg, raw_model, ckpt, run, device)
    # reduce-overhead: CUDA graphs replay each step's kernels in one launch (shapes are static per curriculum
    # stage, so each stage captures once)
    model = torch.compile(raw_model, mode=cfg['compile_mode']) if cfg['compile'] else raw_model
    if ddp:
        model = DDP(model, device_ids=[device.index] if device.type == 'cuda' else None)
    bar = tqdm(total=cfg['max_iters'], initial=step, dynamic_ncols=True, disable=None if rank == 0 else True,
               desc=os.path.basename(run.dir))
    wandb_id = ckpt.get('wandb_id') if ckpt else os.urandom(4).hex()
    return Loop(cfg, mcfg, run, ddp, rank, world, device, raw_model, model, optimizer, autocast, val, step,
                good_step=step, bar=bar, wandb_id=wandb_id)


def begin(loop: Loop, ckpt: Optional[dict], sources: dict) -> None:
    """rank 0's first writing: the step-0 checkpoint of a new run (from here on a killed run can always be
    resumed), the metrics cut back to the resumed step, the log's header, wandb"""
    if loop.rank != 0:
        return
    cfg = loop.cfg
    if ckpt is None:
        loop.checkpoint()
    dropped = truncate_metrics(loop.run.metrics, loop.step)
    where = f"resuming at step {loop.step}" if ckpt else "new run"
    counts = loop.raw_model.param_counts()
    pattern = ('M+' if loop.mcfg.mamba_embed else '') + ''.join(loop.mcfg.blocks())
    loop.log(f"{where} in {loop.run.dir} | {loop.world} process(es) on {loop.device} | "
             f"torch {torch.__version__} | git {git_rev()}")
    loop.log(f"config: {json.dumps(cfg, sort_keys=True)}")
    loop.log("params: " + ', '.join(f'{k} {v:,}' for k, v in counts.items()) + f" | blocks: {pattern}")
    loop.log(describe_task(cfg, sources))
    if counts['mamba']:
        loop.log(f"selective scan: the {ssm_scan.resolve_backend(cfg['scan_backend'], loop.device)} backend")
    if dropped:
        loop.log(f"note: dropped {dropped} malformed line(s) of {loop.run.metrics}")
    if cfg['wandb_log']:
        # optional: imported only when used (configurator.resolve_device checked it)
        loop.wandb = importlib.import_module('wandb')
        loop.wandb.init(project=cfg['wandb_project'], name=os.path.basename(loop.run.dir), config=cfg,
                        id=loop.wandb_id, resume='allow')


def describe_task(cfg, sources):
    """one line: the task and its size, and where they came from; how to get the paper's setting"""
    where = sources['task']
    text = (f"task: {cfg['task']}, d = {cfg['n_dims']}, {cfg['n_points']} points, "
            f"lr {cfg['learning_rate']:g}, {cfg['max_iters']:,} steps (from {where})")
    if where == "train.py's defaults":
        text += f"; the paper's setting of a task: add configs/<task>.py, e.g. configs/{cfg['task']}.py"
    return text

# -----------------------------------------------------------------------------
# one step, and what is written after it

def forward_backward(model: Any, xs: torch.Tensor, ys: torch.Tensor, cfg: dict, micro: int, ddp: bool,
                     autocast: Any) -> torch.Tensor:
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


def train_step(loop: Loop, signals: StopSignals) -> Tuple[float, float, float]:
    """the optimizer step after loop.step: its gradients, its mean loss and whether any process was asked to
    stop, the grad norm, the update. Returns (loss, grad norm, learning rate)."""
    cfg = loop.cfg
    lr = get_lr(loop.step, cfg)
    for group in loop.optimizer.param_groups:
        group['lr'] = lr
    per_rank = cfg['batch_size'] // loop.world
    micro = cfg['micro_batch_size'] or per_rank  # validate() checked that it divides per_rank
    xs, ys = (t.to(loop.device) for t in get_batch(cfg, loop.step, loop.rank, per_rank))
    loss_sum = forward_backward(loop.model, xs, ys, cfg, micro, loop.ddp, loop.autocast)
    # a stop asked for during this step is honoured at its end: read here, after the backward, so a signal
    # costs at most the rest of a step (torchrun kills its workers 30 s after forwarding one)
    stop_flag = float(signals.count > 0)
    if loop.ddp:  # the true mean loss over ranks, and whether any rank was asked to stop
        flags = torch.stack([loss_sum, torch.tensor(stop_flag, device=loop.device)])
        dist.all_reduce(flags)
        loss_sum, stop_flag = flags[0], flags[1].item()
    loss = loss_sum.item() / loop.world
    loop.stopping = stop_flag > 0
    # the grads are all-reduced, so every rank sees the same norm; grad_clip=0 computes it without clipping
    gnorm = torch.nn.utils.clip_grad_norm_(loop.raw_model.parameters(), cfg['grad_clip'] or math.inf).item()
    if not (math.isfinite(loss) and math.isfinite(gnorm)):  # before the update: the weights are untouched
        msg = (f"non-finite loss ({loss}) or grad norm ({gnorm}) in step {loop.step + 1}, before its update; "
               f"the last good checkpoint {loop.run.ckpt} (step {loop.good_step}) is intact. Lower "
               "learning_rate or set grad_clip, and continue from it with --resume=True "
               "--allow_config_change=True")
        loop.log(f"stopped: {msg}")
        raise UserError(msg)
    loop.optimizer.step()
    loop.optimizer.zero_grad(set_to_none=True)
    for kernel, why in ssm_scan.fallbacks().items():  # stderr only would leave the log silent
        if kernel not in loop.fell_back:
            loop.fell_back.add(kernel)
            loop.log(f"note: the {kernel} scan failed ({why}); this run uses the torch backend (slower)")
    return loss, gnorm, lr


def metrics_row(loop: Loop, loss: float, gnorm: float, lr: float) -> dict:
    """the metrics row of loop.step: loss, grad norm, lr, curriculum and speed every log_interval, the
    held-out loss every eval_interval (just {step} between them)"""
    cfg = loop.cfg
    step = loop.step
    last = step == cfg['max_iters']
    row: dict = dict(step=step)
    if step % cfg['log_interval'] == 0 or last:
        n_dims_now, n_points_now = tasks.curriculum(step - 1, cfg)
        rate = (step - loop.clock['step']) / max(time.time() - loop.clock['t'], 1e-9)
        row.update(loss=loss, grad_norm=gnorm, lr=lr, n_dims=n_dims_now, n_points=n_points_now,
                   steps_per_s=round(rate, 3), time=round(time.time() - loop.clock['t0'], 2))
        loop.clock.update(step=step, t=time.time())
    # (no dropout or batch norm: no train/eval mode)
    if step % cfg['eval_interval'] == 0 or last:
        with torch.no_grad(), loop.autocast:
            val_losses = [icl_loss(loop.raw_model(x, y), y, cfg['task']).item() for x, y in loop.val]
        row['val_loss'] = sum(val_losses) / len(loop.val)
    return row


def after_step(loop: Loop, loss: float, gnorm: float, lr: float) -> None:
    """rank 0's writing after a step: the progress bar, the metrics row with its log line (and wandb), and the
    checkpoint every ckpt_interval steps, at the last step and when stopping"""
    cfg = loop.cfg
    save = loop.step == cfg['max_iters'] or loop.stopping or loop.step % cfg['ckpt_interval'] == 0
    if loop.rank == 0:
        loop.bar.update(1)
        loop.bar.set_postfix(loss=f'{loss:.4f}', refresh=False)
        row = metrics_row(loop, loss, gnorm, lr)
        if len(row) > 1:
            loop.run.append(loop.run.metrics, json.dumps(row) + '\n')
            loop.log(' | '.join(f'{k} {v:.4g}' if type(v) is float else f'{k} {v}'
                                for k, v in row.items() if k != 'time'))
            if loop.wandb:
                loop.wandb.log(row, step=loop.step)
        if save:
            loop.checkpoint()
    if save:
        loop.good_step = loop.step

# -----------------------------------------------------------------------------
# the loop and the run

def train(loop: Loop) -> int:
    """steps from loop.step to max_iters, or to a stop signal (then with a checkpoint at the step's end);
    returns the step it ended at"""
    cfg = loop.cfg
    start = loop.step
    t0 = time.time()
    loop.clock.update(step=start, t=t0, t0=t0)
    loop.fell_back.update(ssm_scan.fallbacks())
    with StopSignals() as signals:
        try:
            while loop.step < cfg['max_iters'] and not loop.stopping:
                loss, gnorm, lr = train_step(loop, signals)
                loop.step += 1
                after_step(loop, loss, gnorm, lr)
        except KeyboardInterrupt as e:  # the second signal
            raise UserError(f"{e}: stopped at once in step {loop.step + 1}; the last checkpoint "
                            f"{loop.run.ckpt} (step {loop.good_step}) is intact")
        except (RuntimeError if loop.ddp else torch.OutOfMemoryError) as e:
            # OOM mid-run; DDP: a peer died or hung
            if isinstance(e, torch.OutOfMemoryError):
                why = 'out of memory: try a smaller micro_batch_size'
            else:
                why = 'did another process die or hang? see its output'
            raise UserError(f"process {loop.rank} failed at step {loop.step} ({why}); last checkpoint "
                            f"{loop.run.ckpt} (step {loop.good_step}): {oneline(e)}")
        finally:
            loop.bar.close()
    status = 'stopped' if loop.stopping else 'done'
    loop.log(f"{status} at step {loop.step} ({loop.step - start} steps in {time.time() - t0:.1f}s); "
             f"checkpoint {loop.run.ckpt}")
    if loop.stopping:
        launcher = f'torchrun --nproc_per_node={loop.world}' if loop.ddp else 'python'
        loop.log(f"resume with: {launcher} train.py --out_dir={shlex.quote(loop.run.dir)} --resume=True")
    if loop.ddp:
        dist.barrier()  # rank 0 has written the last checkpoint before anyone leaves
    return loop.step


def main(argv: list) -> Optional[int]:
    """`python train.py ARGS`: the config checked, the run directory claimed, the model trained; returns the
    step it ended at (None for --help)"""
    if any(a in ('-h', '--help') for a in argv):
        print(configurator.help_text(__file__, __doc__.strip(), tasks.__file__))
        return None
    sources: dict = {}
    cfg, explicit = load_config(argv, sources)
    ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun?
    world = int(os.environ['WORLD_SIZE']) if ddp else 1
    master = not ddp or int(os.environ['RANK']) == 0
    run = RunDirectory(cfg['out_dir'])
    ckpt = None
    # 'auto' (for launchers): a new run into a directory without one, else continue it, or do nothing if done
    auto = cfg['resume'] == 'auto'
    if cfg['resume'] and not (auto and not run.run_files()):
        ckpt_path, ckpt = resume_checkpoint(run.dir)
        cfg = configurator.resume_config(cfg, explicit, ckpt, ckpt_path, world, DEFAULTS)
        if auto and ckpt['step'] >= cfg['max_iters']:
            if master:
                print(f"{run.dir}: finished at step {ckpt['step']} (max_iters {cfg['max_iters']}); "
                      "nothing to do")
            return ckpt['step']
    else:
        run.check_new()
    mcfg = validate(cfg, world)
    device = start_processes(cfg, ddp)
    torch.manual_seed(cfg['seed'])  # the same init on every rank: the seed is global
    # (a model too large to allocate is refused before anything is written)
    val, raw_model = build(cfg, mcfg, device)
    run.claim_for_all(ckpt is None, master, ddp, device)
    try:
        loop = setup(cfg, mcfg, ckpt, run, ddp, device, val, raw_model)
        begin(loop, ckpt, sources)
        step = train(loop)
    finally:
        run.release()
    if ddp:  # (after a failure the process exits instead: a group with a dead peer may not tear down cleanly)
        dist.destroy_process_group()
    return step


if __name__ == '__main__':
    run_command(main, catch=(UserError, OSError))  # OSError: permissions, a path that is not a directory
