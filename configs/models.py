"""The one table of model presets. Experiment configs pick one by name and override settings.

Every preset is a full `infini_jax.model.ModelConfig`; `get(name)` returns it as a nested
ConfigDict, so that `--config.model.SECTION.KEY=...` overrides work (an unknown key is refused),
and `ModelConfig.from_dict(config.model)` validates it.
"""

import ml_collections

from infini_jax.memories import InfiniConfig, MemorizingConfig
from infini_jax.model import ModelConfig, Shape
from infini_jax.rope import RoPE

# 256 bytes + PAD, BOS, EOS (infini_jax.data.tokenizer.ByteTokenizer) = 259, padded to a multiple
# of 8 so the vocabulary splits over up to 8 tensor-parallel devices; the extra ids never occur.
BYTE_VOCAB = 264
LLAMA3_VOCAB = 128_256
# The gates' start for a converted LLM (python -m infini_jax.convert; README "Start from an existing
# LLM" has the measurement): sigmoid(-4) = 0.018 leaves the pretrained attention 98% intact at step
# 0 and the gate free to learn (-100 never learns: sigmoid is exactly 0; 0 halves the attention).
CONVERTED_GATE_INIT = -4.0

PRESETS: dict[str, ModelConfig] = {
    # CPU tests: compiles in seconds, byte-level vocabulary.
    "tiny": ModelConfig(Shape(vocab_size=BYTE_VOCAB, d_model=64, num_layers=2, num_heads=4,
                              num_kv_heads=2, head_dim=16, mlp_dim=128, segment_len=64)),
    # The embedded default (`make train`): trains in about 10 minutes on 2 CPU cores.
    "demo": ModelConfig(Shape(vocab_size=BYTE_VOCAB, d_model=128, num_layers=4, num_heads=4,
                              num_kv_heads=4, head_dim=32, mlp_dim=384, segment_len=128)),
    # The paper's long-context LM (Munkhdalai et al. 2024, section 4.1 / Table 2): 12 layers,
    # 8 heads of 128, FFN 4096, segment 2048; a 32K SentencePiece vocabulary.
    "paper_lm": ModelConfig(Shape(vocab_size=32_000, d_model=1024, num_layers=12, num_heads=8,
                                  num_kv_heads=8, head_dim=128, mlp_dim=4096, segment_len=2048)),
    # Llama-3.2-1B (meta-llama/Llama-3.2-1B config.json): 16 layers, d 2048, 32 query and 8
    # key/value heads of 64, FFN 8192, tied embeddings, RoPE theta 5e5 with llama3 scaling
    # (factor 32, low/high frequency factors 1/4, original context 8192), RMSNorm eps 1e-5.
    # 1.24e9 parameters. Segment 2048 as in the paper's 1B passkey experiment.
    "1b": ModelConfig(
        Shape(vocab_size=LLAMA3_VOCAB, d_model=2048, num_layers=16, num_heads=32, num_kv_heads=8,
              head_dim=64, mlp_dim=8192, segment_len=2048, norm_eps=1e-5, tie_embeddings=True),
        rope=RoPE(theta=500_000.0, scaling="llama3", factor=32.0, low_freq_factor=1.0,
                  high_freq_factor=4.0, original_max_len=8192),
        infini=InfiniConfig(gate_init=CONVERTED_GATE_INIT),
        memorizing=MemorizingConfig(gate_init=CONVERTED_GATE_INIT), dtype="bfloat16"),
    # Llama-3-8B (meta-llama/Meta-Llama-3-8B config.json): 32 layers, d 4096, 32 query and 8
    # key/value heads of 128, FFN 14336, untied embeddings, RoPE theta 5e5 without scaling,
    # RMSNorm eps 1e-5. 8.03e9 parameters. (Llama-3.1-8B has the same shape but llama3 scaling
    # with factor 8: --preset=8b:rope.scaling=llama3,rope.factor=8.)
    "8b": ModelConfig(
        Shape(vocab_size=LLAMA3_VOCAB, d_model=4096, num_layers=32, num_heads=32, num_kv_heads=8,
              head_dim=128, mlp_dim=14336, segment_len=2048, norm_eps=1e-5),
        rope=RoPE(theta=500_000.0),
        infini=InfiniConfig(gate_init=CONVERTED_GATE_INIT),
        memorizing=MemorizingConfig(gate_init=CONVERTED_GATE_INIT), dtype="bfloat16"),
}


def get(name: str, **changes) -> ml_collections.ConfigDict:
  """The preset `name` with `changes` (ModelConfig.replace's: top-level values, or a mapping per
  section, e.g. `get("tiny", memory="xl", shape=dict(num_layers=4))`), as a nested ConfigDict."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return ml_collections.ConfigDict(PRESETS[name].replace(**changes).to_dict())
