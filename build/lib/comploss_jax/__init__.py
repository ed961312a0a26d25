"""Comparative loss (Zhu et al., TOIS 2024) with vmapped nested-ablation submodels, on BERT-family encoders."""
from comploss_jax.ablation import NestedDropout, submodel_batch_size, submodel_schedule
from comploss_jax.encoder import Encoder, EncoderConfig, mean_pool
from comploss_jax.encoder_params import load_encoder
from comploss_jax.loss import comparative_loss, list_mle, pairwise_hinge, regularised_loss
from comploss_jax.heads import SequenceClassifier, SpanExtractor, classification_losses, span_losses
from comploss_jax.submodels import CmpSettings, make_loss_fn, submodel_losses

__all__ = [
    "CmpSettings", "Encoder", "EncoderConfig", "NestedDropout", "SequenceClassifier", "SpanExtractor",
    "classification_losses", "comparative_loss", "list_mle", "load_encoder", "make_loss_fn", "mean_pool",
    "pairwise_hinge", "regularised_loss", "span_losses", "submodel_batch_size", "submodel_losses",
    "submodel_schedule",
]
