# (3) Mamba: 12 pre-RMSNorm Mamba mixer blocks, expand 4, d_state 16, no positions, no FFN (10.51M).
# 12 blocks, E = 256.
arch = 'mamba'
n_layer = 12
n_embd = 256
n_head = 8
norm = 'rmsnorm'
pos = 'none'
attn = 'llama'
ffn = 'none'
mamba_embed = False
layer_pattern = 'M'
expand = 4
