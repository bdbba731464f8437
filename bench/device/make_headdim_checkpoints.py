"""Random tiny HF checkpoints with head dims 80 and 96, for `kiln-check-arch --vs-cpu` on a GPU.

The architecture fixtures (tests/fixtures/arch-tiny) have head dims of 16 to 32; the CUDA
attention template's rows of 10 and 12 chunks (head dims 80 and 96: Phi-2, Phi-3, Phi-4-mini)
need whole models of their own. Written with transformers itself (random init, seed 0, f32):

- phi3-hd96: Phi-3's layout (fused qkv / gate_up, MHA: 4 query and 4 KV heads of 96, partial
  rotary 0.75 as Phi-4-mini);
- llama-hd80: Llama with an explicit head_dim of 80 and GQA 4/2.

Usage: python3 make_headdim_checkpoints.py OUT_DIR
"""

import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Phi3Config, Phi3ForCausalLM

out = sys.argv[1]
torch.manual_seed(0)
common = dict(vocab_size=256, num_hidden_layers=2, intermediate_size=256, max_position_embeddings=512,
              bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
phi3 = Phi3Config(hidden_size=384, num_attention_heads=4, num_key_value_heads=4, partial_rotary_factor=0.75,
                  **common)
Phi3ForCausalLM(phi3).float().save_pretrained(f"{out}/phi3-hd96")
llama = LlamaConfig(hidden_size=256, head_dim=80, num_attention_heads=4, num_key_value_heads=2, **common)
LlamaForCausalLM(llama).float().save_pretrained(f"{out}/llama-hd80")
print("written", out)
