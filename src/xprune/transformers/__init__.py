"""Transformers: attention heads and MLP neurons as prunable units, AttnLRP relevance, Hugging Face models.

Importing this package registers

- unit kinds ``"heads"`` and ``"neurons"`` (:mod:`.units`) and their surgery
  (:mod:`.surgery`: physical removal or masking);
- support of the criteria ``"lrp"`` (AttnLRP / CP-LRP), ``"taylor"``,
  ``"gradient"``, ``"activation"``, ``"weight"``, ``"l2"`` and ``"random"`` for
  these kinds (:mod:`xprune.criteria.heads`), and the LLM baselines
  ``"wanda"`` (structured Wanda) and ``"llm-pruner"`` (LLM-Pruner's Taylor
  importance), :mod:`xprune.criteria.llm`;
- the LRP composites ``"attnlrp"`` and ``"cp-lrp"`` (:mod:`xprune.lrp.attention`).

Recognised architectures: xprune's ViT, and Hugging Face transformers 5.x
BERT family, ViT, GPT-2 and the Llama family (with grouped-query attention);
see :mod:`.adapters`.

Example::

    import xprune, xprune.transformers
    curve = xprune.evaluate.curve(vit, ref, test, "lrp", units="heads")
    pruned = xprune.prune(model, data, "lrp", 0.3, units="neurons")
"""

from . import adapters, gates as _gates_module, surgery, units  # noqa: F401  (registers kinds and surgery)
from .adapters import AttentionSpec, MLPSpec, attention_specs, mlp_specs
from .gates import Gates, gates
from .surgery import load_pruned, record_sizes, remove_heads, remove_neurons
from .. import lrp as _lrp  # noqa: F401
from ..lrp import attention as _attention  # noqa: F401  (registers the AttnLRP composites)
from ..lrp.attention import attnlrp
from ..criteria import heads as _criteria  # noqa: F401  (criteria for heads and neurons)
from ..criteria import llm as _llm_criteria  # noqa: F401  ("wanda", "llm-pruner")

__all__ = ["AttentionSpec", "MLPSpec", "Gates", "attention_specs", "attnlrp", "gates", "load_pruned",
           "mlp_specs", "record_sizes", "remove_heads", "remove_neurons"]
