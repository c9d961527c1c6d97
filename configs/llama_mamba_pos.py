# (2.1) Llama RoPE-less: a leading Mamba block replaces RoPE as positional embedder (13.47M).
# 12 blocks, E = 256, 8 heads.
arch = 'llama_mamba_pos'
n_layer = 12
n_embd = 256
n_head = 8
norm = 'rmsnorm'
pos = 'none'
attn = 'llama'
ffn = 'swiglu'
mamba_embed = True
layer_pattern = 'A'
expand = 4
