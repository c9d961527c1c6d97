# (2.3) Llama RoPE,SwiGLU-less: leading Mamba block instead of RoPE, Mamba blocks instead of SwiGLU;
# MambaFormer-like (14.53M). 12 blocks, E = 256, 8 heads.
arch = 'llama_mamba'
n_layer = 12
n_embd = 256
n_head = 8
norm = 'rmsnorm'
pos = 'none'
attn = 'llama'
ffn = 'mamba'
mamba_embed = True
layer_pattern = 'A'
expand = 4
