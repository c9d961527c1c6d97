"""
In-context-learning sequence models: GPT-2, Llama, Mamba and their hybrids, as ONE configurable
stack. A hybrid is a ModelConfig, not a class.

References
- Garg et al. 2022 (dtsip/in-context-learning): the ICL wrapper (interleave x and zero-padded y,
  linear read-in, backbone, linear read-out at the x tokens).
- Campbell et al. 2024, arXiv 2411.03945 (in-context-learning-2024/in-context): the 12 GPT-2 /
  Llama / Mamba architectures and the quirks of its hybrid engine (`reference_quirks`).
- Park et al. 2024 (MambaFormer): a leading Mamba block instead of positional encoding,
  attention and Mamba alternating, no MLPs.
- Gu & Dao 2023 (mamba_simple.py) for the Mamba mixer; nanoGPT for names (c_attn, c_proj, ln_1).

glossary: B batch, N points per prompt, T = 2N tokens, d x dimension, C = n_embd,
          H heads, hs head size, di = d_inner = expand * C, ds = d_state, R = dt_rank
"""
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ssm_scan import selective_scan, BACKENDS

NORMS, POSITIONS, ATTNS, FFNS = ("layernorm", "rmsnorm"), ("learned", "rope", "none"), ("gpt2", "llama"), ("gelu", "swiglu", "mamba", "none")


@dataclass
class ModelConfig:
    # icl interface
    n_dims: int = 20            # x dimension = read-in width (y tokens are zero-padded to it)
    y_dim: int = 1              # read-out width (n_dims for mqar)
    n_positions: int = 141      # max points per prompt; the learned table has 2 * n_positions rows
    # backbone: each block is [norm, mixer, +res] then optionally [norm, ffn, +res]
    n_layer: int = 12           # number of blocks
    n_embd: int = 256
    n_head: int = 8
    norm: str = "layernorm"     # layernorm | rmsnorm
    pos: str = "learned"        # learned | rope | none
    attn: str = "gpt2"          # gpt2: biased fused qkv and proj | llama: no biases
    ffn: str = "gelu"           # gelu (tanh-GELU MLP) | swiglu | mamba (a Mamba block as FFN) | none
    ffn_mult: float = 4.0       # FFN hidden = ffn_mult * C; the reference uses 4 for SwiGLU too (not 8/3)
    mamba_embed: bool = False   # a leading pre-norm Mamba block as "positional embedder" (2.1, 2.3, Park)
    layer_pattern: str = "A"    # mixer per block, tiled over n_layer: A = attention, M = Mamba
    # mamba
    d_state: int = 16
    d_conv: int = 4
    expand: int = 4             # the paper uses 4 "to give similar parameter counts" (Mamba's default is 2)
    dt_rank: int = 0            # 0 -> ceil(C / 16)
    scan_backend: str = "auto"  # ssm_scan backend: auto | torch | triton
    # reproduce the reference package instead of the clean defaults (docs/paper.md §3.4)
    reference_quirks: bool = False

    def __post_init__(self):
        for key, allowed in (("norm", NORMS), ("pos", POSITIONS), ("attn", ATTNS), ("ffn", FFNS), ("scan_backend", BACKENDS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {allowed}")
        if not self.layer_pattern or set(self.layer_pattern) - set("AM"):
            raise ValueError(f"layer_pattern={self.layer_pattern!r} must be a non-empty string of A (attention) and M (Mamba)")
        if "A" in self.layer_pattern and self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"RoPE needs an even head size, got n_embd/n_head = {self.n_embd // self.n_head}")
        for key in ("n_dims", "y_dim", "n_positions", "n_layer", "n_embd", "n_head", "d_state", "d_conv", "expand"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.y_dim > self.n_dims:
            raise ValueError(f"y_dim={self.y_dim} cannot exceed n_dims={self.n_dims} (y tokens are padded to n_dims)")
        if self.dt_rank == 0:
            self.dt_rank = math.ceil(self.n_embd / 16)

    @classmethod
    def from_dict(cls, cfg):
        # the flat training config holds these keys among others
        return cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})

# -----------------------------------------------------------------------------
# norms

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(kind, dim, mamba=False):
    # eps as in the reference: LayerNorm 1e-5; Llama's RMSNorm 1e-6 but 1e-5 inside Mamba blocks
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-5)
    return RMSNorm(dim, eps=1e-5 if mamba else 1e-6)

# -----------------------------------------------------------------------------
# attention

def rope_cache(T, hs, device, base=1e4):
    # rotate-half RoPE over the 2N interleaved tokens (x and y tokens get their own positions)
    inv_freq = 1.0 / base ** (torch.arange(0, hs, 2, device=device, dtype=torch.float32) / hs)
    ang = torch.arange(T, device=device, dtype=torch.float32)[:, None] * inv_freq  # (T, hs/2)
    ang = torch.cat((ang, ang), dim=-1)                                             # (T, hs)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        bias = cfg.attn == "gpt2"  # the Llama flavour has no biases; "GPT-2 RoPE" swaps in the Llama module
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=bias)  # fused q, k, v
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)

    def forward(self, x, rope=None):
        q, k, v = self.c_attn(x).chunk(3, dim=-1)
        q, k, v = (rearrange(t, "b t (h s) -> b h t s", h=self.n_head) for t in (q, k, v))  # (B, H, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(rearrange(y, "b h t s -> b t (h s)"))

# -----------------------------------------------------------------------------
# feed-forward

class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(cfg.ffn_mult * cfg.n_embd)
        self.c_fc = nn.Linear(cfg.n_embd, hidden)
        self.c_proj = nn.Linear(hidden, cfg.n_embd)

    def forward(self, x, rope=None):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2's gelu_new


class SwiGLU(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = int(cfg.ffn_mult * cfg.n_embd)
        self.w_gate = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.w_up = nn.Linear(cfg.n_embd, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, cfg.n_embd, bias=False)  # Llama's down_proj

    def forward(self, x, rope=None):
        return self.c_proj(F.silu(self.w_gate(x)) * self.w_up(x))

# -----------------------------------------------------------------------------
# Mamba mixer (mamba_simple.Mamba without the fused CUDA paths)

class MambaMixer(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, di, ds, R = cfg.n_embd, cfg.expand * cfg.n_embd, cfg.d_state, cfg.dt_rank
        self.ds, self.R, self.backend = ds, R, cfg.scan_backend
        self.in_proj = nn.Linear(C, 2 * di, bias=False)  # x and the gate z
        self.conv1d = nn.Conv1d(di, di, cfg.d_conv, groups=di, padding=cfg.d_conv - 1)  # depthwise, causal after trim
        self.x_proj = nn.Linear(di, R + 2 * ds, bias=False)  # (dt_low, B, C), input-dependent
        self.dt_proj = nn.Linear(R, di)
        self.A_log = nn.Parameter(torch.empty(di, ds))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, C, bias=False)

    def forward(self, x, rope=None):
        T = x.shape[1]
        x, z = self.in_proj(x).chunk(2, dim=-1)                       # (B, T, di) each
        x = F.silu(self.conv1d(x.transpose(1, 2))[..., :T])           # (B, di, T); drop the right pad = causal
        dt, Bm, Cm = self.x_proj(x.transpose(1, 2)).split([self.R, self.ds, self.ds], dim=-1)
        dt = dt @ self.dt_proj.weight.t()                             # (B, T, di); bias is added inside the scan
        A = -torch.exp(self.A_log.float())                            # (di, ds), negative: a stable decay
        y = selective_scan(x, dt.transpose(1, 2), A, Bm.transpose(1, 2), Cm.transpose(1, 2), self.D.float(),
                           z=z.transpose(1, 2), delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           backend=self.backend,                      # (B, di, T); transposes are views, no copies
                           deterministic=torch.are_deterministic_algorithms_enabled())  # fixed-order dB/dC sums on GPU
        return self.out_proj(y.transpose(1, 2))

# -----------------------------------------------------------------------------
# blocks and the stack

class MambaBlock(nn.Module):
    """pre-norm Mamba with a residual, as a positional embedder or in the FFN slot. With
    reference_quirks the reference's extra residual marker doubles the stream: x <- 2x + mixer(norm(x))."""
    def __init__(self, cfg):
        super().__init__()
        self.norm = make_norm(cfg.norm, cfg.n_embd, mamba=True)
        self.mixer = MambaMixer(cfg)
        self.skip = 2.0 if cfg.reference_quirks else 1.0

    def forward(self, x, rope=None):
        return self.skip * x + self.mixer(self.norm(x))


class Block(nn.Module):
    def __init__(self, cfg, kind):
        super().__init__()
        self.ln_1 = make_norm(cfg.norm, cfg.n_embd, mamba=kind == "M")
        self.mixer = CausalSelfAttention(cfg) if kind == "A" else MambaMixer(cfg)
        self.ffn = None
        if cfg.ffn == "mamba":
            self.ffn = MambaBlock(cfg)  # carries its own norm and residual
        elif cfg.ffn != "none":
            self.ln_2 = make_norm(cfg.norm, cfg.n_embd)
            self.ffn = (MLP if cfg.ffn == "gelu" else SwiGLU)(cfg)

    def forward(self, x, rope=None):
        x = x + self.mixer(self.ln_1(x), rope)
        if isinstance(self.ffn, MambaBlock):
            return self.ffn(x)
        if self.ffn is not None:
            x = x + self.ffn(self.ln_2(x))
        return x


class ICLModel(nn.Module):
    """prompt (xs, ys) -> predictions at the x tokens. There is no vocabulary, so no weight tying."""
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        C = cfg.n_embd
        self.read_in = nn.Linear(cfg.n_dims, C)
        self.wpe = nn.Embedding(2 * cfg.n_positions, C) if cfg.pos == "learned" else None
        self.embed = MambaBlock(cfg) if cfg.mamba_embed else None
        self.h = nn.ModuleList(Block(cfg, cfg.layer_pattern[i % len(cfg.layer_pattern)]) for i in range(cfg.n_layer))
        self.ln_f = make_norm(cfg.norm, C, mamba=cfg.layer_pattern == "M" * len(cfg.layer_pattern))
        self.read_out = nn.Linear(C, cfg.y_dim)
        init_weights(self)

    def forward(self, xs, ys):
        B, N, d = xs.shape
        if d != self.cfg.n_dims or ys.shape[-1] != self.cfg.y_dim:
            raise ValueError(f"model was built for x of dimension {self.cfg.n_dims} and y of dimension {self.cfg.y_dim}, "
                             f"got x {tuple(xs.shape)} and y {tuple(ys.shape)}")
        if self.wpe is not None and N > self.cfg.n_positions:
            raise ValueError(f"prompt has {N} points but the learned position table holds n_positions={self.cfg.n_positions}")
        z = torch.stack((xs, F.pad(ys, (0, d - ys.shape[-1]))), dim=2)  # (B, N, 2, d): x_i then [y_i, 0, ..., 0]
        h = self.read_in(rearrange(z, "b n two d -> b (n two) d"))     # (B, T, C)
        T = h.shape[1]
        if self.wpe is not None:
            h = h + self.wpe(torch.arange(T, device=h.device))
        if self.embed is not None:
            h = self.embed(h)
        rope = rope_cache(T, self.cfg.n_embd // self.cfg.n_head, h.device) if self.cfg.pos == "rope" else None
        if rope is not None:
            rope = tuple(r.to(h.dtype) for r in rope)
        for block in self.h:
            h = block(h, rope)
        return self.read_out(self.ln_f(h)[:, ::2])                      # (B, N, y_dim), read at the x tokens

    def param_counts(self):
        """parameter counts by group; backbone = everything but read-in/out (the paper's §3.5 convention)."""
        kinds = ((CausalSelfAttention, "attention"), ((MLP, SwiGLU), "mlp"), (MambaMixer, "mamba"),
                 ((nn.LayerNorm, RMSNorm), "norm"), (nn.Embedding, "embeddings"))
        groups = dict(read_in_out=0, **{g: 0 for _, g in kinds})
        for name, mod in self.named_modules():  # these module kinds never nest inside one another
            group = "read_in_out" if name in ("read_in", "read_out") else next((g for t, g in kinds if isinstance(mod, t)), None)
            if group:
                groups[group] += sum(p.numel() for p in mod.parameters())
        groups["backbone"] = sum(v for k, v in groups.items() if k != "read_in_out")
        groups["total"] = sum(p.numel() for p in self.parameters())
        assert groups["total"] == groups["backbone"] + groups["read_in_out"], "a parameter escaped the groups"
        return groups

    def optim_groups(self, weight_decay):
        """decay Linear/Embedding weights only; never norms, biases, conv, A_log, D (A_log is 2-D, so the
        usual dim >= 2 rule would wrongly decay it)."""
        decay = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Embedding))}
        params = list(self.parameters())
        groups = [dict(params=[p for p in params if id(p) in decay], weight_decay=weight_decay),
                  dict(params=[p for p in params if id(p) not in decay], weight_decay=0.0)]
        assert sum(len(g["params"]) for g in groups) == len(params)
        return groups

# -----------------------------------------------------------------------------
# init: one explicit function that sets every parameter

def reference_family(cfg):
    """which model of the reference package this config is: its pure models are HuggingFace models
    with their own init; everything else went through its hybrid engine, where no HF init runs."""
    plain = not cfg.mamba_embed and cfg.layer_pattern == "A"
    if plain and (cfg.norm, cfg.pos, cfg.attn, cfg.ffn) == ("layernorm", "learned", "gpt2", "gelu"):
        return "gpt2"
    if plain and (cfg.norm, cfg.pos, cfg.attn, cfg.ffn) == ("rmsnorm", "rope", "llama", "swiglu"):
        return "llama"
    if set(cfg.layer_pattern) == {"M"} and cfg.ffn == "none" and not cfg.mamba_embed:
        return "mamba"
    return "hybrid"


@torch.no_grad()
def init_weights(model):
    """clean default (all families alike): weights N(0, 0.02), biases 0, residual-output projections
    (c_proj, Mamba out_proj) N(0, 0.02 / sqrt(2 * n_layer)), learned positions N(0, 0.02), Mamba
    A_log = log(1..ds), D = 1, dt_proj weight U(+-R^-0.5), dt_proj bias = softplus^-1(dt) with dt
    log-uniform in [1e-3, 0.1] (floor 1e-4), conv1d and read-in/out PyTorch defaults.

    reference_quirks=True: what the reference package ends up with (docs/paper.md §3.4): pure GPT-2 as
    above; pure Llama N(0, 0.02) unscaled; pure Mamba = HF (default Linear, dt init, out_proj / sqrt(L));
    hybrids get no HF init at all: GPT-2 modules N(0, 0.02) unscaled (HF Conv1D's own init), Llama
    and Mamba linears PyTorch defaults (dt_proj included), position table N(0, 1)."""
    cfg, std = model.cfg, 0.02
    family = reference_family(cfg) if cfg.reference_quirks else "clean"
    resid_std = std / math.sqrt(2 * cfg.n_layer) if family in ("clean", "gpt2") else std
    seen = set()

    def normal(lin, s):
        nn.init.normal_(lin.weight, std=s)
        if lin.bias is not None:
            nn.init.zeros_(lin.bias)

    for name, mod in model.named_modules():
        if isinstance(mod, (nn.LayerNorm, RMSNorm)):
            nn.init.ones_(mod.weight)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, (CausalSelfAttention, MLP, SwiGLU)):
            hf_gpt2_module = isinstance(mod, MLP) or (isinstance(mod, CausalSelfAttention) and cfg.attn == "gpt2")
            for lname, lin in mod.named_children():
                if family == "hybrid" and not hf_gpt2_module:
                    lin.reset_parameters()  # LlamaAttention / LlamaMLP built outside HF: torch default
                else:
                    normal(lin, resid_std if lname == "c_proj" else std)
        elif isinstance(mod, MambaMixer):
            torch_default = family in ("mamba", "hybrid")
            for lin in (mod.in_proj, mod.x_proj, mod.out_proj, mod.dt_proj):
                lin.reset_parameters() if torch_default else normal(lin, std)
            mod.conv1d.reset_parameters()
            if family == "mamba":
                mod.out_proj.weight /= math.sqrt(cfg.n_layer)
            elif not torch_default:
                mod.out_proj.weight.normal_(0.0, resid_std)
            if family != "hybrid":
                nn.init.uniform_(mod.dt_proj.weight, -mod.R ** -0.5, mod.R ** -0.5)
                dt = torch.exp(torch.rand(mod.dt_proj.bias.shape) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
                dt = dt.clamp(min=1e-4)
                mod.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
            mod.A_log.copy_(torch.log(torch.arange(1, mod.ds + 1, dtype=torch.float32)).repeat(mod.A_log.shape[0], 1))
            nn.init.ones_(mod.D)
        elif name == "wpe":
            nn.init.normal_(mod.weight, std=1.0 if family == "hybrid" else std)
        elif name in ("read_in", "read_out"):
            mod.reset_parameters()  # PyTorch default, as the reference
        else:
            continue
        seen.update(id(p) for p in mod.parameters())
    missed = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missed:
        raise RuntimeError(f"init_weights has no rule for {missed}")
