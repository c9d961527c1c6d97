# (1.2) GPT-2 RoPE: RoPE and, as in the reference, the bias-free Llama attention module (9.47M).
# 12 blocks, E = 256, 8 heads.
arch = 'gpt2_rope'
n_layer = 12
n_embd = 256
n_head = 8
norm = 'layernorm'
pos = 'rope'
attn = 'llama'
ffn = 'gelu'
mamba_embed = False
layer_pattern = 'A'
expand = 4
