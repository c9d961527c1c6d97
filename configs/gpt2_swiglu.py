# (1.3) GPT-2 SwiGLU: SwiGLU FFN with hidden 4E as the reference, not 8/3 E (12.68M).
# 12 blocks, E = 256, 8 heads.
arch = 'gpt2_swiglu'
n_layer = 12
n_embd = 256
n_head = 8
norm = 'layernorm'
pos = 'learned'
attn = 'gpt2'
ffn = 'swiglu'
mamba_embed = False
layer_pattern = 'A'
expand = 4
