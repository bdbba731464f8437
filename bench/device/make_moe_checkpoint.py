"""A random Qwen3-MoE-shaped HF checkpoint (bf16, no tokenizer) for MoE speed on a GPU.

Qwen3-30B-A3B's layer shapes (hidden 2048, 32 query / 4 KV heads of 128, 128 experts of 768
features, 8 chosen per token, renormalised) but LAYERS layers (default 4) and a 32,000-token
vocabulary, so it writes in seconds and fits any card: each token runs 8 of the 128 experts, so
a batch's grouped products meet many small, uneven groups, as the real model's do. Made on the
GPU by transformers itself (seed 0), saved with its own writer.

Usage: python3 make_moe_checkpoint.py OUT_DIR [LAYERS]
"""

import sys

import torch
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

out = sys.argv[1]
layers = int(sys.argv[2]) if len(sys.argv) > 2 else 4
torch.manual_seed(0)
cfg = Qwen3MoeConfig(vocab_size=32000, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768,
                     num_hidden_layers=layers, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
                     num_experts=128, num_experts_per_tok=8, norm_topk_prob=True, decoder_sparse_step=1,
                     mlp_only_layers=[], max_position_embeddings=4096, rope_theta=1e6, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2)
with torch.device("cuda"):
    model = Qwen3MoeForCausalLM(cfg).to(torch.bfloat16)
model.save_pretrained(out)
print("written", out, sum(p.numel() for p in model.parameters()) / 1e9, "B parameters")
