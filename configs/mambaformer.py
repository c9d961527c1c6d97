# Park et al. 2024 MambaFormer: a leading Mamba block instead of positional encoding, then
# attention and Mamba blocks alternating, no MLPs, LayerNorm, nanoGPT-style biased attention.
# Park's size match for a 12-layer GPT-2: 24 blocks (+1 leading Mamba), d = 256, Mamba expand 2.
arch = 'mambaformer'
n_layer = 24
n_embd = 256
n_head = 8
norm = 'layernorm'
pos = 'none'
attn = 'gpt2'
ffn = 'none'
mamba_embed = True
layer_pattern = 'AM'
expand = 2
