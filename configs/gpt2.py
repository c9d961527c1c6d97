# (1) GPT-2: learned absolute positions, GELU MLP, LayerNorm, biased fused attention.
# 12 blocks, E = 256, 8 heads: 9.55M backbone parameters (docs/paper.md §3.5).
arch = 'gpt2'
n_layer = 12
n_embd = 256
n_head = 8
norm = 'layernorm'
pos = 'learned'
attn = 'gpt2'
ffn = 'gelu'
mamba_embed = False
layer_pattern = 'A'
expand = 4
