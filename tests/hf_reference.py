"""The Hugging Face port of MaskFormer, built from one of our configs: a reference to check against.

`transformers` is a test-only dependency (requirements-dev.txt). No module of the model, training or
inference imports it; the tests and tooling/benchmark.py reach it only through this file, and tooling/benchmark.py
skips its Hugging Face rows, with a note, where `why_unavailable()` gives a reason.

    maskformer_port(maskformer.CONFIGS["r50"])   # transformers.MaskFormerForInstanceSegmentation, random weights

The port is built offline (no download) with the sizes of our config: the same backbone (ResNet or
the MaskFormer Swin), FPN and mask-feature widths, decoder depth, width, heads, FFN size and query
count. Its parameter count equals ours where both train their BatchNorm (`tiny`), and ours plus the
BatchNorm scales and shifts ours freezes for the ResNets (tests/test_benchmark.py checks both).
"""

from __future__ import annotations

from torch import nn

import backbones
import maskformer

HF_STAGES = ["stage1", "stage2", "stage3", "stage4"]


def why_unavailable() -> str | None:
    """None when the port can be built here, else why not (for a skip note)."""
    try:
        import transformers

        transformers.MaskFormerForInstanceSegmentation  # noqa: B018  (older releases lack it)
        import scipy  # noqa: F401  (the port's loss uses scipy's Hungarian solver)
    except (ImportError, AttributeError) as error:
        return f"transformers (with MaskFormer) not available ({error})"
    return None


def version() -> str | None:
    """transformers.__version__, or None where it is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    return transformers.__version__


def maskformer_port(config: maskformer.MaskFormerConfig) -> nn.Module:
    """transformers.MaskFormerForInstanceSegmentation with the sizes of our `config` (random weights)."""
    import transformers

    transformers.logging.set_verbosity_error()  # it warns that "maskformer-swin" is not a known backbone
    kwargs = config.backbone_kwargs
    if config.backbone in backbones.RESNETS:
        block, depths = backbones.RESNETS[config.backbone]
        width = kwargs.get("width", 64)
        backbone = transformers.ResNetConfig(
            layer_type="bottleneck" if block is backbones.Bottleneck else "basic", depths=depths,
            embedding_size=width, hidden_sizes=[width * 2**i * block.expansion for i in range(4)],
            out_features=HF_STAGES)
    else:
        backbone = transformers.MaskFormerSwinConfig(
            **backbones.SWINS[config.backbone], drop_path_rate=kwargs.get("drop_path_rate", 0.3),
            out_features=HF_STAGES)
    decoder = dict(model_type="detr", d_model=config.hidden_dim, decoder_layers=config.dec_layers,
                   decoder_attention_heads=config.num_heads, decoder_ffn_dim=config.dim_feedforward,
                   num_queries=config.num_queries, dropout=config.dropout, attention_dropout=config.dropout,
                   activation_dropout=config.dropout)
    hf_config = transformers.MaskFormerConfig(
        backbone_config=backbone, decoder_config=decoder, num_labels=config.num_classes,
        fpn_feature_size=config.conv_dim, mask_feature_size=config.mask_dim)
    return transformers.MaskFormerForInstanceSegmentation(hf_config)
