"""LoRA adapters (peft) on a family's attention and MLP projections."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from mpcgen.train.families import family_spec


def apply_lora(model: PreTrainedModel, family: str, *, r: int, alpha: int, dropout: float) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters on the family's attention and MLP projections."""
    from peft import LoraConfig, get_peft_model

    spec = family_spec(family)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(spec.lora_targets),
                        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores weights transposed
                        task_type="SEQ_2_SEQ_LM" if spec.is_encoder_decoder else "CAUSAL_LM")
    return get_peft_model(model, config)


__all__ = ["apply_lora"]
